package qemu

// Per-VM nftables rules on the nat and hostonly bridges: isolation and the
// metadata address 169.254.169.254.
//
// Every VM's tap gets two rules (table bridge goldvm_md): a frame from it
// that does not carry the VM's MAC is dropped (chain pre), and a frame
// from it is never forwarded to another VM's tap (chain isolate, the
// bridge's forward hook), so VMs reach the host (DHCP, metadata, NAT to
// the outside) but not each other.
//
// Each VM's metadata is served by the daemon on a listener of its own, on
// the bridge's host address and a port of its own (recorded in the VM's
// directory as "metadata-port"). nftables steers a VM's traffic there by
// the tap it arrives on, which the guest cannot choose:
//
//	table bridge goldvm_md, chain pre (prerouting): a frame from the VM's
//	  tap for 169.254.169.254:80 gets the packet mark 0x676c0000|port;
//	table ip goldvm_md, chain nat (prerouting, dstnat): a packet with that
//	  mark for 169.254.169.254:80 is sent to <bridge address>:port;
//	table ip goldvm_md, chain in (input): a packet for <bridge address>:port
//	  without that mark is dropped, so no VM (and no other local process)
//	  reaches another VM's listener directly.
//
// VMs created with the same peers name (hypervisor.Spec.Peers) may reach
// each other: their taps are the elements of a set of that name's (table
// bridge goldvm_md, set peers_<hash of the name>), and each one's tap has,
// before its isolation rule, a rule that accepts frames from it to a tap
// in its set. Membership is by tap, as the isolation is: a guest cannot
// join a set by forging an address.
//
// A guest that forges another VM's IP address still sends through its own
// tap and gets its own mark; one that forges its MAC is dropped at its tap.
// Each rule carries the VM's id as its comment; Destroy deletes them. The
// hostonly bridge's DHCP hands out a route to 169.254.169.254/32 via the
// host (option 121), as it has no default route. User-mode networking has
// no metadata service: QEMU refuses a guestfwd to 169.254.169.254 (outside
// its 10.0.2.0/24), and a guestfwd to a chardev carries one stream for all
// the guest's connections, on which answers go to the wrong connection or
// are lost (tried with real QEMU: docs/usernet-metadata.md).

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"github.com/goldvm/goldvm/internal/hypervisor"
)

// MetadataAddr is the address guests read their metadata from.
const MetadataAddr = "169.254.169.254"

// nftTable is the nftables table (bridge and ip families) of the rules.
const nftTable = "goldvm_md"

// fileMetadataPort records the port of the VM's metadata listener.
const fileMetadataPort = "metadata-port"

// MetadataServer serves VMs' metadata; internal/metadata.Service is one.
type MetadataServer interface {
	// Serve answers VM id's metadata on ln until Stop(id).
	Serve(id string, ci hypervisor.CloudInit, ln net.Listener)
	// Serving reports whether VM id is served.
	Serving(id string) bool
	// Stop stops serving VM id.
	Stop(id string)
}

// metadataMark is the packet mark of the VM whose listener has port.
func metadataMark(port int) string { return fmt.Sprintf("0x676c%04x", port) }

// metadataEnabled reports whether VMs on plan np get a metadata service.
func (d *Driver) metadataEnabled(np netPlan) bool {
	return d.cfg.Metadata != nil && (np.User || (d.nft != "" && np.Subnet != ""))
}

// guardVM applies VM spec's nftables rules (its MAC on its tap; its
// metadata steering) and, when the metadata service is on, serves its
// metadata on a listener of its own. Start calls it for every VM on a
// goldvm bridge; Watch calls it again (after a restart) when the VM's
// metadata is not served. Without nft it does nothing.
func (d *Driver) guardVM(ctx context.Context, spec hypervisor.Spec, np netPlan) error {
	if np.User {
		return d.serveUserNetMetadata(spec, np)
	}
	if d.nft == "" || np.Subnet == "" {
		return nil
	}
	pfx, err := netip.ParsePrefix(np.Subnet)
	if err != nil {
		return err
	}
	host := pfx.Addr().String()
	var ln net.Listener
	if d.metadataEnabled(np) && spec.CloudInit != nil {
		if ln, err = metadataListener(spec, host); err != nil {
			return err
		}
	}
	mdPort := 0
	if ln != nil {
		mdPort = ln.Addr().(*net.TCPAddr).Port
	}
	d.netMu.Lock()
	err = d.vmRules(ctx, spec.ID, np.Tap, macOf(spec), spec.Peers, host, mdPort)
	d.netMu.Unlock()
	if err != nil {
		if ln != nil {
			ln.Close()
		}
		return err
	}
	if ln != nil {
		d.cfg.Metadata.Serve(spec.ID, *spec.CloudInit, ln)
		d.log.Debug("metadata service", "vm", spec.ID, "listen", ln.Addr().String())
	}
	return nil
}

