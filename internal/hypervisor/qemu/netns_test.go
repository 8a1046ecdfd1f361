package qemu

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/hypervisor"
)

const netnsMarker = "GOLDVM_TEST_IN_NETNS"

// inNetns re-runs the calling test in a new network namespace (unshare
// --net) and reports true in the child, false in the parent after the child
// has run (its output is logged; its failure fails the test).
func inNetns(t *testing.T, guest string) bool {
	t.Helper()
	if os.Getenv(netnsMarker) == "1" {
		// In the namespace: bring loopback up, nothing else exists.
		if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
			t.Fatalf("ip link set lo up: %v: %s", err, out)
		}
		return true
	}
	if os.Geteuid() != 0 {
		unavailable(t, "bridge/tap tests need root")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		unavailable(t, "unshare (util-linux) not found")
	}
	if out, err := exec.Command(unshare, "--net", "true").CombinedOutput(); err != nil {
		unavailable(t, "cannot create a network namespace: %v: %s", err, out)
	}
	cmd := exec.Command(unshare, "--net", "--", os.Args[0],
		"-test.run=^"+t.Name()+"$", "-test.v", "-test.timeout=10m")
	cmd.Env = append(os.Environ(), netnsMarker+"=1", "GOLDVM_TEST_GUEST="+guest)
	t0 := time.Now()
	out, err := cmd.CombinedOutput()
	t.Logf("netns child ran %v", time.Since(t0).Round(time.Millisecond))
	t.Logf("in a new network namespace:\n%s", out)
	if err != nil {
		t.Fatalf("netns child: %v", err)
	}
	if !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatalf("netns child did not pass")
	}
	return false
}

