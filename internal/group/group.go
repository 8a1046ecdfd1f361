// Package group keeps groups of VMs at their size: a group is a desired
// state (size, a POST /vms template, surge and unavailability bounds) kept
// in the store, and a reconcile loop that compares it with the VMs tagged
// goldvm.group=NAME and creates or destroys VMs through the VM manager.
//
// Restarts: the loop keeps no state that matters in memory. A VM is a
// member of its group from the transaction that stores its record (the
// tags are in it), before any of the VM exists, and the VM manager resumes
// or cleans up that record after a crash; so a daemon killed mid-reconcile
// finds every creation it had begun and starts no second one for it.
//
// A group may also keep warm VMs (GroupSpec.Warm), handed out to creates
// with from_group: see warm.go.
package group

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/events"
	"github.com/goldvm/goldvm/internal/records"
	"github.com/goldvm/goldvm/internal/vm"
)

// Config wires a Manager.
type Config struct {
	Store *records.DB
	VMs   *vm.Manager
	// MaxSize is the largest size a group may ask for (default 100).
	MaxSize int
	// MaxWarm is the largest warm pool a group may ask for (default
	// DefaultMaxWarm).
	MaxWarm int
	// Interval is the pause between two reconcile passes (default 1s);
	// a change through the API starts one at once.
	Interval time.Duration
	// RetryBase is the pause after the first failed creation; it doubles
	// with each failure in a row, up to RetryMax (defaults 2s and 5m).
	RetryBase, RetryMax time.Duration
	// DegradedAfter is how many failures in a row mark a group degraded
	// (default 3).
	DegradedAfter int
	// Events receives the "group" events (nil: none).
	Events *events.Bus
	Logger *slog.Logger
}

// Manager owns the groups and their reconcile loop.
type Manager struct {
	cfg  Config
	log  *slog.Logger
	kick chan struct{}

	mu sync.Mutex
	// lastPass is when each group was last reconciled, and the error of
	// that pass (not a creation failure) if any.
	lastPass map[string]time.Time
	passErr  map[string]string
	// deleting holds the VMs whose Delete runs in the background.
	deleting map[string]bool
	wg       sync.WaitGroup
}