// metadataListener listens for VM spec's metadata on host, on the port it
// had before (recorded in its directory, so that a guest that learnt it
// keeps it across daemon restarts) when that port is free.
func metadataListener(spec hypervisor.Spec, host string) (net.Listener, error) {
	port := 0
	if b, err := os.ReadFile(p(spec.Dir, fileMetadataPort)); err == nil {
		port, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	ln, err := net.Listen("tcp4", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil && port != 0 {
		ln, err = net.Listen("tcp4", net.JoinHostPort(host, "0"))
	}
	if err != nil {
		return nil, fmt.Errorf("metadata listener: %w", err)
	}
	port = ln.Addr().(*net.TCPAddr).Port
	if err := writeFileAtomic(p(spec.Dir, fileMetadataPort), []byte(strconv.Itoa(port)+"\n")); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// userNetGateway is the address of the host for a guest on QEMU's
// user-mode networking: QEMU maps it to the host's loopback.
const userNetGateway = "10.0.2.2"

// serveUserNetMetadata serves VM spec's metadata on user-mode networking,
// where 169.254.169.254 cannot be steered (QEMU's guestfwd carries one
// byte stream for all of a guest's connections, and refuses addresses
// outside 10.0.2.0/24: docs/usernet-metadata.md). The service listens on a
// loopback port of the VM's own, which the guest reaches at
// http://10.0.2.2:PORT/ (the URL is in its seed's meta-data as
// goldvm-metadata-url). Every user-mode guest reaches every loopback port,
// so a connection is served only when the VM's own QEMU holds its client
// socket: a guest cannot forge which process opened it.
func (d *Driver) serveUserNetMetadata(spec hypervisor.Spec, np netPlan) error {
	if !d.metadataEnabled(np) || spec.CloudInit == nil {
		return nil
	}
	ln, err := metadataListener(spec, "127.0.0.1")
	if err != nil {
		return err
	}
	d.cfg.Metadata.Serve(spec.ID, *spec.CloudInit, &ownQEMUListener{Listener: ln, pidFile: p(spec.Dir, filePID), log: d.log.With("vm", spec.ID)})
	d.log.Debug("metadata service (user-mode networking)", "vm", spec.ID, "listen", ln.Addr().String())
	return nil
}

// userNetMetadataURL is the URL of VM spec's metadata service as its guest
// on user-mode networking sees it ("" when it has none).
func userNetMetadataURL(spec hypervisor.Spec) string {
	b, err := os.ReadFile(p(spec.Dir, fileMetadataPort))
	if err != nil {
		return ""
	}
	return "http://" + net.JoinHostPort(userNetGateway, strings.TrimSpace(string(b))) + "/"
}

// ownQEMUListener accepts only the connections whose client socket the
// QEMU process in pidFile holds; others are closed.
type ownQEMUListener struct {
	net.Listener
	pidFile string
	log     *slog.Logger
}

// Accept returns the next connection of the VM's own QEMU.
func (l *ownQEMUListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return c, err
		}
		pid, ok := readPID(l.pidFile)
		if ok && heldBy(c, pid) {
			return c, nil
		}
		l.log.Warn("refused a metadata connection that is not the VM's own", "peer", c.RemoteAddr().String())
		c.Close()
	}
}

// vmRules replaces VM id's nftables rules (caller holds netMu): frames
// from its tap must carry its MAC and are not forwarded to another VM's
// tap, except, with peers, to the taps of its peer set; with mdPort > 0 its
// metadata traffic is steered to host:mdPort.
func (d *Driver) vmRules(ctx context.Context, id, tap, mac, peers, host string, mdPort int) error {
	if err := d.unsteerMetadata(ctx, id); err != nil {
		return err
	}
	q, qtap := strconv.Quote(id), strconv.Quote(tap)
	lines := append(nftChains(),
		fmt.Sprintf("add rule bridge %s pre iifname %s ether saddr != %s drop comment %s", nftTable, qtap, mac, q))
	if peers != "" {
		set := peerSet(peers)
		lines = append(lines,
			fmt.Sprintf("add set bridge %s %s { type ifname; comment %s; }", nftTable, set, strconv.Quote("peers "+peers)),
			fmt.Sprintf("add element bridge %s %s { %s }", nftTable, set, qtap),
			fmt.Sprintf("add rule bridge %s isolate iifname %s oifname @%s accept comment %s", nftTable, qtap, set, q))
	}
	// Nothing else from this VM to another VM's tap: it reaches the host
	// (DHCP, metadata, NAT to the outside), not the other VMs.
	lines = append(lines, fmt.Sprintf(`add rule bridge %s isolate iifname %s oifname "gv*" drop comment %s`, nftTable, qtap, q))
	if mdPort > 0 {
		mark := metadataMark(mdPort)
		lines = append(lines,
			fmt.Sprintf("add rule bridge %s pre iifname %s ip daddr %s tcp dport 80 meta mark set %s comment %s", nftTable, strconv.Quote(tap), MetadataAddr, mark, q),
			fmt.Sprintf("add rule ip %s nat meta mark %s ip daddr %s tcp dport 80 dnat to %s:%d comment %s", nftTable, mark, MetadataAddr, host, mdPort, q),
			fmt.Sprintf("add rule ip %s in ip daddr %s tcp dport %d meta mark != %s drop comment %s", nftTable, host, mdPort, mark, q))
	}
	return d.nftScript(ctx, lines)
}

// peerSet is the name of the nftables set of the taps of peer set name.
func peerSet(name string) string {
	sum := sha256.Sum256([]byte(name))
	return "peers_" + hex.EncodeToString(sum[:8])
}

// nftChains declares goldvm's tables and chains (idempotent).
func nftChains() []string {
	return []string{
		"add table bridge " + nftTable,
		"add chain bridge " + nftTable + " pre { type filter hook prerouting priority -300; policy accept; }",
		"add chain bridge " + nftTable + " isolate { type filter hook forward priority 0; policy accept; }",
		"add table ip " + nftTable,
		"add chain ip " + nftTable + " nat { type nat hook prerouting priority -100; policy accept; }",
		"add chain ip " + nftTable + " in { type filter hook input priority -10; policy accept; }",
	}
}

// nftScript runs lines as one nft transaction.
func (d *Driver) nftScript(ctx context.Context, lines []string) error {
	cmd := exec.CommandContext(ctx, d.nft, "-f", "-")
	cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft: %w: %s", err, tail(strings.TrimSpace(string(out)), 1000))
	}
	return nil
}

