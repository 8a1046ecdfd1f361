package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The types below are a client of the OS X Builder, goldvm's ancestor,
// written only from that service's documentation (../shared/seeds/001_…
// and its revision 002_…), not from package api: memory is an integer of
// MiB in replies, tools_init_timeout an integer of seconds, launch_gui a
// boolean, and id, ip_address, status and guest_os strings. goldvm must
// serve such a client unchanged.

// osxImage is the documented "image" object.
type osxImage struct {
	URL          string `json:"url"`
	Checksum     string `json:"checksum"`
	ChecksumType string `json:"checksum_type"`
}

// osxCreate is the documented body of POST /vms (revision 002: memory in
// IEC units, launch_gui). Memory is a string here, as that revision writes it.
type osxCreate struct {
	CPUs             int      `json:"cpus"`
	Memory           string   `json:"memory"`
	NetworkType      string   `json:"network_type"`
	Image            osxImage `json:"image"`
	LaunchGUI        bool     `json:"launch_gui"`
	CallbackURL      string   `json:"callback_url"`
	ToolsInitTimeout int      `json:"tools_init_timeout"`
}

// osxVM is the documented reply of POST /vms and GET /vms/:id.
type osxVM struct {
	ID               string   `json:"id"`
	Image            osxImage `json:"image"`
	CPUs             int      `json:"cpus"`
	Memory           int      `json:"memory"`
	ToolsInitTimeout int      `json:"tools_init_timeout"`
	LaunchGUI        bool     `json:"launch_gui"`
	IPAddress        string   `json:"ip_address"`
	Status           string   `json:"status"`
	GuestOS          string   `json:"guest_os"`
}

// osxError is the documented error body.
type osxError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// osxClient speaks the documented API over plain net/http.
type osxClient struct {
	base string
}

// do sends a request with an optional JSON body and returns the status and
// the raw reply.
func (c osxClient) do(t *testing.T, method, path string, body any) (int, []byte) {
	t.Helper()
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, r)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the reply: %v", method, path, err)
	}
	return resp.StatusCode, b
}

// decodeVM decodes a VM reply into the documented type, and checks that
// every documented field is there (a client in a language without zero
// values would miss an absent one).
func decodeVM(t *testing.T, b []byte) osxVM {
	t.Helper()
	var v osxVM
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("reply does not decode into the documented VM type: %v\n%s", err, b)
	}
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(b, &keys); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"id", "image", "cpus", "memory", "tools_init_timeout", "launch_gui", "ip_address", "status", "guest_os"} {
		if _, ok := keys[k]; !ok {
			t.Errorf("reply lacks the documented field %q:\n%s", k, b)
		}
	}
	return v
}

// decodeError decodes an error reply into the documented type.
func decodeError(t *testing.T, b []byte) osxError {
	t.Helper()
	var e osxError
	if err := json.Unmarshal(b, &e); err != nil || e.Code == "" || e.Message == "" {
		t.Fatalf("error reply %s is not the documented {code, message} (%v)", b, err)
	}
	return e
}

