package qemu

// Host networking for the three network types.
//
// As root:
//   - nat: a bridge (Config.NATBridge, default goldvm0) carrying the host
//     address Config.NATSubnet (default 10.213.0.1/24), created on first use;
//     one dnsmasq per bridge serving DHCP only (--port=0: no DNS) with its
//     pid and lease files in Config.RunDir; IPv4 forwarding and an iptables
//     MASQUERADE rule for the subnet (plus FORWARD accepts). Each VM gets a
//     tap "gv<hash of id>" enslaved to the bridge, its ifalias
//     "goldvm:<id>" naming the owner, and QEMU opens it with
//     -netdev tap,ifname=…,script=no,downscript=no.
//   - hostonly: the same on Config.HostOnlyBridge/HostOnlySubnet without
//     masquerade; dnsmasq hands out no router, and forwarding from the bridge
//     is dropped.
//   - bridged: a tap on Config.BridgedBridge, which must already exist; the
//     guest's address comes from the LAN's DHCP, learned through the guest
//     agent.
//
// Not root (or Config.UserNet): nat uses QEMU's user-mode networking. The
// guest then has 10.0.2.15 behind QEMU's own NAT and the host cannot reach it
// except through the hostfwd goldvm adds (guest port 22 on a free loopback
// port, recorded in the file "ssh-port" in the VM's directory).
// hostonly and bridged are refused.
//
// Every external command takes an argument list; nothing goes through a shell.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/hypervisor"
)

// SupportsNetwork reports whether this driver can give a VM network type nt
// on this host, with an errdefs.ErrInvalid error saying why not.
func (d *Driver) SupportsNetwork(nt string) error {
	switch nt {
	case api.NetworkNAT:
		return nil
	case api.NetworkHostOnly:
		if !d.bridging() {
			return errdefs.Newf(errdefs.ErrInvalid, "network-needs-root",
				"network_type hostonly needs goldvm to run as root (it creates a bridge and tap devices)")
		}
		return nil
	case api.NetworkBridged:
		if d.cfg.BridgedBridge == "" {
			return errdefs.Newf(errdefs.ErrInvalid, "bridged-not-configured",
				"network_type bridged is not available: no host bridge is configured for it")
		}
		if !d.bridging() {
			return errdefs.Newf(errdefs.ErrInvalid, "network-needs-root",
				"network_type bridged needs goldvm to run as root (it creates tap devices)")
		}
		return nil
	}
	return errdefs.Newf(errdefs.ErrInvalid, "invalid-network-type",
		"unknown network_type %q (want nat, bridged or hostonly)", nt)
}

// bridging reports whether nat/hostonly use bridges and taps.
func (d *Driver) bridging() bool { return d.root && !d.cfg.UserNet }

// plan decides how VM spec is connected.
func (d *Driver) plan(spec hypervisor.Spec) (netPlan, error) {
	nt := spec.Network
	if nt == "" {
		nt = api.NetworkNAT
	}
	if err := d.SupportsNetwork(nt); err != nil {
		return netPlan{}, err
	}
	if !d.bridging() {
		return netPlan{Kind: nt, User: true}, nil
	}
	np := netPlan{Kind: nt, Tap: tapFor(spec.ID)}
	switch nt {
	case api.NetworkNAT:
		np.Bridge, np.Subnet, np.DHCP, np.Masquerade = d.cfg.NATBridge, d.cfg.NATSubnet, true, true
	case api.NetworkHostOnly:
		np.Bridge, np.Subnet, np.DHCP = d.cfg.HostOnlyBridge, d.cfg.HostOnlySubnet, true
	case api.NetworkBridged:
		np.Bridge = d.cfg.BridgedBridge
	}
	return np, nil
}

// leaseFile is dnsmasq's lease file for bridge.
func (d *Driver) leaseFile(bridge string) string {
	return filepath.Join(d.cfg.RunDir, "dnsmasq-"+bridge+".leases")
}

func (d *Driver) dnsmasqPIDFile(bridge string) string {
	return filepath.Join(d.cfg.RunDir, "dnsmasq-"+bridge+".pid")
}

