package vmware

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/hypervisor"
)

// vmrunError is a failed vmrun call: its arguments, exit status and what it
// printed.
type vmrunError struct {
	Args     []string
	ExitCode int
	Message  string // vmrun's message without the "Error: " prefix, trimmed
}

func (e *vmrunError) Error() string {
	return fmt.Sprintf("vmrun %s (exit status %d): %s", e.Args[0], e.ExitCode, e.Message)
}

// run runs vmrun -T <type> args... under ctx (bounded by d.cmdTimeout unless
// noTimeout) and returns its output. vmrun prints its errors on stdout, so
// stdout and stderr are read together. The process runs in its own process
// group, which is killed as a whole when ctx ends: vmrun can hang (it waits
// for the guest in getGuestIPAddress -wait), and a helper it started must
// not keep its output pipe open.
func (d *Driver) run(ctx context.Context, noTimeout bool, args ...string) (string, error) {
	if !noTimeout {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d.cmdTimeout)
		defer cancel()
	}
	full := append([]string{"-T", d.cfg.HostType}, args...)
	cmd := exec.CommandContext(ctx, d.vmrun, full...)
	cmd.Env = append(os.Environ(), d.env...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.WaitDelay = d.waitDelay
	setProcessGroup(cmd)
	start := time.Now()
	err := cmd.Run()
	text := strings.TrimSpace(out.String())
	d.log.Debug("vmrun", "args", full, "took", time.Since(start).Round(time.Millisecond), "err", err, "output", truncate(text, 500))
	if err == nil {
		return text, nil
	}
	if ctx.Err() != nil {
		return text, fmt.Errorf("vmrun %s: %w", strings.Join(args, " "), ctx.Err())
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return text, errdefs.New(errdefs.ErrUnavailable, "vmrun-failed",
			fmt.Sprintf("cannot run vmrun %s", args[0]), err)
	}
	return text, &vmrunError{Args: args, ExitCode: ee.ExitCode(), Message: errorMessage(text, ee)}
}

// errorMessage extracts vmrun's error message from its output.
func errorMessage(out string, ee *exec.ExitError) string {
	var msgs []string
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if m, ok := strings.CutPrefix(line, "Error:"); ok {
			msgs = append(msgs, strings.TrimSpace(m))
		}
	}
	if len(msgs) > 0 {
		return strings.Join(msgs, "; ")
	}
	if out != "" {
		return truncate(out, 1000)
	}
	return ee.String()
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// Message patterns of vmrun errors, lower-cased.
var (
	lockedPatterns     = []string{"in use", "locked", "failed to lock", "lock the file"}
	notRunningPatterns = []string{"not powered on", "is not running", "is powered off"}
	notFoundPatterns   = []string{"cannot be found", "does not exist", "no such file"}
	existsPatterns     = []string{"already exists"}
	toolsPatterns      = []string{"tools are not running", "unable to get the ip address"}
)

// has reports whether err is a vmrun failure whose message contains one of
// patterns, case-insensitively.
func has(err error, patterns []string) bool {
	var ve *vmrunError
	if !errors.As(err, &ve) {
		return false
	}
	m := strings.ToLower(ve.Message)
	for _, p := range patterns {
		if strings.Contains(m, p) {
			return true
		}
	}
	return false
}

func isLocked(err error) bool     { return has(err, lockedPatterns) }
func isNotRunning(err error) bool { return has(err, notRunningPatterns) }
func isNotFound(err error) bool   { return has(err, notFoundPatterns) }
func isExists(err error) bool     { return has(err, existsPatterns) }

// mapErr turns a vmrun failure into an errdefs error with a stable code:
// "vm-locked" (409) for locked files, "vm-not-running" (409, wrapping
// hypervisor.ErrNotRunning) for a VM that is not powered on, "vmrun-failed"
// otherwise. what says what goldvm was doing.
func mapErr(what string, err error) error {
	if err == nil {
		return nil
	}
	var ee *errdefs.Error
	if errors.As(err, &ee) {
		return err
	}
	var ve *vmrunError
	if !errors.As(err, &ve) {
		return fmt.Errorf("%s: %w", what, err) // context ended
	}
	switch {
	case isLocked(err):
		return errdefs.New(errdefs.ErrConflict, "vm-locked",
			what+": the VM's files are locked by another VMware process", err)
	case isNotRunning(err):
		return errdefs.New(errdefs.ErrConflict, "vm-not-running",
			what+": the VM is not running", errors.Join(hypervisor.ErrNotRunning, err))
	default:
		return errdefs.New(errdefs.ErrUnavailable, "vmrun-failed",
			what+" failed", err)
	}
}
