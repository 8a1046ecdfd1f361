package e2e

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
)

// TestUnprivilegedDaemon runs the daemon as an ordinary user (nobody, when
// the tests run as root): QEMU gets user-mode networking, so the record's
// ip_address is the guest's own 10.0.2.15 and ssh_address the loopback
// port forwarded to the guest's port 22, where QEMU answers; networks that
// need root are refused up front; delete cleans up as usual.
func TestUnprivilegedDaemon(t *testing.T) {
	requireEnv(t)
	dataDir, cred := ordinaryUserDataDir(t)
	srv := newImageServer(t)
	cb := newCallbackServer(t)
	d := startDaemonAs(t, dataDir, nil, cred)
	img := publish(t, srv, "tar.gz")

	req := createReq(img, cb.URL)
	req.NetworkType = "hostonly"
	if _, err := d.client.CreateVM(context.Background(), req); !isAPIError(err, 400, "network-needs-root") {
		t.Errorf("hostonly as an ordinary user: %v, want 400 network-needs-root", err)
	}

	v := mustCreate(t, d, createReq(img, cb.URL))
	got := waitVM(t, d, v.ID, bootTimeout)
	if got.Status != api.StatusRunning || !strings.Contains(got.GuestOS, "goldvm test guest") {
		t.Fatalf("as an ordinary user: %s, want running", fmtVM(got))
	}
	if got.IPAddress != "10.0.2.15" {
		t.Errorf("ip_address %q, want the user-mode guest address 10.0.2.15", got.IPAddress)
	}
	host, port, err := net.SplitHostPort(got.SSHAddress)
	if err != nil || host != "127.0.0.1" || port == "0" {
		t.Fatalf("ssh_address %q, want 127.0.0.1:<port>", got.SSHAddress)
	}
	c, err := net.DialTimeout("tcp", got.SSHAddress, 5*time.Second)
	if err != nil {
		t.Errorf("dialing ssh_address: %v", err)
	} else {
		c.Close()
	}
	if body := cb.waitCallback(t, v.ID, time.Minute); body.SSHAddress != got.SSHAddress {
		t.Errorf("callback ssh_address %q, want %q", body.SSHAddress, got.SSHAddress)
	}
	if pids := processesMatching("goldvm-" + v.ID); len(pids) != 1 {
		t.Fatalf("QEMU processes for %s: %v, want 1", v.ID, pids)
	} else if cred != nil {
		st, err := os.Stat("/proc/" + strconv.Itoa(pids[0]))
		if err != nil {
			t.Fatal(err)
		}
		if owner := st.Sys().(*syscall.Stat_t).Uid; owner != cred.Uid {
			t.Errorf("QEMU runs as uid %d, want %d", owner, cred.Uid)
		}
	}
	if err := d.client.DeleteVM(context.Background(), v.ID); err != nil {
		t.Fatalf("delete: %v", err)
	}
	assertGone(t, d, v.ID)
}