// ipLink is the part of `ip -j -d link show` goldvm reads. Links are read
// through ip(8), not /sys/class/net: sysfs shows the namespace it was mounted
// in, which is not ours after a bare `unshare --net`.
type ipLink struct {
	Ifname   string `json:"ifname"`
	Master   string `json:"master"`
	Ifalias  string `json:"ifalias"`
	Linkinfo struct {
		InfoKind string `json:"info_kind"`
		InfoData struct {
			Type string `json:"type"`
		} `json:"info_data"`
	} `json:"linkinfo"`
}

func (l ipLink) isBridge() bool { return l.Linkinfo.InfoKind == "bridge" }
func (l ipLink) isTap() bool {
	return l.Linkinfo.InfoKind == "tun" && l.Linkinfo.InfoData.Type == "tap"
}

// links lists the network links of goldvm's network namespace.
func (d *Driver) links(ctx context.Context) (map[string]ipLink, error) {
	out, err := d.run(ctx, d.ip, "-j", "-d", "link", "show")
	if err != nil {
		return nil, err
	}
	var ls []ipLink
	if err := json.Unmarshal(out, &ls); err != nil {
		return nil, fmt.Errorf("ip -j link: %w", err)
	}
	m := make(map[string]ipLink, len(ls))
	for _, l := range ls {
		m[l.Ifname] = l
	}
	return m, nil
}

// link looks up one link; ok is false when it does not exist.
func (d *Driver) link(ctx context.Context, name string) (l ipLink, ok bool, err error) {
	ls, err := d.links(ctx)
	if err != nil {
		return ipLink{}, false, err
	}
	l, ok = ls[name]
	return l, ok, nil
}

// setupNetwork makes the host side of np: bridge, DHCP, NAT and the tap.
func (d *Driver) setupNetwork(ctx context.Context, id string, np netPlan) error {
	if np.User {
		return nil
	}
	d.netMu.Lock()
	defer d.netMu.Unlock()
	if np.Subnet != "" {
		if !d.bridgeReady(np.Bridge, np.Subnet) {
			delete(d.netReady, np.Bridge)
			if err := d.ensureBridge(ctx, np.Bridge, np.Subnet); err != nil {
				return err
			}
		}
	} else if l, ok, _ := d.link(ctx, np.Bridge); !ok || !l.isBridge() {
		return errdefs.Newf(errdefs.ErrInvalid, "bridged-not-configured",
			"the host bridge %q for network_type bridged does not exist", np.Bridge)
	}
	if np.DHCP {
		if err := d.ensureDnsmasq(ctx, np.Bridge, np.Subnet, np.Masquerade); err != nil {
			return err
		}
	}
	if np.Subnet != "" {
		// Recorded again only when the bridge was (re)made, which dropped
		// its record, or its rules were due for a check.
		if st, ok := d.netReady[np.Bridge]; !ok || time.Since(st.firewall) > firewallRecheck {
			d.ensureFirewall(ctx, np.Bridge, np.Subnet, np.Masquerade)
			d.noteBridgeReady(np.Bridge, np.Subnet, time.Now())
		}
	}
	return d.ensureTap(ctx, np.Tap, np.Bridge, id)
}

// firewallRecheck is how long setupNetwork trusts the iptables rules of a
// bridge it has checked (each check runs iptables three times).
const firewallRecheck = 30 * time.Second

// bridgeState is what setupNetwork found of a bridge: its interface
// index, its host address, and when its firewall rules were checked.
type bridgeState struct {
	index    int
	cidr     string
	firewall time.Time
}

// bridgeReady reports whether br is still the bridge setupNetwork set up
// (same interface index), up and with the host address cidr: asked of the
// kernel over netlink (Go's net package), no process.
func (d *Driver) bridgeReady(br, cidr string) bool {
	st, ok := d.netReady[br]
	if !ok || st.cidr != cidr {
		return false
	}
	ifi, err := net.InterfaceByName(br)
	if err != nil || ifi.Index != st.index || ifi.Flags&net.FlagUp == 0 {
		return false
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if a.String() == cidr {
			return true
		}
	}
	return false
}

