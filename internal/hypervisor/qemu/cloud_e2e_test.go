package qemu

// End-to-end tests of stock-cloud-image behaviour with real guests: a guest
// without a guest agent, and the cloud-init NoCloud seed CD-ROM.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/hypervisor"
	"github.com/goldvm/goldvm/internal/metadata"
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

// noAgentOS is the PRETTY_NAME of the guest without an agent.
const noAgentOS = "goldvm test guest without agent (Debian kernel, busybox)"

// bootNoAgent clones, starts and discovers a VM of the guest without an
// agent and checks that it is reported with an address and its image's OS.
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
	// The guest has no agent: its OS is the one its image's os-release
	// names (build.sh puts one on an ext4 partition of the disk), read when
	// the image was prepared.
	if spec.GoldDisk.GuestOS != noAgentOS || info.GuestOS != noAgentOS || info.GuestOSSource != api.SourceImage {
		t.Errorf("guest OS %q from %q (the image's: %q), want %q from the image", info.GuestOS, info.GuestOSSource, spec.GoldDisk.GuestOS, noAgentOS)
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
	// The guest is really up: its console says it has its address (the
	// line may come a moment after discovery).
	var console []byte
	for n := 0; n < 150 && !strings.Contains(string(console), "ready ip=10.0.2.15 qga=none"); n++ {
		time.Sleep(200 * time.Millisecond)
		console, _ = os.ReadFile(filepath.Join(spec.Dir, fileConsole))
	}
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

// syncedAgent connects to the guest's agent and syncs with it.
func syncedAgent(ctx context.Context, t *testing.T, spec hypervisor.Spec) *qgaClient {
	t.Helper()
	c, err := dialQGA(ctx, filepath.Join(spec.Dir, fileQGA))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Sync(ctx); err != nil {
		c.Close()
		t.Fatal(err)
	}
	return c
}

// guestRun runs a shell command in the guest through its agent
// (guest-exec) and returns its stdout.
func guestRun(t *testing.T, spec hypervisor.Spec, script string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := syncedAgent(ctx, t, spec)
	defer c.Close()
	call := func(cmd string, args any, out any) {
		t.Helper()
		b, _ := json.Marshal(map[string]any{"execute": cmd, "arguments": args})
		if _, err := c.conn.Write(append(b, '\n')); err != nil {
			t.Fatal(err)
		}
		c.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		r, err := c.readReply()
		if err != nil || r.Error != nil {
			t.Fatalf("%s: %v %v", cmd, err, r.Error)
		}
		if err := json.Unmarshal(r.Return, out); err != nil {
			t.Fatal(err)
		}
	}
	var started struct{ PID int }
	call("guest-exec", map[string]any{"path": "/bin/sh", "arg": []string{"-c", script}, "capture-output": true}, &started)
	for ctx.Err() == nil {
		var st struct {
			Exited  bool   `json:"exited"`
			OutData []byte `json:"out-data"`
		}
		call("guest-exec-status", map[string]any{"pid": started.PID}, &st)
		if st.Exited {
			return string(st.OutData)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("guest command %q did not end", script)
	return ""
}

// Two VMs on the nat bridge each read their own metadata at
// 169.254.169.254 (the test guest prints it on its console); one that
// takes the other's IP address still gets its own, neither reaches the
// other's metadata listener directly, they cannot ping each other while
// each pings the host, and one that takes the other's MAC gets nothing.
func TestE2EMetadataService(t *testing.T) {
	guest := testGuest(t)
	if !inNetns(t, guest) {
		return
	}
	if _, err := lookPath("nft"); err != nil {
		unavailable(t, "nft not installed (apt-get install nftables)")
	}
	gold := goldDir(t, guest)
	md := metadata.New(func(_ context.Context, id string) (any, error) { return map[string]string{"id": id}, nil }, testLogger(t))
	defer md.Close()
	d, err := New(Config{RunDir: t.TempDir(), Sandbox: true, Metadata: md, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.StopNetwork(context.Background()) })
	var specs [2]hypervisor.Spec
	var infos [2]hypervisor.GuestInfo
	for i := range specs {
		specs[i] = newSpec(t, fmt.Sprintf("md%d", i), gold, api.NetworkNAT)
		specs[i].CloudInit = &hypervisor.CloudInit{InstanceID: specs[i].ID, Hostname: specs[i].ID, UserData: "#cloud-config\n# for " + specs[i].ID}
		infos[i] = bootAndDiscover(t, d, specs[i])
	}
	// The guest's init prints what it read (in the background, after "ready").
	for i, s := range specs {
		want := `goldvm-guest: metadata {"id":"` + s.ID + `"}`
		other := specs[1-i].ID
		var console string
		for n := 0; n < 150; n++ {
			b, _ := d.Console(context.Background(), s, 1<<20)
			if console = string(b); strings.Contains(console, want) {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		if !strings.Contains(console, want) || strings.Contains(console, other) {
			t.Errorf("%s: the console does not show its own metadata %q (or shows %s's):\n%s", s.ID, want, other, tail(console, 2000))
		}
	}
	get := func(path string) string {
		return "printf 'GET " + path + " HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n' | nc -w 3 "
	}
	// Isolation: VM 1 reaches the host but not VM 0.
	host, _, _ := strings.Cut(d.cfg.NATSubnet, "/")
	if out := guestRun(t, specs[1], "ping -c 2 -W 2 "+host+" >/dev/null 2>&1; echo rc=$?"); !strings.Contains(out, "rc=0") {
		t.Errorf("VM 1 cannot ping the host %s: %q", host, out)
	}
	if out := guestRun(t, specs[1], "ping -c 2 -W 2 "+infos[0].IPAddress+" >/dev/null 2>&1; echo rc=$?"); !strings.Contains(out, "rc=1") {
		t.Errorf("VM 1 pings VM 0 (%s) across the bridge: %q", infos[0].IPAddress, out)
	}
	// VM 1 takes VM 0's address as well and asks again: its own data.
	out := guestRun(t, specs[1], "ip addr add "+infos[0].IPAddress+"/32 dev eth0; "+
		get("/latest/meta-data/instance-id")+MetadataAddr+" 80 | tail -n 1")
	if strings.TrimSpace(out) != specs[1].ID {
		t.Errorf("VM 1 with VM 0's address read instance-id %q, want its own %s", out, specs[1].ID)
	}
	// VM 1 goes to VM 0's listener directly: dropped.
	port, err := os.ReadFile(filepath.Join(specs[0].Dir, fileMetadataPort))
	if err != nil {
		t.Fatal(err)
	}
	out = guestRun(t, specs[1], get("/latest/meta-data/instance-id")+host+" "+strings.TrimSpace(string(port))+" 2>&1; echo rc=$?")
	if strings.Contains(out, specs[0].ID) {
		t.Errorf("VM 1 read VM 0's metadata from its listener: %q", out)
	}
	t.Logf("VM 1 at VM 0's listener: %q", out)
	// The user-data is served too.
	out = guestRun(t, specs[0], get("/latest/user-data")+MetadataAddr+" 80 | tail -n 1")
	if strings.TrimSpace(out) != "# for "+specs[0].ID {
		t.Errorf("user-data: %q", out)
	}
	// VM 1 takes VM 0's MAC: its frames are dropped at its tap, it gets
	// nothing (of VM 0's or its own).
	out = guestRun(t, specs[1], "ip link set eth0 address "+macFor(specs[0].ID)+"; "+
		get("/goldvm/v1/vm")+MetadataAddr+" 80 2>&1; echo rc=$?")
	if strings.Contains(out, specs[0].ID) || strings.Contains(out, specs[1].ID) {
		t.Errorf("VM 1 with VM 0's MAC read metadata: %q", out)
	}
	t.Logf("VM 1 with VM 0's MAC: %q", out)
	// Destroy removes the VM's rules.
	ctx := context.Background()
	if err := d.Destroy(ctx, specs[0]); err != nil {
		t.Fatal(err)
	}
	rules, err := d.metadataRules(ctx)
	if err != nil {
		t.Fatal(err)
	}
	left := 0
	for _, r := range rules {
		if r.Comment == specs[0].ID {
			t.Errorf("rule of a destroyed VM left: %+v", r)
		}
		if r.Comment == specs[1].ID {
			left++
		}
	}
	if left != 5 {
		t.Errorf("VM 1 has %d rules, want 5 (its MAC, isolation, 3 for its metadata): %+v", left, rules)
	}
}

// A VM on the hostonly bridge, which has no default route, reaches its
// metadata through the route DHCP gives it (option 121).
func TestE2EMetadataHostOnly(t *testing.T) {
	guest := testGuest(t)
	if !inNetns(t, guest) {
		return
	}
	if _, err := lookPath("nft"); err != nil {
		unavailable(t, "nft not installed (apt-get install nftables)")
	}
	md := metadata.New(func(_ context.Context, id string) (any, error) { return map[string]string{"id": id}, nil }, testLogger(t))
	defer md.Close()
	d, err := New(Config{RunDir: t.TempDir(), Sandbox: true, Metadata: md, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.StopNetwork(context.Background()) })
	spec := newSpec(t, "mdho", goldDir(t, guest), api.NetworkHostOnly)
	spec.CloudInit = &hypervisor.CloudInit{InstanceID: spec.ID, Hostname: spec.ID}
	bootAndDiscover(t, d, spec)
	want := `goldvm-guest: metadata {"id":"` + spec.ID + `"}`
	var console string
	for n := 0; n < 150 && !strings.Contains(console, want); n++ {
		b, _ := d.Console(context.Background(), spec, 1<<20)
		console = string(b)
		time.Sleep(200 * time.Millisecond)
	}
	if !strings.Contains(console, want) {
		t.Errorf("the hostonly VM's console does not show its metadata %q:\n%s", want, tail(console, 2000))
	}
}

// Reap deletes the nftables rules of unknown VMs whose tap is gone (and
// takes their taps out of their peer sets), and keeps those of known VMs
// and of VMs whose tap lives (another instance's).
func TestReapVMRules(t *testing.T) {
	if !inNetns(t, "") {
		return
	}
	if _, err := lookPath("nft"); err != nil {
		unavailable(t, "nft not installed (apt-get install nftables)")
	}
	// A VMRoot of its own: Reap must not touch the QEMUs of the tests
	// that run beside this one.
	d, err := New(Config{RunDir: t.TempDir(), VMRoot: t.TempDir(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	peers := map[string]string{"vm-known": "team", "vm-gone": "team"}
	for _, id := range []string{"vm-known", "vm-gone", "vm-others"} {
		if err := d.vmRules(ctx, id, tapFor(id), macFor(id), peers[id], "10.213.0.1", 40000); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := d.run(ctx, "ip", "tuntap", "add", "dev", tapFor("vm-others"), "mode", "tap"); err != nil {
		t.Fatal(err)
	}
	if err := d.Reap(ctx, func(id string) bool { return id == "vm-known" }); err != nil {
		t.Fatal(err)
	}
	rules, sets, err := d.nftObjects(ctx)
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, r := range rules {
		count[r.Comment]++
	}
	if count["vm-known"] != 6 || count["vm-others"] != 5 || count["vm-gone"] != 0 {
		t.Errorf("rules per VM after Reap: %v; want vm-known 6 (one for its peers), vm-others 5, vm-gone none", count)
	}
	var members []any
	for _, s := range sets {
		if s.Name == peerSet("team") {
			members = s.Elem
		}
	}
	if len(members) != 1 || members[0] != tapFor("vm-known") {
		t.Errorf("peer set team holds %v after Reap, want only %s", members, tapFor("vm-known"))
	}
}

// TestE2EUserNetMetadata: on user-mode networking each VM's metadata
// service is a loopback port of its own, which its guest reaches at
// 10.0.2.2:PORT (the URL is in its seed's meta-data); a guest that dials
// another VM's port gets nothing, since that listener serves only
// connections its own VM's QEMU opened.
func TestE2EUserNetMetadata(t *testing.T) {
	gold := goldDir(t, testGuest(t))
	md := metadata.New(func(_ context.Context, id string) (any, error) { return map[string]string{"id": id}, nil }, testLogger(t))
	defer md.Close()
	d, err := New(Config{UserNet: true, Sandbox: true, RunDir: t.TempDir(), Metadata: md, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	var specs [2]hypervisor.Spec
	var ports [2]string
	for i := range specs {
		specs[i] = newSpec(t, fmt.Sprintf("umd%d", i), gold, api.NetworkNAT)
		specs[i].CloudInit = &hypervisor.CloudInit{InstanceID: specs[i].ID, Hostname: specs[i].ID}
		bootAndDiscover(t, d, specs[i])
		b, err := os.ReadFile(filepath.Join(specs[i].Dir, fileMetadataPort))
		if err != nil {
			t.Fatal(err)
		}
		ports[i] = strings.TrimSpace(string(b))
		seed, err := os.ReadFile(filepath.Join(specs[i].Dir, fileSeed))
		if want := `"goldvm-metadata-url":"http://10.0.2.2:` + ports[i] + `/"`; err != nil || !strings.Contains(string(seed), want) {
			t.Errorf("%s: the seed's meta-data lacks %s (%v)", specs[i].ID, want, err)
		}
	}
	get := func(path, port string) string {
		return "printf 'GET " + path + " HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n' | nc -w 3 " + userNetGateway + " " + port + " | tail -n 1"
	}
	for i, s := range specs {
		if out := strings.TrimSpace(guestRun(t, s, get("/latest/meta-data/instance-id", ports[i]))); out != s.ID {
			t.Errorf("%s read instance-id %q from its own service, want %s", s.ID, out, s.ID)
		}
		if out := strings.TrimSpace(guestRun(t, s, get("/goldvm/v1/vm", ports[i]))); out != `{"id":"`+s.ID+`"}` {
			t.Errorf("%s read its record as %q", s.ID, out)
		}
		other := ports[1-i]
		if out := strings.TrimSpace(guestRun(t, s, get("/latest/meta-data/instance-id", other))); out != "" {
			t.Errorf("%s read %q from the other VM's service (port %s)", s.ID, out, other)
		}
	}
}
