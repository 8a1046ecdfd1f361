//go:build windows

package vmware

import "os"

// processExists reports whether a process with this pid exists.
func processExists(pid int) bool {
	p, err := os.FindProcess(pid)
	if err != nil {
		return false
	}
	p.Release()
	return true
}