// noteBridgeReady records br as set up with cidr, its firewall rules
// checked at firewall.
func (d *Driver) noteBridgeReady(br, cidr string, firewall time.Time) {
	ifi, err := net.InterfaceByName(br)
	if err != nil {
		delete(d.netReady, br)
		return
	}
	if d.netReady == nil {
		d.netReady = map[string]bridgeState{}
	}
	d.netReady[br] = bridgeState{index: ifi.Index, cidr: cidr, firewall: firewall}
}

func netErr(err error) error {
	return errdefs.New(errdefs.ErrUnavailable, "network-setup-failed", "cannot set up the VM's network", err)
}

// ensureBridge creates bridge br with host address cidr and brings it up.
func (d *Driver) ensureBridge(ctx context.Context, br, cidr string) error {
	l, ok, err := d.link(ctx, br)
	if err != nil {
		return netErr(err)
	}
	if ok && !l.isBridge() {
		return netErr(fmt.Errorf("%s exists and is not a bridge", br))
	}
	if !ok {
		if _, err := d.run(ctx, d.ip, "link", "add", "name", br, "type", "bridge"); err != nil {
			if _, ok, _ := d.link(ctx, br); !ok {
				return netErr(err)
			}
		}
		d.log.Info("created bridge", "bridge", br, "address", cidr)
	}
	if _, err := d.run(ctx, d.ip, "addr", "replace", cidr, "dev", br); err != nil {
		return netErr(err)
	}
	if _, err := d.run(ctx, d.ip, "link", "set", "dev", br, "up"); err != nil {
		return netErr(err)
	}
	return nil
}

// ensureDnsmasq starts the bridge's dnsmasq unless it runs. It runs as its
// own daemon and outlives goldvm, like the VMs it serves.
func (d *Driver) ensureDnsmasq(ctx context.Context, br, cidr string, router bool) error {
	pidFile := d.dnsmasqPIDFile(br)
	if pid, ok := readPID(pidFile); ok {
		if args := procArgs(pid); args != nil && !procZombie(pid) &&
			strings.Contains(filepath.Base(args[0]), "dnsmasq") && containsArg(args, "--interface="+br) {
			return nil
		}
	}
	// One DHCP server per bridge: another goldvm daemon (another data
	// directory) in this network namespace may already serve it, and two
	// authoritative servers on one segment answer each other's clients.
	if pid := bridgeDnsmasq(br); pid != 0 {
		lease := argValue(procArgs(pid), "--dhcp-leasefile=")
		if _, err := os.Stat(lease); lease == "" || err == nil {
			d.log.Info("bridge already has a DHCP server; using it", "bridge", br, "dnsmasq_pid", pid)
			return nil
		}
		// A goldvm daemon's dnsmasq whose data directory is gone (the
		// daemon and its VMs with it): nobody can read its leases or give
		// it reservations. Replace it.
		d.log.Warn("replacing the bridge's DHCP server: its lease file is gone with the data directory of the goldvm that started it",
			"bridge", br, "dnsmasq_pid", pid, "leases", lease)
		if err := stopDnsmasq(pid); err != nil {
			return netErr(fmt.Errorf("stopping the orphaned dnsmasq on %s: %w", br, err))
		}
	}
	rng, err := dhcpRange(cidr)
	if err != nil {
		return netErr(err)
	}
	args := []string{
		"--conf-file=/dev/null",
		"--pid-file=" + pidFile,
		"--dhcp-leasefile=" + d.leaseFile(br),
		"--interface=" + br,
		"--bind-interfaces",
		"--except-interface=lo",
		"--dhcp-range=" + rng,
		"--dhcp-authoritative",
		"--no-ping", // else every offer waits ~3 s per address probe
		"--no-resolv",
		"--no-hosts",
		"--port=0", // DHCP only, no DNS
		"--log-facility=" + filepath.Join(d.cfg.RunDir, "dnsmasq-"+br+".log"),
	}
	if a := d.prepareHostsDir(br); a != "" {
		args = append(args, a)
	}
	if !router {
		// hostonly: no default route, but a route to the metadata address
		// through the host (classless static routes, RFC 3442).
		args = append(args, "--dhcp-option=3")
		if host, _, ok := strings.Cut(cidr, "/"); ok {
			args = append(args, "--dhcp-option=121,"+MetadataAddr+"/32,"+host)
		}
	} else if ns := hostNameservers("/etc/resolv.conf"); len(ns) > 0 {
		// dnsmasq serves no DNS (--port=0); point nat guests at the
		// host's own upstream resolvers instead.
		args = append(args, "--dhcp-option=6,"+strings.Join(ns, ","))
	}
	if _, err := d.run(ctx, d.dnsmasq, args...); err != nil {
		return netErr(fmt.Errorf("start dnsmasq on %s: %w", br, err))
	}
	// dnsmasq writes its pidfile after forking; wait for it briefly.
	for i := 0; i < 50; i++ {
		if _, ok := readPID(pidFile); ok {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	d.log.Info("started dnsmasq", "bridge", br, "range", rng, "leases", d.leaseFile(br))
	return nil
}

// stopDnsmasq sends dnsmasq pid SIGTERM and waits, up to 2 s, until it has
// exited (a zombie or gone: its sockets closed).
func stopDnsmasq(pid int) error {
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		return fmt.Errorf("dnsmasq %d: %w", pid, err)
	}
	for i := 0; i < 100 && !procZombie(pid); i++ {
		time.Sleep(20 * time.Millisecond)
	}
	if !procZombie(pid) {
		return fmt.Errorf("dnsmasq %d did not stop within 2s of SIGTERM", pid)
	}
	return nil
}

// argValue is the value of the first argument of args with prefix
// ("--name="), "" when none has it.
func argValue(args []string, prefix string) string {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, prefix); ok {
			return v
		}
	}
	return ""
}

