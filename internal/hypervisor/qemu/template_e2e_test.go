package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/hypervisor"
	"golang.org/x/sys/unix"
)

// guestIdentity asks a guest (through its agent) for its host name, its
// interfaces' MACs and 16 bytes of /dev/urandom.
func guestIdentity(t *testing.T, spec hypervisor.Spec) (hostname string, macs []string, random string) {
	t.Helper()
	out := guestRun(t, spec, "hostname; echo; cat /sys/class/net/*/address; echo; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'")
	parts := strings.Split(out, "\n\n")
	if len(parts) != 3 {
		t.Fatalf("%s: identity output %q", spec.ID, out)
	}
	return strings.TrimSpace(parts[0]), strings.Fields(parts[1]), strings.TrimSpace(parts[2])
}

// guestTime is the guest's clock, read by its agent (guest-get-time: the
// guest's gettimeofday in nanoseconds; the test guest's busybox date has
// no %N).
func guestTime(t *testing.T, spec hypervisor.Spec) time.Time {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := syncedAgent(ctx, t, spec)
	defer c.Close()
	var ns int64
	if err := c.Execute(ctx, "guest-get-time", &ns); err != nil {
		t.Fatalf("%s: %v", spec.ID, err)
	}
	return time.Unix(0, ns)
}

