package vm

import (
	"context"
	"errors"
	"fmt"
	"github.com/goldvm/goldvm/internal/hypervisor"
	"maps"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/records"
)

// ValidateTags checks the tags of a request: at most api.MaxTags, keys
// that api.ValidTagKey accepts and that do not start with
// api.TagPrefixReserved, values of valid UTF-8 of at most
// api.MaxTagValueBytes bytes. It returns a copy (nil for none).
func ValidateTags(tags map[string]string) (map[string]string, error) {
	if len(tags) == 0 {
		return nil, nil
	}
	if len(tags) > api.MaxTags {
		return nil, invalid("tags: %d tags, at most %d are allowed", len(tags), api.MaxTags)
	}
	for _, k := range slices.Sorted(maps.Keys(tags)) {
		if err := checkTag(k, tags[k]); err != nil {
			return nil, err
		}
	}
	return maps.Clone(tags), nil
}

// checkTag checks one tag a request sets.
func checkTag(k, v string) error {
	if !api.ValidTagKey(k) {
		return invalid("tags: key %q must be 1 to %d characters of a-z, 0-9, '.', '_', '/', '-'", truncate(k, 64), api.MaxTagKeyLen)
	}
	if strings.HasPrefix(k, api.TagPrefixReserved) {
		return invalid("tags: key %q: keys starting with %q are goldvm's own", k, api.TagPrefixReserved)
	}
	if len(v) > api.MaxTagValueBytes {
		return invalid("tags: value of %q is %d bytes, at most %d are allowed", k, len(v), api.MaxTagValueBytes)
	}
	if !utf8.ValidString(v) {
		return invalid("tags: value of %q is not valid UTF-8", k)
	}
	return nil
}

// withSystemTags adds the daemon's own tags to validated request tags.
func withSystemTags(tags, system map[string]string) (map[string]string, error) {
	if len(system) == 0 {
		return tags, nil
	}
	out := maps.Clone(tags)
	if out == nil {
		out = map[string]string{}
	}
	for k, v := range system {
		if !strings.HasPrefix(k, api.TagPrefixReserved) || !api.ValidTagKey(k) {
			return nil, fmt.Errorf("system tag %q is not a goldvm. key", k)
		}
		out[k] = v
	}
	if len(out) > api.MaxTags {
		return nil, invalid("tags: %d tags with goldvm's own, at most %d are allowed", len(out), api.MaxTags)
	}
	return out, nil
}

// SetTags applies a PATCH of a VM's tags: each key given is set to its
// value, or removed where the value is nil. The daemon's own tags cannot be
// changed. Nothing changes when any tag is invalid.
func (m *Manager) SetTags(ctx context.Context, id string, patch map[string]*string) (*api.VM, error) {
	if !records.ValidID(id) {
		return nil, errdefs.Newf(errdefs.ErrNotFound, api.CodeVMNotFound, "no VM with id %q", id)
	}
	for _, k := range slices.Sorted(maps.Keys(patch)) {
		v := ""
		if patch[k] != nil {
			v = *patch[k]
		}
		if err := checkTag(k, v); err != nil {
			return nil, err
		}
	}
	unlock := m.lockID(id)
	defer unlock()
	r, err := m.update(id, func(r *records.Record) error {
		if r.Status == api.StatusDeleting {
			return errdefs.Newf(errdefs.ErrConflict, api.CodeVMInvalidState, "VM %s is being deleted", id)
		}
		tags := maps.Clone(r.Tags)
		if tags == nil {
			tags = map[string]string{}
		}
		for k, v := range patch {
			if v == nil {
				delete(tags, k)
			} else {
				tags[k] = *v
			}
		}
		if len(tags) > api.MaxTags {
			return invalid("tags: the VM would have %d tags, at most %d are allowed", len(tags), api.MaxTags)
		}
		if len(tags) == 0 {
			tags = nil
		}
		r.Tags = tags
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &r.VM, nil
}

// errNotTagged is returned by ParseTagFilter for a filter without "=".
var errNotTagged = errors.New(`a tag filter is key=value`)

// ParseTagFilter reads "key=value" filters (GET /vms?tag=…, goldvm ls
// --tag) into a map; a key given twice with different values matches
// nothing, so it is refused.
func ParseTagFilter(filters []string) (map[string]string, error) {
	if len(filters) == 0 {
		return nil, nil
	}
	out := map[string]string{}
	for _, f := range filters {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			return nil, fmt.Errorf("tag %q: %w", truncate(f, 64), errNotTagged)
		}
		if !api.ValidTagKey(k) {
			return nil, fmt.Errorf("tag %q: key must be 1 to %d characters of a-z, 0-9, '.', '_', '/', '-'", truncate(f, 64), api.MaxTagKeyLen)
		}
		if prev, ok := out[k]; ok && prev != v {
			return nil, fmt.Errorf("tag %q: key %q is given twice with different values", truncate(f, 64), k)
		}
		out[k] = v
	}
	return out, nil
}

// ValidateRequest checks a create request as Create would, without
// creating anything (a group's template is checked this way).
func (m *Manager) ValidateRequest(req api.CreateVMRequest) (Validated, error) {
	v, err := Validate(req, m.cfg.Limits)
	if err != nil {
		return v, err
	}
	if nc, ok := m.cfg.Driver.(hypervisor.NetworkChecker); ok {
		if err := nc.SupportsNetwork(v.NetworkType); err != nil {
			return v, err
		}
	}
	if v.Placement != nil {
		pl, ok := m.cfg.Driver.(hypervisor.Placer)
		if !ok {
			return v, errdefs.Newf(errdefs.ErrInvalid, api.CodePlacementUnsupported,
				"placement: the %s backend runs VMs on this host only; placement is for the lxd backend on an LXD cluster", m.cfg.Driver.Name())
		}
		if err := pl.CheckPlacement(*v.Placement); err != nil {
			return v, err
		}
	}
	return v, nil
}

// RemoveSystemTags removes the daemon's own tags named in keys from a VM
// (a group detaching its VMs).
func (m *Manager) RemoveSystemTags(id string, keys ...string) error {
	unlock := m.lockID(id)
	defer unlock()
	_, err := m.update(id, func(r *records.Record) error {
		for _, k := range keys {
			delete(r.Tags, k)
		}
		if len(r.Tags) == 0 {
			r.Tags = nil
		}
		return nil
	})
	return err
}

// StoreForTest stores a record as it is, for tests of the layers above
// the manager that need VMs in given states without a hypervisor.
func (m *Manager) StoreForTest(r *records.Record) error { return m.cfg.Store.Create(r) }
