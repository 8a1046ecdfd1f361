package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
)

const bootTimeout = 4 * time.Minute

// TestCreateFromEveryPackageFormat serves the guest in each package format,
// creates a VM from each, waits for it to run with an IP and guest OS, checks
// the callback, deletes it and checks nothing is left.
func TestCreateFromEveryPackageFormat(t *testing.T) {
	requireEnv(t)
	srv := newImageServer(t)
	cb := newCallbackServer(t)
	d := startDaemon(t, filepath.Join(t.TempDir(), "data"))
	formats := make([]string, 0, len(packages))
	for f := range packages {
		formats = append(formats, f)
	}
	sort.Strings(formats)
	var createdMu sync.Mutex
	var created []string
	t.Run("group", func(t *testing.T) {
		for _, format := range formats {
			t.Run(format, func(t *testing.T) {
				t.Parallel()
				img := publish(t, srv, format)
				v := mustCreate(t, d, createReq(img, cb.URL+"/done"))
				createdMu.Lock()
				created = append(created, v.ID)
				createdMu.Unlock()
				got := waitVM(t, d, v.ID, bootTimeout)
				if got.Status != api.StatusRunning {
					t.Fatalf("status %s, want running: %s", got.Status, fmtVM(got))
				}
				if net.ParseIP(got.IPAddress) == nil {
					t.Errorf("ip_address %q is not an IP", got.IPAddress)
				}
				if !strings.Contains(got.GuestOS, "goldvm test guest") {
					t.Errorf("guest_os %q, want the test guest's os-release name", got.GuestOS)
				}
				if got.CPUs != 1 || got.MemoryMiB != 128 || got.Backend != "qemu" {
					t.Errorf("record %s does not echo the request", fmtVM(got))
				}
				if os.Geteuid() == 0 {
					// As root "nat" is a bridge with DHCP: the host reaches the guest.
					if !strings.HasPrefix(got.IPAddress, "10.213.0.") {
						t.Errorf("ip %s is not on the NAT bridge's subnet", got.IPAddress)
					}
					if got.SSHAddress != "" {
						t.Errorf("ssh_address %q on a bridge, where ip_address is reachable", got.SSHAddress)
					}
					if _, err := exec.LookPath("ping"); err == nil {
						if err := pingGuest(got.IPAddress); err != nil {
							t.Errorf("host cannot reach guest %s: %v", got.IPAddress, err)
						}
					} else if os.Getenv("CI") == "true" {
						t.Errorf("ping is not installed; .ci/run must install iputils-ping")
					}
				}
				body := cb.waitCallback(t, v.ID, 30*time.Second)
				if body.Status != api.StatusRunning || body.IPAddress != got.IPAddress {
					t.Errorf("callback body %s, want the running record", fmtVM(&body))
				}
				// The daemon records the delivery once the receiver's answer
				// is in, which may be after the receiver has the body.
				again := waitCallbackEnded(t, d, v.ID, 30*time.Second)
				if again.Callback.State != api.CallbackDelivered || again.Callback.Attempts != 1 {
					t.Errorf("callback delivery record %+v, want delivered after 1 attempt", again.Callback)
				}
				if err := d.client.DeleteVM(context.Background(), v.ID); err != nil {
					t.Fatalf("delete: %v", err)
				}
				assertGone(t, d, v.ID)
				if err := d.client.DeleteVM(context.Background(), v.ID); !isAPIError(err, 404, "vm-not-found") {
					t.Errorf("second delete: got %v, want 404 vm-not-found", err)
				}
			})
		}
	})
	// Every VM is gone: no overlay, no QEMU, no tap.
	if entries, _ := os.ReadDir(filepath.Join(d.dataDir, "vms")); len(entries) != 0 {
		t.Errorf("vms directory not empty: %v", entries)
	}
	if pids := processesMatching(d.dataDir); len(pids) != 0 && os.Getenv(netnsMarker) != "" {
		// dnsmasq serves the bridge and stays, like the bridge; QEMU must not.
		for _, pid := range pids {
			if cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); strings.Contains(string(cmd), "qemu") {
				t.Errorf("QEMU process left: %d", pid)
			}
		}
	}
	if out, _ := exec.Command("ip", "-o", "link", "show", "type", "tun").Output(); os.Getenv(netnsMarker) != "" {
		// Only this daemon's VMs' taps count: other tests' leftovers are
		// theirs (their cleanup removes them).
		for _, line := range strings.Split(string(out), "\n") {
			for _, id := range created {
				if strings.Contains(line, "goldvm:"+id) {
					t.Errorf("tap device left: %s", line)
				}
			}
		}
	}
}