func containsArg(args []string, a string) bool {
	for _, x := range args {
		if x == a {
			return true
		}
	}
	return false
}

// ensureFirewall enables forwarding and NAT for a nat bridge, and drops
// forwarding from a hostonly bridge. Failures are logged, not returned: a
// host without iptables still gets working host<->guest networking.
func (d *Driver) ensureFirewall(ctx context.Context, br, cidr string, masquerade bool) {
	pfx, err := netip.ParsePrefix(cidr)
	if err != nil {
		return
	}
	netw := pfx.Masked().String()
	if d.iptables == "" {
		if masquerade {
			d.log.Warn("iptables not found (apt-get install iptables); guests on the nat bridge cannot reach the outside", "bridge", br)
		}
		return
	}
	var rules [][]string
	if masquerade {
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644); err != nil {
			d.log.Warn("cannot enable IPv4 forwarding", "err", err)
		}
		rules = [][]string{
			{"-t", "nat", "POSTROUTING", "-s", netw, "!", "-d", netw, "-j", "MASQUERADE"},
			{"-t", "filter", "FORWARD", "-i", br, "-j", "ACCEPT"},
			{"-t", "filter", "FORWARD", "-o", br, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"},
		}
	} else {
		rules = [][]string{{"-t", "filter", "FORWARD", "-i", br, "-j", "DROP"}}
	}
	for _, r := range rules {
		table, chain, spec := r[1], r[2], r[3:]
		check := append([]string{"-w", "-t", table, "-C", chain}, spec...)
		if _, err := d.run(ctx, d.iptables, check...); err == nil {
			continue
		}
		op := "-I" // before rules of others (e.g. a FORWARD DROP policy chain)
		if table == "nat" {
			op = "-A"
		}
		add := append([]string{"-w", "-t", table, op, chain}, spec...)
		if _, err := d.run(ctx, d.iptables, add...); err != nil {
			d.log.Warn("iptables rule failed", "rule", strings.Join(add, " "), "err", err)
		}
	}
}

// ensureTap creates VM id's tap on bridge br (idempotent).
func (d *Driver) ensureTap(ctx context.Context, tap, br, id string) error {
	// Usually there is none yet: asked over netlink, without listing
	// every link through ip(8).
	_, err := net.InterfaceByName(tap)
	if exists := err == nil; exists {
		l, ok, err := d.link(ctx, tap)
		if err != nil {
			return netErr(err)
		}
		if ok && !l.isTap() {
			return netErr(fmt.Errorf("%s exists and is not a tap device", tap))
		}
	} else if _, err := d.run(ctx, d.ip, "tuntap", "add", "dev", tap, "mode", "tap"); err != nil {
		if _, ok, _ := d.link(ctx, tap); !ok {
			return netErr(err)
		}
	}
	if _, err := d.run(ctx, d.ip, "link", "set", "dev", tap, "alias", tapAlias(id, d.cfg.VMRoot), "master", br, "up"); err != nil {
		return netErr(err)
	}
	return nil
}

