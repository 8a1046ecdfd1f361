package vmware

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/hypervisor"
	"github.com/goldvm/goldvm/internal/hypervisor/vmware/vmx"
)

func code(err error) string {
	c, _ := errdefs.CodeOf(err)
	return c
}

// TestLifecycle runs Clone -> Start -> Discover -> State -> Destroy against
// the stand-in vmrun, with spaces in every path, and checks what each step
// leaves on disk: the clone's edited .vmx, the gold image untouched and
// read-only again, and an empty VM directory (but for others' files) at the
// end. Destroy is then repeated.
func TestLifecycle(t *testing.T) {
	e := newEnv(t)
	d := e.driver(t)
	g := makeGold(t, "debian 12 (ci)")
	s := spec(t, g, "vm-1")
	ctx := context.Background()

	if st, err := d.State(ctx, s); err != nil || st != hypervisor.StateStopped {
		t.Fatalf("State before Clone = %v, %v", st, err)
	}
	must(t, d.Clone(ctx, s))

	// The clone is a linked clone: a small delta disk whose parent is the
	// gold disk, not a copy of it.
	clone := filepath.Join(s.Dir, "vm-1.vmx")
	delta := filepath.Join(s.Dir, "vm-1-cl1.vmdk")
	if !bytes.Contains(readFile(t, delta), []byte(`parentFileNameHint="`+g.vmdk+`"`)) {
		t.Fatalf("delta disk does not point at the gold disk:\n%s", readFile(t, delta))
	}

	// The .vmx edits, read back with the vmx package.
	f, err := vmx.ReadFile(clone)
	must(t, err)
	want := map[string]string{
		"numvcpus":                 "3",
		"memsize":                  "1028", // 1025 MiB rounded up to a multiple of 4
		"displayName":              "goldvm-vm-1",
		"ethernet0.connectionType": "nat",
		"ethernet0.addressType":    "generated",
		"uuid.action":              "create",
		"msg.autoAnswer":           "TRUE",
		"guestOS":                  "debian12-64",
		"annotation":               "gold image\nbuilt 2026-11-01",
		"scsi0:0.fileName":         "vm-1-cl1.vmdk",
	}
	for k, v := range want {
		if got, ok := f.Get(k); !ok || got != v {
			t.Errorf("clone .vmx %s = %q, %v; want %q", k, got, ok, v)
		}
	}
	for _, k := range []string{"ethernet0.generatedAddress", "ethernet0.generatedAddressOffset", "uuid.bios", "uuid.location", "cpuid.coresPerSocket"} {
		if f.Has(k) {
			t.Errorf("clone .vmx still has %s", k)
		}
	}
	if !strings.Contains(f.String(), "# Packaged by the CI image pipeline; keep this comment.\n") {
		t.Error("the .vmx edit lost a comment")
	}
	if m := fileMode(t, clone); m != 0o600 {
		t.Errorf("clone .vmx mode %v", m)
	}

	must(t, d.Start(ctx, s))
	if st, err := d.State(ctx, s); err != nil || st != hypervisor.StateRunning {
		t.Fatalf("State after Start = %v, %v", st, err)
	}
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	info, err := d.Discover(dctx, s)
	cancel()
	must(t, err)
	if net.ParseIP(info.IPAddress) == nil {
		t.Errorf("IP %q", info.IPAddress)
	}
	if info.GuestOS != "debian12-64" || info.GuestOSName != "Debian GNU/Linux 12 (64-bit)" {
		t.Errorf("GuestOS %q, GuestOSName %q; want the .vmx identifier and its readable name", info.GuestOS, info.GuestOSName)
	}

	must(t, d.Destroy(ctx, s))
	if st, err := d.State(ctx, s); err != nil || st != hypervisor.StateStopped {
		t.Fatalf("State after Destroy = %v, %v", st, err)
	}
	if got := listDir(t, s.Dir); !slices.Equal(got, []string{"record.json"}) {
		t.Errorf("VM dir after Destroy holds %v, want only the manager's record.json", got)
	}
	must(t, d.Destroy(ctx, s)) // twice is fine

	// Every vmrun call named the host type first and passed paths as
	// single arguments (no shell: spaces intact).
	var sawStart bool
	for _, c := range e.calls(t) {
		if len(c) < 3 || c[0] != "-T" || c[1] != "fusion" {
			t.Errorf("vmrun call without -T fusion first: %q", c)
		}
		if c[2] == "start" {
			sawStart = true
			if !slices.Equal(c[3:], []string{clone, "nogui"}) {
				t.Errorf("start call %q", c)
			}
		}
		if c[2] == "clone" {
			wantArgs := []string{e.base(g), clone, "linked", "-snapshot=goldvm-base", "-cloneName=vm-1"}
			if !slices.Equal(c[3:], wantArgs) {
				t.Errorf("clone call %q, want %q", c[3:], wantArgs)
			}
		}
	}
	if !sawStart {
		t.Error("no start call")
	}
	if e.count(t, "stop") == 0 || e.count(t, "deleteVM") == 0 {
		t.Error("Destroy did not stop and delete the VM through vmrun")
	}

	checkGoldUntouched(t, g)
}

