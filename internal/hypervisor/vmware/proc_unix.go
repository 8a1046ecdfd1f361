//go:build !windows

package vmware

import (
	"os/exec"
	"syscall"
)

// setProcessGroup puts cmd in a process group of its own and makes its
// cancellation kill the whole group, so that nothing vmrun started keeps
// running (or keeps its output open) after ctx ends.
func setProcessGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		if cmd.Process == nil {
			return nil
		}
		if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); err != nil {
			return cmd.Process.Kill()
		}
		return nil
	}
}