// removeTap deletes a tap device if it exists.
func (d *Driver) removeTap(ctx context.Context, tap string) error {
	l, ok, err := d.link(ctx, tap)
	if err != nil {
		return err
	}
	if !ok {
		return nil
	}
	if !l.isTap() {
		return fmt.Errorf("%s is not a tap device; not removing it", tap)
	}
	if _, err := d.run(ctx, d.ip, "link", "del", "dev", tap); err != nil {
		if _, ok, _ := d.link(ctx, tap); ok {
			return fmt.Errorf("remove tap %s: %w", tap, err)
		}
	}
	return nil
}

// tapOwner returns the VM id and the instance tag ("" when the alias
// has none) in a tap's alias; id is "" when the tap has no goldvm alias.
func (l ipLink) tapOwner() (id, root string) {
	rest, ok := strings.CutPrefix(strings.TrimSpace(l.Ifalias), tapAliasPrefix)
	if !ok {
		return "", ""
	}
	id, root, _ = strings.Cut(rest, tapAliasRoot)
	return id, root
}

// StopNetwork stops the dnsmasq instances goldvm started for its bridges and
// deletes those bridges. It is for tests and uninstallation; the daemon
// leaves both in place on shutdown (running VMs depend on them).
func (d *Driver) StopNetwork(ctx context.Context) error {
	d.netMu.Lock()
	defer d.netMu.Unlock()
	var errs []error
	for _, br := range []string{d.cfg.NATBridge, d.cfg.HostOnlyBridge} {
		delete(d.netReady, br)
		if pid, ok := readPID(d.dnsmasqPIDFile(br)); ok {
			if args := procArgs(pid); args != nil && containsArg(args, "--interface="+br) {
				if err := stopDnsmasq(pid); err != nil {
					errs = append(errs, err)
				}
			}
			os.Remove(d.dnsmasqPIDFile(br))
		}
		if l, ok, _ := d.link(ctx, br); ok && l.isBridge() {
			if _, err := d.run(ctx, d.ip, "link", "del", "dev", br); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// lookPath is exec.LookPath that also searches the sbin directories, which
// are not in every PATH.
func lookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	if strings.Contains(name, "/") {
		return "", fmt.Errorf("%s not found", name)
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		if fi, err := os.Stat(filepath.Join(dir, name)); err == nil && fi.Mode()&0o111 != 0 {
			return filepath.Join(dir, name), nil
		}
	}
	return "", fmt.Errorf("%s not found in PATH", name)
}

// hostNameservers returns the IPv4 nameservers of a resolv.conf that a guest
// behind NAT can use (loopback stubs such as 127.0.0.53 excluded).
func hostNameservers(path string) []string {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		ip, err := netip.ParseAddr(f[1])
		if err != nil || !ip.Is4() || ip.IsLoopback() || ip.IsUnspecified() {
			continue
		}
		out = append(out, ip.String())
	}
	return out
}

// bridgeDnsmasq returns the pid of a live dnsmasq serving bridge br in this
// process's network namespace, or 0.
func bridgeDnsmasq(br string) int {
	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		return 0
	}
	for _, pid := range allPIDs() {
		args := procArgs(pid)
		if len(args) == 0 || !strings.Contains(filepath.Base(args[0]), "dnsmasq") ||
			!containsArg(args, "--interface="+br) || procZombie(pid) {
			continue
		}
		if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid)); err == nil && ns == self {
			return pid
		}
	}
	return 0
}

// activeLeaseFile is the lease file of the dnsmasq that serves bridge br:
// ours, or that of another daemon's dnsmasq we share the bridge with.
func (d *Driver) activeLeaseFile(br string) string {
	own := d.leaseFile(br)
	if _, err := os.Stat(own); err == nil {
		return own
	}
	if pid := bridgeDnsmasq(br); pid != 0 {
		if f := argValue(procArgs(pid), "--dhcp-leasefile="); f != "" {
			return f
		}
	}
	return own
}