// TestSnapshotOnce proves the gold snapshot is made once: two clones by one
// driver list the snapshots once and snapshot once; a second driver (a
// daemon restart) lists them again and finds it.
func TestSnapshotOnce(t *testing.T) {
	e := newEnv(t)
	g := makeGold(t, "img")
	d := e.driver(t)
	ctx := context.Background()
	must(t, d.Clone(ctx, spec(t, g, "a")))
	must(t, d.Clone(ctx, spec(t, g, "b")))
	if n := e.count(t, "snapshot"); n != 1 {
		t.Errorf("snapshot ran %d times, want 1", n)
	}
	if n := e.count(t, "listSnapshots"); n != 1 {
		t.Errorf("listSnapshots ran %d times, want 1", n)
	}
	d2 := e.driver(t)
	must(t, d2.Clone(ctx, spec(t, g, "c")))
	if n := e.count(t, "snapshot"); n != 1 {
		t.Errorf("after restart snapshot ran %d times, want still 1", n)
	}
	if n := e.count(t, "listSnapshots"); n != 2 {
		t.Errorf("after restart listSnapshots ran %d times, want 2", n)
	}
	checkGoldUntouched(t, g)
}

// TestSnapshotAlreadyExists proves "A snapshot with the name already exists"
// from vmrun snapshot (someone made it between list and snapshot) is not an
// error.
func TestSnapshotAlreadyExists(t *testing.T) {
	e := newEnv(t)
	g := makeGold(t, "img")
	ctx := context.Background()
	must(t, e.driver(t).Clone(ctx, spec(t, g, "a")))
	d := e.driver(t, "FAKEVMRUN_HIDE_SNAPSHOTS=1")
	must(t, d.Clone(ctx, spec(t, g, "b")))
	if n := e.count(t, "snapshot"); n != 2 {
		t.Fatalf("snapshot ran %d times, want 2 (the second refused)", n)
	}
}

// TestConcurrentClonesSerialized clones one gold from several goroutines
// while the stand-in holds the gold's lock (.vmx.lck) during each clone for
// a while: overlapping clones would fail with "file is already in use", as
// with VMware. All succeed, and the snapshot is made once.
func TestConcurrentClonesSerialized(t *testing.T) {
	e := newEnv(t)
	g := makeGold(t, "img")
	d := e.driver(t, "FAKEVMRUN_CLONE_DELAY=100ms")
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		s := spec(t, g, fmt.Sprintf("vm%d", i))
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = d.Clone(ctx, s)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("clone %d: %v", i, err)
		}
	}
	if n := e.count(t, "snapshot"); n != 1 {
		t.Errorf("snapshot ran %d times, want 1", n)
	}
	if n := e.count(t, "clone"); n != 4 {
		t.Errorf("clone ran %d times", n)
	}
	checkGoldUntouched(t, g)
}

