package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
)

// requireLXD makes the host's LXD ready with scripts/lxd-init.sh, run in
// the host's namespaces: this test binary runs in a network namespace of
// its own (see TestMain), and an LXD it started there would put its bridge
// there, so the script runs in the namespaces of the parent test process
// that made it. LXD's unix socket is a file, reachable from here. Without
// root it skips, but never under CI=true.
func requireLXD(t *testing.T) {
	t.Helper()
	requireEnv(t)
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("the LXD tests need root (CI=true: they must run)")
		}
		t.Skip("the LXD tests need root")
	}
	script := filepath.Join(repoRoot(), "scripts", "lxd-init.sh")
	cmd := exec.Command("bash", script)
	if os.Getenv(netnsMarker) != "" {
		cmd = exec.Command("nsenter", "--target", fmt.Sprint(os.Getppid()), "--net", "--mount", "--", "bash", script)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out)
	}
}

// lxdQuery asks LXD (lxc query) for path in project, decoding its answer
// into out; it returns the error lxc gave.
func lxdQuery(project, path string, out any) error {
	b, err := exec.Command("lxc", "query", "--wait", path+"?project="+project).CombinedOutput()
	if err != nil {
		return fmt.Errorf("lxc query %s: %v: %s", path, err, b)
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(b, out)
}

// TestLXDCreateRunningDelete drives the lxd backend through the daemon,
// with container instances of the test root file system
// (testdata/container/build.sh): create → running with the address LXD
// reports and the OS the image's metadata names, its user_data and
// ssh_authorized_keys as the instance's cloud-init.user-data, and GET
// /capacity showing LXD's one member with the VM's limits used → delete,
// which removes the instance; deleting the image then removes LXD's copy
// of it. A placement is refused (400 placement-not-supported): the host's
// LXD is standalone.
func TestLXDCreateRunningDelete(t *testing.T) {
	requireLXD(t)
	out, err := exec.Command("bash", filepath.Join(repoRoot(), "testdata", "container", "build.sh")).Output()
	if err != nil {
		t.Fatalf("testdata/container/build.sh: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	pkg := lines[len(lines)-1]

	srv := newImageServer(t)
	copyFile(t, pkg, filepath.Join(srv.dir, "container.tar.gz"))
	img := api.Image{URL: srv.URL + "/container.tar.gz", Checksum: sha256File(t, pkg), ChecksumType: "sha256"}
	sum := sha256.Sum256(fmt.Appendf(nil, "%s %d %d", t.Name(), os.Getpid(), time.Now().UnixNano()))
	project := "goldvm-e2e-" + hex.EncodeToString(sum[:4])
	t.Cleanup(func() {
		// Whatever the test left: instances, images, then the project.
		var names []string
		lxdQuery(project, "/1.0/instances", &names)
		for _, n := range names {
			exec.Command("lxc", "delete", "--force", "--project", project, filepath.Base(n)).Run()
		}
		var imgs []string
		lxdQuery(project, "/1.0/images", &imgs)
		for _, i := range imgs {
			exec.Command("lxc", "image", "delete", "--project", project, filepath.Base(i)).Run()
		}
		if out, err := exec.Command("lxc", "project", "delete", project).CombinedOutput(); err != nil {
			t.Errorf("deleting LXD project %s: %v: %s", project, err, out)
		}
	})

	d := startDaemon(t, filepath.Join(t.TempDir(), "data"),
		"--backend", "lxd", "--lxd-instance-type", "container", "--lxd-project", project)
	placed := createReq(img, "")
	placed.Placement = &api.Placement{Member: "member1"}
	_, err = d.client.CreateVM(context.Background(), placed)
	if !isAPIError(err, http.StatusBadRequest, api.CodePlacementUnsupported) || !strings.Contains(err.Error(), "placement") {
		t.Errorf("create with a placement on a standalone LXD: %v, want placement-not-supported", err)
	}
	req := createReq(img, "")
	req.UserData = "#cloud-config\nhostname: e2e\n"
	req.SSHAuthorizedKeys = []string{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE2e k1"}
	v := mustCreate(t, d, req)
	got := waitVM(t, d, v.ID, bootTimeout)
	if got.Status != api.StatusRunning {
		t.Fatalf("got %s, want running", fmtVM(got))
	}
	if got.Backend != "lxd" || got.GuestOS != "goldvm test container (busybox)" {
		t.Errorf("got backend %q, guest_os %q; want lxd and the image's description", got.Backend, got.GuestOS)
	}
	var state struct {
		Status  string `json:"status"`
		Network map[string]struct {
			Addresses []struct {
				Family, Address string
			} `json:"addresses"`
		} `json:"network"`
	}
	name := "goldvm-" + v.ID
	if err := lxdQuery(project, "/1.0/instances/"+name+"/state", &state); err != nil {
		t.Fatal(err)
	}
	var lxdIPs []string
	for _, a := range state.Network["eth0"].Addresses {
		if a.Family == "inet" {
			lxdIPs = append(lxdIPs, a.Address)
		}
	}
	if state.Status != "Running" || net.ParseIP(got.IPAddress).To4() == nil || !strings.Contains(strings.Join(lxdIPs, " "), got.IPAddress) {
		t.Errorf("LXD: %s with eth0 %v; goldvm: ip_address %q", state.Status, lxdIPs, got.IPAddress)
	}
	var inst struct {
		Config map[string]string `json:"config"`
	}
	if err := lxdQuery(project, "/1.0/instances/"+name, &inst); err != nil {
		t.Fatal(err)
	}
	if inst.Config["user.goldvm.id"] != v.ID || inst.Config["limits.cpu"] != "1" || inst.Config["limits.memory"] != "128MiB" {
		t.Errorf("instance config %v; want user.goldvm.id %s, limits.cpu 1, limits.memory 128MiB", inst.Config, v.ID)
	}
	ud := inst.Config["cloud-init.user-data"]
	if !strings.HasPrefix(ud, "Content-Type: multipart/mixed") || !strings.Contains(ud, "Content-Type: text/cloud-config") {
		t.Errorf("cloud-init.user-data %q, want the user_data and the keys in a multipart document", ud)
	}
	c, err := d.client.Capacity(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if b := c.Backend; b == nil || len(b.Members) != 1 || b.Members[0].Status != "Online" || b.Members[0].Instances != 1 ||
		b.Used != (api.Resources{CPUs: 1, MemoryMiB: 128}) || b.Total.CPUs < 1 {
		t.Errorf("GET /capacity backend %+v, want one online member with the VM's limits used", b)
	}

	if err := d.client.DeleteVM(context.Background(), v.ID); err != nil {
		t.Fatalf("delete: %v", err)
	}
	assertGone(t, d, v.ID)
	if err := lxdQuery(project, "/1.0/instances/"+name, nil); err == nil {
		t.Errorf("LXD still has instance %s after the delete", name)
	}

	key := "sha256-" + strings.ToLower(img.Checksum)
	alias := "/1.0/images/aliases/goldvm/" + key
	if err := lxdQuery(project, alias, nil); err != nil {
		t.Fatalf("LXD has no image aliased goldvm/%s: %v", key, err)
	}
	if err := d.client.DeleteImage(context.Background(), key); err != nil {
		t.Fatalf("delete image: %v", err)
	}
	waitFor(t, "LXD's copy of the image to go", time.Minute, func() bool { return lxdQuery(project, alias, nil) != nil })
}

// relay forwards connections on a unix socket of its own to LXD's socket
// until stop: then its socket and every connection through it close, and
// LXD "goes away" for a daemon that uses it.
func relay(t *testing.T, to string) (path string, stop func()) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "lxd.socket")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	track := func(c net.Conn) {
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("unix", to)
			if err != nil {
				c.Close()
				continue
			}
			track(c)
			track(up)
			go io.Copy(up, c)
			go io.Copy(c, up)
		}
	}()
	stop = func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	}
	t.Cleanup(stop)
	return path, stop
}

// TestLXDUnavailable: with LXD gone, a create is refused at once with 503
// backend-unavailable and leaves no record; reads still answer.
func TestLXDUnavailable(t *testing.T) {
	requireLXD(t)
	sock, stop := relay(t, "/var/lib/lxd/unix.socket")
	sum := sha256.Sum256(fmt.Appendf(nil, "%s %d %d", t.Name(), os.Getpid(), time.Now().UnixNano()))
	project := "goldvm-e2e-" + hex.EncodeToString(sum[:4])
	t.Cleanup(func() { exec.Command("lxc", "project", "delete", project).Run() })
	d := startDaemon(t, filepath.Join(t.TempDir(), "data"),
		"--backend", "lxd", "--lxd-instance-type", "container", "--lxd-project", project, "--lxd-url", "unix://"+sock)
	stop()
	img := api.Image{URL: "http://127.0.0.1:1/never.tar.gz", Checksum: strings.Repeat("ab", 32), ChecksumType: "sha256"}
	_, err := d.client.CreateVM(context.Background(), createReq(img, ""))
	if !isAPIError(err, 503, api.CodeBackendUnavailable) {
		t.Fatalf("create with LXD away: %v, want 503 backend-unavailable", err)
	}
	list, err := d.client.ListVMs(context.Background())
	if err != nil || len(list) != 0 {
		t.Fatalf("GET /vms with LXD away: %v, %+v; want an empty list", err, list)
	}
}
