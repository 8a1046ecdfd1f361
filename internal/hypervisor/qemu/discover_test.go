package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/hypervisor"
)

// fakeVMProcess runs a process that looks like VM id's QEMU (argv[0]
// contains "qemu", "-name goldvm-<id>") and writes its pidfile.
func fakeVMProcess(t *testing.T, dir, id string) *exec.Cmd {
	t.Helper()
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	link := filepath.Join(t.TempDir(), "qemu-fake")
	if err := os.Symlink(sh, link); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(link, "-c", "sleep 300; true", "-name", "goldvm-"+id, "-pidfile", filepath.Join(dir, filePID))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if err := os.WriteFile(filepath.Join(dir, filePID), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 100 && !isVMProcess(cmd.Process.Pid, id); i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if !isVMProcess(cmd.Process.Pid, id) {
		t.Fatalf("fake process not recognised: %q", procArgs(cmd.Process.Pid))
	}
	return cmd
}

// agentServer answers guest agent commands from replies; a command with no
// entry gets no answer (an agent that is not up yet).
func agentServer(t *testing.T, sock string, replies map[string]string) {
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
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					var req struct {
						Execute   string          `json:"execute"`
						Arguments json.RawMessage `json:"arguments"`
					}
					if json.Unmarshal([]byte(strings.TrimLeft(line, "\xff")), &req) != nil {
						continue
					}
					if req.Execute == "guest-sync" {
						if _, ok := replies["guest-sync"]; !ok {
							continue
						}
						var a struct{ ID int64 }
						json.Unmarshal(req.Arguments, &a)
						fmt.Fprintf(c, "{\"return\": %d}\n", a.ID)
						continue
					}
					if rep, ok := replies[req.Execute]; ok {
						fmt.Fprintln(c, rep)
					}
				}
			}()
		}
	}()
}

func fakeDriver(t *testing.T) *Driver {
	return &Driver{
		cfg: Config{RunDir: t.TempDir(), NATBridge: "goldvm0", NATSubnet: "10.213.0.1/24",
			HostOnlyBridge: "goldvm1", HostOnlySubnet: "10.214.0.1/24", AgentWait: DefaultAgentWait},
		root: true, log: testLogger(t), locks: map[string]*vmLocks{},
	}
}

