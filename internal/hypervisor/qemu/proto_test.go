package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fakeQGA serves one connection like qemu-ga behind a channel that still
// holds stale replies from earlier clients.
func fakeQGA(t *testing.T, sock string, stale []string) {
	t.Helper()
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				// Stale output queued in the channel before we are asked anything.
				for _, s := range stale {
					fmt.Fprint(c, s)
				}
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					line = strings.TrimLeft(line, "\xff")
					var req struct {
						Execute   string `json:"execute"`
						Arguments struct {
							ID int64 `json:"id"`
						} `json:"arguments"`
					}
					if json.Unmarshal([]byte(line), &req) != nil {
						fmt.Fprint(c, `{"error": {"class": "GenericError", "desc": "Invalid JSON syntax"}}`+"\n")
						continue
					}
					switch req.Execute {
					case "guest-sync":
						// A stale reply races ahead of ours.
						fmt.Fprintf(c, "{\"return\": %d}\n", req.Arguments.ID+1)
						fmt.Fprintf(c, "{\"return\": %d}\n", req.Arguments.ID)
					case "guest-network-get-interfaces":
						fmt.Fprint(c, `{"return": [{"name": "lo", "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "127.0.0.1", "prefix": 8}], "hardware-address": "00:00:00:00:00:00"}, {"name": "eth0", "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "10.213.0.57", "prefix": 24}], "hardware-address": "52:54:00:12:34:56"}]}`+"\n")
					case "guest-get-osinfo":
						fmt.Fprint(c, `{"return": {"name": "goldvm", "pretty-name": "goldvm test guest (Debian kernel, busybox)", "kernel-release": "6.1.0"}}`+"\n")
					default:
						fmt.Fprint(c, `{"error": {"class": "CommandNotFound", "desc": "nope"}}`+"\n")
					}
				}
			}(c)
		}
	}()
}

