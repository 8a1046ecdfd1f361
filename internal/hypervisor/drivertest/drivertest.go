// Package drivertest is the conformance suite of the hypervisor.Driver
// contract. Every driver runs it from a test of its own package, against
// its real hypervisor where the machine has one (qemu: real QEMU and the
// test guest; vmware: the stand-in vmrun; fakedriver: in memory):
//
//	func TestConformance(t *testing.T) {
//		drivertest.Run(t, drivertest.Env{New: ..., GoldDir: ..., ImageKey: ...})
//	}
//
// The suite runs as one sequence of subtests, to boot as few machines as
// it can (two): clone, start, discover and state of a VM; destroy twice;
// destroy of half-made VMs (never cloned, cloned but never started); the
// lifecycle actions the driver offers (Suspend/Resume, Restart, Stop and
// Start again: each leaves the VM answering Discover); a new
// driver instance (a daemon restart) that finds the running VM, watches it
// when the driver can, and destroys it; and the gold image, unchanged to
// the byte and mode, from which the new instance clones and starts again.
package drivertest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/goldvm/goldvm/internal/hypervisor"
)

// Env is what a driver's test gives the suite.
type Env struct {
	// New returns a driver instance. Instances made by one Env share the
	// host, as a daemon and its restarted successor do: what one started,
	// the next finds. New registers its own cleanup (t.Cleanup).
	New func(t *testing.T) hypervisor.Driver
	// GoldDir is a gold image laid out (and made read-only) as the image
	// store publishes it; ImageKey is its key.
	GoldDir  string
	ImageKey string
	// Prepare, when set, completes each VM's Spec with the driver's own
	// fields (the suite fills ID, Dir, GoldDir, ImageKey and the sizes).
	Prepare func(spec *hypervisor.Spec)
	// CPUs, MemoryMiB and Network size the VMs (defaults 1, 128 MiB, nat).
	CPUs      int
	MemoryMiB int64
	Network   string
	// BootTimeout bounds one Clone+Start+Discover, and Destroy (default 3m).
	BootTimeout time.Duration
}

// Run runs the conformance suite against env.
func Run(t *testing.T, env Env) {
	if env.CPUs == 0 {
		env.CPUs = 1
	}
	if env.MemoryMiB == 0 {
		env.MemoryMiB = 128
	}
	if env.Network == "" {
		env.Network = "nat"
	}
	if env.BootTimeout == 0 {
		env.BootTimeout = 3 * time.Minute
	}
	s := &suite{env: env, parent: t, tag: randTag(t)}
	gold := treeOf(t, env.GoldDir)
	d1 := env.New(t)
	if gp, ok := d1.(hypervisor.GoldPreparer); ok {
		// As the image store does before it publishes: the driver decides
		// the gold disk once, and every VM's Spec carries it.
		gd, err := gp.PrepareGold(context.Background(), env.GoldDir, t.TempDir())
		if err != nil {
			t.Fatalf("PrepareGold: %v", err)
		}
		s.goldDisk = gd
	}

	var running hypervisor.Spec
	steps := []struct {
		name string
		fn   func(t *testing.T)
	}{
		{"lifecycle", func(t *testing.T) { running = s.lifecycle(t, d1) }},
		{"power-actions", func(t *testing.T) { s.powerActions(t, d1, running) }},
		{"destroy-half-made", func(t *testing.T) { s.halfMade(t, d1) }},
		{"restart-reattach", func(t *testing.T) { s.reattach(t, env.New(t), running) }},
		{"gold-intact-and-reusable", func(t *testing.T) {
			checkTree(t, env.GoldDir, gold)
			s.reuse(t, env.New(t))
			checkTree(t, env.GoldDir, gold)
		}},
	}
	for _, st := range steps {
		if !t.Run(st.name, st.fn) {
			t.Fatalf("conformance step %s failed; later steps depend on it", st.name)
		}
	}
}

type suite struct {
	env Env
	// parent is Run's test: VMs that outlive a step are cleaned up there.
	parent *testing.T
	tag    string
	// goldDisk is what a GoldPreparer decided for the gold image.
	goldDisk hypervisor.GoldDisk
}

// spec returns the spec of a new VM whose directory (0700) exists, as the
// manager makes it. The directory lasts until the whole suite ends.
func (s *suite) spec(t *testing.T, name string) hypervisor.Spec {
	t.Helper()
	id := name + "-" + s.tag
	dir := filepath.Join(s.parent.TempDir(), id)
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	spec := hypervisor.Spec{
		ID: id, Dir: dir, GoldDir: s.env.GoldDir, ImageKey: s.env.ImageKey, GoldDisk: s.goldDisk,
		CPUs: s.env.CPUs, MemoryMiB: s.env.MemoryMiB, Network: s.env.Network, Headless: true,
	}
	if s.env.Prepare != nil {
		s.env.Prepare(&spec)
	}
	return spec
}

