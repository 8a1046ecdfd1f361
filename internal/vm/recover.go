package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/hypervisor"
	"github.com/goldvm/goldvm/internal/records"
)

// Recover brings the records and the host back in line after a start:
// creations under way are cleaned and restarted, running VMs are reattached
// (or marked stopped), deletions are finished, pending callbacks are sent,
// and directories or processes that no record owns are removed.
func (m *Manager) Recover(ctx context.Context) error {
	recs, err := m.list()
	if err != nil {
		return err
	}
	known := map[string]bool{}
	for _, r := range recs {
		known[r.ID] = true
		log := m.log.With("vm", r.ID)
		spec := m.spec(r)
		switch r.Status {
		case api.StatusCreating:
			// Whatever was half made is removed; the pipeline starts again
			// (the image store keeps what it fully fetched).
			log.Info("recover: restarting interrupted creation", "phase", r.Phase)
			if err := m.cfg.Driver.Destroy(ctx, spec); err != nil {
				log.Error("recover: clean half-made vm", "err", err)
			}
			id := r.ID
			m.spawn(m.creates, id, func(ctx context.Context) { m.runCreate(ctx, id) })
			continue
		case api.StatusDeleting:
			log.Info("recover: finishing interrupted delete")
			if err := m.destroy(ctx, r); err != nil {
				log.Error("recover: delete", "err", err)
			}
			continue
		case api.StatusRunning, api.StatusStopped, api.StatusSuspended:
			st, err := m.cfg.Driver.State(ctx, spec)
			if err != nil {
				log.Error("recover: state", "err", err)
			}
			if r.Status == api.StatusSuspended && suspendEndsProcess(m.cfg.Driver) && st == hypervisor.StateStopped {
				continue // suspended to disk: no process until resumed
			}
			if st == hypervisor.StateRunning || st == hypervisor.StatePaused {
				m.capacity.hold(r.ID, resources(r), true)
				want := api.StatusRunning
				if r.Status == api.StatusSuspended && st == hypervisor.StatePaused {
					want = api.StatusSuspended
				}
				if r.Status != want {
					m.update(r.ID, func(r *records.Record) error { r.Status, r.StopReason = want, ""; return nil })
				}
				log.Info("recover: reattached to running vm")
				m.startWatch(r.ID)
				if r.Sources == nil || r.Sources.GuestOS != api.SourceGuestAgent {
					m.startProbe(r.ID, time.Duration(r.ToolsInitTimeout))
				}
			} else if r.Status == api.StatusRunning || r.Status == api.StatusSuspended {
				m.markStopped(r.ID, "machine was not running when the daemon restarted")
			}
		case api.StatusError:
			// The undo may have been cut short by a crash; Destroy is
			// idempotent, but costs subprocesses, so it runs only when the
			// failed VM's directory still holds something.
			if dirHasEntries(r.Dir) {
				if err := m.cfg.Driver.Destroy(ctx, spec); err != nil {
					log.Error("recover: clean failed vm", "err", err)
				}
			}
		}
		if r.Callback != nil && r.Callback.State == api.CallbackPending && r.Status.IsFinal() {
			id := r.ID
			// Tracked as the VM's creation task, as in runCreate, so a
			// delete cancels the delivery.
			m.spawn(m.creates, id, func(ctx context.Context) { m.deliverCallback(ctx, id) })
		}
	}
	// Strays: VM directories and hypervisor processes without a record.
	entries, err := os.ReadDir(m.cfg.VMDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("read vm directory: %w", err)
	}
	for _, e := range entries {
		if known[e.Name()] {
			continue
		}
		dir := filepath.Join(m.cfg.VMDir, e.Name())
		m.log.Warn("recover: removing stray vm directory", "dir", dir)
		if records.ValidID(e.Name()) {
			m.cfg.Driver.Destroy(ctx, hypervisor.Spec{ID: e.Name(), Dir: dir})
		}
		os.RemoveAll(dir)
	}
	if rp, ok := m.cfg.Driver.(hypervisor.Reaper); ok {
		if err := rp.Reap(ctx, func(id string) bool { return known[id] }); err != nil {
			m.log.Error("recover: reap strays", "err", err)
		}
	}
	return nil
}

// dirHasEntries reports whether dir exists and is not empty.
func dirHasEntries(dir string) bool {
	f, err := os.Open(dir)
	if err != nil {
		return false
	}
	defer f.Close()
	names, _ := f.Readdirnames(1)
	return len(names) > 0
}
