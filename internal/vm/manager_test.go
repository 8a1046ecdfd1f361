package vm

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/hypervisor"
	"github.com/goldvm/goldvm/internal/hypervisor/fakedriver"
	"github.com/goldvm/goldvm/internal/image"
	"github.com/goldvm/goldvm/internal/records"
)

// env is a manager on the fake driver with a real record database, a real
// image store and a real loopback HTTP server holding the image.
type env struct {
	t      *testing.T
	dir    string
	host   *fakedriver.Host
	db     *records.DB
	images *image.Store
	img    api.Image
	srv    *imageServer
	m      *Manager
}

// imageServer serves one image; while held, it sends the first half of
// the body and then waits until released (or the client goes away).
type imageServer struct {
	*httptest.Server
	body []byte

	mu      sync.Mutex
	hold    chan struct{} // nil: not held
	started chan struct{} // closed when a held request has sent its half
}

func newImageServer(t *testing.T, body []byte) *imageServer {
	s := &imageServer{body: body}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		hold, started := s.hold, s.started
		s.mu.Unlock()
		w.Header().Set("Content-Length", strconv.Itoa(len(s.body)))
		if hold == nil {
			w.Write(s.body)
			return
		}
		half := len(s.body) / 2
		w.Write(s.body[:half])
		w.(http.Flusher).Flush()
		close(started)
		select {
		case <-hold:
			w.Write(s.body[half:])
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(s.Close)
	return s
}

// holdNext makes the next request stop half way; release lets it go on.
func (s *imageServer) holdNext() (started <-chan struct{}, release func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hold, s.started = make(chan struct{}), make(chan struct{})
	h := s.hold
	var once sync.Once
	return s.started, func() { once.Do(func() { close(h) }) }
}

// goldTar is a tar holding one disk file.
func goldTar(t *testing.T) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	disk := bytes.Repeat([]byte("gold disk block "), 64<<10/16)
	if err := tw.WriteHeader(&tar.Header{Name: "disk.img", Mode: 0o644, Size: int64(len(disk)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	tw.Write(disk)
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir(), host: fakedriver.NewHost()}
	var err error
	if e.db, err = records.Open(filepath.Join(e.dir, "goldvm.db")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.db.Close() })
	log := slog.New(slog.DiscardHandler)
	if e.images, err = image.NewStore(filepath.Join(e.dir, "images"), image.Options{Logger: log, InUse: ImageUsers(e.db)}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.images.Close() })
	body := goldTar(t)
	e.srv = newImageServer(t, body)
	sum := sha256.Sum256(body)
	e.img = api.Image{URL: e.srv.URL + "/gold.tar", Checksum: hex.EncodeToString(sum[:]), ChecksumType: "sha256"}
	if err := os.MkdirAll(filepath.Join(e.dir, "vms"), 0o700); err != nil {
		t.Fatal(err)
	}
	e.start()
	return e
}

// start makes a manager (a daemon start) with a new driver instance.
func (e *env) start() {
	e.m = New(Config{
		VMDir: filepath.Join(e.dir, "vms"), Store: e.db, Images: e.images, Driver: e.host.New(),
		Logger: slog.New(slog.DiscardHandler), DestroyTimeout: 30 * time.Second,
	})
	e.t.Cleanup(e.m.Close)
}

// restart closes the manager and recovers with a new one.
func (e *env) restart() {
	e.t.Helper()
	e.m.Close()
	e.start()
	if err := e.m.Recover(context.Background()); err != nil {
		e.t.Fatalf("Recover: %v", err)
	}
}

func (e *env) request() api.CreateVMRequest {
	return api.CreateVMRequest{CPUs: 1, Memory: 64, NetworkType: api.NetworkNAT, Image: e.img}
}

func (e *env) create() *api.VM {
	e.t.Helper()
	v, err := e.m.Create(context.Background(), e.request())
	if err != nil {
		e.t.Fatalf("Create: %v", err)
	}
	return v
}

