package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// readPID reads a pidfile.
func readPID(path string) (int, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return 0, false
	}
	return pid, true
}

// procArgs returns a process's argument vector, nil if it is gone or a zombie.
func procArgs(pid int) []string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil || len(b) == 0 {
		return nil
	}
	b = bytes.TrimRight(b, "\x00")
	return strings.Split(string(b), "\x00")
}

// procStat returns the fields of /proc/<pid>/stat after the command name
// (the first is the state, the 12th and 13th utime and stime).
func procStat(pid int) ([]string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return nil, fmt.Errorf("/proc/%d/stat: unexpected %q", pid, b)
	}
	return strings.Fields(string(b[i+2:])), nil
}

// procZombie reports whether pid is a zombie (dead, not yet reaped).
func procZombie(pid int) bool {
	f, err := procStat(pid)
	if err != nil || len(f) == 0 {
		return true
	}
	return f[0] == "Z" || f[0] == "X"
}

// procCPUTicks returns the CPU time pid has used (user and system, in
// clock ticks: 1/100 s on Linux).
func procCPUTicks(pid int) (int64, error) {
	f, err := procStat(pid)
	if err != nil {
		return 0, err
	}
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	k, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return u + k, nil
}

// qemuVMID returns the goldvm VM id of a QEMU argument vector, "" when it is
// not a goldvm QEMU.
func qemuVMID(args []string) string {
	if len(args) == 0 || !strings.Contains(filepath.Base(args[0]), "qemu") {
		return ""
	}
	for i := 0; i+1 < len(args); i++ {
		if args[i] != "-name" {
			continue
		}
		v := strings.TrimPrefix(args[i+1], "guest=")
		v, _, _ = strings.Cut(v, ",")
		if id, ok := strings.CutPrefix(v, "goldvm-"); ok {
			return id
		}
	}
	return ""
}

// isVMProcess reports whether pid is the live QEMU of VM id.
func isVMProcess(pid int, id string) bool {
	if pid <= 1 {
		return false
	}
	args := procArgs(pid)
	return args != nil && qemuVMID(args) == id && !procZombie(pid)
}

// waitGone polls until pid is no longer VM id's QEMU, for at most d or until
// ctx ends. It reports whether the process is gone.
func waitGone(ctx context.Context, pid int, id string, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		if !isVMProcess(pid, id) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		select {
		case <-ctx.Done():
			return !isVMProcess(pid, id)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// procHolding reports whether pid may still hold a QEMU's files: it
// exists, is not a zombie (which has closed them all), and is either
// tearing itself down (its memory, and so its command line, already gone)
// or still reads as a goldvm QEMU (a process killed a moment ago keeps
// its command line until the kernel gets to it). A pid reused by an
// unrelated process holds nothing of ours.
func procHolding(pid int) bool {
	if pid <= 1 {
		return false
	}
	if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err != nil {
		return false
	}
	if procZombie(pid) {
		// The thread group leader turns zombie as soon as it exits, while
		// QEMU's other threads may still be exiting with the shared file
		// table (and the disk's lock) open; each leaves the task list
		// only after closing its files.
		tasks, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
		return err == nil && len(tasks) > 1
	}
	args := procArgs(pid)
	return args == nil || qemuVMID(args) != ""
}

// waitExited polls until pid no longer holds a QEMU's files (see
// procHolding), for at most d or until ctx ends. Callers have stopped or
// killed the process, or found it dead.
func waitExited(ctx context.Context, pid int, d time.Duration) {
	deadline := time.Now().Add(d)
	for procHolding(pid) && time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// killPID sends SIGKILL.
func killPID(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }

// allPIDs lists the numeric entries of /proc.
func allPIDs() []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			out = append(out, pid)
		}
	}
	return out
}
