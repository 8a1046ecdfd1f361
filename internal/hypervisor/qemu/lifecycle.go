package qemu

import (
	"context"
	"fmt"

	"github.com/goldvm/goldvm/internal/hypervisor"
)

var (
	_ hypervisor.Stopper   = (*Driver)(nil)
	_ hypervisor.Suspender = (*Driver)(nil)
)

// Stop powers the VM off as Destroy does (system_powerdown, after
// Config.PowerdownTimeout QMP quit, then SIGKILL) but keeps its disk, tap
// and files, so that Start boots it again.
func (d *Driver) Stop(ctx context.Context, spec hypervisor.Spec) error {
	if err := checkSpec(spec); err != nil {
		return err
	}
	l := d.vmLock(spec.ID)
	l.life.Lock()
	defer l.life.Unlock()
	pid, ok := d.livePID(spec)
	if !ok {
		return nil
	}
	return d.stop(ctx, spec, pid)
}

// Suspend pauses the guest's CPUs with QMP "stop". QEMU keeps the guest's
// memory; State then answers StatePaused.
func (d *Driver) Suspend(ctx context.Context, spec hypervisor.Spec) error {
	return d.qmpRunState(ctx, spec, "stop")
}

// Resume lets a paused guest run again with QMP "cont".
func (d *Driver) Resume(ctx context.Context, spec hypervisor.Spec) error {
	return d.qmpRunState(ctx, spec, "cont")
}

// SuspendEndsProcess is false: a paused QEMU keeps running.
func (d *Driver) SuspendEndsProcess() bool { return false }

// qmpRunState sends "stop" or "cont" to a live QEMU.
func (d *Driver) qmpRunState(ctx context.Context, spec hypervisor.Spec, cmd string) error {
	if err := checkSpec(spec); err != nil {
		return err
	}
	l := d.vmLock(spec.ID)
	l.life.Lock()
	defer l.life.Unlock()
	if _, ok := d.livePID(spec); !ok {
		return fmt.Errorf("%s: %w", cmd, hypervisor.ErrNotRunning)
	}
	return d.withQMP(ctx, spec, func(q *qmpConn) error {
		_, err := q.Execute(ctx, cmd, nil)
		return err
	})
}
