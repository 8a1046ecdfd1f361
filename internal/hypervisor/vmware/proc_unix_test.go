//go:build !windows

package vmware

import "syscall"

// processExists reports whether a process with this pid exists.
func processExists(pid int) bool {
	return syscall.Kill(pid, 0) == nil
}
