//go:build windows

package vmware

import "os/exec"

// setProcessGroup kills vmrun itself when ctx ends; WaitDelay (set by the
// caller) stops a helper that inherited its output from blocking Wait.
func setProcessGroup(cmd *exec.Cmd) {
	cmd.Cancel = func() error { return cmd.Process.Kill() }
}
