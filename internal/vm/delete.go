package vm

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/image"
	"github.com/goldvm/goldvm/internal/records"
)

// Delete stops the VM, removes its files and its record. A creation under way
// is cancelled first. The record is marked "deleting" before anything is
// removed, so a daemon killed mid-delete finishes the job on restart.
func (m *Manager) Delete(ctx context.Context, id string) error {
	return m.DeleteIf(ctx, id, nil)
}

// ErrSkipped is DeleteIf's answer when its condition refused the VM.
var ErrSkipped = errors.New("vm: delete skipped: the VM no longer meets the condition")

// DeleteIf is Delete when cond (nil: always) accepts the VM as it is in
// the transaction that marks it deleting; otherwise nothing changes and it
// returns ErrSkipped. A group deletes its VMs this way, so that a warm VM
// handed out meanwhile is not destroyed under its new owner.
func (m *Manager) DeleteIf(ctx context.Context, id string, cond func(*api.VM) bool) error {
	if !records.ValidID(id) {
		return errdefs.Newf(errdefs.ErrNotFound, "vm-not-found", "no VM with id %q", id)
	}
	unlock := m.lockID(id)
	defer unlock()
	var prev api.Status
	r, err := m.update(id, func(r *records.Record) error {
		if cond != nil && !cond(&r.VM) {
			return ErrSkipped
		}
		prev = r.Status
		r.Status = api.StatusDeleting
		return nil
	})
	if err != nil {
		return err
	}
	m.log.Info("deleting vm", "vm", id, "was", prev)
	m.crashPoint(CrashDeleting)
	m.stop(m.creates, id)
	m.stop(m.watchers, id)
	m.stop(m.probes, id)
	if err := m.destroy(ctx, r); err != nil {
		// Keep the record, in its previous state, so the caller can retry.
		m.update(id, func(r *records.Record) error { r.Status = prev; return nil })
		if prev == api.StatusRunning {
			m.startWatch(id)
		}
		return err
	}
	return nil
}

func (m *Manager) destroy(ctx context.Context, r *records.Record) error {
	dctx, cancel := context.WithTimeout(ctx, m.cfg.DestroyTimeout)
	defer cancel()
	if err := m.cfg.Driver.Destroy(dctx, m.spec(r)); err != nil {
		return fmt.Errorf("destroy vm %s: %w", r.ID, err)
	}
	m.crashPoint(CrashDestroyed)
	if err := os.RemoveAll(r.Dir); err != nil {
		return fmt.Errorf("remove vm directory: %w", err)
	}
	if err := m.cfg.Store.Delete(r.ID); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
		return err
	}
	m.forget(r.ID)
	m.capacity.release(r.ID)
	m.log.Info("vm deleted", "vm", r.ID)
	if key, err := image.Key(imageSpec(r)); err == nil {
		if err := m.cfg.Images.Release(key, m.ImageUsers); err != nil {
			m.log.Error("release the vm's image", "vm", r.ID, "key", key, "err", err)
		}
	}
	m.publish(api.ActionDeleted, r)
	return nil
}
