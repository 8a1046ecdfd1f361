package qemu

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/goldvm/goldvm/internal/procnet"
)

// UsesUserNet reports whether nat VMs get QEMU's user-mode networking
// (a daemon that is not root, or Config.UserNet). QEMU then maps the
// guest's gateway, 10.0.2.2, to the host's loopback, and has no option to
// turn that off: a guest can connect to every loopback service of the
// host, the daemon's own API included.
func (d *Driver) UsesUserNet() bool { return !d.bridging() }

// FromGuest reports whether the TCP connection a server on this host
// accepted, from peer to local, was opened by one of this driver's QEMU
// processes: a guest on user-mode networking reaching the host's loopback
// through its gateway. Servers of goldvm refuse such connections.
func (d *Driver) FromGuest(peer, local netip.AddrPort) bool {
	if !d.UsesUserNet() || d.cfg.VMRoot == "" {
		return false
	}
	inode, err := procnet.SocketInode(peer, local)
	if err != nil {
		return false
	}
	ents, err := os.ReadDir(d.cfg.VMRoot)
	if err != nil {
		return false
	}
	for _, e := range ents {
		if pid, ok := readPID(filepath.Join(d.cfg.VMRoot, e.Name(), filePID)); ok && procnet.Holds(pid, inode) {
			return true
		}
	}
	return false
}

// heldBy reports whether process pid holds the client socket of the TCP
// connection c, which a server on this host accepted.
func heldBy(c net.Conn, pid int) bool {
	peer, ok1 := c.RemoteAddr().(*net.TCPAddr)
	local, ok2 := c.LocalAddr().(*net.TCPAddr)
	if !ok1 || !ok2 {
		return false
	}
	inode, err := procnet.SocketInode(peer.AddrPort(), local.AddrPort())
	return err == nil && procnet.Holds(pid, inode)
}
