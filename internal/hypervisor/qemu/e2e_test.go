package qemu

// End-to-end tests with real QEMU and the real test guest built by
// testdata/guest/build.sh. They find the guest through GOLDVM_TEST_GUEST (a
// path to guest.qcow2) or by running the build script. When neither works
// they skip, except under CI=true, where they fail.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/goldvm/goldvm/internal/diskfmt/diskfmttest"
	"github.com/goldvm/goldvm/internal/hypervisor/drivertest"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/hypervisor"
)

const (
	guestOSPrefix = "goldvm test guest"
	bootTimeout   = 120 * time.Second
)

var (
	guestOnce sync.Once
	guestPath string
	guestErr  error
)

// unavailable skips the test, or fails it under CI=true.
func unavailable(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

// testGuest returns the path of the test guest's qcow2.
func testGuest(t *testing.T) string {
	t.Helper()
	if testing.Short() && os.Getenv("CI") != "true" {
		t.Skip("-short: no end-to-end tests")
	}
	guestOnce.Do(func() {
		if p := os.Getenv("GOLDVM_TEST_GUEST"); p != "" {
			if _, err := os.Stat(p); err != nil {
				guestErr = err
				return
			}
			guestPath = p
			return
		}
		script, err := filepath.Abs("../../../testdata/guest/build.sh")
		if err != nil {
			guestErr = err
			return
		}
		if _, err := os.Stat(script); err != nil {
			guestErr = err
			return
		}
		var stderr bytes.Buffer
		cmd := exec.Command("bash", script)
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			guestErr = errors.New(err.Error() + ": " + tail(stderr.String(), 2000))
			return
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		guestPath = strings.TrimSpace(lines[len(lines)-1])
		if _, err := os.Stat(guestPath); err != nil {
			guestErr = err
		}
	})
	if guestErr != nil {
		unavailable(t, "test guest unavailable: %v", guestErr)
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		unavailable(t, "qemu-system-x86_64 not installed")
	}
	return guestPath
}

// goldDir makes a gold image directory holding a copy of the guest disk,
// as the image store would (a copy, not a link: a rebuild of the cached
// guest must not change the backing file under running overlays).
func goldDir(t *testing.T, guest string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "gold")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	in, err := os.Open(guest)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(filepath.Join(dir, "guest.qcow2"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return dir
}

func testLogger(t *testing.T) *slog.Logger { return drivertest.Logger(t) }

// runTag makes this run's VM ids unique on the host (QEMU -name, taps).
var runTag = func() string {
	var b [3]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}()

// newSpec returns the spec of a new VM; its id is id plus this run's tag.
func newSpec(t *testing.T, id, gold, network string) hypervisor.Spec {
	t.Helper()
	id += "-" + runTag
	dir := filepath.Join(t.TempDir(), id)
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return hypervisor.Spec{ID: id, Dir: dir, GoldDir: gold, GoldDisk: preparedGold(t, gold), CPUs: 1, MemoryMiB: 128, Network: network, Headless: true}
}

// destroyOnCleanup makes sure no QEMU outlives the test.
func destroyOnCleanup(t *testing.T, d *Driver, spec hypervisor.Spec) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := d.Destroy(ctx, spec); err != nil {
			t.Errorf("cleanup destroy %s: %v", spec.ID, err)
		}
	})
}

func codeOf(err error) string { c, _ := errdefs.CodeOf(err); return c }

// bootAndDiscover clones, starts and discovers a VM.
func bootAndDiscover(t *testing.T, d *Driver, spec hypervisor.Spec) hypervisor.GuestInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	destroyOnCleanup(t, d, spec)
	t0 := time.Now()
	if err := d.Clone(ctx, spec); err != nil {
		t.Fatalf("clone %s: %v", spec.ID, err)
	}
	t1 := time.Now()
	if err := d.Start(ctx, spec); err != nil {
		t.Fatalf("start %s: %v", spec.ID, err)
	}
	t2 := time.Now()
	info, err := d.Discover(ctx, spec)
	if err != nil {
		console, _ := os.ReadFile(filepath.Join(spec.Dir, fileConsole))
		t.Fatalf("discover %s: %v\nconsole:\n%s", spec.ID, err, tail(string(console), 3000))
	}
	t.Logf("%s: clone %v, start (QMP up) %v, discover %v; ip=%s os=%q",
		spec.ID, t1.Sub(t0).Round(time.Millisecond), t2.Sub(t1).Round(time.Millisecond), time.Since(t2).Round(time.Millisecond), info.IPAddress, info.GuestOS)
	if !strings.HasPrefix(info.GuestOS, guestOSPrefix) {
		t.Errorf("guest OS = %q, want %q…", info.GuestOS, guestOSPrefix)
	}
	return info
}

