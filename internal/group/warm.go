package group

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"maps"
	"reflect"
	"strings"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/records"
	"github.com/goldvm/goldvm/internal/vm"
)

// Warm VMs. A group with "warm": K keeps K VMs beside its size, booted
// from its template and tagged goldvm.warm=true (with the group's tags), so
// they persist as records like the group's other VMs. A create with
// from_group (or whose template equals a warm group's) takes one at once:
// in one transaction of its record the VM loses the group's tags and gets
// the create's tags and callback (vm.Manager.TakeWarm). A VM handed out
// leaves the group: it is the caller's, the group's size and its delete
// no longer count it, and the group boots a warm replacement.

// DefaultMaxWarm is the default largest warm pool of a group.
const DefaultMaxWarm = 20

// readyWarm reports whether a warm VM of sg can be handed out: running,
// with an address, of the group's current template.
func readyWarm(v api.VM, sg *records.Group) bool {
	return v.Status == api.StatusRunning && v.IPAddress != "" && v.Tags[api.TagTemplate] == sg.TemplateHash
}

// handOutKey is the hash of what a VM is, leaving out what a hand-out
// gives it (tags, callback_url) and what only matters while it boots
// (tools_init_timeout): two validated requests with one key are served by
// the same warm VM.
func handOutKey(v vm.Validated) string {
	v.Tags, v.CallbackURL, v.ToolsInitTimeout = nil, "", 0
	data, _ := json.Marshal(v)
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// CreateVM serves POST /vms: a create with from_group takes a warm VM of
// that group, or is created cold from its template when none is ready
// (VM.FromGroup says which); a create whose template equals a warm
// group's takes one of its warm VMs if one is ready; any other create is
// the VM manager's.
func (g *Manager) CreateVM(ctx context.Context, req api.CreateVMRequest) (*api.VM, error) {
	if req.FromGroup != "" {
		return g.createFrom(ctx, req)
	}
	v, err := g.cfg.VMs.ValidateRequest(req)
	if err != nil {
		return nil, err
	}
	got, err := g.matchWarm(ctx, v)
	if err != nil || got != nil {
		return got, err
	}
	return g.cfg.VMs.Create(ctx, req)
}

// matchWarm hands out a warm VM of the first warm group (by name) whose
// template has v's hand-out key; nil when there is none.
func (g *Manager) matchWarm(ctx context.Context, v vm.Validated) (*api.VM, error) {
	sgs, err := g.cfg.Store.ListGroups()
	if err != nil {
		return nil, err
	}
	key := handOutKey(v)
	for _, sg := range sgs {
		if sg.Deleting || sg.Spec.Warm == 0 {
			continue
		}
		tv, err := g.cfg.VMs.ValidateRequest(sg.Spec.Template)
		if err != nil || handOutKey(tv) != key {
			continue
		}
		got, err := g.cfg.VMs.TakeWarm(sg.Name, sg.TemplateHash, v.Tags, v.CallbackURL, api.HandOut{Group: sg.Name, Warm: true})
		if err == nil && got != nil {
			g.publishHandedOut(ctx, sg.Name, got)
		}
		if err != nil || got != nil {
			g.Kick()
			return got, err
		}
	}
	return nil, nil
}

// createFrom serves a create with from_group.
func (g *Manager) createFrom(ctx context.Context, req api.CreateVMRequest) (*api.VM, error) {
	name := req.FromGroup
	if !ValidName(name) {
		return nil, errdefs.Newf(errdefs.ErrNotFound, api.CodeGroupNotFound, "from_group: no group named %q", truncate(name, 64))
	}
	sg, err := g.cfg.Store.GetGroup(name)
	if err != nil {
		if errors.Is(err, errdefs.ErrNotFound) {
			return nil, errdefs.Newf(errdefs.ErrNotFound, api.CodeGroupNotFound, "from_group: no group named %q", name)
		}
		return nil, err
	}
	if sg.Deleting {
		return nil, errdefs.Newf(errdefs.ErrConflict, api.CodeVMInvalidState, "from_group: group %q is being deleted", name)
	}
	if extra := otherFields(req); len(extra) > 0 {
		return nil, invalid("from_group: a create from a group takes only tags and callback_url (the group's template gives the rest); remove %s",
			strings.Join(extra, ", "))
	}
	eff := sg.Spec.Template
	if len(req.Tags) > 0 {
		eff.Tags = maps.Clone(eff.Tags)
		if eff.Tags == nil {
			eff.Tags = map[string]string{}
		}
		maps.Copy(eff.Tags, req.Tags)
	}
	if req.CallbackURL != "" {
		eff.CallbackURL = req.CallbackURL
	}
	v, err := g.cfg.VMs.ValidateRequest(eff)
	if err != nil {
		return nil, err
	}
	got, err := g.cfg.VMs.TakeWarm(name, sg.TemplateHash, v.Tags, v.CallbackURL, api.HandOut{Group: name, Warm: true})
	if err == nil && got != nil {
		g.publishHandedOut(ctx, name, got)
	}
	g.Kick()
	if err != nil || got != nil {
		return got, err
	}
	reason := "no warm VM of the group was ready"
	if sg.Spec.Warm == 0 {
		reason = "the group keeps no warm VMs (warm is 0)"
	}
	g.log.Info("from_group: no warm VM, creating cold", "group", name, "reason", reason)
	return g.cfg.VMs.CreateWith(ctx, eff, vm.CreateOptions{FromGroup: &api.HandOut{Group: name, Reason: reason}})
}

// otherFields lists the JSON names of the fields of req, besides
// from_group, tags and callback_url, that are set.
func otherFields(req api.CreateVMRequest) []string {
	req.FromGroup, req.Tags, req.CallbackURL = "", nil, ""
	var out []string
	rv, rt := reflect.ValueOf(req), reflect.TypeOf(req)
	for i := range rt.NumField() {
		if !rv.Field(i).IsZero() {
			name, _, _ := strings.Cut(rt.Field(i).Tag.Get("json"), ",")
			out = append(out, name)
		}
	}
	return out
}