// TestLocked proves a locked VM maps to ErrConflict with code "vm-locked"
// (HTTP 409): once injected, once with a real lock directory left by
// another VMware process on the gold .vmx.
func TestLocked(t *testing.T) {
	ctx := context.Background()
	t.Run("injected", func(t *testing.T) {
		e := newEnv(t)
		g := makeGold(t, "img")
		d := e.driver(t, "FAKEVMRUN_LOCKED=clone")
		s := spec(t, g, "x")
		err := d.Clone(ctx, s)
		if !errors.Is(err, errdefs.ErrConflict) || code(err) != "vm-locked" {
			t.Fatalf("Clone of a locked VM: %v (code %s)", err, code(err))
		}
		if _, err := os.Stat(filepath.Join(s.Dir, "x.vmx")); err == nil {
			t.Error("a failed clone left a .vmx")
		}
		checkGoldUntouched(t, g)
	})
	t.Run("lock-dir", func(t *testing.T) {
		e := newEnv(t)
		g := makeGold(t, "img")
		d := e.driver(t)
		must(t, d.Clone(ctx, spec(t, g, "a")))
		must(t, os.Mkdir(e.base(g)+".lck", 0o755))
		err := d.Clone(ctx, spec(t, g, "x"))
		if !errors.Is(err, errdefs.ErrConflict) || code(err) != "vm-locked" {
			t.Fatalf("Clone of a locked VM: %v (code %s)", err, code(err))
		}
		// Once the other process lets go, the same driver clones: the
		// failed attempt did not poison its state.
		must(t, os.Remove(e.base(g)+".lck"))
		must(t, d.Clone(ctx, spec(t, g, "y")))
		checkGoldUntouched(t, g)
	})
	t.Run("start", func(t *testing.T) {
		e := newEnv(t)
		g := makeGold(t, "img")
		s := spec(t, g, "x")
		must(t, e.driver(t).Clone(ctx, s))
		err := e.driver(t, "FAKEVMRUN_LOCKED=start").Start(ctx, s)
		if !errors.Is(err, errdefs.ErrConflict) || code(err) != "vm-locked" {
			t.Fatalf("Start of a locked VM: %v (code %s)", err, code(err))
		}
	})
}

// TestDiscoverHangBounded proves Discover returns when ctx ends although
// getGuestIPAddress hangs forever with a helper process holding its output
// open, with code "discovery-timeout", and that the helper is killed.
func TestDiscoverHangBounded(t *testing.T) {
	e := newEnv(t)
	g := makeGold(t, "img")
	s := spec(t, g, "h")
	d := e.driver(t, "FAKEVMRUN_IP_HANG=1")
	ctx := context.Background()
	must(t, d.Clone(ctx, s))
	must(t, d.Start(ctx, s))

	done := make(chan error, 1)
	go func() {
		dctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		_, err := d.Discover(dctx, s)
		done <- err
	}()
	var err error
	select {
	case err = <-done:
	case <-time.After(60 * time.Second): // a safety net against a hung test, not a speed assertion
		t.Fatal("Discover did not return after its context ended")
	}
	if code(err) != "discovery-timeout" || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Discover: %v (code %s)", err, code(err))
	}
	pidData := readFile(t, filepath.Join(e.state, "child.pid"))
	pid, _ := strconv.Atoi(string(pidData))
	if runtime.GOOS == "linux" {
		waitGone(t, pid)
	}
	must(t, d.Destroy(ctx, s))
}