func TestDiscoverLeaseFallback(t *testing.T) {
	d := fakeDriver(t)
	spec := hypervisor.Spec{ID: "01disc", Dir: t.TempDir(), Network: api.NetworkNAT}
	fakeVMProcess(t, spec.Dir, spec.ID)
	// The agent knows the OS but reports no IPv4 address.
	agentServer(t, filepath.Join(spec.Dir, fileQGA), map[string]string{
		"guest-sync":                   "",
		"guest-network-get-interfaces": `{"return": [{"name": "lo", "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "127.0.0.1", "prefix": 8}]}, {"name": "eth0", "hardware-address": "` + macFor(spec.ID) + `", "ip-addresses": [{"ip-address-type": "ipv6", "ip-address": "fe80::5054:ff:fe00:1", "prefix": 64}]}]}`,
		"guest-get-osinfo":             `{"return": {"name": "Debian GNU/Linux", "version": "12 (bookworm)"}}`,
	})
	leases := fmt.Sprintf("%d 52:54:00:00:00:01 10.213.0.5 other *\n%d %s 10.213.0.99 guest 01:%s\n",
		time.Now().Unix()+3600, time.Now().Unix()+3600, macFor(spec.ID), macFor(spec.ID))
	if err := os.WriteFile(d.leaseFile("goldvm0"), []byte(leases), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	info, err := d.Discover(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if info.IPAddress != "10.213.0.99" || info.GuestOS != "Debian GNU/Linux 12 (bookworm)" ||
		info.IPSource != api.SourceDHCPLease || info.GuestOSSource != api.SourceGuestAgent {
		t.Errorf("info = %+v", info)
	}
}

// A guest without an agent is reported with its leased address and no OS
// once AgentWait has passed; an agent that starts later is found by
// ProbeGuestOS.
func TestDiscoverWithoutAgent(t *testing.T) {
	d := fakeDriver(t)
	d.cfg.AgentWait = 300 * time.Millisecond
	spec := hypervisor.Spec{ID: "01noagent", Dir: t.TempDir(), Network: api.NetworkNAT}
	fakeVMProcess(t, spec.Dir, spec.ID)
	agentServer(t, filepath.Join(spec.Dir, fileQGA), map[string]string{}) // the socket answers nothing
	leases := fmt.Sprintf("%d %s 10.213.0.42 guest *\n", time.Now().Unix()+3600, macFor(spec.ID))
	if err := os.WriteFile(d.leaseFile("goldvm0"), []byte(leases), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	info, err := d.Discover(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	want := hypervisor.GuestInfo{IPAddress: "10.213.0.42", IPSource: api.SourceDHCPLease}
	if info != want {
		t.Errorf("info = %+v, want %+v", info, want)
	}

	// The agent starts: ProbeGuestOS reports it.
	os.Remove(filepath.Join(spec.Dir, fileQGA))
	agentServer(t, filepath.Join(spec.Dir, fileQGA), map[string]string{
		"guest-sync":                   "",
		"guest-network-get-interfaces": `{"return": []}`,
		"guest-get-osinfo":             `{"return": {"pretty-name": "Late Linux 1"}}`,
	})
	name, err := d.ProbeGuestOS(ctx, spec)
	if err != nil || name != "Late Linux 1" {
		t.Errorf("ProbeGuestOS = %q, %v; want Late Linux 1", name, err)
	}
}

func TestNeighIP(t *testing.T) {
	out := []byte(`[{"dst":"192.168.1.7","dev":"br0","lladdr":"52:54:00:aa:bb:cc","state":["FAILED"]},
		{"dst":"169.254.3.4","dev":"br0","lladdr":"52:54:00:aa:bb:cc","state":["REACHABLE"]},
		{"dst":"192.168.1.9","dev":"br0","lladdr":"52:54:00:11:22:33","state":["REACHABLE"]},
		{"dst":"192.168.1.8","dev":"br0","lladdr":"52:54:00:AA:BB:CC","state":["STALE"]}]`)
	for _, tc := range []struct {
		desc, mac, want string
	}{
		{"usable entry, MAC in another case", "52:54:00:aa:bb:cc", "192.168.1.8"},
		{"other VM", "52:54:00:11:22:33", "192.168.1.9"},
		{"unknown MAC", "52:54:00:00:00:00", ""},
	} {
		if got := neighIP(out, tc.mac); got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.desc, got, tc.want)
		}
	}
	if got := neighIP([]byte("not json"), "52:54:00:aa:bb:cc"); got != "" {
		t.Errorf("garbage: got %q", got)
	}
}

func TestDiscoverTimeout(t *testing.T) {
	d := fakeDriver(t)
	spec := hypervisor.Spec{ID: "01disct", Dir: t.TempDir(), Network: api.NetworkHostOnly}
	cmd := fakeVMProcess(t, spec.Dir, spec.ID)
	agentServer(t, filepath.Join(spec.Dir, fileQGA), map[string]string{}) // silent agent
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	info, err := d.Discover(ctx, spec)
	if code, _ := errdefs.CodeOf(err); code != "discovery-timeout" || !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("err = %v", err)
	}
	if info.IPAddress != "" || !strings.Contains(err.Error(), `ip=""`) || !strings.Contains(err.Error(), "guest agent") {
		t.Errorf("info %+v, err %v", info, err)
	}
	t.Logf("timeout error: %v", err)

	// A VM whose process is gone fails at once.
	cmd.Process.Kill()
	cmd.Wait()
	_, err = d.Discover(context.Background(), spec)
	if code, _ := errdefs.CodeOf(err); code != "vm-not-running" || !errors.Is(err, hypervisor.ErrNotRunning) {
		t.Errorf("dead VM: %v", err)
	}
}

func TestWatchAndReapFakeProcess(t *testing.T) {
	d := fakeDriver(t)
	spec := hypervisor.Spec{ID: "01watch", Dir: t.TempDir(), Network: api.NetworkNAT}
	cmd := fakeVMProcess(t, spec.Dir, spec.ID)
	other := hypervisor.Spec{ID: "01keep", Dir: t.TempDir(), Network: api.NetworkNAT}
	keep := fakeVMProcess(t, other.Dir, other.ID)
	// A VM of another goldvm instance: outside VMRoot.
	foreignDir, err := os.MkdirTemp("", "goldvm-foreign-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(foreignDir)
	foreign := fakeVMProcess(t, foreignDir, "01foreign")
	d.cfg.VMRoot = filepath.Dir(spec.Dir)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// No QMP socket at all: Watch relies on the pid backstop.
	done := make(chan string, 1)
	go func() {
		r, err := d.Watch(ctx, spec)
		if err != nil {
			r = err.Error()
		}
		done <- r
	}()
	// Give Watch time to find the live process first (started after the
	// kill, it would rightly answer "not running"); it must keep waiting.
	select {
	case r := <-done:
		t.Fatalf("Watch returned %q while the process runs", r)
	case <-time.After(time.Second):
	}
	// Reap kills the unknown VM and spares the known one. Every other VM
	// on this host (other tests, other people) counts as known: Reap acts
	// host-wide.
	if err := d.Reap(ctx, func(id string) bool { return id != spec.ID && id != "01foreign" }); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	if r := <-done; r != "process exited" {
		t.Errorf("watch = %q", r)
	}
	if !isVMProcess(keep.Process.Pid, other.ID) {
		t.Error("Reap killed a known VM")
	}
	if !isVMProcess(foreign.Process.Pid, "01foreign") {
		t.Error("Reap killed a VM outside VMRoot")
	}
	if st, _ := d.State(ctx, spec); st != hypervisor.StateStopped {
		t.Errorf("state = %q", st)
	}
	// Watch with a cancelled context returns its error.
	wctx, wcancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer wcancel()
	if _, err := d.Watch(wctx, other); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("watch with deadline: %v", err)
	}
}