// TestAPIErrors checks the error contract on the real daemon.
func TestAPIErrors(t *testing.T) {
	requireEnv(t)
	srv := newImageServer(t)
	d := startDaemon(t, filepath.Join(t.TempDir(), "data"))
	img := publish(t, srv, "qcow2")
	good, _ := json.Marshal(createReq(img, ""))

	tests := []struct {
		desc        string
		method      string
		path        string
		contentType string
		body        string
		wantStatus  int
		wantCode    string
		wantMsg     string
	}{
		{desc: "not json", method: "POST", path: "/vms", contentType: "text/plain", body: string(good), wantStatus: 415, wantCode: "unsupported-media-type"},
		{desc: "no content type", method: "POST", path: "/vms", body: string(good), wantStatus: 415, wantCode: "unsupported-media-type"},
		{desc: "trailing comma", method: "POST", path: "/vms", contentType: "application/json", body: "{\n  \"cpus\": 1,\n  \"memory\": 128,\n}", wantStatus: 400, wantCode: "invalid-json", wantMsg: "line 4, column 1"},
		{desc: "not IEC", method: "POST", path: "/vms", contentType: "application/json", body: `{"cpus":1,"memory":"1gb"}`, wantStatus: 400, wantCode: "invalid-request", wantMsg: "not an IEC unit"},
		{desc: "negative cpus", method: "POST", path: "/vms", contentType: "application/json", body: strings.Replace(string(good), `"cpus":1`, `"cpus":-1`, 1), wantStatus: 400, wantCode: "invalid-request", wantMsg: "cpus"},
		{desc: "bad checksum hex", method: "POST", path: "/vms", contentType: "application/json", body: strings.Replace(string(good), img.Checksum, "zz", 1), wantStatus: 400, wantCode: "invalid-request", wantMsg: "hex"},
		{desc: "bridged without bridge", method: "POST", path: "/vms", contentType: "application/json", body: strings.Replace(string(good), `"nat"`, `"bridged"`, 1), wantStatus: 400, wantMsg: "bridge"},
		{desc: "too large", method: "POST", path: "/vms", contentType: "application/json", body: `{"x":"` + strings.Repeat("a", 2<<20) + `"}`, wantStatus: 400, wantCode: "request-too-large"},
		{desc: "unknown id", method: "GET", path: "/vms/vm-0000000000000000000a", wantStatus: 404, wantCode: "vm-not-found"},
		{desc: "path-like id", method: "GET", path: "/vms/..%2f..%2fetc", wantStatus: 404, wantCode: "vm-not-found"},
		{desc: "delete unknown", method: "DELETE", path: "/vms/vm-0000000000000000000a", wantStatus: 404, wantCode: "vm-not-found"},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			status, _, body := postRaw(t, d, tt.method, tt.path, tt.contentType, tt.body)
			var e api.Error
			if err := json.Unmarshal(body, &e); err != nil {
				t.Fatalf("error body %q is not JSON: %v", body, err)
			}
			if status != tt.wantStatus || (tt.wantCode != "" && e.Code != tt.wantCode) || !strings.Contains(e.Message, tt.wantMsg) {
				t.Fatalf("got %d %+v, want %d %s containing %q", status, e, tt.wantStatus, tt.wantCode, tt.wantMsg)
			}
		})
	}

	t.Run("accepted with Location", func(t *testing.T) {
		status, hdr, body := postRaw(t, d, "POST", "/vms", "application/json; charset=utf-8", `{"cpus":1,"memory":"128mib","image":`+mustJSON(img)+`,"tools_init_timeout":"3m"}`)
		var v api.VM
		json.Unmarshal(body, &v)
		if status != 202 || hdr.Get("Location") != "/vms/"+v.ID || v.Status != api.StatusCreating || v.MemoryMiB != 128 {
			t.Fatalf("got %d Location=%q %s", status, hdr.Get("Location"), body)
		}
		list, err := d.client.ListVMs(context.Background())
		if err != nil || len(list) != 1 || list[0].ID != v.ID {
			t.Fatalf("list: %v %+v", err, list)
		}
		if err := d.client.DeleteVM(context.Background(), v.ID); err != nil {
			t.Fatalf("delete while creating: %v", err)
		}
		assertGone(t, d, v.ID)
	})
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// TestBadImageFailsCleanly: a wrong checksum and a 404 image end in status
// error with a clear code, the callback carries the error, nothing is cached.
func TestBadImageFailsCleanly(t *testing.T) {
	requireEnv(t)
	srv := newImageServer(t)
	cb := newCallbackServer(t)
	d := startDaemon(t, filepath.Join(t.TempDir(), "data"))
	img := publish(t, srv, "tar.gz")

	wrong := img
	wrong.Checksum = strings.Repeat("0", 64)
	missing := img
	missing.URL = srv.URL + "/nope.tar.gz"
	for _, tc := range []struct {
		desc     string
		img      api.Image
		wantCode string
	}{
		{"wrong checksum", wrong, "checksum-mismatch"},
		{"missing image", missing, "image-download-failed"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			v := mustCreate(t, d, createReq(tc.img, cb.URL))
			got := waitVM(t, d, v.ID, time.Minute)
			if got.Status != api.StatusError || got.Error == nil || got.Error.Code != tc.wantCode {
				t.Fatalf("got %s, want status error with code %s", fmtVM(got), tc.wantCode)
			}
			body := cb.waitCallback(t, v.ID, 30*time.Second)
			if body.Status != api.StatusError || body.Error == nil || body.Error.Code != tc.wantCode {
				t.Errorf("callback %s, want the error", fmtVM(&body))
			}
			if err := d.client.DeleteVM(context.Background(), v.ID); err != nil {
				t.Fatalf("delete failed VM: %v", err)
			}
			assertGone(t, d, v.ID)
		})
	}
	entries, _ := os.ReadDir(filepath.Join(d.dataDir, "images"))
	for _, e := range entries {
		t.Errorf("image store keeps %s after failed fetches", e.Name())
	}
}