// nftRule is the part of a rule in `nft -j list table` goldvm reads.
type nftRule struct {
	Family  string `json:"family"`
	Table   string `json:"table"`
	Chain   string `json:"chain"`
	Handle  int    `json:"handle"`
	Comment string `json:"comment"`
}

// nftSet is the part of a set in `nft -j list table` goldvm reads.
type nftSet struct {
	Family string `json:"family"`
	Table  string `json:"table"`
	Name   string `json:"name"`
	Elem   []any  `json:"elem"`
}

// metadataRules lists goldvm's metadata rules in both families.
func (d *Driver) metadataRules(ctx context.Context) ([]nftRule, error) {
	rules, _, err := d.nftObjects(ctx)
	return rules, err
}

// nftObjects lists goldvm's rules in both families, and its sets.
func (d *Driver) nftObjects(ctx context.Context) ([]nftRule, []nftSet, error) {
	var rules []nftRule
	var sets []nftSet
	for _, fam := range []string{"bridge", "ip"} {
		out, err := d.run(ctx, d.nft, "-j", "list", "table", fam, nftTable)
		if err != nil {
			if strings.Contains(err.Error(), "No such file or directory") {
				continue // no table yet
			}
			return nil, nil, err
		}
		var doc struct {
			Nftables []struct {
				Rule *nftRule `json:"rule"`
				Set  *nftSet  `json:"set"`
			} `json:"nftables"`
		}
		if err := json.Unmarshal(out, &doc); err != nil {
			return nil, nil, fmt.Errorf("nft -j: %w", err)
		}
		for _, o := range doc.Nftables {
			if o.Rule != nil {
				rules = append(rules, *o.Rule)
			}
			if o.Set != nil {
				sets = append(sets, *o.Set)
			}
		}
	}
	return rules, sets, nil
}

// unsteerMetadata deletes VM id's rules (caller holds netMu).
func (d *Driver) unsteerMetadata(ctx context.Context, id string) error {
	return d.deleteMetadataRules(ctx, func(owner string) bool { return owner == id })
}

// deleteMetadataRules deletes the rules whose owner (comment) del accepts,
// and takes the owners' taps out of the peer sets.
func (d *Driver) deleteMetadataRules(ctx context.Context, del func(owner string) bool) error {
	rules, sets, err := d.nftObjects(ctx)
	if err != nil {
		return err
	}
	var errs []error
	taps := map[string]bool{}
	for _, r := range rules {
		if r.Comment == "" || !del(r.Comment) {
			continue
		}
		taps[tapFor(r.Comment)] = true
		if _, err := d.run(ctx, d.nft, "delete", "rule", r.Family, r.Table, r.Chain, "handle", strconv.Itoa(r.Handle)); err != nil {
			errs = append(errs, err)
		}
	}
	for _, s := range sets {
		for _, e := range s.Elem {
			if tap, ok := e.(string); ok && taps[tap] && strings.HasPrefix(s.Name, "peers_") {
				if _, err := d.run(ctx, d.nft, "delete", "element", s.Family, s.Table, s.Name, "{ "+strconv.Quote(tap)+" }"); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	return errors.Join(errs...)
}

// stopMetadata stops serving VM spec and removes its rules.
func (d *Driver) stopMetadata(ctx context.Context, spec hypervisor.Spec) error {
	if d.nft == "" {
		return nil
	}
	if d.cfg.Metadata != nil {
		d.cfg.Metadata.Stop(spec.ID)
	}
	d.netMu.Lock()
	defer d.netMu.Unlock()
	return d.unsteerMetadata(ctx, spec.ID)
}