func linkExists(t *testing.T, d *Driver, name string) bool {
	t.Helper()
	_, ok, err := d.link(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

func inSubnet(ip, cidr string) bool {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return false
	}
	return netip.MustParsePrefix(cidr).Masked().Contains(a)
}

// reachable tells whether the host reaches the guest: a TCP connect to a
// port that nothing serves is refused (RST) by a live guest.
func reachable(ip string) error {
	c, err := net.DialTimeout("tcp", net.JoinHostPort(ip, "22"), 5*time.Second)
	if err == nil {
		c.Close()
		return nil
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return nil
	}
	return err
}

func TestE2ENetworkBridge(t *testing.T) {
	guest := testGuest(t)
	if !inNetns(t, guest) {
		return
	}
	gold := goldDir(t, guest)
	runDir := t.TempDir()
	d, err := New(Config{RunDir: runDir, Sandbox: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if !d.bridging() {
		t.Fatal("root driver does not use bridges")
	}
	t.Cleanup(func() {
		if err := d.StopNetwork(context.Background()); err != nil {
			t.Errorf("stop network: %v", err)
		}
	})
	nat := newSpec(t, "01netnat", gold, api.NetworkNAT)
	host := newSpec(t, "01nethostonly", gold, api.NetworkHostOnly)
	infos := make([]hypervisor.GuestInfo, 2)
	var wg sync.WaitGroup
	for i, s := range []hypervisor.Spec{nat, host} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			infos[i] = bootAndDiscover(t, d, s)
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()

	if !inSubnet(infos[0].IPAddress, d.cfg.NATSubnet) {
		t.Errorf("nat guest IP %s not in %s", infos[0].IPAddress, d.cfg.NATSubnet)
	}
	if !inSubnet(infos[1].IPAddress, d.cfg.HostOnlySubnet) {
		t.Errorf("hostonly guest IP %s not in %s", infos[1].IPAddress, d.cfg.HostOnlySubnet)
	}
	for i, s := range []hypervisor.Spec{nat, host} {
		br := []string{d.cfg.NATBridge, d.cfg.HostOnlyBridge}[i]
		tap := tapFor(s.ID)
		l, ok, err := d.link(ctx, tap)
		if err != nil || !ok || !l.isTap() || l.Master != br {
			t.Errorf("%s: tap %s: %+v ok=%v err=%v; want a tap on %s", s.ID, tap, l, ok, err, br)
		}
		if owner, _ := l.tapOwner(); owner != s.ID {
			t.Errorf("tap %s owner = %q", tap, owner)
		}
		// dnsmasq's lease agrees with the guest agent.
		f, err := os.Open(d.leaseFile(br))
		if err != nil {
			t.Fatal(err)
		}
		ls := parseLeases(f)
		f.Close()
		if got := leaseIP(ls, macFor(s.ID)); got != infos[i].IPAddress {
			t.Errorf("%s: lease IP %q, guest agent says %q", s.ID, got, infos[i].IPAddress)
		}
		if err := reachable(infos[i].IPAddress); err != nil {
			t.Errorf("%s: host cannot reach guest %s: %v", s.ID, infos[i].IPAddress, err)
		} else {
			t.Logf("%s: host reaches %s on %s (tap %s)", s.ID, infos[i].IPAddress, br, tap)
		}
	}
	if d.iptables != "" {
		if _, err := d.run(ctx, d.iptables, "-w", "-t", "nat", "-C", "POSTROUTING", "-s", "10.213.0.0/24", "!", "-d", "10.213.0.0/24", "-j", "MASQUERADE"); err != nil {
			t.Errorf("masquerade rule: %v", err)
		}
	}

	// Later VM starts trust the bridges as set up (the same interface, up,
	// with its address) and skip their ip commands.
	d.netMu.Lock()
	for _, b := range [][2]string{{d.cfg.NATBridge, d.cfg.NATSubnet}, {d.cfg.HostOnlyBridge, d.cfg.HostOnlySubnet}} {
		if !d.bridgeReady(b[0], b[1]) {
			t.Errorf("bridge %s (%s) not known as set up after VMs started on it", b[0], b[1])
		}
	}
	d.netMu.Unlock()

	// A stray VM (no record) is reaped with its tap; known VMs are left alone.
	stray := newSpec(t, "01netstray", gold, api.NetworkNAT)
	destroyOnCleanup(t, d, stray)
	if err := d.Clone(ctx, stray); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx, stray); err != nil {
		t.Fatal(err)
	}
	spid, ok := d.livePID(stray)
	if !ok || !linkExists(t, d, tapFor(stray.ID)) {
		t.Fatal("stray VM did not start with a tap")
	}
	d.cfg.VMRoot = filepath.Dir(filepath.Dir(stray.Dir)) // this test's VMs only
	if err := d.Reap(ctx, func(id string) bool { return id != stray.ID }); err != nil {
		t.Errorf("reap: %v", err)
	}
	if isVMProcess(spid, stray.ID) || linkExists(t, d, tapFor(stray.ID)) {
		t.Errorf("stray VM or its tap survived Reap")
	}
	for _, s := range []hypervisor.Spec{nat, host} {
		if st, err := d.State(ctx, s); err != nil || st != hypervisor.StateRunning {
			t.Errorf("%s after reap: %q %v", s.ID, st, err)
		}
	}

	// Destroy removes the taps.
	for _, s := range []hypervisor.Spec{nat, host} {
		if err := d.Destroy(ctx, s); err != nil {
			t.Fatal(err)
		}
		if linkExists(t, d, tapFor(s.ID)) {
			t.Errorf("%s: tap left after destroy", s.ID)
		}
	}

	// A bridge deleted behind goldvm's back is no longer trusted; the next
	// VM start makes it again.
	if _, err := d.run(ctx, d.ip, "link", "del", "dev", d.cfg.HostOnlyBridge); err != nil {
		t.Fatal(err)
	}
	d.netMu.Lock()
	stale := d.bridgeReady(d.cfg.HostOnlyBridge, d.cfg.HostOnlySubnet)
	d.netMu.Unlock()
	if stale {
		t.Error("a deleted bridge is still known as set up")
	}
	again := newSpec(t, "01netagain", gold, api.NetworkHostOnly)
	destroyOnCleanup(t, d, again)
	if err := d.Clone(ctx, again); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx, again); err != nil {
		t.Fatalf("start after the bridge was deleted: %v", err)
	}
	if l, ok, err := d.link(ctx, tapFor(again.ID)); err != nil || !ok || l.Master != d.cfg.HostOnlyBridge {
		t.Errorf("after the bridge was deleted: tap %+v ok=%v err=%v; want it on a new %s", l, ok, err, d.cfg.HostOnlyBridge)
	}
	d.netMu.Lock()
	ready := d.bridgeReady(d.cfg.HostOnlyBridge, d.cfg.HostOnlySubnet)
	d.netMu.Unlock()
	if !ready {
		t.Errorf("the bridge %s made again is not up with %s", d.cfg.HostOnlyBridge, d.cfg.HostOnlySubnet)
	}
}

// TestReapLeavesOtherInstancesTaps: with several goldvm daemons on a host,
// a starting daemon's Reap removes only its own instance's stray taps
// (and legacy ones without an instance tag), never another instance's or
// one not named yet, which may belong to a VM about to start.
func TestReapLeavesOtherInstancesTaps(t *testing.T) {
	if !inNetns(t, "") {
		return
	}
	mine, other := filepath.Join(t.TempDir(), "vms"), filepath.Join(t.TempDir(), "vms")
	d, err := New(Config{VMRoot: mine, RunDir: t.TempDir(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	taps := map[string]string{ // tap -> alias ("" for none)
		"gvforeign0001": tapAlias("vm-foreign", other),
		"gvmine0000002": tapAlias("vm-gone", mine),
		"gvunnamed0003": "",
		"gvlegacy00004": tapAliasPrefix + "vm-legacy",
	}
	for tap, alias := range taps {
		if _, err := d.run(ctx, "ip", "tuntap", "add", "dev", tap, "mode", "tap"); err != nil {
			t.Fatal(err)
		}
		if alias != "" {
			if _, err := d.run(ctx, "ip", "link", "set", "dev", tap, "alias", alias); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := d.Reap(ctx, func(string) bool { return false }); err != nil {
		t.Fatal(err)
	}
	for tap, want := range map[string]bool{"gvforeign0001": true, "gvmine0000002": false, "gvunnamed0003": true, "gvlegacy00004": false} {
		if _, ok, err := d.link(ctx, tap); err != nil || ok != want {
			t.Errorf("after Reap, tap %s (alias %q) exists: %v (%v), want %v", tap, taps[tap], ok, err, want)
		}
	}
}

func TestTapAlias(t *testing.T) {
	for _, root := range []string{"", "/var/lib/goldvm/vms"} {
		l := ipLink{Ifalias: tapAlias("vm-01abc", root)}
		id, tag := l.tapOwner()
		if id != "vm-01abc" || tag != rootTag(root) {
			t.Errorf("alias %q: id %q tag %q, want vm-01abc and %q", l.Ifalias, id, tag, rootTag(root))
		}
	}
	if rootTag("/a/vms") == rootTag("/b/vms") || rootTag("/a/vms/") != rootTag("/a/vms") {
		t.Error("root tags do not tell directories apart")
	}
}
