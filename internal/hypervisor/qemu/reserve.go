package qemu

// Address reservations for VMs started from a template.
//
// A VM restored from a template must leave the template's address. A new
// DHCP exchange for the VM's new MAC is the slow part of a warm start (1.5 s
// for one VM on an idle host, 5 s and more for four at once: the guest's
// DHCP client retries on a one-second timer), so goldvm chooses the address
// itself: it reserves a free address of the bridge's DHCP pool for the VM's
// MAC with the bridge's dnsmasq (a file in its --dhcp-hostsdir, which
// dnsmasq reads as soon as it is written, without a restart), and the
// identity script sets that address in the guest statically. The DHCP
// server then never gives the address to anyone else, and the guest gets the
// same address by DHCP if it reboots.
//
// A reservation is a file named by its address, created with O_EXCL (so
// two goldvm daemons sharing a bridge cannot claim one address), holding
// "# goldvm <vm id>" and dnsmasq's "<mac>,<address>". Destroy removes the
// VM's file and sends dnsmasq SIGHUP, which re-reads the directory (dnsmasq
// only adds host entries on its own).

import (
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// errNoReservations says the bridge's DHCP server takes no reservations
// from goldvm: a VM then gets its address by DHCP.
var errNoReservations = errors.New("the bridge's DHCP server takes no address reservations")

// hostsDir is the --dhcp-hostsdir goldvm gives the dnsmasq it starts on br.
func (d *Driver) hostsDir(br string) string {
	return filepath.Join(d.cfg.RunDir, "dnsmasq-"+br+".hosts")
}

// prepareHostsDir makes the reservation directory of bridge br for a new
// dnsmasq and returns its --dhcp-hostsdir argument, or "" when dnsmasq, which
// drops to user nobody, could not read it (a run directory below a
// directory other users cannot search).
func (d *Driver) prepareHostsDir(br string) string {
	dir := d.hostsDir(br)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		d.log.Warn("no address reservations for VMs started from a template", "bridge", br, "err", err)
		return ""
	}
	// dnsmasq lists the directory and reads its files as nobody: the run
	// directory must be searchable (not listable) by others, the
	// reservation directory readable.
	for path, mode := range map[string]os.FileMode{d.cfg.RunDir: 0o711, dir: 0o755} {
		if err := os.Chmod(path, mode); err != nil {
			d.log.Warn("no address reservations for VMs started from a template", "bridge", br, "err", err)
			return ""
		}
	}
	if at := unsearchableAncestor(dir); at != "" {
		d.log.Warn("no address reservations for VMs started from a template: dnsmasq runs as nobody and cannot reach its reservation directory; they get their address by DHCP",
			"bridge", br, "dir", dir, "not_searchable", at)
		return ""
	}
	return "--dhcp-hostsdir=" + dir
}

// unsearchableAncestor returns the first directory from / down to dir that
// other users cannot search, or "" when there is none.
func unsearchableAncestor(dir string) string {
	dir = filepath.Clean(dir)
	var chain []string
	for d := dir; ; d = filepath.Dir(d) {
		chain = append(chain, d)
		if d == filepath.Dir(d) {
			break
		}
	}
	for i := len(chain) - 1; i >= 0; i-- {
		fi, err := os.Stat(chain[i])
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return chain[i]
		}
	}
	return ""
}

// activeHostsDir is the reservation directory of the dnsmasq serving
// bridge br (goldvm's, or another daemon's it shares the bridge with) and
// that dnsmasq's pid; "" when it has none (started by an older goldvm, or
// not by goldvm) or its directory is gone.
func (d *Driver) activeHostsDir(br string) (dir string, pid int) {
	pid, ok := readPID(d.dnsmasqPIDFile(br))
	if !ok || procZombie(pid) || !containsArg(procArgs(pid), "--interface="+br) {
		pid = bridgeDnsmasq(br)
	}
	if pid == 0 {
		return "", 0
	}
	dir = argValue(procArgs(pid), "--dhcp-hostsdir=")
	// Gone with the data directory of the daemon that started this
	// dnsmasq: dnsmasq reads nothing new.
	if fi, err := os.Stat(dir); dir == "" || err != nil || !fi.IsDir() {
		return "", pid
	}
	return dir, pid
}

// reservationHeader is the first line of VM id's reservation file.
func reservationHeader(id string) string { return "# goldvm " + id + "\n" }

// reserveAddress reserves a free address of np's DHCP pool for VM id with
// MAC mac and returns it with the subnet's prefix length, or
// errNoReservations. The address is one that no lease (current or
// expired but still in the lease file) and no reservation holds, searched
// from a point that the VM id decides.
func (d *Driver) reserveAddress(np netPlan, id, mac string) (netip.Prefix, error) {
	if !np.DHCP || np.User {
		return netip.Prefix{}, errNoReservations
	}
	dir, _ := d.activeHostsDir(np.Bridge)
	if dir == "" {
		return netip.Prefix{}, errNoReservations
	}
	return d.claimAddress(np, dir, id, mac)
}