// ordinaryUserDataDir returns a data directory for a daemon run as an
// ordinary user, and that user: nobody when the tests run as root (nil:
// the tests' own user).
func ordinaryUserDataDir(t *testing.T) (string, *syscall.Credential) {
	t.Helper()
	if os.Geteuid() != 0 {
		return filepath.Join(t.TempDir(), "data"), nil
	}
	cred := nobody(t)
	// t.TempDir's directories are 0700 root: nobody needs its own.
	base, err := os.MkdirTemp("", "goldvm-e2e-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chown(base, int(cred.Uid), int(cred.Gid)); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(base, "data"), cred
}

// TestQEMUAsUnprivilegedUser runs the daemon as root with --qemu-user
// nobody: the VM gets its tap on the NAT bridge and a reachable address
// as usual, but its QEMU runs as nobody (owning the VM's directory and
// tap); screenshots, a daemon restart (reattach) and delete work.
func TestQEMUAsUnprivilegedUser(t *testing.T) {
	base := searchableBase(t, "QEMU as nobody")
	uid := int(nobody(t).Uid)
	srv := newImageServer(t)
	cb := newCallbackServer(t)
	d := startDaemon(t, filepath.Join(base, "data"), "--qemu-user", "nobody")
	img := publish(t, srv, "tar.gz")

	v := mustCreate(t, d, createReq(img, cb.URL))
	got := waitVM(t, d, v.ID, bootTimeout)
	if got.Status != api.StatusRunning || !strings.HasPrefix(got.IPAddress, "10.213.0.") {
		t.Fatalf("with --qemu-user: %s, want running on the NAT bridge", fmtVM(got))
	}
	if err := pingGuest(got.IPAddress); err != nil {
		t.Errorf("ping %s: %v", got.IPAddress, err)
	}
	qemuUID := func() int {
		t.Helper()
		pids := processesMatching("goldvm-" + v.ID)
		if len(pids) != 1 {
			t.Fatalf("QEMU processes for %s: %v, want 1", v.ID, pids)
		}
		return int(ownerOf(t, "/proc/"+strconv.Itoa(pids[0])))
	}
	if got := qemuUID(); got != uid {
		t.Errorf("QEMU runs as uid %d, want nobody (%d)", got, uid)
	}
	// QEMU can reach the gold image and its VM's directory, others cannot
	// list them.
	for _, dir := range []string{"", "vms", "images"} {
		if fi, err := os.Stat(filepath.Join(base, "data", dir)); err != nil {
			t.Error(err)
		} else if fi.Mode().Perm() != 0o711 {
			t.Errorf("data dir %q: mode %v, want 0711", dir, fi.Mode().Perm())
		}
	}
	// QEMU writes the screendump itself, as nobody, into the VM's directory.
	checkScreenshot(t, d, v.ID)

	// Another daemon on the host, starting, reaps stray VMs and taps: this
	// VM's tap, which its QEMU holds as a descriptor, is not stray.
	other := startDaemon(t, filepath.Join(t.TempDir(), "other"))
	other.stop()
	if err := pingGuest(got.IPAddress); err != nil {
		t.Errorf("ping %s after another daemon started: %v", got.IPAddress, err)
	}

	// A restarted daemon reattaches to the unprivileged QEMU.
	d.stop()
	d.start("--qemu-user", "nobody")
	if got := waitVM(t, d, v.ID, time.Minute); got.Status != api.StatusRunning {
		t.Errorf("after restart: %s", fmtVM(got))
	}
	if got := qemuUID(); got != uid {
		t.Errorf("after restart QEMU runs as uid %d, want %d", got, uid)
	}
	if err := d.client.DeleteVM(context.Background(), v.ID); err != nil {
		t.Fatalf("delete: %v", err)
	}
	assertGone(t, d, v.ID)
}

// TestQEMUPerVMUsers: with --qemu-uid-range each VM's QEMU runs as a
// user id of its own, which owns the VM's 0700 directory and disk: one
// VM's QEMU user can read the shared gold image and its own disk, not the
// other VM's. The ids survive a daemon restart.
func TestQEMUPerVMUsers(t *testing.T) {
	base := searchableBase(t, "a user id of its own for each QEMU")
	const first, last = 600500, 600509
	uidFlag := []string{"--qemu-uid-range", strconv.Itoa(first) + "-" + strconv.Itoa(last)}
	dataDir := filepath.Join(base, "data")
	srv := newImageServer(t)
	cb := newCallbackServer(t)
	d := startDaemon(t, dataDir, uidFlag...)
	img := publish(t, srv, "tar.gz")

	a := mustCreate(t, d, createReq(img, cb.URL))
	b := mustCreate(t, d, createReq(img, cb.URL))
	for _, v := range []*api.VM{a, b} {
		got := waitVM(t, d, v.ID, bootTimeout)
		if got.Status != api.StatusRunning || !strings.HasPrefix(got.IPAddress, "10.213.0.") {
			t.Fatalf("with --qemu-uid-range: %s, want running on the NAT bridge", fmtVM(got))
		}
		if err := pingGuest(got.IPAddress); err != nil {
			t.Errorf("ping %s: %v", got.IPAddress, err)
		}
	}
	// uids returns the user of each VM's QEMU, checking that it owns the
	// VM's directory (0700) and disk.
	uids := func() map[string]uint32 {
		t.Helper()
		m := map[string]uint32{}
		for _, v := range []*api.VM{a, b} {
			pids := processesMatching("goldvm-" + v.ID)
			if len(pids) != 1 {
				t.Fatalf("QEMU processes for %s: %v, want 1", v.ID, pids)
			}
			uid := ownerOf(t, "/proc/"+strconv.Itoa(pids[0]))
			dir := filepath.Join(dataDir, "vms", v.ID)
			if fi, err := os.Stat(dir); err != nil {
				t.Error(err)
			} else if fi.Mode().Perm() != 0o700 {
				t.Errorf("VM directory %s: mode %v, want 0700", dir, fi.Mode().Perm())
			}
			if du, fu := ownerOf(t, dir), ownerOf(t, filepath.Join(dir, "disk.qcow2")); uid < first || uid > last || du != uid || fu != uid {
				t.Errorf("VM %s: QEMU runs as %d, its directory belongs to %d, its disk to %d; want one id from %d-%d", v.ID, uid, du, fu, first, last)
			}
			m[v.ID] = uid
		}
		if m[a.ID] == m[b.ID] {
			t.Errorf("both VMs' QEMUs run as %d", m[a.ID])
		}
		return m
	}
	before := uids()

	// What an escaped guest of VM a could read, as a's QEMU user.
	var gold []string // the gold image's files
	filepath.WalkDir(filepath.Join(dataDir, "images"), func(p string, e fs.DirEntry, err error) error {
		if err == nil && e.Type().IsRegular() && strings.Contains(p, "/files/") {
			gold = append(gold, p)
		}
		return nil
	})
	readAs := func(uid uint32, path string) error {
		cmd := exec.Command("head", "-c", "1", path)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		return nil
	}
	uidA := before[a.ID]
	if len(gold) == 0 {
		t.Errorf("no gold image files under %s", dataDir)
	}
	for _, p := range append(gold, filepath.Join(dataDir, "vms", a.ID, "disk.qcow2")) {
		if err := readAs(uidA, p); err != nil {
			t.Errorf("as VM a's user %d, reading %s: %v; want readable", uidA, p, err)
		}
	}
	for _, p := range []string{filepath.Join(dataDir, "vms", b.ID, "disk.qcow2"), filepath.Join(dataDir, "vms", b.ID, "console.log")} {
		if err := readAs(uidA, p); err == nil || !strings.Contains(err.Error(), "Permission denied") {
			t.Errorf("as VM a's user %d, reading VM b's %s: %v; want Permission denied", uidA, p, err)
		}
	}

	// A restarted daemon reattaches; each VM keeps its user.
	d.stop()
	d.start(uidFlag...)
	for _, v := range []*api.VM{a, b} {
		if got := waitVM(t, d, v.ID, time.Minute); got.Status != api.StatusRunning {
			t.Errorf("after restart: %s", fmtVM(got))
		}
	}
	if after := uids(); !maps.Equal(after, before) {
		t.Errorf("users after restart %v, before %v", after, before)
	}
	for _, v := range []*api.VM{a, b} {
		if err := d.client.DeleteVM(context.Background(), v.ID); err != nil {
			t.Fatalf("delete: %v", err)
		}
		assertGone(t, d, v.ID)
	}
}

// checkScreenshot asks the daemon for VM id's screenshot and checks that
// it is a PNG.
func checkScreenshot(t *testing.T, d *daemon, id string) {
	t.Helper()
	resp, err := http.Get("http://" + d.addr + "/vms/" + id + "/screenshot")
	if err != nil {
		t.Errorf("screenshot: %v", err)
		return
	}
	png, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(string(png), "\x89PNG") {
		t.Errorf("screenshot: HTTP %d, %d bytes: %.200q", resp.StatusCode, len(png), png)
	}
}

// searchableBase checks that the test may start a root daemon that runs
// QEMU as another user (what), and returns a new directory for its data
// dir that other users can search, as the data dir's parents must be.
func searchableBase(t *testing.T, what string) string {
	t.Helper()
	requireEnv(t)
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatalf("this test starts a root daemon that runs QEMU with %s: run the tests as root", what)
		}
		t.Skipf("needs root: a root daemon runs QEMU with %s", what)
	}
	base, err := os.MkdirTemp("", "goldvm-e2e-qemu-user-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o711); err != nil {
		t.Fatal(err)
	}
	return base
}

// ownerOf returns the user id owning path.
func ownerOf(t *testing.T, path string) uint32 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Uid
}

// nobody returns the user id and group id of the user nobody.
func nobody(t *testing.T) *syscall.Credential {
	t.Helper()
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Fatalf("looking up nobody: %v", err)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		t.Fatalf("nobody has uid %q, gid %q", u.Uid, u.Gid)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
}
