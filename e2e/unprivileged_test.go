package e2e

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
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
	var cred *syscall.Credential
	base := t.TempDir()
	if os.Geteuid() == 0 {
		cred = nobody(t)
		// t.TempDir's directories are 0700 root: nobody needs its own.
		var err error
		base, err = os.MkdirTemp("", "goldvm-e2e-nobody-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(base) })
		if err := os.Chown(base, int(cred.Uid), int(cred.Gid)); err != nil {
			t.Fatal(err)
		}
	}
	dataDir := filepath.Join(base, "data")
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

// TestQEMUAsUnprivilegedUser runs the daemon as root with --qemu-user
// nobody: the VM gets its tap on the NAT bridge and a reachable address
// as usual, but its QEMU runs as nobody (owning the VM's directory and
// tap); screenshots, a daemon restart (reattach) and delete work.
func TestQEMUAsUnprivilegedUser(t *testing.T) {
	requireEnv(t)
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("this test starts a root daemon that runs QEMU as nobody: run the tests as root")
		}
		t.Skip("needs root: without it QEMU already runs as the daemon's user (TestUnprivilegedDaemon)")
	}
	uid := int(nobody(t).Uid)
	// The data dir's parents must be searchable by nobody.
	base, err := os.MkdirTemp("", "goldvm-e2e-qemu-user-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o711); err != nil {
		t.Fatal(err)
	}
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
		st, err := os.Stat("/proc/" + strconv.Itoa(pids[0]))
		if err != nil {
			t.Fatal(err)
		}
		return int(st.Sys().(*syscall.Stat_t).Uid)
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
	if resp, err := http.Get("http://" + d.addr + "/vms/" + v.ID + "/screenshot"); err != nil {
		t.Errorf("screenshot: %v", err)
	} else {
		png, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.HasPrefix(string(png), "\x89PNG") {
			t.Errorf("screenshot: HTTP %d, %d bytes: %.200q", resp.StatusCode, len(png), png)
		}
	}

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