// wait polls the VM until ok accepts it.
func (e *env) wait(id string, what string, ok func(v *api.VM, err error) bool) *api.VM {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		v, err := e.m.Get(context.Background(), id)
		if ok(v, err) {
			return v
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("VM %s never %s: last %+v, %v", id, what, v, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (e *env) waitStatus(id string, want api.Status) *api.VM {
	e.t.Helper()
	return e.wait(id, string(want), func(v *api.VM, err error) bool { return err == nil && v.Status == want })
}

func (e *env) waitPhase(id string, want api.Phase) {
	e.t.Helper()
	e.wait(id, "in phase "+string(want), func(v *api.VM, err error) bool {
		return err == nil && v.Status == api.StatusCreating && v.Phase == want
	})
}

// wantGone checks the VM's record, directory and machine are gone.
func (e *env) wantGone(id string) {
	e.t.Helper()
	if _, err := e.m.Get(context.Background(), id); !errors.Is(err, errdefs.ErrNotFound) {
		e.t.Errorf("Get after delete: %v, want not found", err)
	}
	if _, err := os.Stat(filepath.Join(e.dir, "vms", id)); !errors.Is(err, os.ErrNotExist) {
		e.t.Errorf("VM directory still there: %v", err)
	}
	for _, r := range e.host.Running() {
		if r == id {
			e.t.Errorf("machine %s still running", id)
		}
	}
}

// record writes a record as an earlier daemon left it, with its
// directory; clone says whether its driver files exist (a clone made).
func (e *env) record(status api.Status, phase api.Phase, clone bool) *records.Record {
	e.t.Helper()
	id := records.NewID()
	now := time.Now().UTC()
	r := &records.Record{
		VM: api.VM{ID: id, Status: status, Phase: phase, Backend: "fake", CPUs: 1, MemoryMiB: 64,
			NetworkType: api.NetworkNAT, Image: e.img, Headless: true,
			ToolsInitTimeout: api.Duration(time.Minute), CreatedAt: now, UpdatedAt: now},
		Dir: filepath.Join(e.dir, "vms", id),
	}
	if err := os.MkdirAll(r.Dir, 0o700); err != nil {
		e.t.Fatal(err)
	}
	if clone {
		gold, err := e.images.Ensure(context.Background(), imageSpec(r), nil)
		if err != nil {
			e.t.Fatal(err)
		}
		spec := hypervisor.Spec{ID: id, Dir: r.Dir, GoldDir: gold.Dir, ImageKey: gold.Key, CPUs: 1, MemoryMiB: 64, Network: api.NetworkNAT}
		if err := e.host.New().Clone(context.Background(), spec); err != nil {
			e.t.Fatal(err)
		}
	}
	if err := e.db.Create(r); err != nil {
		e.t.Fatal(err)
	}
	return r
}

func TestCreateAndDelete(t *testing.T) {
	e := newEnv(t)
	v := e.create()
	got := e.waitStatus(v.ID, api.StatusRunning)
	if got.IPAddress == "" || got.GuestOS != "fake guest" {
		t.Fatalf("running VM %+v lacks what discovery found", got)
	}
	if console, err := e.m.Console(context.Background(), v.ID, 1<<10); err != nil || len(console) == 0 {
		t.Errorf("Console = %q, %v", console, err)
	}
	if png, err := e.m.Screenshot(context.Background(), v.ID); err != nil || !bytes.HasPrefix(png, []byte("\x89PNG")) {
		t.Errorf("Screenshot: %v", err)
	}
	// The machine dies: the watcher marks the VM stopped.
	e.host.Kill(v.ID, "guest-shutdown")
	if got := e.waitStatus(v.ID, api.StatusStopped); got.StopReason != "guest-shutdown" {
		t.Errorf("stop reason %q", got.StopReason)
	}
	if err := e.m.Delete(context.Background(), v.ID); err != nil {
		t.Fatal(err)
	}
	e.wantGone(v.ID)
}

// TestRefusedNetwork proves a network type the driver refuses is refused
// at once, with the driver's error, before anything is stored.
func TestRefusedNetwork(t *testing.T) {
	e := newEnv(t)
	e.host.Refuse = map[string]error{api.NetworkBridged: errdefs.Newf(errdefs.ErrInvalid, "bridged-not-configured", "no bridge")}
	req := e.request()
	req.NetworkType = api.NetworkBridged
	_, err := e.m.Create(context.Background(), req)
	if code, _ := errdefs.CodeOf(err); code != "bridged-not-configured" {
		t.Fatalf("Create bridged: %v", err)
	}
	if recs, _ := e.db.List(); len(recs) != 0 {
		t.Errorf("a refused request left %d records", len(recs))
	}
}

// TestUndoFailedCreate fails each driver step in turn: the VM ends in
// "error" with the step's code, and what was made is destroyed.
func TestUndoFailedCreate(t *testing.T) {
	for _, op := range []string{fakedriver.OpClone, fakedriver.OpStart, fakedriver.OpDiscover} {
		t.Run(op, func(t *testing.T) {
			e := newEnv(t)
			e.host.Hook = func(ctx context.Context, got string, spec hypervisor.Spec) error {
				if got == op {
					return errdefs.Newf(errdefs.ErrConflict, "injected-"+op, "%s failed", op)
				}
				return nil
			}
			v := e.create()
			got := e.waitStatus(v.ID, api.StatusError)
			if got.Error == nil || got.Error.Code != "injected-"+op {
				t.Fatalf("error %+v, want injected-%s", got.Error, op)
			}
			if e.host.Calls(fakedriver.OpDestroy, v.ID) == 0 {
				t.Error("the failed creation was not undone")
			}
			if len(e.host.Running()) != 0 {
				t.Errorf("machines left running: %v", e.host.Running())
			}
			if _, err := os.Stat(filepath.Join(e.dir, "vms", v.ID, v.ID+".clone")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the clone of a failed creation is still there: %v", err)
			}
			if n := e.m.ImageUsers("sha256-" + e.img.Checksum); n != 0 {
				t.Errorf("a failed VM counts as %d users of its image", n)
			}
		})
	}
}

// TestDeleteDuringCreate deletes a VM held in discovery: the creation is
// cancelled, the machine destroyed, the record and directory removed.
func TestDeleteDuringCreate(t *testing.T) {
	e := newEnv(t)
	e.host.Hook = func(ctx context.Context, op string, spec hypervisor.Spec) error {
		if op == fakedriver.OpDiscover {
			<-ctx.Done()
			return ctx.Err()
		}
		return nil
	}
	v := e.create()
	e.waitPhase(v.ID, api.PhaseDiscovering)
	if err := e.m.Delete(context.Background(), v.ID); err != nil {
		t.Fatal(err)
	}
	e.wantGone(v.ID)
}

// TestDeleteDuringDownload deletes a VM while its image is half
// downloaded: the delete returns, nothing was cloned, the record is gone
// and no image was published.
func TestDeleteDuringDownload(t *testing.T) {
	e := newEnv(t)
	started, release := e.srv.holdNext()
	defer release()
	v := e.create()
	<-started
	e.wait(v.ID, "downloading with progress", func(v *api.VM, err error) bool {
		return err == nil && v.Phase == api.PhaseDownloading && v.Progress != nil && v.Progress.BytesDone > 0
	})
	if err := e.m.Delete(context.Background(), v.ID); err != nil {
		t.Fatal(err)
	}
	e.wantGone(v.ID)
	if n := e.host.Calls(fakedriver.OpClone, v.ID); n != 0 {
		t.Errorf("clone ran %d times for a VM deleted while downloading", n)
	}
	if infos, err := e.images.List(); err != nil || len(infos) != 0 {
		t.Errorf("images after the cancelled download: %v, %v", infos, err)
	}
}

// TestRecoverEachStatus leaves records as a killed daemon would, in each
// status, and checks what a restart makes of them.
func TestRecoverEachStatus(t *testing.T) {
	cases := []struct {
		name    string
		status  api.Status
		phase   api.Phase
		clone   bool // the driver had made the clone
		running bool // its machine runs
		check   func(e *env, r *records.Record)
	}{
		{name: "creating-downloading", status: api.StatusCreating, phase: api.PhaseDownloading,
			check: func(e *env, r *records.Record) { e.waitStatus(r.ID, api.StatusRunning) }},
		{name: "creating-booting", status: api.StatusCreating, phase: api.PhaseBooting, clone: true, running: true,
			check: func(e *env, r *records.Record) {
				e.waitStatus(r.ID, api.StatusRunning)
				if n := e.host.Calls(fakedriver.OpClone, r.ID); n != 2 {
					t.Errorf("clone ran %d times, want 2 (the half-made one destroyed, then again)", n)
				}
			}},
		{name: "deleting", status: api.StatusDeleting, clone: true, running: true,
			check: func(e *env, r *records.Record) { e.wantGone(r.ID) }},
		{name: "running-still-running", status: api.StatusRunning, clone: true, running: true,
			check: func(e *env, r *records.Record) {
				e.waitStatus(r.ID, api.StatusRunning)
				// Reattached: the watcher sees it stop.
				e.host.Kill(r.ID, "process exited")
				e.waitStatus(r.ID, api.StatusStopped)
			}},
		{name: "running-gone", status: api.StatusRunning, clone: true,
			check: func(e *env, r *records.Record) { e.waitStatus(r.ID, api.StatusStopped) }},
		{name: "stopped-running-again", status: api.StatusStopped, clone: true, running: true,
			check: func(e *env, r *records.Record) { e.waitStatus(r.ID, api.StatusRunning) }},
		{name: "stopped", status: api.StatusStopped, clone: true,
			check: func(e *env, r *records.Record) { e.waitStatus(r.ID, api.StatusStopped) }},
		{name: "error-half-undone", status: api.StatusError, clone: true,
			check: func(e *env, r *records.Record) {
				e.waitStatus(r.ID, api.StatusError)
				if _, err := os.Stat(filepath.Join(r.Dir, r.ID+".clone")); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("the failed VM's clone was not removed: %v", err)
				}
			}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			r := e.record(c.status, c.phase, c.clone)
			if c.running {
				e.host.Boot(r.ID)
			}
			e.restart()
			c.check(e, r)
		})
	}
}

// TestRecoverStrays proves a restart removes a VM directory and stops a
// machine that no record owns, and leaves the others alone.
func TestRecoverStrays(t *testing.T) {
	e := newEnv(t)
	v := e.create()
	e.waitStatus(v.ID, api.StatusRunning)
	stray := records.NewID()
	if err := os.MkdirAll(filepath.Join(e.dir, "vms", stray), 0o700); err != nil {
		t.Fatal(err)
	}
	e.host.Boot(stray)
	e.restart()
	e.wantGone(stray)
	e.waitStatus(v.ID, api.StatusRunning)
	if got := e.host.Running(); len(got) != 1 || got[0] != v.ID {
		t.Errorf("running after recovery: %v, want only %s", got, v.ID)
	}
}

// TestSpecOnEveryCall proves the driver gets the gold directory and image
// key on every call, also on State, Watch and Destroy after a restart.
func TestSpecOnEveryCall(t *testing.T) {
	e := newEnv(t)
	key := "sha256-" + e.img.Checksum
	var mu sync.Mutex
	var bad []string
	e.host.Hook = func(ctx context.Context, op string, spec hypervisor.Spec) error {
		if spec.ImageKey != key || spec.GoldDir != e.images.GoldDir(key) {
			mu.Lock()
			bad = append(bad, op+": "+spec.ImageKey+" "+spec.GoldDir)
			mu.Unlock()
		}
		return nil
	}
	v := e.create()
	e.waitStatus(v.ID, api.StatusRunning)
	e.restart()
	e.waitStatus(v.ID, api.StatusRunning)
	if err := e.m.Delete(context.Background(), v.ID); err != nil {
		t.Fatal(err)
	}
	e.wantGone(v.ID)
	mu.Lock()
	defer mu.Unlock()
	if len(bad) > 0 {
		t.Errorf("calls without the VM's image: %v", bad)
	}
}

// TestMACIsOneVMs: a MAC a machine definition gives belongs to one VM at a
// time; a second VM asking for it fails with mac-in-use, and once the first
// is deleted the MAC is free again.
func TestMACIsOneVMs(t *testing.T) {
	e := newEnv(t)
	req := e.request()
	req.Machine = &api.Machine{MAC: "02:54:00:aa:bb:cc"}
	first, err := e.m.Create(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	e.waitStatus(first.ID, api.StatusRunning)
	second, err := e.m.Create(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	got := e.waitStatus(second.ID, api.StatusError)
	if got.Error == nil || got.Error.Code != api.CodeMACInUse || !strings.Contains(got.Error.Message, first.ID) {
		t.Fatalf("second VM with the same MAC: %+v, want error %s naming %s", got.Error, api.CodeMACInUse, first.ID)
	}
	if err := e.m.Delete(context.Background(), first.ID); err != nil {
		t.Fatal(err)
	}
	e.wantGone(first.ID)
	third, err := e.m.Create(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if got := e.waitStatus(third.ID, api.StatusRunning); got.Machine == nil || got.Machine.MAC != "02:54:00:aa:bb:cc" {
		t.Errorf("third VM: machine %+v, want the freed MAC", got.Machine)
	}
}

// TestPhaseTimes: a created VM's record lists the phases it went through,
// in order, each with the time it took; a phase that waited (here
// discovery, held by the driver) shows at least that wait, and together
// they fit between the request and the last update.
func TestPhaseTimes(t *testing.T) {
	e := newEnv(t)
	const hold = 50 * time.Millisecond
	e.host.Hook = func(ctx context.Context, op string, spec hypervisor.Spec) error {
		if op == fakedriver.OpDiscover {
			time.Sleep(hold)
		}
		return nil
	}
	v := e.create()
	got := e.waitStatus(v.ID, api.StatusRunning)
	var phases []api.Phase
	var sum float64
	for _, p := range got.PhaseTimes {
		phases = append(phases, p.Phase)
		if p.Seconds < 0 {
			t.Errorf("phase %s took %v s", p.Phase, p.Seconds)
		}
		sum += p.Seconds
	}
	want := []api.Phase{api.PhaseDownloading, api.PhaseCloning, api.PhaseBooting, api.PhaseDiscovering}
	i := 0
	for _, p := range phases {
		if i < len(want) && p == want[i] {
			i++
		}
	}
	if i != len(want) || phases[0] != api.PhasePending || phases[len(phases)-1] != api.PhaseDiscovering {
		t.Fatalf("phases %v, want pending first, then %v in order, discovering last", phases, want)
	}
	if last := got.PhaseTimes[len(got.PhaseTimes)-1]; last.Seconds < hold.Seconds() {
		t.Errorf("discovery was held %v but took %v s", hold, last.Seconds)
	}
	if total := got.UpdatedAt.Sub(got.CreatedAt).Seconds(); sum > total+0.01 {
		t.Errorf("phases sum to %v s, more than the %v s from request to running", sum, total)
	}
}