// claimAddress is reserveAddress in reservation directory dir.
func (d *Driver) claimAddress(np netPlan, dir, id, mac string) (netip.Prefix, error) {
	first, last, bits, err := dhcpPool(np.Subnet)
	if err != nil {
		return netip.Prefix{}, err
	}
	d.netMu.Lock()
	defer d.netMu.Unlock()
	taken := d.leasedAddrs(np.Bridge)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("reading address reservations: %w", err)
	}
	for _, e := range ents {
		if a, err := netip.ParseAddr(e.Name()); err == nil && a.Is4() {
			taken[ipU32(a)] = true
		}
	}
	h := fnv.New32a()
	h.Write([]byte(id))
	size := last - first + 1
	start := h.Sum32() % size
	for i := uint32(0); i < size; i++ {
		n := first + (start+i)%size
		if taken[n] {
			continue
		}
		addr := netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
		f, err := os.OpenFile(filepath.Join(dir, addr.String()), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if errors.Is(err, fs.ErrExist) {
			continue // another daemon on this bridge claimed it just now
		}
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("reserving %s: %w", addr, err)
		}
		// One write, then close: dnsmasq reads the file when it is closed.
		_, werr := f.WriteString(reservationHeader(id) + mac + "," + addr.String() + "\n")
		if cerr := f.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			os.Remove(f.Name())
			return netip.Prefix{}, fmt.Errorf("reserving %s: %w", addr, werr)
		}
		// A cold-booting VM may have been given the address between the
		// look at the leases and the reservation: then take another.
		if d.leasedAddrs(np.Bridge)[n] {
			os.Remove(f.Name())
			taken[n] = true
			continue
		}
		return netip.PrefixFrom(addr, bits), nil
	}
	return netip.Prefix{}, fmt.Errorf("no free address on bridge %s (%s): every address of its DHCP pool is leased or reserved", np.Bridge, np.Subnet)
}

// leasedAddrs is the set of addresses in the lease file of bridge br's DHCP
// server.
func (d *Driver) leasedAddrs(br string) map[uint32]bool {
	out := map[uint32]bool{}
	b, err := os.ReadFile(d.activeLeaseFile(br))
	if err != nil {
		return out
	}
	for _, l := range parseLeases(strings.NewReader(string(b))) {
		if a, err := netip.ParseAddr(l.IP); err == nil {
			out[ipU32(a)] = true
		}
	}
	return out
}

// reservedAddress is the address reserved for VM id on bridge br, "" when
// it has none.
func (d *Driver) reservedAddress(br, id string) string {
	dir, _ := d.activeHostsDir(br)
	if dir == "" {
		return ""
	}
	return d.reservedAddressIn(dir, id)
}

// reservedAddressIn is reservedAddress in reservation directory dir.
func (d *Driver) reservedAddressIn(dir, id string) string {
	names, _ := reservationsOf(dir, id)
	if len(names) == 0 {
		return ""
	}
	return names[0]
}

// reservationsOf lists the files of VM id in reservation directory dir
// (their names are the addresses).
func reservationsOf(dir, id string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		if b, err := os.ReadFile(filepath.Join(dir, e.Name())); err == nil && strings.HasPrefix(string(b), reservationHeader(id)) {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// releaseAddress removes VM id's reservation on np's bridge, if it has one,
// and has dnsmasq forget it.
func (d *Driver) releaseAddress(np netPlan, id string) error {
	if !np.DHCP || np.User {
		return nil
	}
	dir, pid := d.activeHostsDir(np.Bridge)
	if dir == "" {
		return nil
	}
	return d.releaseIn(dir, pid, id)
}

// releaseIn is releaseAddress in reservation directory dir of the dnsmasq
// with pid (0: none to tell).
func (d *Driver) releaseIn(dir string, pid int, id string) error {
	d.netMu.Lock()
	defer d.netMu.Unlock()
	names, err := reservationsOf(dir, id)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	for _, name := range names {
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("removing the address reservation %s: %w", name, err)
		}
	}
	if len(names) > 0 && pid != 0 {
		// dnsmasq adds what appears in the directory by itself, and drops
		// what is gone only when it re-reads it.
		if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
			d.log.Warn("asking dnsmasq to forget a reservation", "pid", pid, "err", err)
		}
	}
	return nil
}

// dhcpRoutes is what the DHCP server of np's bridge gives a guest as its
// routes (see ensureDnsmasq), in ip-route syntax: the default route through
// the host on a nat bridge, the route to the metadata address through it on
// a hostonly one.
func dhcpRoutes(np netPlan) []string {
	host, _, _ := strings.Cut(np.Subnet, "/")
	if np.Masquerade {
		return []string{"default via " + host}
	}
	return []string{MetadataAddr + "/32 via " + host}
}
