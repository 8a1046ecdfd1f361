package procnet

import (
	"net"
	"net/netip"
	"os"
	"os/exec"
	"testing"
)

func TestParseAddr(t *testing.T) {
	for in, want := range map[string]string{
		"0100007F:1F90":                         "127.0.0.1:8080",
		"0202000A:0016":                         "10.0.2.2:22",
		"00000000000000000000000001000000:0050": "[::1]:80",
		"0000000000000000FFFF00000100007F:3039": "[::ffff:127.0.0.1]:12345",
	} {
		got, err := parseAddr(in)
		if err != nil || got.String() != want {
			t.Errorf("parseAddr(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "0100007F", "0100007F:XYZ", "01007F:0050", "zz00007F:0050"} {
		if _, err := parseAddr(bad); err == nil {
			t.Errorf("parseAddr(%q) succeeded", bad)
		}
	}
}

// TestSocketOwner: of a real loopback connection, the accepting side finds
// the client's socket and that this process holds it; a child process that
// holds no socket does not.
func TestSocketOwner(t *testing.T) {
	for _, network := range []string{"tcp4", "tcp6"} {
		t.Run(network, func(t *testing.T) {
			addr := "127.0.0.1:0"
			if network == "tcp6" {
				addr = "[::1]:0"
			}
			ln, err := net.Listen(network, addr)
			if err != nil {
				t.Skipf("no %s loopback here: %v", network, err)
			}
			defer ln.Close()
			client, err := net.Dial(network, ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			server, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer server.Close()
			peer := server.RemoteAddr().(*net.TCPAddr).AddrPort()
			self := server.LocalAddr().(*net.TCPAddr).AddrPort()
			ino, err := SocketInode(peer, self)
			if err != nil {
				t.Fatalf("SocketInode(%v, %v): %v", peer, self, err)
			}
			if !Holds(os.Getpid(), ino) {
				t.Errorf("this process does not hold the client's socket %d", ino)
			}
			// The server's own end is another socket.
			if own, err := SocketInode(self, peer); err != nil || own == ino {
				t.Errorf("the server end: %d, %v (client end %d)", own, err, ino)
			}
			cmd := exec.Command("sleep", "10")
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { cmd.Process.Kill(); cmd.Wait() }()
			if Holds(cmd.Process.Pid, ino) {
				t.Errorf("a child without the socket holds it")
			}
			if _, err := SocketInode(netip.MustParseAddrPort("127.0.0.1:1"), self); err != ErrNotFound {
				t.Errorf("no such socket: %v, want ErrNotFound", err)
			}
		})
	}
}
