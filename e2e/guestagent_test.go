package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// guestShell runs script with /bin/sh in the guest of VM id through its
// guest agent (the daemon's qga.sock in the VM's directory: guest-sync,
// guest-exec, guest-exec-status) and returns its stdout; a script that
// exits non-zero fails the test.
func guestShell(t *testing.T, d *daemon, id, script string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var dialer net.Dialer
	conn, err := dialer.DialContext(ctx, "unix", filepath.Join(d.dataDir, "vms", id, "qga.sock"))
	if err != nil {
		t.Fatalf("guest agent of %s: %v", id, err)
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	conn.SetDeadline(deadline)
	r := bufio.NewReader(conn)
	// call sends a command and returns the "return" of the first JSON
	// reply line (the agent may send other bytes first: 0xff, stale replies
	// are skipped by guest-sync's id).
	call := func(cmd string, args any) json.RawMessage {
		t.Helper()
		b, _ := json.Marshal(map[string]any{"execute": cmd, "arguments": args})
		if _, err := conn.Write(append(b, '\n')); err != nil {
			t.Fatalf("%s: %v", cmd, err)
		}
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				t.Fatalf("%s: %v", cmd, err)
			}
			var reply struct {
				Return json.RawMessage `json:"return"`
				Error  any             `json:"error"`
			}
			if json.Unmarshal([]byte(strings.Trim(string(line), "\xff \r\n")), &reply) != nil {
				continue
			}
			if reply.Error != nil && cmd == "guest-sync" {
				continue // the agent's complaint about bytes an earlier client left; the sync id decides
			}
			if reply.Error != nil {
				t.Fatalf("%s: %v", cmd, reply.Error)
			}
			return reply.Return
		}
	}
	sync := strconv.FormatInt(time.Now().UnixNano()%1e9, 10)
	for string(call("guest-sync", map[string]any{"id": json.Number(sync)})) != sync {
	}
	var started struct{ PID int }
	json.Unmarshal(call("guest-exec", map[string]any{"path": "/bin/sh", "arg": []string{"-c", script}, "capture-output": true}), &started)
	for ctx.Err() == nil {
		var st struct {
			Exited   bool   `json:"exited"`
			ExitCode int    `json:"exitcode"`
			OutData  []byte `json:"out-data"`
			ErrData  []byte `json:"err-data"`
		}
		json.Unmarshal(call("guest-exec-status", map[string]any{"pid": started.PID}), &st)
		if st.Exited {
			if st.ExitCode != 0 {
				t.Fatalf("guest command %q exited %d: %s", script, st.ExitCode, st.ErrData)
			}
			return string(st.OutData)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("guest command %q did not end", script)
	return ""
}
