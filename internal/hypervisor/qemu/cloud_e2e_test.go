package qemu

// End-to-end tests of stock-cloud-image behaviour with real guests: a guest
// without a guest agent, and the cloud-init NoCloud seed CD-ROM.

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/hypervisor"
)

// noAgentGuest returns the test guest built without qemu-guest-agent
// (guest-noagent.qcow2, made by build.sh next to guest.qcow2).
func noAgentGuest(t *testing.T) string {
	t.Helper()
	g := filepath.Join(filepath.Dir(testGuest(t)), "guest-noagent.qcow2")
	if _, err := os.Stat(g); err != nil {
		unavailable(t, "the test guest without an agent is missing (run testdata/guest/build.sh): %v", err)
	}
	return g
}

// bootNoAgent clones, starts and discovers a VM of the guest without an
// agent and checks that it is reported with an address and no OS.
func bootNoAgent(t *testing.T, d *Driver, spec hypervisor.Spec, wantSource string) hypervisor.GuestInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	destroyOnCleanup(t, d, spec)
	if err := d.Clone(ctx, spec); err != nil {
		t.Fatalf("clone: %v", err)
	}
	if err := d.Start(ctx, spec); err != nil {
		t.Fatalf("start: %v", err)
	}
	t0 := time.Now()
	// When the guest says it is ready, for the log: how long discovery
	// takes after that.
	readyAt := make(chan time.Duration, 1)
	go func() {
		for ctx.Err() == nil {
			if b, _ := os.ReadFile(filepath.Join(spec.Dir, fileConsole)); strings.Contains(string(b), "goldvm-guest: ready") {
				readyAt <- time.Since(t0)
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	info, err := d.Discover(ctx, spec)
	if err != nil {
		console, _ := os.ReadFile(filepath.Join(spec.Dir, fileConsole))
		t.Fatalf("discover: %v\nconsole:\n%s", err, tail(string(console), 3000))
	}
	took := time.Since(t0)
	select {
	case r := <-readyAt:
		t.Logf("%s: the guest said ready after %v, discovered after %v: %+v", spec.ID, r.Round(time.Millisecond), took.Round(time.Millisecond), info)
	default:
		t.Logf("%s: discovered after %v, before the console said ready: %+v", spec.ID, took.Round(time.Millisecond), info)
	}
	if info.IPAddress == "" || info.IPSource != wantSource {
		t.Errorf("ip %q from %q, want an address from %q", info.IPAddress, info.IPSource, wantSource)
	}
	if info.GuestOS != "" || info.GuestOSSource != "" {
		t.Errorf("guest OS %q from %q, want none (the guest has no agent)", info.GuestOS, info.GuestOSSource)
	}
	return info
}

func TestE2ENoAgentUserNet(t *testing.T) {
	gold := goldDir(t, noAgentGuest(t))
	d, err := New(Config{UserNet: true, Sandbox: true, RunDir: t.TempDir(), AgentWait: time.Second, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	spec := newSpec(t, "noagent-user", gold, api.NetworkNAT)
	info := bootNoAgent(t, d, spec, api.SourceUserNet)
	if info.IPAddress != userNetGuestIP || info.SSHAddress == "" {
		t.Errorf("info %+v: want %s and a forwarded SSH address", info, userNetGuestIP)
	}
	// The guest is really up: its console says it has its address.
	console, _ := os.ReadFile(filepath.Join(spec.Dir, fileConsole))
	if !strings.Contains(string(console), "ready ip=10.0.2.15 qga=none") {
		t.Errorf("console does not show the guest up without an agent:\n%s", tail(string(console), 2000))
	}
	// ProbeGuestOS, which the manager runs in the background, gets nothing
	// from a guest without an agent.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if name, err := d.ProbeGuestOS(ctx, spec); err == nil {
		t.Errorf("ProbeGuestOS = %q, want the context's error", name)
	}
}

func TestE2ENoAgentBridge(t *testing.T) {
	guest := noAgentGuest(t)
	if !inNetns(t, testGuest(t)) {
		return
	}
	gold := goldDir(t, guest)
	d, err := New(Config{RunDir: t.TempDir(), Sandbox: true, AgentWait: time.Second, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.StopNetwork(context.Background()) })
	spec := newSpec(t, "noagent-nat", gold, api.NetworkNAT)
	info := bootNoAgent(t, d, spec, api.SourceDHCPLease)
	if !inSubnet(info.IPAddress, d.cfg.NATSubnet) {
		t.Errorf("ip %s not in %s", info.IPAddress, d.cfg.NATSubnet)
	}
	if err := reachable(info.IPAddress); err != nil {
		t.Errorf("guest %s not reachable: %v", info.IPAddress, err)
	}
}

// A guest finds the cidata CD-ROM goldvm attaches and the user-data it was
// given on it (the test guest's init mounts it and prints its user-data).
func TestE2ECloudInitSeed(t *testing.T) {
	gold := goldDir(t, testGuest(t))
	d, err := New(Config{UserNet: true, Sandbox: true, RunDir: t.TempDir(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	spec := newSpec(t, "seed", gold, api.NetworkNAT)
	userData := "#cloud-config\n# goldvm seed test " + spec.ID + " ünïcode\nruncmd: [echo hello]"
	spec.CloudInit = &hypervisor.CloudInit{InstanceID: spec.ID, Hostname: spec.ID, UserData: userData,
		SSHAuthorizedKeys: []string{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB5 test@goldvm"}}
	bootAndDiscover(t, d, spec)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	want := "goldvm-guest: cidata /dev/sr0 user-data begin\n" + userData + "\ngoldvm-guest: cidata user-data end"
	var console string
	for ctx.Err() == nil {
		b, err := d.Console(ctx, spec, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		console = strings.ReplaceAll(string(b), "\r\n", "\n")
		if strings.Contains(console, "goldvm-guest: ready") {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !strings.Contains(console, want) {
		t.Errorf("the console does not show the seed's user-data %q:\n%s", want, tail(console, 3000))
	}
}
