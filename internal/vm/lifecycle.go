package vm

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/hypervisor"
	"github.com/goldvm/goldvm/internal/records"
)

// Lifecycle actions (POST /vms/{id}/{action}).
const (
	ActionStop    = "stop"
	ActionStart   = "start"
	ActionRestart = "restart"
	ActionSuspend = "suspend"
	ActionResume  = "resume"
)

// actionFrom lists the statuses each action may start from.
var actionFrom = map[string][]api.Status{
	ActionStop:    {api.StatusRunning, api.StatusSuspended},
	ActionStart:   {api.StatusStopped},
	ActionRestart: {api.StatusRunning, api.StatusSuspended},
	ActionSuspend: {api.StatusRunning},
	ActionResume:  {api.StatusSuspended},
}

// StopReasonRequested is the stop_reason of a VM stopped by POST /vms/{id}/stop.
const StopReasonRequested = "stopped by request"

// Action runs a lifecycle action on a VM and returns its record after it:
// stop (ACPI power-down, then by force; the disk is kept), start (boot
// again and discover the guest), restart (stop, then start), suspend and
// resume. A VM whose status does not allow the action gets a
// vm-invalid-state error (409) and is left as it is.
func (m *Manager) Action(ctx context.Context, id, action string) (*api.VM, error) {
	from, ok := actionFrom[action]
	if !ok {
		return nil, errdefs.Newf(errdefs.ErrNotFound, api.CodeNotFound, "no VM action %q", action)
	}
	r, unlock, err := m.lockedRecord(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if !slices.Contains(from, r.Status) {
		return nil, errdefs.Newf(errdefs.ErrConflict, api.CodeVMInvalidState, "cannot %s VM %s: it is %s (%s needs a VM that is %s)",
			action, id, r.Status, action, joinStatuses(from))
	}
	switch action {
	case ActionStop:
		err = m.powerOff(ctx, r, StopReasonRequested)
	case ActionStart:
		err = m.powerOn(ctx, r)
	case ActionRestart:
		if rs, ok := m.cfg.Driver.(hypervisor.Restarter); ok && r.Status == api.StatusRunning {
			err = m.reboot(ctx, r, rs)
		} else if err = m.powerOff(ctx, r, "restarting"); err == nil {
			err = m.powerOn(ctx, r)
		}
	case ActionSuspend, ActionResume:
		err = m.suspendResume(ctx, r, action)
	}
	if err != nil {
		return nil, err
	}
	r, err = m.get(id)
	if err != nil {
		return nil, err
	}
	return &r.VM, nil
}

func joinStatuses(s []api.Status) string {
	out := ""
	for i, st := range s {
		if i > 0 {
			out += " or "
		}
		out += string(st)
	}
	return out
}

func notSupported(backend, what string) error {
	return errdefs.Newf(errdefs.ErrInvalid, api.CodeNotSupported, "the %s backend cannot %s VMs", backend, what)
}

// powerOff stops the machine and records the VM as stopped with reason.
func (m *Manager) powerOff(ctx context.Context, r *records.Record, reason string) error {
	st, ok := m.cfg.Driver.(hypervisor.Stopper)
	if !ok {
		return notSupported(m.cfg.Driver.Name(), "stop")
	}
	// The watcher would report the power-off as the guest's own.
	m.stop(m.watchers, r.ID)
	if err := st.Stop(ctx, m.spec(r)); err != nil {
		if r.Status == api.StatusRunning {
			m.startWatch(r.ID)
		}
		return fmt.Errorf("stop vm %s: %w", r.ID, err)
	}
	_, err := m.update(r.ID, func(r *records.Record) error {
		r.Status, r.StopReason = api.StatusStopped, reason
		return nil
	})
	if err == nil {
		m.log.Info("vm stopped", "vm", r.ID, "reason", reason)
	}
	return err
}

// powerOn boots a stopped VM from its disk and discovers the guest again.
// A failure leaves the VM stopped, with the error as its stop reason.
func (m *Manager) powerOn(ctx context.Context, r *records.Record) error {
	gold, err := m.ensureImage(ctx, r, nil)
	if err != nil {
		return fmt.Errorf("start vm %s: its image: %w", r.ID, err)
	}
	spec := m.goldSpec(r, gold)
	fail := func(err error) error {
		code, msg := m.cfg.Redactor.CodeOf(err)
		m.update(r.ID, func(r *records.Record) error {
			r.Status, r.StopReason = api.StatusStopped, "start failed: "+code+": "+msg
			return nil
		})
		if sp, ok := m.cfg.Driver.(hypervisor.Stopper); ok {
			sp.Stop(context.WithoutCancel(ctx), spec)
		}
		return err
	}
	if err := m.cfg.Driver.Start(ctx, spec); err != nil {
		return fail(err)
	}
	if err := m.rediscover(ctx, r, spec); err != nil {
		return fail(err)
	}
	m.log.Info("vm started", "vm", r.ID)
	return nil
}

// rediscover learns the guest's address again after it booted, records
// the VM as running with it and watches it.
func (m *Manager) rediscover(ctx context.Context, r *records.Record, spec hypervisor.Spec) error {
	dctx, cancel := context.WithTimeout(ctx, time.Duration(r.ToolsInitTimeout))
	defer cancel()
	info, err := m.cfg.Driver.Discover(dctx, spec)
	if err != nil {
		return err
	}
	_, err = m.update(r.ID, func(r *records.Record) error {
		r.Status, r.StopReason, r.Error = api.StatusRunning, "", nil
		setDiscovered(r, info)
		return nil
	})
	if err != nil {
		return err
	}
	m.log.Info("vm discovered", "vm", r.ID, "ip", info.IPAddress, "guest_os", info.GuestOS, "guest_os_source", info.GuestOSSource)
	m.startWatch(r.ID)
	if info.GuestOSSource != api.SourceGuestAgent {
		m.startProbe(r.ID, time.Duration(r.ToolsInitTimeout))
	}
	return nil
}

// reboot restarts a running VM in place through the driver and discovers
// the guest again.
func (m *Manager) reboot(ctx context.Context, r *records.Record, rs hypervisor.Restarter) error {
	m.stop(m.watchers, r.ID)
	spec := m.spec(r)
	if err := rs.Restart(ctx, spec); err != nil {
		if errors.Is(err, hypervisor.ErrNotRunning) {
			m.markStopped(r.ID, "machine was not running at restart")
			return errdefs.New(errdefs.ErrConflict, api.CodeVMNotRunning, fmt.Sprintf("cannot restart VM %s: its machine is not running", r.ID), err)
		}
		m.startWatch(r.ID)
		return fmt.Errorf("restart vm %s: %w", r.ID, err)
	}
	if err := m.rediscover(ctx, r, spec); err != nil {
		m.startWatch(r.ID)
		return fmt.Errorf("restart vm %s: %w", r.ID, err)
	}
	m.log.Info("vm restarted", "vm", r.ID)
	return nil
}

// setDiscovered records what discovery learnt of a running guest, and
// where each value came from.
func setDiscovered(r *records.Record, info hypervisor.GuestInfo) {
	r.IPAddress, r.GuestOS, r.SSHAddress, r.Location = info.IPAddress, info.GuestOS, info.SSHAddress, info.Location
	r.GuestOSName = cmp.Or(info.GuestOSName, info.GuestOS)
	r.Sources = nil
	if info.IPSource != "" || info.GuestOSSource != "" {
		r.Sources = &api.Sources{IPAddress: info.IPSource, GuestOS: info.GuestOSSource}
	}
}

// suspendResume runs a suspend or resume and records the new status.
func (m *Manager) suspendResume(ctx context.Context, r *records.Record, action string) error {
	sp, ok := m.cfg.Driver.(hypervisor.Suspender)
	if !ok {
		return notSupported(m.cfg.Driver.Name(), action)
	}
	spec := m.spec(r)
	op, status := sp.Suspend, api.StatusSuspended
	if action == ActionResume {
		op, status = sp.Resume, api.StatusRunning
	}
	if sp.SuspendEndsProcess() {
		// The machine ends as it suspends: its watcher must not take
		// that for a stop.
		m.stop(m.watchers, r.ID)
	}
	if err := op(ctx, spec); err != nil {
		if errors.Is(err, hypervisor.ErrNotRunning) {
			m.markStopped(r.ID, "machine was not running at "+action)
			return errdefs.New(errdefs.ErrConflict, api.CodeVMNotRunning, fmt.Sprintf("cannot %s VM %s: its machine is not running", action, r.ID), err)
		}
		if r.Status == api.StatusRunning && sp.SuspendEndsProcess() {
			m.startWatch(r.ID)
		}
		return fmt.Errorf("%s vm %s: %w", action, r.ID, err)
	}
	_, err := m.update(r.ID, func(r *records.Record) error {
		r.Status = status
		return nil
	})
	if err != nil {
		return err
	}
	if status == api.StatusRunning {
		m.startWatch(r.ID)
	}
	m.log.Info("vm "+action+"d", "vm", r.ID)
	return nil
}

// suspendEndsProcess reports whether d suspends a machine by ending its
// process (see hypervisor.Suspender).
func suspendEndsProcess(d hypervisor.Driver) bool {
	sp, ok := d.(hypervisor.Suspender)
	return ok && sp.SuspendEndsProcess()
}
