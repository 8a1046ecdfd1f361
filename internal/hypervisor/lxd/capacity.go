package lxd

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/hypervisor"
)

var _ hypervisor.CapacityReporter = (*Driver)(nil)

// resources is the part of GET /1.0/resources the driver reads.
type resources struct {
	CPU struct {
		Total int `json:"total"` // threads
	} `json:"cpu"`
	Memory struct {
		Total int64 `json:"total"` // bytes
		Used  int64 `json:"used"`
	} `json:"memory"`
}

// BackendCapacity asks every online member for its resources (GET
// /1.0/resources, with ?target=member on a cluster) and sums them; Used
// sums limits.cpu and limits.memory of the project's goldvm instances
// that run or are frozen, per member by their location.
func (d *Driver) BackendCapacity(ctx context.Context) (api.BackendCapacity, error) {
	var out api.BackendCapacity
	ms, clustered, err := d.members(ctx)
	if err != nil {
		return out, err
	}
	ins, err := d.instances(ctx)
	if err != nil {
		return out, err
	}
	index := map[string]int{}
	for i, m := range ms {
		mc := api.MemberCapacity{Name: m.Name, Status: m.Status}
		index[m.Name] = i
		if m.Status == "Online" {
			path := "/1.0/resources"
			if clustered {
				path += "?target=" + url.QueryEscape(m.Name)
			}
			var res resources
			if err := d.c.do(ctx, http.MethodGet, path, nil, &res); err != nil {
				return out, err
			}
			mc.Total = api.Resources{CPUs: res.CPU.Total, MemoryMiB: res.Memory.Total >> 20}
			mc.MemoryUsedMiB = res.Memory.Used >> 20
			out.Total.CPUs += mc.Total.CPUs
			out.Total.MemoryMiB += mc.Total.MemoryMiB
		}
		out.Members = append(out.Members, mc)
	}
	for _, in := range ins {
		// An instance on an offline member is listed without its
		// settings: known by its name only.
		if _, ok := in.Config[keyID]; !strings.HasPrefix(in.Name, namePrefix) || (!ok && !unreachable(in)) {
			continue
		}
		where := memberOf(&in)
		if !clustered {
			where = ms[0].Name
		}
		i, ok := index[where]
		if !ok {
			continue
		}
		mc := &out.Members[i]
		mc.Instances++
		if in.Status != "Running" && in.Status != "Frozen" {
			continue
		}
		cpus, _ := strconv.Atoi(in.Config["limits.cpu"])
		mem := memoryMiB(in.Config["limits.memory"])
		mc.Used.CPUs += cpus
		mc.Used.MemoryMiB += mem
		out.Used.CPUs += cpus
		out.Used.MemoryMiB += mem
	}
	return out, nil
}

// memoryMiB reads a limits.memory value in MiB: Clone's "<n>MiB", or
// another of LXD's binary or decimal units, or bytes; 0 when it is none
// of them (a percentage).
func memoryMiB(v string) int64 {
	units := []struct {
		suffix string
		bytes  int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}, {"kB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if n, ok := strings.CutSuffix(v, u.suffix); ok {
			v, mult = n, u.bytes
			break
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0
	}
	return n * mult >> 20
}
