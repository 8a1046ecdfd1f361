package e2e

import (
	"context"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
)

// TestConsole: GET /vms/{id}/console (and `goldvm console`) answers the end
// of the guest's serial console while it runs, and still after its
// creation failed — when it matters most — until the VM is deleted. The
// failing VM is a bridged one on a bridge with no DHCP server (the test's
// network namespace): it boots, never gets an address, and times out.
func TestConsole(t *testing.T) {
	requireTestNetns(t, "makes a bridge without DHCP")
	const lan = "gvtestnodhcp0"
	testBridge(t, lan, "")
	srv := newImageServer(t)
	d := startDaemon(t, filepath.Join(t.TempDir(), "data"), "--bridge", lan)
	img := publish(t, srv, "tar.gz")
	ctx := context.Background()
	cli := func(args ...string) (string, error) {
		out, err := exec.Command(goldvmBin, append([]string{"console", "--addr", d.addr}, args...)...).CombinedOutput()
		return string(out), err
	}

	// Running: the guest's own lines are there.
	v := mustCreate(t, d, createReq(img, ""))
	got := waitVM(t, d, v.ID, bootTimeout)
	if got.Status != api.StatusRunning {
		t.Fatalf("VM: %s", fmtVM(got))
	}
	// The guest prints its ready line after its agent has answered, so it
	// may come a moment after the VM is reported running.
	waitFor(t, "the running VM's console to show the guest's ready line with "+got.IPAddress, 30*time.Second, func() bool {
		out, err := d.client.Console(ctx, v.ID, 0)
		return err == nil && strings.Contains(string(out), "goldvm-guest: ready ip="+got.IPAddress)
	})

	// Failed: no address on a LAN without DHCP; the console says how far
	// the guest got. Created with the CLI, which points there. The guest
	// has 45 s to print its first lines: under TCG on a loaded machine a
	// boot took up to 50 s, and with 15 s the console was once still empty.
	create := exec.Command(goldvmBin, "create", "--addr", d.addr, "--image", img.URL, "--checksum", img.Checksum,
		"--memory", "128mib", "--network", "bridged", "--tools-init-timeout", "45s")
	createOut, err := create.CombinedOutput()
	m := regexp.MustCompile(`goldvm console (vm-\S+) shows what the guest printed`).FindSubmatch(createOut)
	if err == nil || m == nil || !strings.Contains(string(createOut), "discovery-timeout") {
		t.Fatalf("goldvm create of a bridged VM without DHCP: %v; want a discovery-timeout failure that points to goldvm console:\n%s", err, createOut)
	}
	f := &api.VM{ID: string(m[1])}
	if got, err := d.client.GetVM(ctx, f.ID); err != nil || got.Status != api.StatusError || got.Error.Code != "discovery-timeout" {
		t.Fatalf("the failed VM: %v %+v", err, got)
	}
	out, err := d.client.Console(ctx, f.ID, 0)
	if err != nil || !strings.Contains(string(out), "goldvm-guest: loading modules") || regexp.MustCompile(`goldvm-guest: ready ip=[0-9]`).Match(out) {
		t.Errorf("console of the failed VM: %v, %q; want the guest's boot lines and no ready line with an address (\"ready ip=none\" when it gave up waiting for DHCP)", err, out)
	}
	if tail, err := d.client.Console(ctx, f.ID, 20); err != nil || len(tail) != 20 || !strings.HasSuffix(string(out), string(tail)) {
		t.Errorf("console ?tail=20: %v, %q; want the last 20 bytes of %q", err, tail, out)
	}
	if s, err := cli(f.ID); err != nil || s != string(out) {
		t.Errorf("goldvm console: %v, %q; want %q", err, s, out)
	}
	if _, err := d.client.Console(ctx, "vm-01nosuchvm0000000000", 0); !isAPIError(err, http.StatusNotFound, "vm-not-found") {
		t.Errorf("console of an unknown VM: %v, want 404 vm-not-found", err)
	}
	if code, _, body := postRaw(t, d, "GET", "/vms/"+f.ID+"/console?tail=0", "", ""); code != http.StatusBadRequest || !strings.Contains(string(body), "invalid-query") {
		t.Errorf("console ?tail=0: %d %s, want 400 invalid-query", code, body)
	}

	for _, id := range []string{v.ID, f.ID} {
		if err := d.client.DeleteVM(ctx, id); err != nil {
			t.Fatal(err)
		}
		assertGone(t, d, id)
	}
	if _, err := d.client.Console(ctx, f.ID, 0); !isAPIError(err, http.StatusNotFound, "vm-not-found") {
		t.Errorf("console after delete: %v, want 404 vm-not-found", err)
	}
}
