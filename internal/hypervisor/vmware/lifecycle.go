package vmware

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/hypervisor"
	"github.com/goldvm/goldvm/internal/hypervisor/vmware/vmx"
)

// Lifecycle actions (POST /vms/{id}/stop, start, restart, suspend, resume)
// through vmrun, as its documentation gives the commands:
//
//	vmrun -T <type> stop    <vmx> soft|hard   power off (soft: the guest shuts down)
//	vmrun -T <type> start   <vmx> gui|nogui   power on; resumes a suspended VM
//	vmrun -T <type> suspend <vmx> soft|hard   save the VM's state to <name>.vmss and end its process
//	vmrun -T <type> reset   <vmx> soft|hard   reboot (soft: the guest restarts)
//
// A VM that is not powered on makes stop, suspend and reset fail with
// "Error: The virtual machine is not powered on: <vmx>" (status 255). A
// suspended VM is not powered on (`vmrun list` does not list it): VMware
// records its state file in the .vmx as checkpoint.vmState.

// suspended reports whether the VM at path has a saved state to resume:
// the .vmx names a checkpoint.vmState file that exists.
func suspended(path string) bool {
	f, err := vmx.ReadFile(path)
	if err != nil {
		return false
	}
	state, _ := f.Get("checkpoint.vmState")
	if state == "" {
		return false
	}
	if !filepath.IsAbs(state) {
		state = filepath.Join(filepath.Dir(path), state)
	}
	_, err = os.Stat(state)
	return err == nil
}

// notRunning is the error of an action on a VM that is not powered on.
func notRunning(action string) error {
	return errdefs.New(errdefs.ErrConflict, api.CodeVMNotRunning, "cannot "+action+" the VM: it is not powered on", hypervisor.ErrNotRunning)
}

// clonedPath returns the VM's .vmx, or an error if it was never cloned.
func clonedPath(spec hypervisor.Spec) (string, error) {
	if err := checkSpec(spec); err != nil {
		return "", err
	}
	path := vmxPath(spec)
	if !exists(path) {
		return "", errdefs.Newf(errdefs.ErrConflict, "vm-not-cloned", "the VM has no .vmx (Clone it first)")
	}
	return path, nil
}

// Stop powers the VM off: `vmrun stop <vmx> soft` (the guest shuts down,
// bounded by Config.StopTimeout), then `stop <vmx> hard`. vmrun cannot
// power off a suspended VM, so one is resumed first (`start <vmx> nogui`)
// and stopped hard. A VM that is off is no error.
func (d *Driver) Stop(ctx context.Context, spec hypervisor.Spec) error {
	path, err := clonedPath(spec)
	if err != nil {
		return err
	}
	if suspended(path) {
		if _, err := d.run(ctx, false, "start", path, "nogui"); err != nil {
			return mapErr("resuming the suspended VM to stop it", err)
		}
		if _, err := d.run(ctx, false, "stop", path, "hard"); err != nil && !isNotRunning(err) {
			return mapErr("stopping the VM", err)
		}
		d.log.Info("stopped (was suspended)", "id", spec.ID)
		return nil
	}
	if err := d.stop(ctx, spec, path); err != nil {
		return err
	}
	d.log.Info("stopped", "id", spec.ID)
	return nil
}

// Suspend saves the VM's state to disk and ends its process: `vmrun suspend
// <vmx> soft` (VMware Tools run the guest's suspend scripts), bounded by
// Config.StopTimeout, then `suspend <vmx> hard`. It fails wrapping
// hypervisor.ErrNotRunning when the VM is not powered on.
func (d *Driver) Suspend(ctx context.Context, spec hypervisor.Spec) error {
	return d.powered(ctx, spec, "suspend", "suspended")
}

// powered runs cmd (soft, then hard) on a powered-on VM and logs done.
func (d *Driver) powered(ctx context.Context, spec hypervisor.Spec, cmd, done string) error {
	path, err := clonedPath(spec)
	if err != nil {
		return err
	}
	if err := d.softThenHard(ctx, spec, cmd, path); err != nil {
		return err
	}
	d.log.Info(done, "id", spec.ID)
	return nil
}

// Resume powers a suspended VM on again from its saved state: `vmrun start
// <vmx> nogui` (gui when the VM has a window). The guest carries on where
// it was, the same boot. It fails wrapping hypervisor.ErrNotRunning when
// the VM has no saved state (and is not running already: then it is done).
func (d *Driver) Resume(ctx context.Context, spec hypervisor.Spec) error {
	path, err := clonedPath(spec)
	if err != nil {
		return err
	}
	if !suspended(path) {
		running, err := d.running(ctx, path)
		if err != nil {
			return err
		}
		if running {
			return nil
		}
		return errdefs.New(errdefs.ErrConflict, api.CodeVMNotRunning, "cannot resume the VM: it has no suspended state", hypervisor.ErrNotRunning)
	}
	if err := d.Start(ctx, spec); err != nil {
		return err
	}
	d.log.Info("resumed", "id", spec.ID)
	return nil
}

// SuspendEndsProcess is true: a suspended VMware VM has no process, and
// `vmrun list` does not list it.
func (d *Driver) SuspendEndsProcess() bool { return true }

// Restart reboots a running VM in place: `vmrun reset <vmx> soft` (the
// guest restarts itself, bounded by Config.StopTimeout), then `reset <vmx>
// hard`. It fails wrapping hypervisor.ErrNotRunning when the VM is not
// powered on.
func (d *Driver) Restart(ctx context.Context, spec hypervisor.Spec) error {
	return d.powered(ctx, spec, "reset", "reset")
}

// softThenHard runs `vmrun <cmd> <vmx> soft`, bounded by StopTimeout, and
// `<cmd> <vmx> hard` when that fails for another reason than the VM not
// being powered on.
func (d *Driver) softThenHard(ctx context.Context, spec hypervisor.Spec, cmd, path string) error {
	sctx, cancel := context.WithTimeout(ctx, d.cfg.StopTimeout)
	_, err := d.run(sctx, false, cmd, path, "soft")
	cancel()
	switch {
	case err == nil:
		return nil
	case isNotRunning(err):
		return notRunning(cmd)
	case ctx.Err() != nil:
		return fmt.Errorf("%s of the VM: %w", cmd, ctx.Err())
	}
	d.log.Info("soft "+cmd+" failed, trying hard", "id", spec.ID, "err", err)
	if _, err := d.run(ctx, false, cmd, path, "hard"); err != nil {
		if isNotRunning(err) {
			return notRunning(cmd)
		}
		return mapErr(cmd+" of the VM", err)
	}
	return nil
}
