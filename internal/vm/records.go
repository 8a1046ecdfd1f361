package vm

import (
	"errors"
	"slices"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/records"
)

// The manager reads and writes records through update, get and list below
// rather than the store directly, so that a record change the store cannot
// write (the disk is full, the database file is unwritable) is not lost: it
// is kept in memory, served by the API, and written by a retry loop as soon
// as the store accepts it. Without this a VM whose final status could not
// be saved would stay "creating" forever with nothing behind it.

// retryUnsavedEvery is how often unsaved records are written again. Short,
// since a caller polling the VM sees the in-memory state meanwhile anyway.
const retryUnsavedEvery = time.Second

// update applies fn to the record and saves it. If fn fails, nothing
// changes and its error is returned. If the store cannot save the change,
// the changed record is kept in memory (and returned) until it can. A
// change is published as an event (see publishChange).
func (m *Manager) update(id string, fn func(*records.Record) error) (*records.Record, error) {
	var before records.Record
	r, err := m.save(id, func(r *records.Record) error {
		before = *r
		if err := fn(r); err != nil {
			return err
		}
		timePhase(&before, r, time.Now())
		return nil
	})
	if err == nil {
		m.publishChange(&before, r)
	}
	return r, err
}

// timePhase closes the timing of the phase a creation leaves (before's)
// when after is in another phase or no longer creating.
func timePhase(before, after *records.Record, now time.Time) {
	if before.Status != api.StatusCreating || before.Phase == "" ||
		(after.Status == api.StatusCreating && after.Phase == before.Phase) {
		return
	}
	since := before.PhaseSince
	if since.IsZero() {
		since = before.CreatedAt
	}
	d := now.Sub(since).Round(time.Millisecond).Seconds()
	after.PhaseTimes = append(slices.Clip(after.PhaseTimes), api.PhaseTime{Phase: before.Phase, Seconds: max(d, 0)})
	after.PhaseSince = now
}

// save is update without the event.
func (m *Manager) save(id string, fn func(*records.Record) error) (*records.Record, error) {
	m.mu.Lock()
	pending := m.unsaved[id]
	m.mu.Unlock()
	if pending == nil {
		var fnErr error
		r, err := m.cfg.Store.Update(id, func(r *records.Record) error { fnErr = fn(r); return fnErr })
		if err == nil || fnErr != nil || errors.Is(err, errdefs.ErrNotFound) {
			return r, err
		}
		m.log.Error("cannot save VM record; keeping the change in memory and retrying", "vm", id, "err", err)
		pending, err = m.cfg.Store.Get(id)
		if err != nil {
			return nil, err
		}
	}
	next := *pending
	if err := fn(&next); err != nil {
		return nil, err
	}
	next.UpdatedAt = time.Now().UTC()
	m.mu.Lock()
	m.unsaved[id] = &next
	start := !m.retrying && m.ctx.Err() == nil
	m.retrying = m.retrying || start
	m.mu.Unlock()
	if start {
		m.wg.Add(1)
		go m.retryUnsaved()
	}
	// Try at once: the cause may already be gone.
	m.flushUnsaved()
	r := next
	return &r, nil
}

// retryUnsaved writes unsaved records until none is left or the manager closes.
func (m *Manager) retryUnsaved() {
	defer m.wg.Done()
	t := time.NewTicker(retryUnsavedEvery)
	defer t.Stop()
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-t.C:
		}
		if m.flushUnsaved() == 0 {
			m.mu.Lock()
			if len(m.unsaved) == 0 {
				m.retrying = false
				m.mu.Unlock()
				return
			}
			m.mu.Unlock()
		}
	}
}

// flushUnsaved tries to save every unsaved record; it returns how many remain.
func (m *Manager) flushUnsaved() int {
	m.mu.Lock()
	todo := make(map[string]*records.Record, len(m.unsaved))
	for id, r := range m.unsaved {
		todo[id] = r
	}
	m.mu.Unlock()
	for id, want := range todo {
		_, err := m.cfg.Store.Update(id, func(r *records.Record) error { *r = *want; return nil })
		if err != nil && !errors.Is(err, errdefs.ErrNotFound) {
			continue
		}
		m.mu.Lock()
		if m.unsaved[id] == want {
			delete(m.unsaved, id)
		}
		m.mu.Unlock()
		if err == nil {
			m.log.Info("saved VM record that could not be written before", "vm", id)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.unsaved)
}

// get returns a record, preferring a change not yet saved.
func (m *Manager) get(id string) (*records.Record, error) {
	m.mu.Lock()
	pending := m.unsaved[id]
	m.mu.Unlock()
	if pending != nil {
		r := *pending
		return &r, nil
	}
	return m.cfg.Store.Get(id)
}

// list returns all records, newest first, with unsaved changes applied.
func (m *Manager) list() ([]*records.Record, error) {
	recs, err := m.cfg.Store.List()
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, r := range recs {
		if p := m.unsaved[r.ID]; p != nil {
			c := *p
			recs[i] = &c
		}
	}
	return recs, nil
}

// forget drops an unsaved change of a record that has been deleted.
func (m *Manager) forget(id string) {
	m.mu.Lock()
	delete(m.unsaved, id)
	m.mu.Unlock()
}