// waitGone waits until process pid has exited (a zombie counts as gone).
func waitGone(t *testing.T, pid int) {
	t.Helper()
	for i := 0; i < 200; i++ {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil || strings.Contains(string(stat), ") Z ") {
			return
		}
		if !processExists(pid) {
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("vmrun's helper process %d survived the cancelled discovery", pid)
}

// TestDiscoverWaitsForTools proves Discover waits for the guest's tools (the
// stand-in reports the IP only some time after start).
func TestDiscoverWaitsForTools(t *testing.T) {
	e := newEnv(t)
	g := makeGold(t, "img")
	s := spec(t, g, "w")
	d := e.driver(t, "FAKEVMRUN_IP_DELAY=400ms")
	ctx := context.Background()
	must(t, d.Clone(ctx, s))
	must(t, d.Start(ctx, s))
	dctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	info, err := d.Discover(dctx, s)
	must(t, err)
	if info.IPAddress == "" {
		t.Fatal("no IP")
	}
	must(t, d.Destroy(ctx, s))
}

// TestDiscoverNotRunning proves Discover of a VM that is not powered on
// fails at once with hypervisor.ErrNotRunning rather than waiting.
func TestDiscoverNotRunning(t *testing.T) {
	e := newEnv(t)
	g := makeGold(t, "img")
	s := spec(t, g, "n")
	d := e.driver(t)
	ctx := context.Background()
	must(t, d.Clone(ctx, s))
	_, err := d.Discover(ctx, s)
	if !errors.Is(err, hypervisor.ErrNotRunning) || code(err) != "vm-not-running" {
		t.Fatalf("Discover of a stopped VM: %v (code %s)", err, code(err))
	}
}

// TestDestroy covers Destroy on half-made VMs (nothing cloned; cloned but
// never started), a guest that ignores the soft stop (stopped hard after
// StopTimeout) and a gold image removed since.
func TestDestroy(t *testing.T) {
	ctx := context.Background()
	t.Run("empty", func(t *testing.T) {
		e := newEnv(t)
		g := makeGold(t, "img")
		s := spec(t, g, "e")
		must(t, e.driver(t).Destroy(ctx, s))
		if len(e.calls(t)) != 0 {
			t.Errorf("vmrun called for a VM never cloned: %v", e.calls(t))
		}
	})
	t.Run("cloned-only", func(t *testing.T) {
		e := newEnv(t)
		g := makeGold(t, "img")
		s := spec(t, g, "c")
		d := e.driver(t)
		must(t, d.Clone(ctx, s))
		// A temp file of an interrupted .vmx edit is cleaned up too.
		must(t, os.WriteFile(filepath.Join(s.Dir, ".c.vmx.tmp123"), nil, 0o600))
		must(t, d.Destroy(ctx, s))
		if got := listDir(t, s.Dir); !slices.Equal(got, []string{"record.json"}) {
			t.Errorf("left %v", got)
		}
		checkGoldUntouched(t, g)
	})
	t.Run("soft-stop-hangs", func(t *testing.T) {
		e := newEnv(t)
		g := makeGold(t, "img")
		s := spec(t, g, "s")
		d := e.driver(t, "FAKEVMRUN_SOFT_STOP_HANG=1")
		d.cfg.StopTimeout = 300 * time.Millisecond
		must(t, d.Clone(ctx, s))
		must(t, d.Start(ctx, s))
		must(t, d.Destroy(ctx, s))
		var hard bool
		for _, c := range e.calls(t) {
			if c[2] == "stop" && c[len(c)-1] == "hard" {
				hard = true
			}
		}
		if !hard {
			t.Error("no hard stop after the soft stop timed out")
		}
		if st, _ := d.State(ctx, s); st != hypervisor.StateStopped {
			t.Errorf("state %v", st)
		}
	})
	t.Run("gold-gone", func(t *testing.T) {
		e := newEnv(t)
		g := makeGold(t, "img")
		s := spec(t, g, "g")
		d := e.driver(t)
		must(t, d.Clone(ctx, s))
		setWritable(g.root)
		must(t, os.RemoveAll(g.root))
		must(t, d.Destroy(ctx, s))
		if got := listDir(t, s.Dir); !slices.Equal(got, []string{"record.json"}) {
			t.Errorf("left %v", got)
		}
	})
}

// TestStartGUI proves Headless=false starts the VM with a window.
func TestStartGUI(t *testing.T) {
	e := newEnv(t)
	g := makeGold(t, "img")
	s := spec(t, g, "gui")
	s.Headless = false
	d := e.driver(t)
	ctx := context.Background()
	must(t, d.Clone(ctx, s))
	must(t, d.Start(ctx, s))
	for _, c := range e.calls(t) {
		if c[2] == "start" && c[len(c)-1] != "gui" {
			t.Errorf("start call %q", c)
		}
	}
	must(t, d.Destroy(ctx, s))
}

// TestCloneEdits checks the .vmx edits for other inputs: bridged and
// host-only networks, memory already a multiple of 4, a CPU count the gold's
// cores-per-socket divides (kept), a tiny memory size.
func TestCloneEdits(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	g := makeGold(t, "img")
	d := e.driver(t)
	cases := []struct {
		net       string
		cpus      int
		mem       int64
		wantMem   string
		wantCores bool
	}{
		{api.NetworkBridged, 4, 4096, "4096", true},
		{api.NetworkHostOnly, 1, 1, "4", false},
		{api.NetworkNAT, 2, 513, "516", true},
	}
	for i, c := range cases {
		s := spec(t, g, fmt.Sprintf("e%d", i))
		s.Network, s.CPUs, s.MemoryMiB = c.net, c.cpus, c.mem
		must(t, d.Clone(ctx, s))
		f, err := vmx.ReadFile(filepath.Join(s.Dir, s.ID+".vmx"))
		must(t, err)
		if v, _ := f.Get("ethernet0.connectionType"); v != c.net {
			t.Errorf("%d: connectionType %q", i, v)
		}
		if v, _ := f.Get("memsize"); v != c.wantMem {
			t.Errorf("%d: memsize %q want %s", i, v, c.wantMem)
		}
		if v, _ := f.Get("numvcpus"); v != strconv.Itoa(c.cpus) {
			t.Errorf("%d: numvcpus %q", i, v)
		}
		if f.Has("cpuid.coresPerSocket") != c.wantCores {
			t.Errorf("%d: coresPerSocket present=%v", i, f.Has("cpuid.coresPerSocket"))
		}
	}
	s := spec(t, g, "bad")
	s.Network = "wifi"
	if err := d.Clone(ctx, s); code(err) != "invalid-network-type" || !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("bad network: %v", err)
	}
	s = spec(t, g, "bad")
	s.ID = "../escape"
	if err := d.Clone(ctx, s); code(err) != "invalid-vm-id" {
		t.Errorf("bad id: %v", err)
	}
	// Cloning twice into the same directory is refused, not clobbered.
	s = spec(t, g, "twice")
	must(t, d.Clone(ctx, s))
	if err := d.Clone(ctx, s); code(err) != "vm-exists" {
		t.Errorf("second clone: %v", err)
	}
}

// TestImageVMX proves the gold .vmx is found anywhere under the image, Mac
// resource forks are ignored, and none or several .vmx are refused with the
// codes image-no-vmx and image-many-vmx.
func TestImageVMX(t *testing.T) {
	g := makeGold(t, "deep/er")
	got, err := findGoldVMX(g.root)
	if err != nil || got != g.vmx {
		t.Fatalf("findGoldVMX = %q, %v; want %q", got, err, g.vmx)
	}

	empty := t.TempDir()
	must(t, os.WriteFile(filepath.Join(empty, "disk.vmdk"), []byte(goldDisk), 0o644))
	if _, err := findGoldVMX(empty); code(err) != "image-no-vmx" || !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("no vmx: %v", err)
	}
	two := t.TempDir()
	for _, p := range []string{"a/a.vmx", "b.vmwarevm/b.VMX"} {
		must(t, os.MkdirAll(filepath.Dir(filepath.Join(two, p)), 0o755))
		must(t, os.WriteFile(filepath.Join(two, p), []byte(goldVMX), 0o644))
	}
	_, err = findGoldVMX(two)
	if code(err) != "image-many-vmx" || !strings.Contains(err.Error(), "b.VMX") {
		t.Errorf("two vmx: %v", err)
	}

	// Through Clone, too.
	e := newEnv(t)
	s := spec(t, gold{root: two}, "m")
	if err := e.driver(t).Clone(context.Background(), s); code(err) != "image-many-vmx" {
		t.Errorf("Clone with two vmx: %v", err)
	}
}

