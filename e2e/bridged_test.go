package e2e

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
)

// TestCreateBridged: network_type "bridged" puts the VM on a bridge the
// host already has (--bridge), where the LAN's own DHCP server gives it an
// address. The test's network namespace stands in for the LAN: a bridge
// with an address and a dnsmasq of the test's own. The VM boots with an
// address from that server and answers pings; deleting it removes its
// tap and leaves the host's bridge and DHCP server alone.
func TestCreateBridged(t *testing.T) {
	requireTestNetns(t, "makes a bridge and a DHCP server")
	const lan = "gvtestlan0"
	testBridge(t, lan, "192.168.77.1/24")
	dir := t.TempDir()
	dhcpOut, dhcpDone := startBackground(t, exec.Command("dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--port=0",
		"--interface="+lan, "--bind-interfaces", "--except-interface=lo",
		"--dhcp-range=192.168.77.50,192.168.77.99,255.255.255.0,1h",
		"--dhcp-leasefile="+filepath.Join(dir, "leases"), "--pid-file="+filepath.Join(dir, "pid")))

	srv := newImageServer(t)
	cb := newCallbackServer(t)
	d := startDaemon(t, filepath.Join(t.TempDir(), "data"), "--bridge", lan)
	img := publish(t, srv, "tar.gz")
	req := createReq(img, cb.URL)
	req.NetworkType = api.NetworkBridged
	v := mustCreate(t, d, req)
	got := waitVM(t, d, v.ID, bootTimeout)
	ip := net.ParseIP(got.IPAddress)
	if got.Status != api.StatusRunning || ip == nil || !(&net.IPNet{IP: net.IPv4(192, 168, 77, 0), Mask: net.CIDRMask(24, 32)}).Contains(ip) {
		t.Fatalf("bridged VM: %s; want running with an address from the LAN's DHCP server (192.168.77.50-99)\ndnsmasq: %s", fmtVM(got), dhcpOut.String())
	}
	if got.NetworkType != api.NetworkBridged {
		t.Errorf("network_type %q, want bridged", got.NetworkType)
	}
	// The VM may be running (its address seen in the host's neighbour
	// table) a moment before dnsmasq writes its lease file: wait for it.
	var leases []byte
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		leases, _ = os.ReadFile(filepath.Join(dir, "leases"))
		if strings.Contains(string(leases), got.IPAddress) || time.Now().After(deadline) {
			break
		}
	}
	if !strings.Contains(string(leases), got.IPAddress) {
		t.Errorf("the LAN's DHCP server did not lease %s: %q", got.IPAddress, leases)
	}
	if err := pingGuest(got.IPAddress); err != nil {
		t.Errorf("ping %s: %v", got.IPAddress, err)
	}
	// The VM's tap is on the host's bridge.
	out, _ := exec.Command("ip", "-o", "link", "show", "master", lan).CombinedOutput()
	if strings.Count(strings.TrimSpace(string(out)), "\n") != 0 || !strings.Contains(string(out), "gv") {
		t.Errorf("ports of %s: %q, want the VM's tap alone", lan, out)
	}

	if err := d.client.DeleteVM(context.Background(), v.ID); err != nil {
		t.Fatalf("delete: %v", err)
	}
	assertGone(t, d, v.ID)
	waitFor(t, "the VM's tap to leave "+lan, 10*time.Second, func() bool {
		out, _ := exec.Command("ip", "-o", "link", "show", "master", lan).CombinedOutput()
		return strings.TrimSpace(string(out)) == ""
	})
	// Stopping the daemon leaves the host's bridge and DHCP server be.
	d.stop()
	time.Sleep(100 * time.Millisecond)
	if _, err := net.InterfaceByName(lan); err != nil {
		t.Errorf("the host's bridge is gone: %v", err)
	}
	select {
	case <-dhcpDone:
		t.Errorf("the LAN's dnsmasq has exited: %s", dhcpOut.String())
	default:
	}
}