// New returns a Manager; Run starts its loop.
func New(cfg Config) *Manager {
	if cfg.MaxSize == 0 {
		cfg.MaxSize = 100
	}
	if cfg.MaxWarm == 0 {
		cfg.MaxWarm = DefaultMaxWarm
	}
	if cfg.Interval == 0 {
		cfg.Interval = time.Second
	}
	if cfg.RetryBase == 0 {
		cfg.RetryBase = 2 * time.Second
	}
	if cfg.RetryMax == 0 {
		cfg.RetryMax = 5 * time.Minute
	}
	if cfg.DegradedAfter == 0 {
		cfg.DegradedAfter = 3
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Manager{cfg: cfg, log: cfg.Logger, kick: make(chan struct{}, 1),
		lastPass: map[string]time.Time{}, passErr: map[string]string{}, deleting: map[string]bool{}}
}

func invalid(format string, args ...any) error {
	return errdefs.Newf(errdefs.ErrInvalid, api.CodeInvalidRequest, format, args...)
}

// ValidName reports whether name is a group name: 1 to 63 of [a-z0-9-].
func ValidName(name string) bool {
	if len(name) < 1 || len(name) > 63 {
		return false
	}
	for _, c := range []byte(name) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

func checkName(name string) error {
	if !ValidName(name) {
		return invalid("name %q must be 1 to 63 characters of a-z, 0-9 and '-'", truncate(name, 64))
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// templateHash is the hash of a validated template: equal for templates
// that create equal VMs (defaults applied, checksum case folded).
func templateHash(v vm.Validated) string {
	data, _ := json.Marshal(v)
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:6])
}

// validate checks a group spec field by field and fills in defaults.
func (g *Manager) validate(spec api.GroupSpec) (api.GroupSpec, string, error) {
	if spec.Size < 0 || spec.Size > g.cfg.MaxSize {
		return spec, "", invalid("size %d must be from 0 to %d", spec.Size, g.cfg.MaxSize)
	}
	if spec.Warm < 0 || spec.Warm > g.cfg.MaxWarm {
		return spec, "", invalid("warm %d must be from 0 to %d", spec.Warm, g.cfg.MaxWarm)
	}
	if spec.MaxSurge < 0 || spec.MaxSurge > g.cfg.MaxSize {
		return spec, "", invalid("max_surge %d must be from 1 to %d (0: the default, 1)", spec.MaxSurge, g.cfg.MaxSize)
	}
	if spec.MaxSurge == 0 {
		spec.MaxSurge = 1
	}
	if spec.MaxUnavailable < 0 || spec.MaxUnavailable > max(spec.Size, 0) {
		return spec, "", invalid("max_unavailable %d must be from 0 to size (%d)", spec.MaxUnavailable, spec.Size)
	}
	v, err := g.cfg.VMs.ValidateRequest(spec.Template)
	if err != nil {
		// The same error, its message naming the field in the group.
		var e *errdefs.Error
		if errors.As(err, &e) {
			named := *e
			named.Message = "template." + e.Message
			return spec, "", &named
		}
		return spec, "", err
	}
	return spec, templateHash(v), nil
}

// Put creates or changes the group name. A changed template rolls the
// group's VMs over to it; the failure count starts again.
func (g *Manager) Put(ctx context.Context, name string, spec api.GroupSpec) (*api.Group, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	spec, hash, err := g.validate(spec)
	if err != nil {
		return nil, err
	}
	action := api.ActionUpdated
	_, err = g.cfg.Store.PutGroup(name, func(old *records.Group) (*records.Group, error) {
		if old == nil {
			action = api.ActionCreated
			return &records.Group{Spec: spec, TemplateHash: hash, CreatedAt: time.Now().UTC()}, nil
		}
		if old.Deleting {
			return nil, errdefs.Newf(errdefs.ErrConflict, api.CodeVMInvalidState, "group %q is being deleted", name)
		}
		if old.TemplateHash != hash {
			old.Failures, old.NextRetry, old.LastError = 0, time.Time{}, nil
		}
		old.Spec, old.TemplateHash = spec, hash
		return old, nil
	})
	if err != nil {
		return nil, err
	}
	g.log.Info("group set", "group", name, "size", spec.Size, "template", hash)
	view, err := g.Get(ctx, name)
	if err == nil {
		g.publish(ctx, api.Event{Action: action, GroupName: name}, view)
	}
	g.Kick()
	return view, err
}

// Kick starts a reconcile pass soon.
func (g *Manager) Kick() {
	select {
	case g.kick <- struct{}{}:
	default:
	}
}

// members returns the VMs of a group, from one listing of all VMs.
func members(all []api.VM, name string) []api.VM {
	var out []api.VM
	for _, v := range all {
		if v.Tags[api.TagGroup] == name {
			out = append(out, v)
		}
	}
	return out
}

// view makes the API's view of a group.
func (g *Manager) view(sg *records.Group, vms []api.VM) api.Group {
	out := api.Group{Name: sg.Name, Spec: sg.Spec, TemplateHash: sg.TemplateHash, State: api.GroupOK,
		VMs: []api.GroupVM{}, Failures: sg.Failures, NextRetry: sg.NextRetry, Error: sg.LastError,
		CreatedAt: sg.CreatedAt, UpdatedAt: sg.UpdatedAt}
	if sg.Failures >= g.cfg.DegradedAfter {
		out.State = api.GroupDegraded
	}
	if sg.Deleting {
		out.State = api.GroupDeleting
	}
	for _, v := range members(vms, sg.Name) {
		tpl := v.Tags[api.TagTemplate]
		warm := v.Tags[api.TagWarm] != ""
		out.VMs = append(out.VMs, api.GroupVM{ID: v.ID, Status: v.Status, Template: tpl, Warm: warm, Current: tpl == sg.TemplateHash})
		switch {
		case warm && readyWarm(v, sg):
			out.WarmReady++
		case !warm && v.Status == api.StatusRunning:
			out.Running++
		}
	}
	g.mu.Lock()
	out.LastReconcile = g.lastPass[sg.Name]
	if e := g.passErr[sg.Name]; e != "" && out.Error == nil {
		out.Error = &api.Error{Code: api.CodeInternalError, Message: e}
	}
	g.mu.Unlock()
	return out
}

// Get returns a group with its VMs.
func (g *Manager) Get(ctx context.Context, name string) (*api.Group, error) {
	if !ValidName(name) {
		return nil, errdefs.Newf(errdefs.ErrNotFound, api.CodeGroupNotFound, "no group named %q", truncate(name, 64))
	}
	sg, err := g.cfg.Store.GetGroup(name)
	if err != nil {
		return nil, err
	}
	vms, err := g.cfg.VMs.List(ctx)
	if err != nil {
		return nil, err
	}
	v := g.view(sg, vms)
	return &v, nil
}

// List returns every group, by name.
func (g *Manager) List(ctx context.Context) ([]api.Group, error) {
	sgs, err := g.cfg.Store.ListGroups()
	if err != nil {
		return nil, err
	}
	vms, err := g.cfg.VMs.List(ctx)
	if err != nil {
		return nil, err
	}
	out := []api.Group{}
	for _, sg := range sgs {
		out = append(out, g.view(sg, vms))
	}
	return out, nil
}

// Delete destroys the group's VMs, then the group; with keepVMs the VMs
// stay, without the group's tags. The group is marked first, so a daemon
// stopped half-way finishes the job when it starts again.
func (g *Manager) Delete(ctx context.Context, name string, keepVMs bool) error {
	if !ValidName(name) {
		return errdefs.Newf(errdefs.ErrNotFound, api.CodeGroupNotFound, "no group named %q", truncate(name, 64))
	}
	sg, err := g.cfg.Store.UpdateGroup(name, func(sg *records.Group) error {
		sg.Deleting, sg.KeepVMs = true, sg.KeepVMs || keepVMs
		return nil
	})
	if err != nil {
		return err
	}
	return g.finishDelete(ctx, sg)
}

// finishDelete destroys or detaches a deleting group's VMs and removes it.
func (g *Manager) finishDelete(ctx context.Context, sg *records.Group) error {
	vms, err := g.cfg.VMs.List(ctx)
	if err != nil {
		return err
	}
	before := g.view(sg, vms)
	var errs []error
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, v := range members(vms, sg.Name) {
		if sg.KeepVMs {
			if err := g.cfg.VMs.RemoveSystemTags(v.ID, api.TagGroup, api.TagTemplate, api.TagWarm); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
				errs = append(errs, err)
			}
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := g.deleteVM(ctx, v.ID, sg.Name); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("delete group %s: %w", sg.Name, err)
	}
	if err := g.cfg.Store.DeleteGroup(sg.Name); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
		return err
	}
	g.mu.Lock()
	delete(g.lastPass, sg.Name)
	delete(g.passErr, sg.Name)
	g.mu.Unlock()
	g.log.Info("group deleted", "group", sg.Name, "kept_vms", sg.KeepVMs)
	g.publish(ctx, api.Event{Action: api.ActionDeleted, GroupName: sg.Name}, &before)
	return nil
}

// claim marks a VM as being deleted by this manager; false if it is already.
func (g *Manager) claim(id string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.deleting[id] {
		return false
	}
	g.deleting[id] = true
	return true
}

// deleteClaimed deletes a claimed VM of group and releases it. A VM that
// left the group meanwhile (a warm VM handed out) is left alone.
func (g *Manager) deleteClaimed(ctx context.Context, id, group string) error {
	defer func() {
		g.mu.Lock()
		delete(g.deleting, id)
		g.mu.Unlock()
	}()
	err := g.cfg.VMs.DeleteIf(ctx, id, func(v *api.VM) bool { return v.Tags[api.TagGroup] == group })
	if errors.Is(err, errdefs.ErrNotFound) || errors.Is(err, vm.ErrSkipped) {
		return nil
	}
	return err
}

// deleteVM deletes a VM of group unless a delete of it runs already.
func (g *Manager) deleteVM(ctx context.Context, id, group string) error {
	if !g.claim(id) {
		return nil
	}
	return g.deleteClaimed(ctx, id, group)
}

// Run reconciles every group each Interval, and at once after a Kick,
// until ctx ends; it waits for the deletes it started.
func (g *Manager) Run(ctx context.Context) {
	defer g.wg.Wait()
	t := time.NewTicker(g.cfg.Interval)
	defer t.Stop()
	for {
		g.reconcileAll(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-g.kick:
		}
	}
}

// reconcileAll runs one pass over every group.
func (g *Manager) reconcileAll(ctx context.Context) {
	sgs, err := g.cfg.Store.ListGroups()
	if err != nil {
		g.log.Error("groups: list", "err", err)
		return
	}
	if len(sgs) == 0 {
		return
	}
	vms, err := g.cfg.VMs.List(ctx)
	if err != nil {
		g.log.Error("groups: list VMs", "err", err)
		return
	}
	for _, sg := range sgs {
		if ctx.Err() != nil {
			return
		}
		if sg.Deleting {
			g.wg.Add(1)
			go func() {
				defer g.wg.Done()
				if err := g.finishDelete(ctx, sg); err != nil {
					g.log.Error("groups: finish delete", "group", sg.Name, "err", err)
				}
			}()
			continue
		}
		err := g.reconcile(ctx, sg, members(vms, sg.Name))
		g.mu.Lock()
		g.lastPass[sg.Name] = time.Now().UTC()
		g.passErr[sg.Name] = ""
		if err != nil {
			g.passErr[sg.Name] = err.Error()
		}
		g.mu.Unlock()
		if err != nil {
			g.log.Error("groups: reconcile", "group", sg.Name, "err", err)
		}
	}
}

// backoff is the pause before the next creation after n failures in a row.
func (g *Manager) backoff(n int) time.Duration {
	d := g.cfg.RetryBase
	for i := 1; i < n && d < g.cfg.RetryMax; i++ {
		d *= 2
	}
	return min(d, g.cfg.RetryMax)
}

// reconcile runs one pass over one group.
func (g *Manager) reconcile(ctx context.Context, sg *records.Group, vms []api.VM) error {
	now := time.Now().UTC()
	// The group's own VMs and its warm pool are planned apart, the pool
	// with what is left of max_surge.
	var ms, warm []*member
	g.mu.Lock()
	for _, v := range vms {
		if v.Status == api.StatusDeleting || g.deleting[v.ID] {
			continue
		}
		m := &member{ID: v.ID, Status: v.Status, Template: v.Tags[api.TagTemplate], CreatedAt: v.CreatedAt, Error: v.Error}
		if v.Tags[api.TagWarm] != "" {
			warm = append(warm, m)
		} else {
			ms = append(ms, m)
		}
	}
	g.mu.Unlock()
	w := want{Size: sg.Spec.Size, MaxSurge: sg.Spec.MaxSurge, MaxUnavailable: sg.Spec.MaxUnavailable,
		Template: sg.TemplateHash, Hold: sg.Failures > 0 && now.Before(sg.NextRetry)}
	p := planGroup(w, ms)
	ww := w
	ww.Size, ww.MaxUnavailable = sg.Spec.Warm, sg.Spec.Warm // an old warm VM is of no use: no floor
	ww.MaxSurge = max(w.MaxSurge-p.InFlight-p.Create, 0)
	pw := planGroup(ww, warm)
	p.Delete = append(p.Delete, pw.Delete...)
	p.Failed = append(p.Failed, pw.Failed...)
	p.Running = p.Running || pw.Running
	var did api.Reconcile
	if len(p.Failed) > 0 || (p.Running && sg.Failures > 0) {
		// Failures are counted before their VMs go, so that a restart in
		// between counts them again rather than never.
		var err error
		var before int
		sg, err = g.cfg.Store.UpdateGroup(sg.Name, func(cur *records.Group) error {
			before = cur.Failures
			if cur.TemplateHash != sg.TemplateHash {
				return nil // changed meanwhile: these failures are of the old one
			}
			if len(p.Failed) == 0 {
				cur.Failures, cur.NextRetry, cur.LastError = 0, time.Time{}, nil
				return nil
			}
			cur.Failures += len(p.Failed)
			cur.NextRetry = now.Add(g.backoff(cur.Failures))
			last := p.Failed[len(p.Failed)-1]
			cur.LastError = last.Error
			if cur.LastError == nil {
				cur.LastError = &api.Error{Code: api.CodeInternalError, Message: "a VM of the group failed"}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("record failures: %w", err)
		}
		g.publishFailures(ctx, before, sg)
		for _, f := range p.Failed {
			did.Failed = append(did.Failed, f.ID)
		}
		if len(p.Failed) > 0 {
			g.log.Warn("group: creation failed", "group", sg.Name, "failures", sg.Failures, "next_retry", sg.NextRetry, "error", sg.LastError)
			p.Create, pw.Create = 0, 0
		}
	}
	for _, id := range p.Delete {
		// Claimed here, not in the goroutine: the next pass must not
		// count it.
		if !g.claim(id) {
			continue
		}
		did.Deleted = append(did.Deleted, id)
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			if err := g.deleteClaimed(context.WithoutCancel(ctx), id, sg.Name); err != nil {
				g.log.Error("group: delete VM", "group", sg.Name, "vm", id, "err", err)
			}
		}()
	}
	sys := map[string]string{api.TagGroup: sg.Name, api.TagTemplate: sg.TemplateHash}
	warmSys := maps.Clone(sys)
	warmSys[api.TagWarm] = "true"
	for i := range p.Create + pw.Create {
		// A warm VM is nobody's yet: its callback is the hand-out's.
		opts := vm.CreateOptions{SystemTags: maps.Clone(sys)}
		if i >= p.Create {
			opts = vm.CreateOptions{SystemTags: maps.Clone(warmSys), NoCallback: true}
		}
		v, err := g.cfg.VMs.CreateWith(ctx, sg.Spec.Template, opts)
		if err != nil {
			code, msg := errdefs.CodeOf(err)
			var before int
			after, _ := g.cfg.Store.UpdateGroup(sg.Name, func(cur *records.Group) error {
				before = cur.Failures
				cur.Failures++
				cur.NextRetry = now.Add(g.backoff(cur.Failures))
				cur.LastError = &api.Error{Code: code, Message: msg}
				return nil
			})
			g.publishReconciled(ctx, sg.Name, did)
			g.publishFailures(ctx, before, after)
			return fmt.Errorf("create VM: %w", err)
		}
		did.Created = append(did.Created, v.ID)
		g.log.Info("group: VM created", "group", sg.Name, "vm", v.ID, "template", sg.TemplateHash, "warm", i >= p.Create)
	}
	g.publishReconciled(ctx, sg.Name, did)
	return nil
}