// TestNewFindsVmrun covers locating vmrun: the configured path, $VMRUN_PATH,
// $PATH, and the clear error naming every place looked at when it is
// nowhere (the daemon fails at start-up with it).
func TestNewFindsVmrun(t *testing.T) {
	t.Run("configured-missing", func(t *testing.T) {
		_, err := New(Config{VmrunPath: "/nonexistent/vmrun"})
		if code(err) != "hypervisor-not-installed" || !strings.Contains(err.Error(), "/nonexistent/vmrun") {
			t.Fatalf("New: %v", err)
		}
	})
	t.Run("env", func(t *testing.T) {
		t.Setenv("VMRUN_PATH", fakeVmrun)
		d, err := New(Config{Logger: testLogger(t)})
		must(t, err)
		if d.VmrunPath() != fakeVmrun {
			t.Fatalf("vmrun = %s", d.VmrunPath())
		}
	})
	t.Run("path", func(t *testing.T) {
		dir := t.TempDir()
		name := "vmrun"
		if runtime.GOOS == "windows" {
			name += ".exe"
		}
		must(t, os.Symlink(fakeVmrun, filepath.Join(dir, name)))
		t.Setenv("VMRUN_PATH", "")
		t.Setenv("PATH", dir)
		d, err := New(Config{Logger: testLogger(t)})
		must(t, err)
		if d.VmrunPath() != filepath.Join(dir, name) {
			t.Fatalf("vmrun = %s", d.VmrunPath())
		}
	})
	t.Run("missing", func(t *testing.T) {
		t.Setenv("VMRUN_PATH", "")
		t.Setenv("PATH", t.TempDir())
		var err error
		installed := false
		for _, p := range StandardVmrunPaths {
			if _, serr := os.Stat(p); serr == nil {
				installed = true
			}
		}
		if installed {
			// VMware is installed on this machine: check the message with
			// the same search over places that do not exist.
			var alt []string
			for _, p := range StandardVmrunPaths {
				alt = append(alt, filepath.Join(t.TempDir(), filepath.Base(p)))
			}
			_, err = findVmrun("", "", alt)
			for _, p := range alt {
				if !strings.Contains(err.Error(), p) {
					t.Errorf("error does not name %s", p)
				}
			}
		} else {
			_, err = New(Config{Logger: testLogger(t)})
			for _, p := range StandardVmrunPaths {
				if !strings.Contains(err.Error(), strconv.Quote(p)) {
					t.Errorf("error does not name %s: %v", p, err)
				}
			}
		}
		if code(err) != "hypervisor-not-installed" || !errors.Is(err, errdefs.ErrUnavailable) {
			t.Fatalf("code %q: %v", code(err), err)
		}
		for _, s := range []string{"$VMRUN_PATH", "$PATH"} {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("error does not mention %s: %v", s, err)
			}
		}
	})
	t.Run("bad-host-type", func(t *testing.T) {
		if _, err := New(Config{VmrunPath: fakeVmrun, HostType: "esx"}); code(err) != "invalid-host-type" {
			t.Fatalf("New: %v", err)
		}
	})
	t.Run("defaults", func(t *testing.T) {
		d, err := New(Config{VmrunPath: fakeVmrun, Logger: testLogger(t)})
		must(t, err)
		want := "ws"
		if runtime.GOOS == "darwin" {
			want = "fusion"
		}
		if d.cfg.HostType != want || d.cfg.SnapshotName != DefaultSnapshotName || d.cfg.StopTimeout <= 0 || d.Name() != "vmware" {
			t.Fatalf("defaults: %+v", d.cfg)
		}
	})
}