// TestOriginalClient runs the OS X Builder's documented client against the
// real daemon and real QEMU guests: it creates a VM with memory given as
// "1gib", "1024mib", "1048576kib" and the original reply's own "1.0gib",
// polls each to running, checks the guest got 1024 MiB, and deletes it.
// The VMs boot one after another.
func TestOriginalClient(t *testing.T) {
	requireEnv(t)
	srv := newImageServer(t)
	d := startDaemon(t, filepath.Join(t.TempDir(), "data"))
	pub := publish(t, srv, "qcow2")
	img := osxImage{URL: pub.URL, Checksum: pub.Checksum, ChecksumType: pub.ChecksumType}
	c := osxClient{base: "http://" + d.addr}

	t.Run("refusals", func(t *testing.T) {
		for _, tt := range []struct{ memory, why string }{
			{"1.001gib", "not a whole number of MiB"},
			{"1gb", "not an IEC unit"},
		} {
			status, b := c.do(t, "POST", "/vms", osxCreate{CPUs: 1, Memory: tt.memory, NetworkType: "nat", Image: img})
			if e := decodeError(t, b); status != http.StatusBadRequest || e.Code != "invalid-request" || !strings.Contains(e.Message, tt.why) {
				t.Errorf("memory %q: %d %+v, want 400 invalid-request saying %q", tt.memory, status, e, tt.why)
			}
		}
		status, b := c.do(t, "GET", "/vms/282ee68a-2e4d-4bd7-9c0e-7f37e12fc489", nil)
		if e := decodeError(t, b); status != http.StatusNotFound || e.Code != "vm-not-found" {
			t.Errorf("unknown id: %d %+v, want 404 vm-not-found", status, e)
		}
	})

	for i, memory := range []string{"1gib", "1024mib", "1048576kib", "1.0gib"} {
		t.Run(memory, func(t *testing.T) {
			// The first leaves tools_init_timeout 0, as the documented
			// reply shows it: goldvm's default (300 s) applies.
			timeout, wantTimeout := 180, 180
			if i == 0 {
				timeout, wantTimeout = 0, 300
			}
			status, b := c.do(t, "POST", "/vms", osxCreate{
				CPUs: 1, Memory: memory, NetworkType: "nat", Image: img, ToolsInitTimeout: timeout,
			})
			if status != http.StatusAccepted {
				t.Fatalf("create: %d %s, want 202", status, b)
			}
			v := decodeVM(t, b)
			if v.ID == "" || v.Memory != 1024 || v.CPUs != 1 || v.LaunchGUI || v.ToolsInitTimeout != wantTimeout || v.Image != img {
				t.Errorf("create reply %s, want the request echoed with memory 1024, tools_init_timeout %d, launch_gui false", b, wantTimeout)
			}
			t.Cleanup(func() {
				if t.Failed() {
					c.do(t, "DELETE", "/vms/"+v.ID, nil)
				}
			})

			deadline := time.Now().Add(bootTimeout)
			for v.Status != "running" {
				if v.Status == "error" || time.Now().After(deadline) {
					t.Fatalf("VM did not reach running: %s", b)
				}
				time.Sleep(500 * time.Millisecond)
				if status, b = c.do(t, "GET", "/vms/"+v.ID, nil); status != http.StatusOK {
					t.Fatalf("poll: %d %s", status, b)
				}
				v = decodeVM(t, b)
			}
			if net.ParseIP(v.IPAddress) == nil || !strings.Contains(v.GuestOS, "goldvm test guest") || v.Memory != 1024 || v.ToolsInitTimeout != wantTimeout {
				t.Errorf("running VM %s, want an IP address, the test guest's OS, memory 1024 and tools_init_timeout %d", b, wantTimeout)
			}
			if got := qemuMemory(t, v.ID); got != "1024" {
				t.Errorf("QEMU of %s runs with -m %q, want 1024", v.ID, got)
			}

			if status, b = c.do(t, "DELETE", "/vms/"+v.ID, nil); status/100 != 2 {
				t.Fatalf("delete: %d %s", status, b)
			}
			status, b = c.do(t, "GET", "/vms/"+v.ID, nil)
			if e := decodeError(t, b); status != http.StatusNotFound || e.Code != "vm-not-found" {
				t.Errorf("GET after delete: %d %+v, want 404 vm-not-found", status, e)
			}
			assertGone(t, d, v.ID)
		})
	}
}

// qemuMemory returns the -m argument of the QEMU process of VM id.
func qemuMemory(t *testing.T, id string) string {
	t.Helper()
	pids := processesMatching("goldvm-" + id)
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		for j, a := range args {
			if a == "-m" && j+1 < len(args) {
				return args[j+1]
			}
		}
	}
	t.Fatalf("no QEMU process with -m for %s (pids %v)", id, pids)
	return ""
}