// ctx is bounded by the boot timeout and ends with t.
func (s *suite) ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), s.env.BootTimeout)
	t.Cleanup(cancel)
	return ctx
}

// cleanupDestroy destroys spec with d when the whole suite ends, whatever
// happened, so that no machine outlives the test.
func (s *suite) cleanupDestroy(d hypervisor.Driver, spec hypervisor.Spec) {
	t := s.parent
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), s.env.BootTimeout)
		defer cancel()
		if err := d.Destroy(ctx, spec); err != nil {
			t.Errorf("cleanup: destroy %s: %v", spec.ID, err)
		}
	})
}

func wantState(t *testing.T, d hypervisor.Driver, spec hypervisor.Spec, want hypervisor.State, when string) {
	t.Helper()
	got, err := d.State(context.Background(), spec)
	if err != nil || got != want {
		t.Fatalf("State %s = %q, %v; want %q", when, got, err, want)
	}
}

// boot clones and starts spec with d.
func (s *suite) boot(t *testing.T, d hypervisor.Driver, spec hypervisor.Spec) {
	t.Helper()
	s.cleanupDestroy(d, spec)
	ctx := s.ctx(t)
	if err := d.Clone(ctx, spec); err != nil {
		t.Fatalf("Clone: %v", err)
	}
	if err := d.Start(ctx, spec); err != nil {
		t.Fatalf("Start: %v", err)
	}
	wantState(t, d, spec, hypervisor.StateRunning, "after Start")
}

// destroyTwice destroys spec twice and checks it is stopped and its
// directory is still there (the manager removes it).
func (s *suite) destroyTwice(t *testing.T, d hypervisor.Driver, spec hypervisor.Spec) {
	t.Helper()
	for i := 1; i <= 2; i++ {
		if err := d.Destroy(s.ctx(t), spec); err != nil {
			t.Fatalf("Destroy #%d: %v", i, err)
		}
		wantState(t, d, spec, hypervisor.StateStopped, fmt.Sprintf("after Destroy #%d", i))
	}
	if st, err := os.Stat(spec.Dir); err != nil || !st.IsDir() {
		t.Fatalf("Destroy removed the VM directory itself (%v); the manager does that", err)
	}
}

// lifecycle boots and discovers a VM and returns it, still running, for
// the restart step.
func (s *suite) lifecycle(t *testing.T, d hypervisor.Driver) hypervisor.Spec {
	if d.Name() == "" {
		t.Error("Name is empty")
	}
	spec := s.spec(t, "life")
	wantState(t, d, spec, hypervisor.StateStopped, "before Clone")
	s.boot(t, d, spec)
	info, err := d.Discover(s.ctx(t), spec)
	if err != nil {
		t.Fatalf("Discover: %v", err)
	}
	if info.IPAddress == "" || info.GuestOS == "" {
		t.Fatalf("Discover = %+v; want an IP address and a guest OS", info)
	}
	wantState(t, d, spec, hypervisor.StateRunning, "after Discover")
	return spec
}

// powerActions runs the lifecycle actions d offers on the running VM
// spec and leaves it running: Suspend (paused, or stopped when suspending
// ends the process) and Resume; Restart; Stop (twice: a stopped machine is
// no error), Start. After each the guest answers Discover again.
func (s *suite) powerActions(t *testing.T, d hypervisor.Driver, spec hypervisor.Spec) {
	rediscover := func(after string) {
		t.Helper()
		wantState(t, d, spec, hypervisor.StateRunning, "after "+after)
		if info, err := d.Discover(s.ctx(t), spec); err != nil || info.IPAddress == "" {
			t.Fatalf("Discover after %s = %+v, %v; want an address", after, info, err)
		}
	}
	if sp, ok := d.(hypervisor.Suspender); ok {
		if err := sp.Suspend(s.ctx(t), spec); err != nil {
			t.Fatalf("Suspend: %v", err)
		}
		want := hypervisor.StatePaused
		if sp.SuspendEndsProcess() {
			want = hypervisor.StateStopped
		}
		wantState(t, d, spec, want, "after Suspend")
		if err := sp.Resume(s.ctx(t), spec); err != nil {
			t.Fatalf("Resume: %v", err)
		}
		rediscover("Resume")
	}
	if rs, ok := d.(hypervisor.Restarter); ok {
		if err := rs.Restart(s.ctx(t), spec); err != nil {
			t.Fatalf("Restart: %v", err)
		}
		rediscover("Restart")
	}
	if st, ok := d.(hypervisor.Stopper); ok {
		for i := 1; i <= 2; i++ {
			if err := st.Stop(s.ctx(t), spec); err != nil {
				t.Fatalf("Stop #%d: %v", i, err)
			}
			wantState(t, d, spec, hypervisor.StateStopped, fmt.Sprintf("after Stop #%d", i))
		}
		if err := d.Start(s.ctx(t), spec); err != nil {
			t.Fatalf("Start after Stop: %v", err)
		}
		rediscover("Start after Stop")
	}
}

