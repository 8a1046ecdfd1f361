package e2e

import (
	"context"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/goldvm/goldvm/api"
)

// TestUserNetGuestCannotReachDaemon: with user-mode networking (an
// ordinary user's daemon), QEMU maps the guest's gateway 10.0.2.2 to the
// host's loopback, where the daemon's API listens without a token. A
// guest must not reach the API that way: it could create and delete VMs.
func TestUserNetGuestCannotReachDaemon(t *testing.T) {
	requireEnv(t)
	dataDir, cred := ordinaryUserDataDir(t)
	srv := newImageServer(t)
	d := startDaemonAs(t, dataDir, nil, cred)
	img := publish(t, srv, "qcow2")
	v := mustCreate(t, d, createReq(img, ""))
	got := waitVM(t, d, v.ID, bootTimeout)
	if got.Status != api.StatusRunning || got.IPAddress != "10.0.2.15" {
		t.Fatalf("VM %s, want running on user-mode networking", fmtVM(got))
	}
	_, port, _ := net.SplitHostPort(d.addr)
	// busybox's wget crashes in this guest; nc speaks HTTP/1.0 well enough.
	out := guestShell(t, d, v.ID, "printf 'GET /vms HTTP/1.0\\r\\n\\r\\n' | nc -w 5 10.0.2.2 "+port+" 2>&1; echo rc=$?")
	t.Logf("guest GET http://10.0.2.2:%s/vms: %q", port, out)
	if strings.Contains(out, `"vms"`) || strings.Contains(out, v.ID) {
		t.Fatalf("the guest read the daemon's API through 10.0.2.2: %q", out)
	}
	if b, err := os.ReadFile(d.logPath); err != nil || !strings.Contains(string(b), "refused an API connection from a guest") {
		t.Errorf("the daemon's log does not say it refused the guest's connection (%v)", err)
	}
	// Clients of the host are served as before.
	if err := d.client.DeleteVM(context.Background(), v.ID); err != nil {
		t.Fatal(err)
	}
	assertGone(t, d, v.ID)
}