// TestErrorMapping proves vmrun's messages map to the right categories and
// codes, and that an unexpected failure keeps vmrun's message.
func TestErrorMapping(t *testing.T) {
	cases := []struct {
		msg      string
		category error
		code     string
	}{
		{"The file is already in use", errdefs.ErrConflict, "vm-locked"},
		{"Cannot open VM: /x/y.vmx, The virtual machine is in use by another process", errdefs.ErrConflict, "vm-locked"},
		{"Failed to lock the file", errdefs.ErrConflict, "vm-locked"},
		{"The virtual machine is not powered on: /x/y.vmx", errdefs.ErrConflict, "vm-not-running"},
		{"Cannot open VM: /x/y.vmx, The virtual machine cannot be found", errdefs.ErrUnavailable, "vmrun-failed"},
		{"Insufficient permissions in the host operating system", errdefs.ErrUnavailable, "vmrun-failed"},
	}
	for _, c := range cases {
		err := mapErr("doing it", &vmrunError{Args: []string{"start"}, ExitCode: 255, Message: c.msg})
		if !errors.Is(err, c.category) || code(err) != c.code {
			t.Errorf("%q -> %v (code %s), want %s", c.msg, err, code(err), c.code)
		}
		if c.code == "vm-not-running" && !errors.Is(err, hypervisor.ErrNotRunning) {
			t.Errorf("%q does not wrap hypervisor.ErrNotRunning", c.msg)
		}
	}

	// Through the stand-in: an unexpected error keeps vmrun's message.
	e := newEnv(t)
	g := makeGold(t, "img")
	s := spec(t, g, "f")
	ctx := context.Background()
	must(t, e.driver(t).Clone(ctx, s))
	err := e.driver(t, "FAKEVMRUN_FAIL=start:  Unable to connect to the MKS: too many socket connect failures  ").Start(ctx, s)
	_, msg := errdefs.CodeOf(err)
	if code(err) != "vmrun-failed" || !strings.Contains(msg, ": Unable to connect to the MKS: too many socket connect failures") ||
		strings.Contains(msg, "failures  ") {
		t.Fatalf("Start: code %s, message %q", code(err), msg)
	}
}

