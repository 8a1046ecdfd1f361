package e2e

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/goldvm/goldvm/api"
)

// noAgentOS is the PRETTY_NAME in the os-release of the test guest without
// an agent (testdata/guest/build.sh puts it on an ext4 partition of its
// disk).
const noAgentOS = "goldvm test guest without agent (Debian kernel, busybox)"

// A guest without a guest agent reaches running with its address from the
// DHCP lease and guest_os from its image: the os-release the daemon read
// from the gold disk when it published the image.
func TestNoAgentGuestOSFromImage(t *testing.T) {
	requireEnv(t)
	src := filepath.Join(filepath.Dir(guestDisk), "guest-noagent.qcow2")
	if _, err := os.Stat(src); err != nil {
		t.Fatalf("the test guest without an agent is missing (testdata/guest/build.sh builds it beside the guest): %v", err)
	}
	if os.Getenv(netnsMarker) != "" {
		// Without an agent the address comes from the DHCP lease, which
		// only the daemon that started the bridge's dnsmasq can read: a
		// dnsmasq left by an earlier test's daemon goes.
		killNamespaceDnsmasq()
	}
	srv := newImageServer(t)
	copyFile(t, src, filepath.Join(srv.dir, "noagent.qcow2"))
	img := api.Image{URL: srv.URL + "/noagent.qcow2", Checksum: sha256File(t, src), ChecksumType: "sha256"}
	d := startDaemon(t, filepath.Join(t.TempDir(), "data"), "--agent-wait", "1s")
	v := mustCreate(t, d, createReq(img, ""))
	got := waitVM(t, d, v.ID, bootTimeout)
	if got.Status != api.StatusRunning || got.IPAddress == "" {
		t.Fatalf("VM: %s", fmtVM(got))
	}
	if got.GuestOS != noAgentOS || got.Sources == nil || got.Sources.GuestOS != api.SourceImage || got.Sources.IPAddress != api.SourceDHCPLease {
		t.Errorf("guest_os %q, sources %+v: want %q from the image and the address from the DHCP lease", got.GuestOS, got.Sources, noAgentOS)
	}
	images, err := d.client.ListImages(context.Background())
	if err != nil || len(images) != 1 || images[0].GuestOS != noAgentOS {
		t.Errorf("GET /images: %+v, %v; want the image with guest_os %q", images, err, noAgentOS)
	}
}
