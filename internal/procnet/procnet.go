// Package procnet finds which process holds the other end of a TCP
// connection on this host, from /proc/net/tcp{,6} and /proc/<pid>/fd.
//
// goldvm uses it to refuse API connections that a guest makes through
// QEMU's user-mode networking, which maps the guest's gateway (10.0.2.2)
// to the host's loopback: such a connection comes from the VM's QEMU
// process, not from a client of the host.
package procnet

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// ErrNotFound is returned when no socket has the addresses asked for.
var ErrNotFound = errors.New("no such TCP socket")

// procRoot is where /proc is (tests point it elsewhere).
var procRoot = "/proc"

// SocketInode returns the inode of the TCP socket on this host whose own
// address is local and whose peer is remote (for a connection a server
// accepted: local is the client's address, remote the server's).
func SocketInode(local, remote netip.AddrPort) (uint64, error) {
	files := []string{"net/tcp6"}
	if local.Addr().Unmap().Is4() {
		files = []string{"net/tcp", "net/tcp6"}
	}
	for _, f := range files {
		ino, err := findInode(procRoot+"/"+f, local, remote)
		if err == nil || !errors.Is(err, ErrNotFound) {
			return ino, err
		}
	}
	return 0, ErrNotFound
}

// findInode scans one /proc/net/tcp-format table.
func findInode(path string, local, remote netip.AddrPort) (uint64, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, ErrNotFound
	}
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan() // the header
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 {
			continue
		}
		l, err1 := parseAddr(fields[1])
		r, err2 := parseAddr(fields[2])
		if err1 != nil || err2 != nil || !sameAddr(l, local) || !sameAddr(r, remote) {
			continue
		}
		ino, err := strconv.ParseUint(fields[9], 10, 64)
		if err != nil || ino == 0 {
			continue // a socket in TIME_WAIT has no inode
		}
		return ino, nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, ErrNotFound
}

func sameAddr(a, b netip.AddrPort) bool {
	return a.Port() == b.Port() && a.Addr().Unmap() == b.Addr().Unmap()
}

// parseAddr parses "0100007F:1F90" (IPv4) or the 32-digit IPv6 form: the
// address as 32-bit words in host (little-endian) order, the port in hex.
func parseAddr(s string) (netip.AddrPort, error) {
	hexAddr, hexPort, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("address %q", s)
	}
	port, err := strconv.ParseUint(hexPort, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("port %q: %w", hexPort, err)
	}
	raw, err := hex.DecodeString(hexAddr)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.AddrPort{}, fmt.Errorf("address %q", hexAddr)
	}
	for i := 0; i < len(raw); i += 4 {
		binary.BigEndian.PutUint32(raw[i:], binary.LittleEndian.Uint32(raw[i:]))
	}
	addr, _ := netip.AddrFromSlice(raw)
	return netip.AddrPortFrom(addr, uint16(port)), nil
}

// Holds reports whether process pid has the socket inode open. A process
// that is gone, or whose descriptors this process may not read, holds
// nothing.
func Holds(pid int, inode uint64) bool {
	dir := procRoot + "/" + strconv.Itoa(pid) + "/fd"
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	want := "socket:[" + strconv.FormatUint(inode, 10) + "]"
	for _, e := range ents {
		if target, err := os.Readlink(dir + "/" + e.Name()); err == nil && target == want {
			return true
		}
	}
	return false
}