// TestStateComparesPaths proves State finds the VM in `vmrun list` whatever
// the spelling of its directory (relative parts, a trailing dot).
func TestStateComparesPaths(t *testing.T) {
	e := newEnv(t)
	g := makeGold(t, "img")
	s := spec(t, g, "p")
	d := e.driver(t)
	ctx := context.Background()
	must(t, d.Clone(ctx, s))
	must(t, d.Start(ctx, s))
	s2 := s
	s2.Dir = filepath.Join(s.Dir, "..", filepath.Base(s.Dir), ".")
	if st, err := d.State(ctx, s2); err != nil || st != hypervisor.StateRunning {
		t.Fatalf("State = %v, %v", st, err)
	}
	if comparablePath("/a/b/../c.vmx") != comparablePath("/a/c.vmx") {
		t.Error("comparablePath does not clean")
	}
	if runtime.GOOS == "darwin" || runtime.GOOS == "windows" {
		if comparablePath("/A/B.vmx") != comparablePath("/a/b.VMX") {
			t.Error("comparablePath is case-sensitive on a case-insensitive OS")
		}
	}
	must(t, d.Destroy(ctx, s))
}

// TestGuestOSName checks the readable names of common guestOS values, that
// the pretty name recorded by VMware Tools wins, and that the identifier is
// kept as the .vmx gives it.
func TestGuestOSName(t *testing.T) {
	cases := map[string]string{
		"darwin23-64":           "macOS 14",
		"darwin19-64":           "macOS 10.15",
		"darwin-64":             "macOS",
		"windows11-64":          "Microsoft Windows 11",
		"windows9-64":           "Microsoft Windows 10 (64-bit)",
		"windows2019srv-64":     "Microsoft Windows Server 2019",
		"windows7":              "Microsoft Windows 7",
		"ubuntu-64":             "Ubuntu Linux (64-bit)",
		"debian12-64":           "Debian GNU/Linux 12 (64-bit)",
		"debian10":              "Debian GNU/Linux 10",
		"other5xlinux-64":       "Linux (64-bit)",
		"other-64":              "Other (64-bit)",
		"":                      "unknown",
		"solaris11-64":          "solaris11-64",
		"rhel9-64":              "Red Hat Enterprise Linux 9 (64-bit)",
		"winNetEnterprise-64":   "Microsoft Windows Server 2003 (64-bit)",
		"  DEBIAN11-64  ":       "Debian GNU/Linux 11 (64-bit)",
		"freebsd13-64":          "FreeBSD 13 (64-bit)",
		"windows12srvnext-64":   "Microsoft Windows Server (64-bit)",
		"windows2022srvnext-64": "Microsoft Windows Server 2022",
	}
	for id, want := range cases {
		if got := GuestOSName(id); got != want {
			t.Errorf("GuestOSName(%q) = %q, want %q", id, got, want)
		}
	}
	f := vmx.Parse([]byte("guestOS = \"debian12-64\"\nguestInfo.detailed.data = \"bitness='64' prettyName='Debian GNU/Linux 12 (bookworm)'\"\n"))
	if id, name := guestOS(f); id != "debian12-64" || name != "Debian GNU/Linux 12 (bookworm)" {
		t.Errorf("guestOS with a pretty name = %q, %q", id, name)
	}
	f = vmx.Parse([]byte("guestOS = \"other26xlinux-64\"\n"))
	if id, name := guestOS(f); id != "other26xlinux-64" || name != "Linux (64-bit)" {
		t.Errorf("guestOS = %q, %q; want the identifier as the .vmx gives it and a readable name", id, name)
	}
}

