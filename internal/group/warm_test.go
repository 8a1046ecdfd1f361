package group

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/callback"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/events"
	"github.com/goldvm/goldvm/internal/hypervisor"
	"github.com/goldvm/goldvm/internal/hypervisor/fakedriver"
	"github.com/goldvm/goldvm/internal/image"
	"github.com/goldvm/goldvm/internal/records"
	"github.com/goldvm/goldvm/internal/vm"
)

// warmEnv is a group manager over a VM manager on the fake driver, with a
// real record database, a real image store fed by a loopback HTTP server
// and a loopback callback receiver; both managers publish to one event bus.
type warmEnv struct {
	t      *testing.T
	dir    string
	host   *fakedriver.Host
	db     *records.DB
	images *image.Store
	img    api.Image
	vms    *vm.Manager
	g      *Manager
	bus    *events.Bus
	stop   func()
	// broken makes the image server answer 404: creations fail.
	broken atomic.Bool

	cbMu      sync.Mutex
	callbacks map[string][]api.VM // by VM id
	cbURL     string
}

func newWarmEnv(t *testing.T) *warmEnv {
	t.Helper()
	e := &warmEnv{t: t, dir: t.TempDir(), host: fakedriver.NewHost(), callbacks: map[string][]api.VM{}, bus: events.New(events.Options{})}
	var err error
	if e.db, err = records.Open(filepath.Join(e.dir, "goldvm.db")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.db.Close() })
	if e.images, err = image.NewStore(filepath.Join(e.dir, "images"), image.Options{Logger: slog.New(slog.DiscardHandler)}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.images.Close() })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	disk := bytes.Repeat([]byte("warm gold block "), 4096)
	tw.WriteHeader(&tar.Header{Name: "disk.img", Mode: 0o644, Size: int64(len(disk)), Typeflag: tar.TypeReg})
	tw.Write(disk)
	tw.Close()
	body := buf.Bytes()
	imgs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if e.broken.Load() {
			http.NotFound(w, r)
			return
		}
		w.Write(body)
	}))
	t.Cleanup(imgs.Close)
	sum := sha256.Sum256(body)
	e.img = api.Image{URL: imgs.URL + "/gold.tar", Checksum: hex.EncodeToString(sum[:]), ChecksumType: "sha256"}
	cb := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var v api.VM
		data, _ := io.ReadAll(r.Body)
		if json.Unmarshal(data, &v) == nil {
			e.cbMu.Lock()
			e.callbacks[v.ID] = append(e.callbacks[v.ID], v)
			e.cbMu.Unlock()
		}
	}))
	t.Cleanup(cb.Close)
	e.cbURL = cb.URL + "/done"
	e.start()
	return e
}

// start makes a VM manager and a group manager (a daemon start), recovers
// and runs the reconcile loop.
func (e *warmEnv) start() {
	log := slog.New(slog.DiscardHandler)
	e.vms = vm.New(vm.Config{VMDir: filepath.Join(e.dir, "vms"), Store: e.db, Images: e.images, Driver: e.host.New(),
		Callbacks: callback.New(callback.Options{Backoff: -1}), Logger: log, Events: e.bus})
	if err := e.vms.Recover(context.Background()); err != nil {
		e.t.Fatal(err)
	}
	e.g = New(Config{Store: e.db, VMs: e.vms, MaxSize: 10, MaxWarm: 5, Interval: 20 * time.Millisecond,
		RetryBase: 5 * time.Millisecond, RetryMax: 20 * time.Millisecond, Events: e.bus, Logger: log})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); e.g.Run(ctx) }()
	stopped := false
	e.stop = func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
			e.vms.Close()
		}
	}
	e.t.Cleanup(func() { e.stop() })
}

func (e *warmEnv) template() api.CreateVMRequest {
	return api.CreateVMRequest{CPUs: 1, Memory: 64, Image: e.img, Tags: map[string]string{"env": "test"}}
}