func TestQGAStaleReplies(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "qga.sock")
	fakeQGA(t, sock, []string{
		`{"return": 4242}` + "\n",                       // an old guest-sync reply
		`ses": [{"ip-address-type": "ipv4"}]}]}` + "\n", // tail of a half-read reply
		`{"return": [{"name": "eth9", "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "192.0.2.1"}]}]}` + "\n",
		`{"return": {}}` + "\n",
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ip, osName, err := queryGuest(ctx, sock, "52:54:00:12:34:56")
	if err != nil {
		t.Fatal(err)
	}
	if ip != "10.213.0.57" || osName != "goldvm test guest (Debian kernel, busybox)" {
		t.Errorf("got %q %q", ip, osName)
	}
}

func TestQGANoAgent(t *testing.T) {
	// A socket whose other end never answers (qemu-ga not started yet).
	sock := filepath.Join(t.TempDir(), "qga.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, _, err := queryGuest(ctx, sock, ""); err == nil {
		t.Fatal("no error from a silent agent")
	}
}

func TestQMPClient(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		fmt.Fprint(c, `{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": ["oob"]}}`+"\n")
		dec := json.NewDecoder(c)
		var held []map[string]any
		for {
			var req map[string]any
			if dec.Decode(&req) != nil {
				return
			}
			switch req["execute"] {
			case "qmp_capabilities":
				fmt.Fprintf(c, `{"return": {}, "id": %q}`+"\n", req["id"])
			case "query-status":
				held = append(held, req) // answer after the next command, out of order
			case "quit":
				fmt.Fprintf(c, `{"return": {}, "id": %q}`+"\n", req["id"])
				fmt.Fprint(c, `{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "SHUTDOWN", "data": {"guest": false, "reason": "host-qmp-quit"}}`+"\n")
				for _, h := range held {
					fmt.Fprintf(c, `{"return": {"status": "running", "running": true}, "id": %q}`+"\n", h["id"])
				}
				return
			default:
				fmt.Fprintf(c, `{"error": {"class": "CommandNotFound", "desc": "The command %s has not been found"}, "id": %q}`+"\n", req["execute"], req["id"])
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q, err := dialQMP(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if _, err := q.Execute(ctx, "bogus", nil); err == nil || !strings.Contains(err.Error(), "CommandNotFound") {
		t.Errorf("bogus: %v", err)
	}
	statusCh := make(chan error, 1)
	go func() {
		ret, err := q.Execute(ctx, "query-status", nil)
		var st qmpStatus
		if err == nil {
			err = json.Unmarshal(ret, &st)
		}
		if err == nil && st.Status != "running" {
			err = fmt.Errorf("status %q", st.Status)
		}
		statusCh <- err
	}()
	time.Sleep(50 * time.Millisecond)
	if _, err := q.Execute(ctx, "quit", nil); err != nil {
		t.Fatal(err)
	}
	if err := <-statusCh; err != nil {
		t.Errorf("query-status: %v", err)
	}
	select {
	case ev := <-q.Events():
		if ev.Event != "SHUTDOWN" || !strings.Contains(string(ev.Data), "host-qmp-quit") {
			t.Errorf("event %+v", ev)
		}
	case <-ctx.Done():
		t.Fatal("no SHUTDOWN event")
	}
	select {
	case <-q.Done():
	case <-ctx.Done():
		t.Fatal("connection did not end")
	}
	if _, err := q.Execute(ctx, "query-status", nil); err == nil {
		t.Error("Execute after EOF succeeded")
	}
}

func TestDialUnixLongPath(t *testing.T) {
	dir := t.TempDir()
	long := filepath.Join(dir, strings.Repeat("x", 60), strings.Repeat("y", 60))
	if err := mkdirAll(long); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(long, "qmp.sock")
	if len(sock) < 110 {
		t.Fatalf("test path too short: %d", len(sock))
	}
	// Bind through a short alias of the directory (QEMU uses a relative name).
	dfd, err := syscall.Open(long, oPath|syscall.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fd, err := net.Listen("unix", fmt.Sprintf("/proc/self/fd/%d/qmp.sock", dfd))
	syscall.Close(dfd)
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	go func() {
		c, err := fd.Accept()
		if err == nil {
			c.Write([]byte("hi"))
			c.Close()
		}
	}()
	c, err := dialUnix(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2)
	if _, err := c.Read(buf); err != nil || string(buf) != "hi" {
		t.Errorf("read %q %v", buf, err)
	}
	c.Close()
}

// TestQMPStaleReplies: QEMU can send a new connection an event and the
// reply to a command an earlier client left running (a screendump) before
// its greeting, and more stale replies after it; dialQMP skips them and a
// command gets its own reply, not one with an id an earlier connection used.
func TestQMPStaleReplies(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		fmt.Fprint(c, `{"return": {}, "id": "g1"}`+"\n")
		fmt.Fprint(c, `{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RESUME"}`+"\n")
		fmt.Fprint(c, `{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": []}}`+"\n")
		dec := json.NewDecoder(c)
		for {
			var req map[string]any
			if dec.Decode(&req) != nil {
				return
			}
			// Stale replies first, with the ids a fresh connection would
			// have used before commands were numbered per process.
			fmt.Fprint(c, `{"return": {}, "id": "caps"}`+"\n"+`{"return": {"status": "paused"}, "id": "g1"}`+"\n")
			if req["execute"] == "query-status" {
				fmt.Fprintf(c, `{"return": {"status": "running", "running": true}, "id": %q}`+"\n", req["id"])
			} else {
				fmt.Fprintf(c, `{"return": {}, "id": %q}`+"\n", req["id"])
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q, err := dialQMP(ctx, sock)
	if err != nil {
		t.Fatalf("dial with stale messages before the greeting: %v", err)
	}
	defer q.Close()
	ret, err := q.Execute(ctx, "query-status", nil)
	var st qmpStatus
	if err == nil {
		err = json.Unmarshal(ret, &st)
	}
	if err != nil || st.Status != "running" {
		t.Fatalf("query-status: %+v, %v; want its own reply (running)", st, err)
	}
}
