package main

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"

	"github.com/goldvm/goldvm/api"
)

// hostCapacity is the budget for all VMs: the flags when given, else the
// host's CPUs and memory times the overcommit ratios.
func hostCapacity(cpus int, memory string, cpuOver, memOver float64) (api.Resources, error) {
	var c api.Resources
	if cpus < 0 || cpuOver <= 0 || memOver <= 0 {
		return c, fmt.Errorf("--capacity-cpus, --cpu-overcommit and --memory-overcommit must be positive")
	}
	c.CPUs = cpus
	if c.CPUs == 0 {
		c.CPUs = max(1, int(float64(runtime.NumCPU())*cpuOver))
	}
	if memory != "" {
		n, err := api.ParseIEC(memory)
		if err != nil {
			return c, fmt.Errorf("--capacity-memory: %w", err)
		}
		c.MemoryMiB = n >> 20
		return c, nil
	}
	total, err := memTotalMiB("/proc/meminfo")
	if err != nil {
		return c, fmt.Errorf("--capacity-memory not given and the host's memory is unknown: %w", err)
	}
	c.MemoryMiB = int64(float64(total) * memOver)
	return c, nil
}

// memTotalMiB reads MemTotal from a meminfo file.
func memTotalMiB(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			kib, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("%s: MemTotal: %w", path, err)
			}
			return kib >> 10, nil
		}
	}
	return 0, fmt.Errorf("%s has no MemTotal", path)
}