// TestE2ETemplateWarmStart makes a template of the test guest on goldvm's
// NAT bridge, starts two VMs from it and checks inside the guests that each
// has its own MAC, host name and random numbers, a clock within a second of
// the host's, and the address goldvm reserved for it with dnsmasq (which a
// reboot gets again by DHCP, and a delete releases); on a bridge whose
// dnsmasq takes no reservations a VM from the template gets its address by
// DHCP; then a template whose state is damaged makes a VM boot cold
// instead.
func TestE2ETemplateWarmStart(t *testing.T) {
	guest := testGuest(t)
	if !inNetns(t, guest) {
		return
	}
	gold := goldDir(t, guest)
	// dnsmasq (user nobody) must reach the reservation directory.
	runDir := t.TempDir()
	for _, dir := range []string{filepath.Dir(runDir), runDir} {
		if err := os.Chmod(dir, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	d, err := New(Config{RunDir: runDir, Sandbox: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.StopNetwork(context.Background()) })
	ctx, cancel := context.WithTimeout(context.Background(), 6*bootTimeout)
	defer cancel()
	root := filepath.Join(t.TempDir(), "templates")
	const machine = "pc-q35-7.2"
	shape := TemplateShape{CPUs: 1, MemoryMiB: 128, Network: api.NetworkNAT, Machine: machine}
	goldDisk := preparedGold(t, gold)

	if _, err := d.MakeTemplate(ctx, root, "sha256-test", goldDisk, TemplateShape{CPUs: 1, MemoryMiB: 128, Network: api.NetworkNAT, Machine: "q35"}); err == nil {
		t.Error("a template with the machine alias q35 was made")
	}
	t0 := time.Now()
	tpl, err := d.MakeTemplate(ctx, root, "sha256-test", goldDisk, shape)
	if err != nil {
		t.Fatalf("make template: %v", err)
	}
	t.Logf("template %s made in %v, %d bytes", tpl.Key, time.Since(t0).Round(time.Millisecond), tpl.SizeBytes)
	list, err := ListTemplates(root, "")
	if err != nil || len(list) != 1 || list[0].Key != tpl.Key {
		t.Fatalf("ListTemplates = %+v, %v", list, err)
	}
	ents, _ := os.ReadDir(filepath.Dir(tpl.Dir))
	if len(ents) != 1 {
		t.Errorf("template image directory holds %d entries, want only the template", len(ents))
	}

	// Only the same shape matches.
	other := newSpec(t, "01warmx", gold, api.NetworkNAT)
	other.ImageKey = "sha256-test"
	if _, err := d.TemplateFor(root, other); err != nil {
		t.Errorf("TemplateFor(the template's shape): %v", err)
	}
	other.MemoryMiB = 192
	if _, err := d.TemplateFor(root, other); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("TemplateFor(192 MiB) = %v, want not found", err)
	}
	other.MemoryMiB, other.Machine = 128, &api.Machine{Chipset: "pc-q35-7.1"}
	if _, err := d.TemplateFor(root, other); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("TemplateFor(pc-q35-7.1) = %v, want not found", err)
	}

	var lastInfo hypervisor.GuestInfo
	start := func(id string, root string) (hypervisor.Spec, string, string) {
		spec := newSpec(t, id, gold, api.NetworkNAT)
		spec.ImageKey = "sha256-test"
		destroyOnCleanup(t, d, spec)
		t0 := time.Now()
		from, reason, err := d.StartWarmOrCold(ctx, root, spec)
		if err != nil {
			t.Fatalf("start %s: %v", spec.ID, err)
		}
		info, err := d.Discover(ctx, spec)
		if err != nil {
			t.Fatalf("discover %s: %v", spec.ID, err)
		}
		lastInfo = info
		t.Logf("%s: from %s (%s), running with %s (%s) after %v", spec.ID, from, reason, info.IPAddress, info.IPSource, time.Since(t0).Round(time.Millisecond))
		if !inSubnet(info.IPAddress, d.cfg.NATSubnet) {
			t.Errorf("%s: address %q outside %s", spec.ID, info.IPAddress, d.cfg.NATSubnet)
		}
		return spec, from, info.IPAddress
	}
	// The saved guest's clock stands still from the save: let it fall
	// behind the host's by more than the bound checked below.
	time.Sleep(time.Until(tpl.Created.Add(3 * time.Second)))
	hosts := d.hostsDir(d.cfg.NATBridge)
	// reserved checks that the address of a VM started from the template
	// is the one goldvm reserved for its MAC with dnsmasq, and that the
	// host reaches the guest there.
	reserved := func(spec hypervisor.Spec, ip string) {
		t.Helper()
		if lastInfo.IPSource != api.SourceReserved {
			t.Errorf("%s: address source %q, want %q", spec.ID, lastInfo.IPSource, api.SourceReserved)
		}
		b, err := os.ReadFile(filepath.Join(hosts, ip))
		if want := reservationHeader(spec.ID) + macFor(spec.ID) + "," + ip + "\n"; err != nil || string(b) != want {
			t.Errorf("%s: reservation file %s = %q, %v; want %q", spec.ID, ip, b, err, want)
		}
		if out, err := exec.CommandContext(ctx, "ping", "-c", "1", "-W", "5", ip).CombinedOutput(); err != nil {
			t.Errorf("%s: the host cannot ping the guest at %s: %v\n%s", spec.ID, ip, err, out)
		}
	}
	a, fromA, ipA := start("01warma", root)
	reserved(a, ipA)
	b, fromB, ipB := start("01warmb", root)
	reserved(b, ipB)
	if fromA != "template" || fromB != "template" {
		t.Fatalf("started from %q and %q, want template", fromA, fromB)
	}
	if ipA == ipB {
		t.Errorf("both VMs have address %s", ipA)
	}
	randoms := map[string]string{}
	for _, spec := range []hypervisor.Spec{a, b} {
		hn, macs, random := guestIdentity(t, spec)
		if want := hostnameFor(spec); hn != want {
			t.Errorf("%s: host name %q, want %q", spec.ID, hn, want)
		}
		if other, ok := randoms[random]; ok || len(random) != 32 {
			t.Errorf("%s: /dev/urandom gave %q (as %s)", spec.ID, random, other)
		}
		randoms[random] = spec.ID
		// The guest's clock is the host's, to a second: the guest's time
		// lies between the host's before and after asking (± 1 s).
		before := time.Now()
		guest := guestTime(t, spec)
		after := time.Now()
		if guest.Before(before.Add(-time.Second)) || guest.After(after.Add(time.Second)) {
			t.Errorf("%s: guest clock %s, host clock between %s and %s: more than a second apart", spec.ID,
				guest.Format(time.RFC3339Nano), before.Format(time.RFC3339Nano), after.Format(time.RFC3339Nano))
		}
		found := false
		for _, m := range macs {
			if strings.EqualFold(m, tpl.MAC) {
				t.Errorf("%s: an interface still has the template's MAC", spec.ID)
			}
			found = found || strings.EqualFold(m, macFor(spec.ID))
		}
		if !found {
			t.Errorf("%s: no interface with MAC %s: %v", spec.ID, macFor(spec.ID), macs)
		}
		// The overlay's backing is the frozen layer.
		ii, err := d.qemuImgInfo(ctx, filepath.Join(spec.Dir, fileDisk), "qcow2", true)
		if err != nil {
			t.Fatal(err)
		}
		if layer := filepath.Join(tpl.Dir, fileTplLayer); ii.BackingFilename != layer && ii.FullBacking != layer {
			t.Errorf("%s: overlay backing %q, want %s", spec.ID, ii.BackingFilename, layer)
		}
	}
	// The same template without the resident identity script (as from a
	// guest without the identity port): the identity goes through the
	// agent; the script, never handed one, ends when it finds the port
	// closed.
	if !tpl.Resident {
		t.Error("the test guest's template has no resident identity script")
	}
	viaAgent := filepath.Join(t.TempDir(), "agent")
	copyTemplate(t, tpl, viaAgent, func(m map[string]any) { m["resident"] = false })
	g, fromG, ipG := start("01warmg", viaAgent)
	reserved(g, ipG)
	if fromG != "template" {
		t.Errorf("from the template without a resident script: started from %q", fromG)
	}
	if hn, macs, _ := guestIdentity(t, g); hn != hostnameFor(g) || !slices.ContainsFunc(macs, func(m string) bool { return strings.EqualFold(m, macFor(g.ID)) }) {
		t.Errorf("%s (identity through the agent): host name %q, MACs %v; want %q and %s", g.ID, hn, macs, hostnameFor(g), macFor(g.ID))
	}
	for _, spec := range []hypervisor.Spec{a, g} {
		if pids := strings.TrimSpace(guestRun(t, spec, residentPIDs)); pids != "" {
			t.Errorf("%s: the resident identity script still runs: %s", spec.ID, pids)
		}
	}

	// One keeps running after the other is gone, whose reservation goes
	// with it.
	if err := d.Destroy(ctx, a); err != nil {
		t.Fatal(err)
	}
	if hn, _, _ := guestIdentity(t, b); hn != hostnameFor(b) {
		t.Errorf("after deleting the other VM: host name %q", hn)
	}
	if _, err := os.Stat(filepath.Join(hosts, ipA)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the deleted VM's reservation %s: %v, want it gone", ipA, err)
	}

	// Rebooted, the guest asks dnsmasq for an address and gets the
	// reserved one: the reservation is in dnsmasq, not only in a file.
	if err := d.withQMP(ctx, b, func(q *qmpConn) error {
		_, err := q.Execute(ctx, "system_reset", nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for leased := ""; leased != ipB; time.Sleep(time.Second) {
		if leased = d.leasedIP(d.cfg.NATBridge, macFor(b.ID)); leased != "" && leased != ipB {
			t.Fatalf("rebooted, %s got the lease %s; its reserved address is %s", b.ID, leased, ipB)
		}
		if ctx.Err() != nil {
			t.Fatalf("rebooted, %s got no lease (reserved address %s)", b.ID, ipB)
		}
	}

	// A bridge whose dnsmasq takes no reservations (started by an older
	// goldvm): the VM gets a new address by DHCP.
	pid, ok := readPID(d.dnsmasqPIDFile(d.cfg.NATBridge))
	if !ok {
		t.Fatal("no dnsmasq pid file")
	}
	var args []string
	for _, a := range procArgs(pid)[1:] {
		if !strings.HasPrefix(a, "--dhcp-hostsdir=") {
			args = append(args, a)
		}
	}
	syscall.Kill(pid, syscall.SIGTERM)
	waitExited(ctx, pid, 10*time.Second)
	if out, err := exec.Command(d.dnsmasq, args...).CombinedOutput(); err != nil {
		t.Fatalf("dnsmasq %v: %v: %s", args, err, out)
	}
	if dir, _ := d.activeHostsDir(d.cfg.NATBridge); dir != "" {
		t.Fatalf("the restarted dnsmasq has reservations in %s", dir)
	}
	dh, fromD, ipD := start("01warmd", root)
	if fromD != "template" || lastInfo.IPSource == api.SourceReserved || ipD == ipB {
		t.Errorf("%s without reservations: from %q, address %s (%s); the other VM has %s", dh.ID, fromD, ipD, lastInfo.IPSource, ipB)
	}
	if leased := d.leasedIP(d.cfg.NATBridge, macFor(dh.ID)); leased != ipD {
		t.Errorf("%s without reservations: leased %q, has %s", dh.ID, leased, ipD)
	}

	// hostonly: the reserved address on the hostonly bridge, and the
	// route to the metadata address (its DHCP server gives no default
	// route) through the host.
	if _, err := d.MakeTemplate(ctx, root, "sha256-test", goldDisk, TemplateShape{CPUs: 1, MemoryMiB: 128, Network: api.NetworkHostOnly, Machine: machine}); err != nil {
		t.Fatalf("make a hostonly template: %v", err)
	}
	ho := newSpec(t, "01warmh", gold, api.NetworkHostOnly)
	ho.ImageKey = "sha256-test"
	destroyOnCleanup(t, d, ho)
	if from, reason, err := d.StartWarmOrCold(ctx, root, ho); err != nil || from != "template" {
		t.Fatalf("hostonly start: from %q (%s), %v", from, reason, err)
	}
	hoInfo, err := d.Discover(ctx, ho)
	if err != nil || hoInfo.IPSource != api.SourceReserved || !inSubnet(hoInfo.IPAddress, d.cfg.HostOnlySubnet) {
		t.Fatalf("hostonly VM: %+v, %v; want a reserved address in %s", hoInfo, err, d.cfg.HostOnlySubnet)
	}
	if _, err := os.Stat(filepath.Join(d.hostsDir(d.cfg.HostOnlyBridge), hoInfo.IPAddress)); err != nil {
		t.Errorf("hostonly reservation: %v", err)
	}
	host, _, _ := strings.Cut(d.cfg.HostOnlySubnet, "/")
	routes := guestRun(t, ho, "ip -4 route")
	if !strings.Contains(routes, MetadataAddr+" via "+host) || strings.Contains(routes, "default") {
		t.Errorf("hostonly guest routes:\n%s\nwant %s via %s and no default route", routes, MetadataAddr, host)
	}
	if out, err := exec.CommandContext(ctx, "ping", "-c", "1", "-W", "5", hoInfo.IPAddress).CombinedOutput(); err != nil {
		t.Errorf("the host cannot ping the hostonly guest at %s: %v\n%s", hoInfo.IPAddress, err, out)
	}

	// A template with a damaged state: the VM boots cold, with the reason.
	bad := filepath.Join(t.TempDir(), "bad")
	copyTemplate(t, tpl, bad, nil)
	state := filepath.Join(bad, "sha256-test", tpl.Key, fileTplState)
	os.Chmod(state, 0o644)
	if err := os.WriteFile(state, []byte("not a migration stream"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, fromC, _ := start("01warmc", bad)
	if fromC != "cold" {
		t.Errorf("with a damaged template: started from %q, want cold", fromC)
	}
}

// residentPIDs is a guest script printing the processes of a resident
// identityScript.
const residentPIDs = `for p in /proc/[0-9]*; do tr '\0' '\n' <$p/environ 2>/dev/null | grep -qx STEP=resident && echo ${p#/proc/}; done; true`

// copyTemplate copies tpl into the template root root, with edit (when
// not nil) applied to its template.json.
func copyTemplate(t *testing.T, tpl Template, root string, edit func(map[string]any)) {
	t.Helper()
	dir := filepath.Join(root, tpl.ImageKey, tpl.Key)
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", tpl.Dir, dir).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	if edit == nil {
		return
	}
	meta := filepath.Join(dir, fileTplMeta)
	b, err := os.ReadFile(meta)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]any{}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	b, _ = json.Marshal(m)
	os.Chmod(meta, 0o644)
	if err := os.WriteFile(meta, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestPinMachine(t *testing.T) {
	d, err := New(Config{UserNet: true})
	if err != nil {
		unavailable(t, "%v", err)
	}
	pinned, err := d.pinMachine("q35")
	if err != nil || !pinnedMachineRe.MatchString(pinned) {
		t.Fatalf("pinMachine(q35) = %q, %v", pinned, err)
	}
	if got, err := d.pinMachine("pc-q35-7.1"); err != nil || got != "pc-q35-7.1" {
		t.Errorf("pinMachine(pc-q35-7.1) = %q, %v", got, err)
	}
	if _, err := d.pinMachine("microvm"); err == nil {
		t.Error("pinMachine(microvm) named a pinned type")
	}
	if _, err := (TemplateShape{CPUs: 1, MemoryMiB: 64, Machine: pinned, Hardware: &api.Machine{UUID: "x"}}).normalized(); err == nil {
		t.Error("hardware with a UUID of its own was accepted")
	}
}

// TestWarmArgs: a restore from the RAM file maps it privately, one from
// the full stream gets anonymous RAM under the same backend id (the
// stream's RAM block is mem0 either way), and a plain boot neither.
func TestWarmArgs(t *testing.T) {
	args := func(w warmOpts) string {
		lp := launchParams{ID: "x", Dir: "/vms/x", MemoryMiB: 128, Machine: "q35"}
		w.apply(&lp)
		return strings.Join(append(buildArgs(lp), w.extraArgs(lp.Dir)...), " ")
	}
	base := warmOpts{machine: "pc-q35-7.2", frozen: "/t/layer.qcow2", incoming: true}
	file := base
	file.memPath = "/t/ram.bin"
	stream := base
	stream.memRAM = true
	for _, tt := range []struct {
		name      string
		w         warmOpts
		want, not []string
	}{
		{"ram file", file, []string{"-machine pc-q35-7.2,memory-backend=mem0", "memory-backend-file,id=mem0,size=128M,mem-path=/t/ram.bin,share=off", "-incoming defer", "vmgenid", "path=/vms/x/identity.sock", "name=org.goldvm.identity.0"}, []string{"memory-backend-ram"}},
		{"stream", stream, []string{"-machine pc-q35-7.2,memory-backend=mem0", "memory-backend-ram,id=mem0,size=128M", "-incoming defer", "vmgenid", "name=org.goldvm.identity.0"}, []string{"mem-path", "ram.bin"}},
		{"cold", warmOpts{}, []string{"-machine q35"}, []string{"mem0", "-incoming", "vmgenid", "identity"}},
	} {
		a := args(tt.w)
		for _, w := range tt.want {
			if !strings.Contains(a, w) {
				t.Errorf("%s: %q missing from %s", tt.name, w, a)
			}
		}
		for _, n := range tt.not {
			if strings.Contains(a, n) {
				t.Errorf("%s: %q in %s", tt.name, n, a)
			}
		}
	}
}

// TestWaitGuestQuiet: a process busy for a while, then asleep, is found
// quiet only after its busy spell (it is asleep and has used CPU time by
// then); one that never stops is waited for until the context ends.
func TestWaitGuestQuiet(t *testing.T) {
	run := func(script string) *exec.Cmd {
		cmd := exec.Command("bash", "-c", script)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return cmd
	}
	busyThenAsleep := run(`end=$((SECONDS+2)); while [ $SECONDS -lt $end ]; do :; done; exec sleep 60`)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := waitGuestQuiet(ctx, busyThenAsleep.Process.Pid, testLogger(t)); err != nil {
		t.Fatalf("waitGuestQuiet: %v", err)
	}
	ticks, err := procCPUTicks(busyThenAsleep.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", busyThenAsleep.Process.Pid))
	if ticks < 10 || !strings.Contains(string(stat), "(sleep) S") {
		t.Errorf("quiet after %d ticks of CPU, in state %q; want the busy spell (up to 200 ticks) over and sleep(1) asleep", ticks, stat)
	}

	busy := run(`while :; do :; done`)
	ctx, cancel = context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := waitGuestQuiet(ctx, busy.Process.Pid, testLogger(t)); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("waitGuestQuiet(a busy loop) = %v, want the context's deadline", err)
	}
}

// TestSealedCopy: the memfd copy of a template's RAM has its content and
// refuses, even to root, writes, size changes, shared writable mappings
// and new seals; a private mapping takes writes without changing it.
func TestSealedCopy(t *testing.T) {
	src := filepath.Join(t.TempDir(), "ram.bin")
	want := make([]byte, 1<<20)
	for i := range want {
		want[i] = byte(i*7 + i>>9)
	}
	if err := os.WriteFile(src, want, 0o444); err != nil {
		t.Fatal(err)
	}
	f, err := sealedCopy(src, "goldvm-template-test")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := make([]byte, len(want))
	if _, err := f.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("content differs (%v)", err)
	}
	if seals, err := unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0); err != nil || seals != sealedSeals {
		t.Errorf("seals %#x (%v), want %#x", seals, err, sealedSeals)
	}
	if _, err := f.WriteAt([]byte{0}, 0); !errors.Is(err, syscall.EPERM) {
		t.Errorf("write: %v, want EPERM", err)
	}
	for _, size := range []int64{0, int64(len(want)) * 2} {
		if err := f.Truncate(size); !errors.Is(err, syscall.EPERM) {
			t.Errorf("truncate to %d: %v, want EPERM", size, err)
		}
	}
	if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, 0); err == nil {
		// F_SEAL_SEAL: adding (even no) seals is refused.
		t.Error("adding seals was allowed")
	}
	// Opened again read-write, as QEMU opens /proc/self/fd/N.
	rw, err := os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", f.Fd()), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rw.Close()
	if _, err := rw.WriteAt([]byte{0}, 0); !errors.Is(err, syscall.EPERM) {
		t.Errorf("write through a read-write open: %v, want EPERM", err)
	}
	if m, err := unix.Mmap(int(rw.Fd()), 0, len(want), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err == nil {
		unix.Munmap(m)
		t.Error("a shared writable mapping was allowed")
	}
	priv, err := unix.Mmap(int(rw.Fd()), 0, len(want), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE)
	if err != nil {
		t.Fatalf("private mapping: %v", err)
	}
	priv[0], priv[len(priv)-1] = ^want[0], ^want[len(want)-1]
	unix.Munmap(priv)
	if _, err := f.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
		t.Errorf("a private mapping's writes reached the memfd (%v)", err)
	}
}