// TestCloneWaitsForGoldUnderCtx proves a Clone queued behind another
// operation on the same gold VM gives up when its context ends, without
// touching vmrun.
func TestCloneWaitsForGoldUnderCtx(t *testing.T) {
	e := newEnv(t)
	g := makeGold(t, "img")
	d := e.driver(t)
	busy := d.gold(filepath.Dir(e.base(g)))
	must(t, busy.lock(context.Background()))
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err := d.Clone(ctx, spec(t, g, "q"))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Clone behind a busy gold: %v", err)
	}
	if n := len(e.calls(t)); n != 0 {
		t.Fatalf("vmrun ran %d times", n)
	}
	busy.unlock()
	must(t, d.Clone(context.Background(), spec(t, g, "r")))
}

// TestBaseVMOutsideGold proves the snapshot state lives in the driver's own
// directory: the base .vmx points at the gold disk by absolute path, the
// .vmsd and the delta disk VMware writes lie beside it, a new driver (a
// restart) reuses it, and Reap removes it only once its gold image is gone.
func TestBaseVMOutsideGold(t *testing.T) {
	e := newEnv(t)
	g := makeGold(t, "img")
	other := makeGold(t, "other")
	ctx := context.Background()
	must(t, e.driver(t).Clone(ctx, spec(t, g, "a")))
	must(t, e.driver(t).Clone(ctx, spec(t, other, "b")))
	f, err := vmx.ReadFile(e.base(g))
	must(t, err)
	if v, _ := f.Get("scsi0:0.fileName"); v != g.vmdk {
		t.Errorf("base VM disk %q, want the gold disk %q", v, g.vmdk)
	}
	if got := listDir(t, filepath.Dir(e.base(g))); !slices.Equal(got, []string{"base-000001.vmdk", "base.vmsd", "base.vmx", "source"}) {
		t.Errorf("base VM directory holds %v", got)
	}
	d := e.driver(t)
	must(t, d.Clone(ctx, spec(t, g, "c")))
	if n := e.count(t, "snapshot"); n != 2 {
		t.Errorf("snapshot ran %d times, want 2 (one per image)", n)
	}
	checkGoldUntouched(t, g)

	must(t, d.Reap(ctx, func(string) bool { return true }))
	if !exists(e.base(g)) || !exists(e.base(other)) {
		t.Fatal("Reap removed the base VM of an image that is still there")
	}
	setWritable(other.root)
	must(t, os.RemoveAll(other.root))
	must(t, d.Reap(ctx, func(string) bool { return true }))
	if exists(filepath.Dir(e.base(other))) {
		t.Error("Reap kept the base VM of a gone image")
	}
	if !exists(e.base(g)) {
		t.Error("Reap removed the base VM of an image that is still there")
	}
}
