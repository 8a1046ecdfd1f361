package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/hypervisor"
)

// Destroy powers the VM off (ACPI powerdown, then QMP quit, then SIGKILL),
// removes its tap and every file it made in spec.Dir. It is idempotent and
// safe on a half-made VM. If another process holds the overlay locked it
// fails with code "vm-locked" and removes nothing.
func (d *Driver) Destroy(ctx context.Context, spec hypervisor.Spec) error {
	if err := checkSpec(spec); err != nil {
		return err
	}
	l := d.vmLock(spec.ID)
	l.life.Lock()
	defer l.life.Unlock()

	if pid, ok := d.livePID(spec); ok {
		if err := d.stop(ctx, spec, pid); err != nil {
			return err
		}
	}
	// A QEMU that has just died (killed or crashed) is no longer "live" once
	// its memory is gone, but holds the disk's lock until its files are
	// closed too: wait for that, rather than report the disk locked.
	if pid, ok := readPID(p(spec.Dir, filePID)); ok {
		waitExited(ctx, pid, 10*time.Second)
	}
	if err := d.stopMetadata(context.WithoutCancel(ctx), spec); err != nil {
		return errdefs.New(errdefs.ErrUnavailable, "network-cleanup-failed", "cannot remove the VM's metadata rules", err)
	}
	d.takeStarted(spec.ID)
	if np, err := d.plan(spec); err == nil {
		if err := d.releaseAddress(np, spec.ID); err != nil {
			return errdefs.New(errdefs.ErrUnavailable, "network-cleanup-failed", "cannot remove the VM's address reservation", err)
		}
	}
	if d.bridging() {
		if err := d.removeTap(context.WithoutCancel(ctx), tapFor(spec.ID)); err != nil {
			return errdefs.New(errdefs.ErrUnavailable, "network-cleanup-failed", "cannot remove the VM's tap device", err)
		}
	}
	disk := p(spec.Dir, fileDisk)
	if _, err := os.Stat(disk); err == nil {
		if _, err := d.qemuImgInfo(ctx, disk, "qcow2", false); err != nil && isLockError(err.Error()) {
			return lockedErr(err)
		}
	}
	// What the guest last printed says why a creation failed (a kernel
	// panic, a guest that never got an address): keep its tail next to
	// the record, which goes with the VM's directory.
	if tail, err := readTail(p(spec.Dir, fileConsole), consoleKept); err == nil {
		if err := writeFileAtomic(p(spec.Dir, fileConsoleEnd), tail); err != nil {
			d.log.Warn("cannot keep the console's tail", "vm", spec.ID, "err", err)
		}
	}
	var errs []error
	files := []string{fileDisk, fileDiskTmp, fileQMP, fileQMPWatch, fileQGA, fileIdentity, filePID, fileConsole, fileStderr, fileSSHPort, fileSSHPort + ".tmp", fileSeed, fileSeed + ".tmp", fileMetadataPort, fileMetadataPort + ".tmp", fileVNC, fileEFIVars, fileEFIVars + ".tmp"}
	shots, _ := filepath.Glob(p(spec.Dir, screendumpGlob))
	for _, f := range files {
		shots = append(shots, p(spec.Dir, f))
	}
	for _, f := range shots {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("destroy %s: %w", spec.ID, err)
	}
	return nil
}

// stop ends a running QEMU: powerdown, quit, SIGKILL.
func (d *Driver) stop(ctx context.Context, spec hypervisor.Spec, pid int) error {
	try := func(cmd string) {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		err := d.withQMP(cctx, spec, func(q *qmpConn) error {
			_, err := q.Execute(cctx, cmd, nil)
			return err
		})
		if err != nil {
			d.log.Debug("qmp during destroy", "vm", spec.ID, "cmd", cmd, "err", err)
		}
	}
	try("system_powerdown")
	if waitGone(ctx, pid, spec.ID, d.cfg.PowerdownTimeout) {
		d.log.Info("guest powered off", "vm", spec.ID)
		return nil
	}
	try("quit")
	if waitGone(ctx, pid, spec.ID, 3*time.Second) {
		return nil
	}
	d.log.Warn("QEMU ignored quit; killing it", "vm", spec.ID, "pid", pid)
	if err := killPID(pid); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill qemu %d: %w", pid, err)
	}
	if waitGone(context.WithoutCancel(ctx), pid, spec.ID, 10*time.Second) {
		return nil
	}
	return errdefs.Newf(errdefs.ErrUnavailable, "vm-stop-failed", "QEMU process %d did not exit after SIGKILL", pid)
}