// halfMade destroys a VM that was never cloned and one that was cloned but
// never started, each twice.
func (s *suite) halfMade(t *testing.T, d hypervisor.Driver) {
	never := s.spec(t, "never")
	s.destroyTwice(t, d, never)

	cloned := s.spec(t, "cloned")
	s.cleanupDestroy(d, cloned)
	if err := d.Clone(s.ctx(t), cloned); err != nil {
		t.Fatalf("Clone: %v", err)
	}
	wantState(t, d, cloned, hypervisor.StateStopped, "after Clone, before Start")
	s.destroyTwice(t, d, cloned)
}

// reattach checks that d, a new instance, finds the running VM, follows it
// (Watch, when the driver can) and destroys it.
func (s *suite) reattach(t *testing.T, d hypervisor.Driver, spec hypervisor.Spec) {
	wantState(t, d, spec, hypervisor.StateRunning, "seen by a new driver instance")
	type watched struct {
		reason string
		err    error
	}
	var done chan watched
	if w, ok := d.(hypervisor.Watcher); ok {
		done = make(chan watched, 1)
		go func() {
			reason, err := w.Watch(s.ctx(t), spec)
			done <- watched{reason, err}
		}()
	}
	s.destroyTwice(t, d, spec)
	if done != nil {
		got := <-done
		if errors.Is(got.err, context.DeadlineExceeded) || errors.Is(got.err, context.Canceled) {
			t.Fatalf("Watch did not end when the machine was destroyed: %v", got.err)
		}
	}
}

// reuse clones and starts a VM of the gold image with d, a new instance,
// then destroys it.
func (s *suite) reuse(t *testing.T, d hypervisor.Driver) {
	spec := s.spec(t, "again")
	s.boot(t, d, spec)
	s.destroyTwice(t, d, spec)
}

// treeOf describes every entry under root: its mode, and for a regular
// file its size and SHA-256; for a symlink its target.
func treeOf(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := e.Info()
		if err != nil {
			return err
		}
		desc := info.Mode().String()
		switch {
		case info.Mode().IsRegular():
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			h := sha256.New()
			_, err = io.Copy(h, f)
			f.Close()
			if err != nil {
				return err
			}
			desc += fmt.Sprintf(" %d %s", info.Size(), hex.EncodeToString(h.Sum(nil)))
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			desc += " -> " + target
		}
		rel, _ := filepath.Rel(root, p)
		out[rel] = desc
		return nil
	})
	if err != nil {
		t.Fatalf("reading the gold image: %v", err)
	}
	return out
}

// checkTree fails unless root is described by want (see treeOf).
func checkTree(t *testing.T, root string, want map[string]string) {
	t.Helper()
	got := treeOf(t, root)
	var diffs []string
	for p, w := range want {
		if g, ok := got[p]; !ok {
			diffs = append(diffs, "removed: "+p)
		} else if g != w {
			diffs = append(diffs, fmt.Sprintf("changed: %s: %s, was %s", p, g, w))
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			diffs = append(diffs, "added: "+p)
		}
	}
	if len(diffs) > 0 {
		sort.Strings(diffs)
		t.Fatalf("a driver wrote into the gold image:\n%s", strings.Join(diffs, "\n"))
	}
}

// randTag makes this run's VM ids unique on the host (QEMU -name, taps,
// vmrun clone names).
func randTag(t *testing.T) string {
	t.Helper()
	sum := sha256.Sum256(fmt.Appendf(nil, "%s %d %d", t.Name(), os.Getpid(), time.Now().UnixNano()))
	return hex.EncodeToString(sum[:3])
}

// Logger returns a logger that writes through t.Log, for drivers under test.
func Logger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(logWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type logWriter struct{ t *testing.T }

func (w logWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}
