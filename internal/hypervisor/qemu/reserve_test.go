package qemu

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
)

// TestClaimAddress reserves addresses in a /29 pool (10.0.0.2-10.0.0.6 with
// the host at .1): none that a lease or a reservation holds, each once,
// then a clear error when the pool is used up; a release removes only the
// VM's own file.
func TestClaimAddress(t *testing.T) {
	run := t.TempDir()
	d := &Driver{cfg: Config{RunDir: run}}
	np := netPlan{Kind: api.NetworkNAT, Bridge: "br-test", Subnet: "10.0.0.1/29", DHCP: true, Masquerade: true}
	dir := filepath.Join(run, "hosts")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// .3 is leased (an expired lease still counts), .5 reserved by someone.
	if err := os.WriteFile(d.leaseFile(np.Bridge), []byte("1 52:54:00:aa:aa:aa 10.0.0.3 guest *\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "10.0.0.5"), []byte("# goldvm other\n52:54:00:bb:bb:bb,10.0.0.5\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for i := 0; i < 3; i++ {
		id := fmt.Sprintf("vm-%d", i)
		pfx, err := d.claimAddress(np, dir, id, macFor(id))
		if err != nil {
			t.Fatalf("claim %d: %v", i, err)
		}
		a := pfx.Addr().String()
		if pfx.Bits() != 29 {
			t.Errorf("%s: prefix %v, want /29", id, pfx)
		}
		if a == "10.0.0.3" || a == "10.0.0.5" || a == "10.0.0.1" || got[a] != "" {
			t.Errorf("%s got %s (taken: %v)", id, a, got)
		}
		got[a] = id
		b, _ := os.ReadFile(filepath.Join(dir, a))
		if want := "# goldvm " + id + "\n" + macFor(id) + "," + a + "\n"; string(b) != want {
			t.Errorf("%s: file %q, want %q", a, b, want)
		}
		if r := d.reservedAddressIn(dir, id); r != a {
			t.Errorf("reservedAddressIn(%s) = %q, want %s", id, r, a)
		}
	}
	if _, err := d.claimAddress(np, dir, "vm-full", macFor("vm-full")); err == nil || !strings.Contains(err.Error(), "no free address") {
		t.Errorf("claim in a full pool: %v", err)
	}
	if err := d.releaseIn(dir, 0, "vm-1"); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 3 {
		t.Errorf("after releasing vm-1: %d reservations, want 3", len(ents))
	}
	for _, e := range ents {
		if got[e.Name()] == "vm-1" {
			t.Errorf("vm-1's reservation %s is still there", e.Name())
		}
	}
}

func TestDHCPRoutes(t *testing.T) {
	nat := dhcpRoutes(netPlan{Subnet: "10.213.0.1/24", DHCP: true, Masquerade: true})
	if len(nat) != 1 || nat[0] != "default via 10.213.0.1" {
		t.Errorf("nat routes %q", nat)
	}
	hostonly := dhcpRoutes(netPlan{Subnet: "10.214.0.1/24", DHCP: true})
	if len(hostonly) != 1 || hostonly[0] != MetadataAddr+"/32 via 10.214.0.1" {
		t.Errorf("hostonly routes %q", hostonly)
	}
}

func TestUnsearchableAncestor(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "a", "b")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{filepath.Dir(base), base} {
		os.Chmod(d, 0o711)
	}
	if got := unsearchableAncestor(dir); got != "" {
		t.Errorf("all searchable: %q", got)
	}
	os.Chmod(filepath.Join(base, "a"), 0o700)
	if got := unsearchableAncestor(dir); got != filepath.Join(base, "a") {
		t.Errorf("unsearchableAncestor = %q, want %s", got, filepath.Join(base, "a"))
	}
}

// TestE2EOrphanedDnsmasq: a second daemon on a bridge uses the first's
// live dnsmasq (its leases and reservations), and replaces it once the
// first daemon's data directory is gone: nobody could read that dnsmasq's
// leases or give it reservations any more.
func TestE2EOrphanedDnsmasq(t *testing.T) {
	if !inNetns(t, os.Getenv("GOLDVM_TEST_GUEST")) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	base := t.TempDir()
	for _, dir := range []string{filepath.Dir(base), base} {
		if err := os.Chmod(dir, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	newDriver := func(run string) *Driver {
		d, err := New(Config{RunDir: run, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	a, b := newDriver(filepath.Join(base, "a")), newDriver(filepath.Join(base, "b"))
	t.Cleanup(func() { b.StopNetwork(context.Background()); a.StopNetwork(context.Background()) })
	br, subnet := a.cfg.NATBridge, a.cfg.NATSubnet
	if err := a.ensureBridge(ctx, br, subnet); err != nil {
		t.Fatal(err)
	}
	if err := a.ensureDnsmasq(ctx, br, subnet, true); err != nil {
		t.Fatal(err)
	}
	pidA, ok := readPID(a.dnsmasqPIDFile(br))
	if !ok {
		t.Fatal("no pid file of the first daemon's dnsmasq")
	}
	if err := b.ensureDnsmasq(ctx, br, subnet, true); err != nil {
		t.Fatal(err)
	}
	if pid := bridgeDnsmasq(br); pid != pidA {
		t.Fatalf("the bridge's dnsmasq is %d, want the first daemon's %d", pid, pidA)
	}
	if got := b.activeLeaseFile(br); got != a.leaseFile(br) {
		t.Errorf("second daemon reads leases from %s, want %s", got, a.leaseFile(br))
	}
	if got, _ := b.activeHostsDir(br); got != a.hostsDir(br) {
		t.Errorf("second daemon reserves in %q, want %s", got, a.hostsDir(br))
	}

	if err := os.RemoveAll(a.cfg.RunDir); err != nil {
		t.Fatal(err)
	}
	if got, _ := b.activeHostsDir(br); got != "" {
		t.Errorf("reservations in %q, which is gone", got)
	}
	if err := b.ensureDnsmasq(ctx, br, subnet, true); err != nil {
		t.Fatal(err)
	}
	if procHolding(pidA) {
		t.Errorf("the orphaned dnsmasq %d still runs", pidA)
	}
	pidB, ok := readPID(b.dnsmasqPIDFile(br))
	if !ok || bridgeDnsmasq(br) != pidB {
		t.Fatalf("the bridge's dnsmasq is %d, want the second daemon's (pid file: %d, %v)", bridgeDnsmasq(br), pidB, ok)
	}
	if got, _ := b.activeHostsDir(br); got != b.hostsDir(br) {
		t.Errorf("second daemon reserves in %q, want %s", got, b.hostsDir(br))
	}
}