// waitGroup polls the group until ok accepts it.
func (e *warmEnv) waitGroup(name, what string, ok func(*api.Group) bool) *api.Group {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		g, err := e.g.Get(context.Background(), name)
		if err == nil && ok(g) {
			return g
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("group %s never %s: last %+v, %v", name, what, g, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ready accepts a group with size running VMs and warm ready warm ones,
// and nothing else.
func ready(size, warm int) func(*api.Group) bool {
	return func(g *api.Group) bool { return g.Running == size && g.WarmReady == warm && len(g.VMs) == size+warm }
}

func warmIDs(g *api.Group) []string {
	var ids []string
	for _, v := range g.VMs {
		if v.Warm {
			ids = append(ids, v.ID)
		}
	}
	return ids
}

func (e *warmEnv) put(name string, spec api.GroupSpec) {
	e.t.Helper()
	if _, err := e.g.Put(context.Background(), name, spec); err != nil {
		e.t.Fatalf("Put %s: %v", name, err)
	}
}

// waitCallback waits for the callback of VM id.
func (e *warmEnv) waitCallback(id string) api.VM {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		e.cbMu.Lock()
		got := e.callbacks[id]
		e.cbMu.Unlock()
		if len(got) > 0 {
			return got[0]
		}
		time.Sleep(10 * time.Millisecond)
	}
	e.t.Fatalf("no callback for %s", id)
	return api.VM{}
}

// TestWarmHandOut: a group with warm VMs hands one out at once to a create
// with from_group (running, the request's tags and callback, out of the
// group), boots a replacement, and hands one out to a create whose
// template equals the group's; another template is created cold.
func TestWarmHandOut(t *testing.T) {
	e := newWarmEnv(t)
	ctx := context.Background()
	tpl := e.template()
	e.put("pool", api.GroupSpec{Size: 1, Warm: 2, MaxSurge: 3, Template: tpl})
	g := e.waitGroup("pool", "ready", ready(1, 2))
	pool := warmIDs(g)

	v, err := e.g.CreateVM(ctx, api.CreateVMRequest{FromGroup: "pool", Tags: map[string]string{"job": "42"}, CallbackURL: e.cbURL})
	if err != nil {
		t.Fatal(err)
	}
	if v.Status != api.StatusRunning || v.IPAddress == "" || !slices.Contains(pool, v.ID) {
		t.Fatalf("from_group reply: %s %q %s, want a running warm VM of %v", v.Status, v.IPAddress, v.ID, pool)
	}
	if v.FromGroup == nil || *v.FromGroup != (api.HandOut{Group: "pool", Warm: true}) {
		t.Errorf("from_group of the reply = %+v, want pool, warm", v.FromGroup)
	}
	if want := map[string]string{"env": "test", "job": "42"}; !mapsEqual(v.Tags, want) {
		t.Errorf("tags of the handed-out VM = %v, want %v (the group's own gone)", v.Tags, want)
	}
	if v.CallbackURL != e.cbURL {
		t.Errorf("callback_url = %q, want %q", v.CallbackURL, e.cbURL)
	}
	if cb := e.waitCallback(v.ID); cb.Status != api.StatusRunning || cb.Tags["job"] != "42" || cb.IPAddress != v.IPAddress {
		t.Errorf("callback: %+v", cb)
	}
	// The group boots a replacement and does not count the VM handed out.
	g = e.waitGroup("pool", "replenished", func(g *api.Group) bool {
		return ready(1, 2)(g) && !slices.Contains(warmIDs(g), v.ID)
	})
	if got, err := e.vms.Get(ctx, v.ID); err != nil || got.Status != api.StatusRunning {
		t.Errorf("the VM handed out after the group's passes: %+v, %v", got, err)
	}
	// A group delete of a VM handed out meanwhile leaves it alone.
	if err := e.g.deleteVM(ctx, v.ID, "pool"); err != nil {
		t.Errorf("group delete of a VM handed out: %v", err)
	}
	if _, err := e.vms.Get(ctx, v.ID); err != nil {
		t.Errorf("a VM handed out was deleted by its former group: %v", err)
	}

	// A create equal to the template (other tags, a callback) takes one too.
	same := e.template()
	same.Tags = map[string]string{"who": "me"}
	same.CallbackURL = e.cbURL
	v2, err := e.g.CreateVM(ctx, same)
	if err != nil {
		t.Fatal(err)
	}
	if v2.Status != api.StatusRunning || v2.FromGroup == nil || !v2.FromGroup.Warm || !slices.Contains(warmIDs(g), v2.ID) {
		t.Errorf("create equal to the template: %s from %+v, want a warm VM of %v", v2.Status, v2.FromGroup, warmIDs(g))
	}
	if !mapsEqual(v2.Tags, map[string]string{"who": "me"}) {
		t.Errorf("tags = %v, want the request's", v2.Tags)
	}
	e.waitCallback(v2.ID)

	// Another template is created cold, without from_group.
	other := e.template()
	other.Memory = 96
	v3, err := e.g.CreateVM(ctx, other)
	if err != nil {
		t.Fatal(err)
	}
	if v3.Status != api.StatusCreating || v3.FromGroup != nil {
		t.Errorf("create of another template: %s from %+v, want creating, no group", v3.Status, v3.FromGroup)
	}

	// Deleting the group destroys its VMs, not the ones handed out.
	e.waitGroup("pool", "replenished", ready(1, 2))
	if err := e.g.Delete(ctx, "pool", false); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{v.ID, v2.ID} {
		if _, err := e.vms.Get(ctx, id); err != nil {
			t.Errorf("VM %s handed out is gone with its former group: %v", id, err)
		}
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if bv, ok := b[k]; !ok || bv != v {
			return false
		}
	}
	return true
}

// TestWarmConcurrent: more concurrent creates than warm VMs: each warm VM
// goes to exactly one of them, the others are created cold from the
// template, saying why.
func TestWarmConcurrent(t *testing.T) {
	e := newWarmEnv(t)
	e.put("pool", api.GroupSpec{Warm: 3, MaxSurge: 3, Template: e.template()})
	pool := warmIDs(e.waitGroup("pool", "ready", ready(0, 3)))
	// Replacements do not boot while the creates run: the hook is set
	// while no manager uses the host.
	release := make(chan struct{})
	var once sync.Once
	letBoot := func() { once.Do(func() { close(release) }) }
	t.Cleanup(letBoot)
	e.stop()
	e.host.Hook = func(ctx context.Context, op string, spec hypervisor.Spec) error {
		if op != fakedriver.OpStart || slices.Contains(pool, spec.ID) {
			return nil
		}
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	e.start()

	const n = 8
	got := make([]*api.VM, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], errs[i] = e.g.CreateVM(context.Background(), api.CreateVMRequest{FromGroup: "pool"})
		}()
	}
	wg.Wait()
	var warm []string
	for i, v := range got {
		if errs[i] != nil {
			t.Fatalf("create %d: %v", i, errs[i])
		}
		switch {
		case v.FromGroup == nil:
			t.Errorf("create %d: no from_group in the record", i)
		case v.FromGroup.Warm:
			if v.Status != api.StatusRunning {
				t.Errorf("warm VM %s is %s", v.ID, v.Status)
			}
			warm = append(warm, v.ID)
		case v.FromGroup.Reason == "" || v.Status != api.StatusCreating:
			t.Errorf("cold create %d: %s, reason %q", i, v.Status, v.FromGroup.Reason)
		}
	}
	slices.Sort(warm)
	slices.Sort(pool)
	if !slices.Equal(warm, pool) {
		t.Errorf("warm VMs handed out: %v, want each of %v once", warm, pool)
	}
	letBoot()
	e.waitGroup("pool", "replenished", ready(0, 3))
}

// TestWarmRestart: a daemon stopped while its warm VMs boot resumes them
// after a restart and creates no duplicate.
func TestWarmRestart(t *testing.T) {
	e := newWarmEnv(t)
	e.stop()
	started := make(chan string, 10)
	e.host.Hook = func(ctx context.Context, op string, spec hypervisor.Spec) error {
		if op != fakedriver.OpDiscover {
			return nil
		}
		select {
		case started <- spec.ID:
		default:
		}
		<-ctx.Done()
		return ctx.Err()
	}
	e.start()
	e.put("pool", api.GroupSpec{Size: 1, Warm: 2, MaxSurge: 3, Template: e.template()})
	for range 3 {
		<-started
	}
	e.stop() // the daemon goes with three creations half-way
	e.host.Hook = nil
	recs, _ := e.db.List()
	if len(recs) != 3 {
		t.Fatalf("%d records before the restart, want 3", len(recs))
	}
	e.start()
	g := e.waitGroup("pool", "ready after the restart", ready(1, 2))
	for range 20 { // more passes: nothing more is created
		time.Sleep(20 * time.Millisecond)
	}
	recs, _ = e.db.List()
	if len(recs) != 3 || len(e.host.Running()) != 3 {
		t.Errorf("after the restart: %d records, %d machines, want 3 (group %+v)", len(recs), len(e.host.Running()), g.VMs)
	}
}

// TestWarmBadInput: warm out of range and from_group's mistakes are
// refused, naming the field.
func TestWarmBadInput(t *testing.T) {
	e := newWarmEnv(t)
	ctx := context.Background()
	for _, w := range []int{-1, 6} {
		_, err := e.g.Put(ctx, "pool", api.GroupSpec{Warm: w, Template: e.template()})
		if code, msg := errdefs.CodeOf(err); !errors.Is(err, errdefs.ErrInvalid) || code != api.CodeInvalidRequest || !strings.HasPrefix(msg, "warm ") {
			t.Errorf("warm %d: %v, want invalid-request naming warm", w, err)
		}
	}
	tpl := e.template()
	tpl.FromGroup = "x"
	if _, err := e.g.Put(ctx, "pool", api.GroupSpec{Template: tpl}); err == nil || !strings.Contains(err.Error(), "template.from_group") {
		t.Errorf("template with from_group: %v, want an error naming template.from_group", err)
	}
	if _, err := e.g.CreateVM(ctx, api.CreateVMRequest{FromGroup: "nope"}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("from_group of no group: %v, want not found", err)
	} else if code, msg := errdefs.CodeOf(err); code != api.CodeGroupNotFound || !strings.Contains(msg, "from_group") {
		t.Errorf("from_group of no group: %s %s", code, msg)
	}
	e.put("pool", api.GroupSpec{Template: e.template()})
	_, err := e.g.CreateVM(ctx, api.CreateVMRequest{FromGroup: "pool", CPUs: 2, Image: e.img})
	if code, msg := errdefs.CodeOf(err); code != api.CodeInvalidRequest || !strings.Contains(msg, "cpus, image") {
		t.Errorf("from_group with cpus and image: %v, want invalid-request naming them", err)
	}
	_, err = e.g.CreateVM(ctx, api.CreateVMRequest{FromGroup: "pool", Tags: map[string]string{"goldvm.warm": "x"}})
	if code, _ := errdefs.CodeOf(err); code != api.CodeInvalidRequest {
		t.Errorf("from_group with a goldvm. tag: %v, want invalid-request", err)
	}
	// A group without warm VMs serves from_group cold, saying so.
	v, err := e.g.CreateVM(ctx, api.CreateVMRequest{FromGroup: "pool"})
	if err != nil || v.FromGroup == nil || v.FromGroup.Warm || !strings.Contains(v.FromGroup.Reason, "warm is 0") || v.Tags[api.TagGroup] != "" {
		t.Errorf("from_group of a group without warm VMs: %+v, %v", v, err)
	}
	recs, _ := e.db.List()
	if len(recs) != 1 {
		t.Errorf("%d records, want only the cold one", len(recs))
	}
}
