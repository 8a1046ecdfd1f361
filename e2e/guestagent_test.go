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
	send := func(cmd string, args any) {
		t.Helper()
		b, _ := json.Marshal(map[string]any{"execute": cmd, "arguments": args})
		if _, err := conn.Write(append(b, '\n')); err != nil {
			t.Fatalf("%s: %v", cmd, err)
		}
	}
	// reply returns the next JSON reply line (the agent may send other
	// bytes first: 0xff).
	reply := func(cmd string) (ret json.RawMessage, replyErr any) {
		t.Helper()
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				t.Fatalf("%s: %v", cmd, err)
			}
			var rep struct {
				Return json.RawMessage `json:"return"`
				Error  any             `json:"error"`
			}
			if json.Unmarshal([]byte(strings.Trim(string(line), "\xff \r\n")), &rep) == nil {
				return rep.Return, rep.Error
			}
		}
	}
	// One guest-sync, then every reply up to the one with its id is
	// skipped: stale replies an earlier client left, the agent's
	// complaint about the 0xFF. (Sending it again on a stale reply would
	// leave the second answer to be taken for the next command's.)
	sync := strconv.FormatInt(time.Now().UnixNano()%1e9+1, 10)
	send("guest-sync", map[string]any{"id": json.Number(sync)})
	for {
		if ret, e := reply("guest-sync"); e == nil && string(ret) == sync {
			break
		}
	}
	call := func(cmd string, args any) json.RawMessage {
		t.Helper()
		send(cmd, args)
		ret, e := reply(cmd)
		if e != nil {
			t.Fatalf("%s: %v", cmd, e)
		}
		return ret
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
