package vm

import (
	"cmp"
	"context"
	"errors"
	"slices"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/records"
)

// errTaken is a candidate that stopped being a ready warm VM between the
// listing and its transaction.
var errTaken = errors.New("warm VM no longer ready")

// readyWarm reports whether v is a ready warm VM of group with template:
// tagged warm, running, with an address.
func readyWarm(v *api.VM, group, template string) bool {
	return v.Tags[api.TagWarm] != "" && v.Tags[api.TagGroup] == group && v.Tags[api.TagTemplate] == template &&
		v.Status == api.StatusRunning && v.IPAddress != ""
}

// TakeWarm hands out the oldest ready warm VM of group (running, with an
// address, made from the group's current template). In one transaction of
// its record the VM leaves the group (its goldvm.group, goldvm.template and
// goldvm.warm tags go), gets tags (already validated, the request's own)
// and callbackURL, and records from; then its callback is delivered in the
// background. It returns nil and no error when no warm VM is ready.
//
// Hand-out is atomic: candidates are taken under one lock and each is
// checked again inside its transaction, so two creates never get one VM,
// and a VM that stopped or was deleted meanwhile is skipped.
func (m *Manager) TakeWarm(group, template string, tags map[string]string, callbackURL string, from api.HandOut) (*api.VM, error) {
	m.warmMu.Lock()
	defer m.warmMu.Unlock()
	recs, err := m.list()
	if err != nil {
		return nil, err
	}
	var cands []*records.Record
	for _, r := range recs {
		if readyWarm(&r.VM, group, template) {
			cands = append(cands, r)
		}
	}
	slices.SortFunc(cands, func(a, b *records.Record) int {
		return cmp.Or(a.CreatedAt.Compare(b.CreatedAt), cmp.Compare(a.ID, b.ID))
	})
	for _, c := range cands {
		r, err := m.handOut(c.ID, group, template, tags, callbackURL, from)
		if errors.Is(err, errTaken) {
			continue
		}
		if err != nil {
			return nil, err
		}
		m.log.Info("warm vm handed out", "vm", r.ID, "group", group)
		if r.CallbackURL != "" {
			m.spawn(m.creates, r.ID, func(ctx context.Context) { m.deliverCallback(ctx, r.ID) })
		}
		v := m.view(r)
		return &v, nil
	}
	return nil, nil
}

// handOut reassigns one warm VM in one transaction of its record.
func (m *Manager) handOut(id, group, template string, tags map[string]string, callbackURL string, from api.HandOut) (*records.Record, error) {
	unlock := m.lockID(id)
	defer unlock()
	return m.update(id, func(r *records.Record) error {
		if !readyWarm(&r.VM, group, template) {
			return errTaken
		}
		r.Tags = nil
		if len(tags) > 0 {
			r.Tags = tags
		}
		r.CallbackURL, r.Callback = callbackURL, nil
		if callbackURL != "" {
			r.Callback = &api.CallbackDelivery{State: api.CallbackPending}
		}
		f := from
		r.FromGroup = &f
		return nil
	})
}