// TestRestartReattachAndCrash: a running VM survives a SIGKILLed daemon and is
// reattached on restart (same QEMU process); a QEMU killed under a running VM
// turns the record to stopped without any request.
func TestRestartReattachAndCrash(t *testing.T) {
	requireEnv(t)
	srv := newImageServer(t)
	d := startDaemon(t, filepath.Join(t.TempDir(), "data"))
	img := publish(t, srv, "qcow2")
	v := mustCreate(t, d, createReq(img, ""))
	got := waitVM(t, d, v.ID, bootTimeout)
	if got.Status != api.StatusRunning {
		t.Fatalf("got %s, want running", fmtVM(got))
	}
	pids := processesMatching("goldvm-" + v.ID)
	if len(pids) != 1 {
		t.Fatalf("QEMU processes for %s: %v, want 1", v.ID, pids)
	}

	d.kill()
	if p := processesMatching("goldvm-" + v.ID); len(p) != 1 || p[0] != pids[0] {
		t.Fatalf("QEMU did not survive the daemon's death: %v", p)
	}
	d.start()
	after, err := d.client.GetVM(context.Background(), v.ID)
	if err != nil || after.Status != api.StatusRunning || after.IPAddress != got.IPAddress {
		t.Fatalf("after restart: %v %s, want running with the same IP", err, fmtVM(after))
	}
	if p := processesMatching("goldvm-" + v.ID); len(p) != 1 || p[0] != pids[0] {
		t.Fatalf("restart changed the QEMU process: %v, want %v", p, pids)
	}

	// QEMU dies under the VM: the watcher notices without any poll from us.
	syscall.Kill(pids[0], syscall.SIGKILL)
	stopped := waitStatus(t, d, v.ID, api.StatusStopped, 30*time.Second)
	if stopped.StopReason == "" {
		t.Errorf("stopped without a reason: %s", fmtVM(stopped))
	}
	if err := d.client.DeleteVM(context.Background(), v.ID); err != nil {
		t.Fatalf("delete: %v", err)
	}
	assertGone(t, d, v.ID)
}

// pingGuest sends up to 10 echo requests, one at a time, and succeeds at the
// first reply: a TCG guest on a busy host may answer late.
func pingGuest(ip string) error {
	var out []byte
	var err error
	for range 10 {
		out, err = exec.Command("ping", "-c", "1", "-W", "3", ip).CombinedOutput()
		if err == nil {
			return nil
		}
	}
	return fmt.Errorf("%w\n%s", err, out)
}

// TestDiscoveryTimeout: a guest that does not report its address within
// tools_init_timeout ends in status error with code discovery-timeout, and
// its QEMU and overlay are removed at once, not left running.
func TestDiscoveryTimeout(t *testing.T) {
	requireEnv(t)
	srv := newImageServer(t)
	d := startDaemon(t, filepath.Join(t.TempDir(), "data"))
	req := createReq(publish(t, srv, "qcow2"), "")
	req.ToolsInitTimeout = api.Duration(time.Second) // the guest needs several
	v := mustCreate(t, d, req)
	got := waitVM(t, d, v.ID, time.Minute)
	if got.Status != api.StatusError || got.Error == nil || got.Error.Code != "discovery-timeout" {
		t.Fatalf("got %s, want error discovery-timeout", fmtVM(got))
	}
	if pids := processesMatching("goldvm-" + v.ID); len(pids) != 0 {
		t.Errorf("QEMU of the failed VM still runs: %v", pids)
	}
	if _, err := os.Stat(filepath.Join(d.dataDir, "vms", v.ID, "disk.qcow2")); !os.IsNotExist(err) {
		t.Errorf("overlay of the failed VM still exists (err %v)", err)
	}
	if err := d.client.DeleteVM(context.Background(), v.ID); err != nil {
		t.Fatal(err)
	}
	assertGone(t, d, v.ID)
}