func TestE2ELifecycle(t *testing.T) {
	guest := testGuest(t)
	gold := goldDir(t, guest)
	d, err := New(Config{Accel: "auto", UserNet: true, Sandbox: true, RunDir: t.TempDir(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("accel: %s (%s)", d.accel.Name, d.accel.Why)
	spec := newSpec(t, "01e2elifecycle", gold, api.NetworkNAT)
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()

	info := bootAndDiscover(t, d, spec)
	if info.IPAddress != "10.0.2.15" {
		t.Errorf("user-mode guest IP = %q, want 10.0.2.15", info.IPAddress)
	}

	// The overlay is a linked clone of the gold disk.
	ii, err := d.qemuImgInfo(ctx, filepath.Join(spec.Dir, fileDisk), "qcow2", true)
	if err != nil {
		t.Fatal(err)
	}
	goldDisk := filepath.Join(gold, "guest.qcow2")
	if ii.Format != "qcow2" || (ii.FullBacking != goldDisk && ii.BackingFilename != goldDisk) {
		t.Errorf("overlay info: %+v", ii)
	}
	for _, f := range []string{fileDisk, fileQMP, fileQGA, filePID, fileConsole} {
		fi, err := os.Stat(filepath.Join(spec.Dir, f))
		if err != nil {
			t.Errorf("%s: %v", f, err)
		} else if fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s mode %v, want 0600", f, fi.Mode().Perm())
		}
	}
	if port, err := SSHForwardPort(spec.Dir); err != nil || port <= 0 {
		t.Errorf("ssh forward port: %d %v", port, err)
	} else if want := fmt.Sprintf("127.0.0.1:%d", port); info.SSHAddress != want {
		t.Errorf("discovered ssh address %q, want %q", info.SSHAddress, want)
	} else {
		// QEMU listens there for the guest.
		c, err := net.DialTimeout("tcp", info.SSHAddress, 5*time.Second)
		if err != nil {
			t.Errorf("dialing the forwarded ssh address: %v", err)
		} else {
			c.Close()
		}
	}

	st, err := d.State(ctx, spec)
	if err != nil || st != hypervisor.StateRunning {
		t.Errorf("state = %q, %v", st, err)
	}
	png, err := d.Screenshot(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) {
		t.Errorf("screenshot is not a PNG (%d bytes)", len(png))
	}
	t.Logf("screenshot: %d bytes", len(png))

	// Paused and resumed.
	qmp := func(cmd string) {
		t.Helper()
		if err := d.withQMP(ctx, spec, func(q *qmpConn) error { _, err := q.Execute(ctx, cmd, nil); return err }); err != nil {
			t.Fatalf("qmp %s: %v", cmd, err)
		}
	}
	qmp("stop")
	if st, err := d.State(ctx, spec); err != nil || st != hypervisor.StatePaused {
		t.Errorf("state after stop = %q, %v", st, err)
	}
	qmp("cont")

	// A guest reboot keeps the VM (no -no-reboot): reset it and discover again.
	watchReset := make(chan string, 1)
	wctx, wcancel := context.WithCancel(ctx)
	go func() {
		r, err := d.Watch(wctx, spec)
		if err != nil {
			r = "error: " + err.Error()
		}
		watchReset <- r
	}()
	qmp("system_reset")
	info2, err := d.Discover(ctx, spec)
	if err != nil || info2.IPAddress != info.IPAddress || !strings.HasPrefix(info2.GuestOS, guestOSPrefix) {
		t.Errorf("discover after reboot: %+v %v", info2, err)
	}
	if st, err := d.State(ctx, spec); err != nil || st != hypervisor.StateRunning {
		t.Errorf("state after reboot = %q, %v", st, err)
	}
	wcancel()
	if r := <-watchReset; !strings.Contains(r, context.Canceled.Error()) {
		t.Errorf("Watch returned on a reboot: %q", r)
	}

	// Start again is a no-op reattach; a new driver sees the same VM.
	if err := d.Start(ctx, spec); err != nil {
		t.Errorf("second start: %v", err)
	}
	d2, err := New(Config{UserNet: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := d2.State(ctx, spec); err != nil || st != hypervisor.StateRunning {
		t.Errorf("state from a new driver = %q, %v", st, err)
	}

	// Watch returns when the process is killed.
	pid, ok := d.livePID(spec)
	if !ok {
		t.Fatal("no pid")
	}
	watchCh := make(chan string, 1)
	go func() {
		r, err := d2.Watch(ctx, spec)
		if err != nil {
			r = "error: " + err.Error()
		}
		watchCh <- r
	}()
	time.Sleep(500 * time.Millisecond) // let Watch attach (not required for correctness)
	t.Logf("%s killing", time.Now().Format("15:04:05.000"))
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-watchCh:
		if r != "process exited" {
			t.Errorf("watch reason = %q", r)
		}
	case <-ctx.Done():
		t.Fatal("Watch did not return after kill -9")
	}
	if st, err := d.State(ctx, spec); err != nil || st != hypervisor.StateStopped {
		t.Errorf("state after kill = %q, %v", st, err)
	}
	if _, err := d.Screenshot(ctx, spec); !errors.Is(err, hypervisor.ErrNotRunning) {
		t.Errorf("screenshot of a stopped VM: %v", err)
	}

	t.Logf("%s destroying", time.Now().Format("15:04:05.000"))
	// Destroy leaves nothing but the directory and the console's tail
	// (which Console still answers); a second one is fine.
	before, err := d.Console(ctx, spec, 1<<20)
	if err != nil || !strings.Contains(string(before), "goldvm-guest: ") {
		t.Errorf("console before destroy: %v, %q", err, before)
	}
	for i := 0; i < 2; i++ {
		if err := d.Destroy(ctx, spec); err != nil {
			t.Fatalf("destroy #%d: %v", i+1, err)
		}
	}
	ents, _ := os.ReadDir(spec.Dir)
	for _, e := range ents {
		if e.Name() != fileConsoleEnd {
			t.Errorf("left behind: %s", e.Name())
		}
	}
	if after, err := d.Console(ctx, spec, 1<<20); err != nil || string(after) != string(before) {
		t.Errorf("console after destroy: %v, %q; want what it was before, %q", err, after, before)
	}
	if _, err := os.Stat(spec.Dir); err != nil {
		t.Errorf("spec.Dir removed: %v", err)
	}
	if _, err := os.Stat(goldDisk); err != nil {
		t.Errorf("gold disk gone: %v", err)
	}
}

func TestE2ETwoVMsOneGold(t *testing.T) {
	guest := testGuest(t)
	gold := goldDir(t, guest)
	d, err := New(Config{UserNet: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	a := newSpec(t, "01e2etwo-a", gold, api.NetworkNAT)
	b := newSpec(t, "01e2etwo-b", gold, api.NetworkNAT)
	var wg sync.WaitGroup
	for _, s := range []hypervisor.Spec{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			bootAndDiscover(t, d, s)
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	pa, _ := d.livePID(a)
	pb, _ := d.livePID(b)
	if pa == 0 || pb == 0 || pa == pb {
		t.Fatalf("pids %d %d", pa, pb)
	}

	// Destroying A gracefully (ACPI powerdown): B keeps running; Watch on A
	// reports the guest's own shutdown.
	watchCh := make(chan string, 1)
	go func() {
		r, err := d.Watch(ctx, a)
		if err != nil {
			r = "error: " + err.Error()
		}
		watchCh <- r
	}()
	time.Sleep(500 * time.Millisecond)
	if err := d.Destroy(ctx, a); err != nil {
		t.Fatal(err)
	}
	if r := <-watchCh; r != "guest-shutdown" {
		t.Errorf("watch reason on destroy = %q, want guest-shutdown (ACPI powerdown honoured)", r)
	}
	if st, err := d.State(ctx, b); err != nil || st != hypervisor.StateRunning {
		t.Errorf("B after destroying A: %q %v", st, err)
	}
	if isVMProcess(pa, a.ID) {
		t.Errorf("A's QEMU still runs")
	}
	if err := d.Destroy(ctx, b); err != nil {
		t.Fatal(err)
	}
	if isVMProcess(pb, b.ID) {
		t.Errorf("B's QEMU still runs")
	}
}

func TestE2ELockedOverlay(t *testing.T) {
	guest := testGuest(t)
	gold := goldDir(t, guest)
	d, err := New(Config{UserNet: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	spec := newSpec(t, "01e2elocked", gold, api.NetworkNAT)
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	if err := d.Clone(ctx, spec); err != nil {
		t.Fatal(err)
	}
	// Another process opens the overlay read-write and holds it. Probing
	// the lock with qemu-img (which takes a shared lock itself) before that
	// QEMU has opened the disk would make it fail to lock: wait for the
	// open first, and start it again if it lost the race anyway.
	disk := filepath.Join(spec.Dir, fileDisk)
	var other *exec.Cmd
	var exited chan struct{} // closed when other has been waited for
	defer func() {
		if other != nil {
			other.Process.Kill()
			<-exited
		}
	}()
	for attempt := 1; ; attempt++ {
		other = exec.Command("qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-nodefaults", "-display", "none", "-S",
			"-drive", "file="+disk+",if=virtio,format=qcow2")
		var oerr bytes.Buffer
		other.Stderr = &oerr
		if err := other.Start(); err != nil {
			t.Fatal(err)
		}
		exited = make(chan struct{})
		go func(c *exec.Cmd, done chan struct{}) { c.Wait(); close(done) }(other, exited)
		locked := false
		for !locked {
			select {
			case <-exited:
			case <-ctx.Done():
				t.Fatalf("the other QEMU never locked the disk: %s", oerr.String())
			case <-time.After(50 * time.Millisecond):
				if diskfmttest.HasOpen(other.Process.Pid, disk) {
					_, err := d.qemuImgInfo(ctx, disk, "qcow2", false)
					locked = err != nil && isLockError(err.Error())
				}
				continue
			}
			break
		}
		if locked {
			break
		}
		if attempt == 5 {
			t.Fatalf("the other QEMU exited %d times without locking the disk: %s", attempt, oerr.String())
		}
		t.Logf("the other QEMU exited before it locked the disk (attempt %d): %s", attempt, oerr.String())
		other = nil
	}
	err = d.Start(ctx, spec)
	if codeOf(err) != "vm-locked" || !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("start on a locked overlay: %v (code %s)", err, codeOf(err))
	}
	t.Logf("start: %v", err)
	if err := d.Clone(ctx, spec); codeOf(err) != "vm-locked" {
		t.Errorf("clone over a locked overlay: %v", err)
	}
	if err := d.Destroy(ctx, spec); codeOf(err) != "vm-locked" {
		t.Errorf("destroy of a locked overlay: %v", err)
	}
	if _, err := os.Stat(filepath.Join(spec.Dir, fileDisk)); err != nil {
		t.Errorf("locked overlay was removed: %v", err)
	}
	other.Process.Kill()
	<-exited
	other = nil
	if err := d.Destroy(ctx, spec); err != nil {
		t.Errorf("destroy after unlock: %v", err)
	}
}

const launcherMarker = "GOLDVM_TEST_LAUNCHER_DIR"

// TestE2EOutlivesDaemon starts a VM from a separate process that then exits,
// like a daemon that stops, and checks that a new driver reattaches to it.
func TestE2EOutlivesDaemon(t *testing.T) {
	guest := testGuest(t)
	if dir := os.Getenv(launcherMarker); dir != "" {
		// The short-lived "daemon".
		d, err := New(Config{UserNet: true, Sandbox: true})
		if err != nil {
			t.Fatal(err)
		}
		gold := os.Getenv("GOLDVM_TEST_GOLD")
		spec := hypervisor.Spec{ID: filepath.Base(dir), Dir: dir, GoldDir: gold, GoldDisk: preparedGold(t, gold), CPUs: 1, MemoryMiB: 128, Network: api.NetworkNAT, Headless: true}
		ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
		defer cancel()
		if err := d.Clone(ctx, spec); err != nil {
			t.Fatal(err)
		}
		if err := d.Start(ctx, spec); err != nil {
			t.Fatal(err)
		}
		return
	}
	gold := goldDir(t, guest)
	spec := newSpec(t, "01e2eoutlives", gold, api.NetworkNAT)
	d, err := New(Config{UserNet: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	destroyOnCleanup(t, d, spec)
	cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v")
	cmd.Env = append(os.Environ(), launcherMarker+"="+spec.Dir, "GOLDVM_TEST_GOLD="+gold, "GOLDVM_TEST_GUEST="+guest)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatalf("launcher: %v\n%s", err, out)
	}
	// The launcher has exited; its VM runs on.
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	if st, err := d.State(ctx, spec); err != nil || st != hypervisor.StateRunning {
		t.Fatalf("state after the launcher exited = %q, %v", st, err)
	}
	info, err := d.Discover(ctx, spec)
	if err != nil || !strings.HasPrefix(info.GuestOS, guestOSPrefix) {
		t.Fatalf("discover: %+v %v", info, err)
	}
	// Watch a QEMU that is not our child: guest powers off by itself.
	watchCh := make(chan string, 1)
	go func() {
		r, err := d.Watch(ctx, spec)
		if err != nil {
			r = "error: " + err.Error()
		}
		watchCh <- r
	}()
	time.Sleep(500 * time.Millisecond)
	if err := d.withQMP(ctx, spec, func(q *qmpConn) error { _, err := q.Execute(ctx, "system_powerdown", nil); return err }); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-watchCh:
		if r != "guest-shutdown" {
			t.Errorf("watch reason = %q, want guest-shutdown", r)
		}
	case <-ctx.Done():
		t.Fatal("Watch did not return after the guest powered off")
	}
	if st, err := d.State(ctx, spec); err != nil || st != hypervisor.StateStopped {
		t.Errorf("state after poweroff = %q, %v", st, err)
	}
}

// TestE2EGoldFormats boots linked clones of VMDK (split sparse: a descriptor
// plus extents, converted to qcow2 at publish) and raw gold disks.
func TestE2EGoldFormats(t *testing.T) {
	guest := testGuest(t)
	d, err := New(Config{UserNet: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		format, file string
		opts         []string
	}{
		{"vmdk", "disk.vmdk", []string{"-o", "subformat=twoGbMaxExtentSparse"}},
		{"raw", "disk.img", nil},
	} {
		t.Run(tc.format, func(t *testing.T) {
			gold := filepath.Join(t.TempDir(), "gold")
			if err := os.MkdirAll(gold, 0o755); err != nil {
				t.Fatal(err)
			}
			args := append([]string{"convert", "-O", tc.format}, tc.opts...)
			args = append(args, guest, filepath.Join(gold, tc.file))
			if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
				t.Fatalf("qemu-img convert: %v: %s", err, out)
			}
			ents, _ := os.ReadDir(gold)
			var names []string
			for _, e := range ents {
				names = append(names, e.Name())
			}
			t.Logf("gold dir: %v", names)
			spec := newSpec(t, "01e2efmt-"+tc.format, gold, api.NetworkNAT)
			bootAndDiscover(t, d, spec)
			ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
			defer cancel()
			ii, err := d.qemuImgInfo(ctx, filepath.Join(spec.Dir, fileDisk), "qcow2", true)
			if err != nil {
				t.Fatal(err)
			}
			// A VMDK is served as the qcow2 converted from it at publish.
			if ii.BackingFormat != spec.GoldDisk.Format || ii.BackingFilename != spec.GoldDisk.Path {
				t.Errorf("overlay backing: %+v, gold %+v", ii, spec.GoldDisk)
			}
			if want := map[string]string{"vmdk": "qcow2", "raw": "raw"}[tc.format]; spec.GoldDisk.Format != want {
				t.Errorf("%s gold served as %+v", tc.format, spec.GoldDisk)
			}
		})
	}
}
