package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
)

// TestWarmStartTemplates makes a template of the test guest through the
// API, then creates VMs: those of the template's shape start from it (each
// with its own address), one of another shape boots.
func TestWarmStartTemplates(t *testing.T) {
	requireEnv(t)
	// QEMU under one user: VMs map the template's RAM file (under a user
	// id per VM they load its full stream: TestWarmStartPerVMUIDs).
	d, _, img := qcow2Daemon(t, "--qemu-user", "root")
	ctx := context.Background()
	c := d.client

	first := mustCreate(t, d, createReq(img, ""))
	v := waitStatus(t, d, first.ID, api.StatusRunning, 5*time.Minute)
	if v.StartedFrom != api.StartedFromBoot {
		t.Errorf("first VM started_from %q, want %q", v.StartedFrom, api.StartedFromBoot)
	}
	images, err := c.ListImages(ctx)
	if err != nil || len(images) != 1 {
		t.Fatalf("images: %+v %v", images, err)
	}
	key := images[0].Key
	tpl, err := c.MakeTemplate(ctx, key, api.TemplateRequest{CPUs: 1, Memory: 128, NetworkType: "nat"})
	if err != nil {
		t.Fatalf("make template: %v", err)
	}
	t.Logf("template %+v", tpl)
	if ts, err := c.Templates(ctx, key); err != nil || len(ts) != 1 || ts[0].Key != tpl.Key {
		t.Errorf("templates: %+v %v", ts, err)
	}

	ips := map[string]string{v.IPAddress: v.ID}
	for range 2 {
		t0 := time.Now()
		w := mustCreate(t, d, createReq(img, ""))
		w = waitStatus(t, d, w.ID, api.StatusRunning, 5*time.Minute)
		t.Logf("%s: %s, %s after %v (%s)", w.ID, w.StartedFrom, w.IPAddress, time.Since(t0).Round(time.Millisecond), w.WarmStartError)
		if w.StartedFrom != api.StartedFromTemplate {
			t.Errorf("%s: started_from %q (%s), want template", w.ID, w.StartedFrom, w.WarmStartError)
		}
		if other, ok := ips[w.IPAddress]; ok || w.IPAddress == "" {
			t.Errorf("%s: address %q (also %s)", w.ID, w.IPAddress, other)
		}
		ips[w.IPAddress] = w.ID
	}
	req := createReq(img, "")
	req.Memory = 192
	o := mustCreate(t, d, req)
	o = waitStatus(t, d, o.ID, api.StatusRunning, 5*time.Minute)
	if o.StartedFrom != api.StartedFromBoot {
		t.Errorf("VM of another shape started_from %q, want %q", o.StartedFrom, api.StartedFromBoot)
	}
}

// TestWarmTemplatesAutomatic: with --warm-templates 1 the daemon makes a
// shape's template by itself after one cold boot of it, and the next VM of
// that shape starts from it (no booting phase in its phase_times); the
// image cannot be deleted while its VMs run, and when it is, its templates
// go with it. Templates of an image gone while the daemon was down, and
// half-made ones, are removed at the next start.
func TestWarmTemplatesAutomatic(t *testing.T) {
	requireEnv(t)
	// An earlier test's daemon may have left its dnsmasq on the
	// namespace's bridge, its data directory gone: the daemon replaces it
	// with its own, which takes the reservations checked below.
	flags := []string{"--qemu-user", "root", "--warm-templates", "1"}
	d, _, img := qcow2Daemon(t, flags...)
	ctx := context.Background()
	c := d.client
	hasPhase := func(v *api.VM, p api.Phase) bool {
		return slices.ContainsFunc(v.PhaseTimes, func(pt api.PhaseTime) bool { return pt.Phase == p })
	}

	cold := mustCreate(t, d, createReq(img, ""))
	cold = waitStatus(t, d, cold.ID, api.StatusRunning, 5*time.Minute)
	if cold.StartedFrom != api.StartedFromBoot || !hasPhase(cold, api.PhaseBooting) {
		t.Fatalf("first VM: started_from %q, phases %+v; want a cold boot", cold.StartedFrom, cold.PhaseTimes)
	}
	images, err := c.ListImages(ctx)
	if err != nil || len(images) != 1 {
		t.Fatalf("images: %+v %v", images, err)
	}
	key := images[0].Key
	deadline := time.Now().Add(5 * time.Minute)
	for {
		ts, err := c.Templates(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if len(ts) == 1 {
			t.Logf("template made by itself: %+v", ts[0])
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no template after one cold boot with --warm-templates 1: %+v", ts)
		}
		time.Sleep(time.Second)
	}
	warm := mustCreate(t, d, createReq(img, ""))
	warm = waitStatus(t, d, warm.ID, api.StatusRunning, 5*time.Minute)
	if warm.StartedFrom != api.StartedFromTemplate || hasPhase(warm, api.PhaseBooting) {
		t.Fatalf("second VM: started_from %q (%s), phases %+v; want a start from the template", warm.StartedFrom, warm.WarmStartError, warm.PhaseTimes)
	}
	t.Logf("warm start phases: %+v", warm.PhaseTimes)
	// Its address is the one the daemon reserved for it with dnsmasq.
	reservation := filepath.Join(d.dataDir, "run", "dnsmasq-goldvm0.hosts", warm.IPAddress)
	if warm.Sources == nil || warm.Sources.IPAddress != api.SourceReserved {
		t.Errorf("second VM: sources %+v, want ip_address %q", warm.Sources, api.SourceReserved)
	}
	if b, err := os.ReadFile(reservation); err != nil || !strings.HasPrefix(string(b), "# goldvm "+warm.ID+"\n") {
		t.Errorf("reservation %s: %q, %v", reservation, b, err)
	}

	if err := c.DeleteImage(ctx, key); !isAPIError(err, 409, "image-in-use") {
		t.Fatalf("delete the image of running VMs: %v, want 409 image-in-use", err)
	}
	for _, id := range []string{cold.ID, warm.ID} {
		if err := c.DeleteVM(ctx, id); err != nil {
			t.Fatal(err)
		}
		assertGone(t, d, id)
	}
	if _, err := os.Stat(reservation); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the deleted VM's reservation %s: %v, want it gone", reservation, err)
	}
	if err := c.DeleteImage(ctx, key); err != nil {
		t.Fatalf("delete the unused image: %v", err)
	}
	if ts, err := c.Templates(ctx, key); err != nil || len(ts) != 0 {
		t.Errorf("templates of the deleted image: %+v %v", ts, err)
	}
	if _, err := os.Stat(filepath.Join(d.dataDir, "templates", key)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the deleted image's template directory is still there: %v", err)
	}

	// Left behind while the daemon was down: the templates of an image
	// that is gone, and a template a crash interrupted.
	d.stop()
	gone := filepath.Join(d.dataDir, "templates", "sha256-"+strings.Repeat("0", 64), "k")
	if err := os.MkdirAll(gone, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(gone, "template.json"), []byte("{}"), 0o644)
	half := filepath.Join(d.dataDir, "templates", ".tmp-0123456789ab-1")
	if err := os.MkdirAll(half, 0o755); err != nil {
		t.Fatal(err)
	}
	d.start(flags...)
	for _, p := range []string{filepath.Dir(gone), half} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s was not removed at start: %v", p, err)
		}
	}
}

// prefetchedTemplate fetches img into the daemon's store and makes its
// template in createReq's shape; it returns the image key.
func prefetchedTemplate(t *testing.T, d *daemon, img api.Image) string {
	t.Helper()
	ctx := context.Background()
	info, err := d.client.PrefetchImage(ctx, img)
	if err != nil {
		t.Fatalf("prefetch: %v", err)
	}
	if info, err = d.client.WaitImage(ctx, info.Key, nil); err != nil || info.State != "ready" {
		t.Fatalf("image: %+v %v", info, err)
	}
	tpl, err := d.client.MakeTemplate(ctx, info.Key, api.TemplateRequest{CPUs: 1, Memory: 128, NetworkType: "nat"})
	if err != nil {
		t.Fatalf("make template: %v", err)
	}
	t.Logf("template %+v", tpl)
	return info.Key
}

// tapsOf lists the tap devices whose alias names the VM id.
func tapsOf(id string) []string {
	out, _ := exec.Command("ip", "-o", "link", "show", "type", "tun").Output()
	var taps []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if i := slices.Index(f, "alias"); len(f) > 1 && i >= 0 && i+1 < len(f) && f[i+1] == "goldvm:"+id {
			taps = append(taps, strings.TrimSuffix(f[1], ":"))
		}
	}
	return taps
}

// TestWarmStartCrashAndRestart: a daemon SIGKILLed in the middle of a warm
// start (QEMU runs, waiting for the template's state) recovers the VM as any
// interrupted create: the half-restored QEMU is killed and the VM made
// again from the template, with one QEMU and one tap. VMs started from a
// template are reattached by a restarted daemon: still running, same QEMU
// process, same address, answering ping. Both with QEMU under one user
// (VMs map the template's RAM file) and, as root, under a user id per VM
// (VMs load its full state stream).
func TestWarmStartCrashAndRestart(t *testing.T) {
	requireEnv(t)
	srv := newImageServer(t)
	img := publish(t, srv, "qcow2")
	t.Run("ram-file", func(t *testing.T) { warmCrashAndRestart(t, img, "--qemu-user", "root") })
	t.Run("stream", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("per-VM user ids need a root daemon")
		}
		warmCrashAndRestart(t, img)
	})
}

func warmCrashAndRestart(t *testing.T, img api.Image, flags ...string) {
	d := startDaemonEnv(t, filepath.Join(t.TempDir(), "data"), []string{"GOLDVM_CRASH_AT=restoring"}, flags...)
	prefetchedTemplate(t, d, img)

	v := mustCreate(t, d, createReq(img, ""))
	waitCrash(t, d, v.ID, "restoring")
	d.cmd = nil
	if b, _ := os.ReadFile(d.logPath); !strings.Contains(string(b), "crash testing: killing the daemon") {
		t.Fatalf("daemon died, but not at the crash point:\n%s", lastLines(string(b), 30))
	}
	half := processesMatching("goldvm-" + v.ID)
	if len(half) != 1 {
		t.Fatalf("QEMU processes of the half-restored VM: %v, want 1", half)
	}
	if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", half[0])); !strings.Contains(string(b), "-incoming") {
		t.Fatalf("the crash did not land in a restore: QEMU runs %q", strings.ReplaceAll(string(b), "\x00", " "))
	}
	if taps := tapsOf(v.ID); len(taps) != 1 {
		t.Errorf("taps of the half-restored VM: %v, want 1", taps)
	}

	d.env = nil
	d.start(flags...)
	a := waitStatus(t, d, v.ID, api.StatusRunning, bootTimeout)
	if a.StartedFrom != api.StartedFromTemplate || a.IPAddress == "" || !strings.Contains(a.GuestOS, "goldvm test guest") {
		t.Fatalf("after recovery: %s, want running from the template with an address", fmtVM(a))
	}
	pidsA := processesMatching("goldvm-" + v.ID)
	if len(pidsA) != 1 || pidsA[0] == half[0] {
		t.Errorf("QEMU processes after recovery: %v (the half-restored one was %d), want one new one", pidsA, half[0])
	}
	if taps := tapsOf(v.ID); len(taps) != 1 {
		t.Errorf("taps after recovery: %v, want 1", taps)
	}
	if ents, err := os.ReadDir(filepath.Join(d.dataDir, "vms")); err != nil || len(ents) != 1 {
		t.Errorf("VM directories after recovery: %v %v, want 1", ents, err)
	}

	b := mustCreate(t, d, createReq(img, ""))
	b = waitStatus(t, d, b.ID, api.StatusRunning, bootTimeout)
	if b.StartedFrom != api.StartedFromTemplate || b.IPAddress == "" || b.IPAddress == a.IPAddress {
		t.Fatalf("second VM: %s, want running from the template with an address of its own (first: %s)", fmtVM(b), a.IPAddress)
	}
	pidsB := processesMatching("goldvm-" + b.ID)
	// One address reservation per VM, the crashed restore's included
	// (made again by the recovery), none left over.
	hosts := filepath.Join(d.dataDir, "run", "dnsmasq-goldvm0.hosts")
	reservations := func() map[string]string {
		out := map[string]string{}
		ents, _ := os.ReadDir(hosts)
		for _, e := range ents {
			b, _ := os.ReadFile(filepath.Join(hosts, e.Name()))
			out[e.Name()] = strings.TrimPrefix(strings.SplitN(string(b), "\n", 2)[0], "# goldvm ")
		}
		return out
	}
	if r := reservations(); len(r) != 2 || r[a.IPAddress] != a.ID || r[b.IPAddress] != b.ID {
		t.Errorf("reservations %v, want %s for %s and %s for %s", r, a.IPAddress, a.ID, b.IPAddress, b.ID)
	}
	for _, v := range []*api.VM{a, b} {
		if v.Sources == nil || v.Sources.IPAddress != api.SourceReserved {
			t.Errorf("%s: sources %+v, want ip_address %q", v.ID, v.Sources, api.SourceReserved)
		}
	}

	d.stop()
	d.start(flags...)
	for _, w := range []struct {
		vm   *api.VM
		pids []int
	}{{a, pidsA}, {b, pidsB}} {
		got, err := d.client.GetVM(context.Background(), w.vm.ID)
		if err != nil || got.Status != api.StatusRunning || got.IPAddress != w.vm.IPAddress || got.StartedFrom != api.StartedFromTemplate {
			t.Errorf("after restart: %v %s, want running from the template at %s", err, fmtVM(got), w.vm.IPAddress)
			continue
		}
		if p := processesMatching("goldvm-" + w.vm.ID); !slices.Equal(p, w.pids) {
			t.Errorf("%s: QEMU processes %v after restart, want %v (reattached)", w.vm.ID, p, w.pids)
		}
		if err := pingGuest(got.IPAddress); err != nil {
			t.Errorf("%s at %s after restart: %v", w.vm.ID, got.IPAddress, err)
		}
	}
	for _, id := range []string{a.ID, b.ID} {
		if err := d.client.DeleteVM(context.Background(), id); err != nil {
			t.Fatal(err)
		}
		assertGone(t, d, id)
	}
	if r := reservations(); len(r) != 0 {
		t.Errorf("reservations after deleting every VM: %v", r)
	}
}

// TestAgentlessGuestNoTemplate: the guest without an agent gets no
// template (409 template-no-agent, answered once its address is known and
// the agent wait is over, not a hang), nothing of the attempt is left, and
// its VMs boot cold.
func TestAgentlessGuestNoTemplate(t *testing.T) {
	requireEnv(t)
	srv := newImageServer(t)
	disk := filepath.Join(filepath.Dir(guestDisk), "guest-noagent.qcow2")
	if _, err := os.Stat(disk); err != nil {
		t.Fatalf("the agentless test guest (made by testdata/guest/build.sh): %v", err)
	}
	copyFile(t, disk, filepath.Join(srv.dir, "noagent.qcow2"))
	img := api.Image{URL: srv.URL + "/noagent.qcow2", Checksum: sha256File(t, filepath.Join(srv.dir, "noagent.qcow2")), ChecksumType: "sha256"}
	flags := []string{"--qemu-user", "root", "--agent-wait", "10s"}
	if os.Getenv(netnsMarker) != "" {
		// Without an agent the address comes from the DHCP lease, which
		// only the daemon that started the bridge's dnsmasq can read: a
		// dnsmasq left by an earlier test's daemon goes.
		killNamespaceDnsmasq()
	}
	d := startDaemon(t, filepath.Join(t.TempDir(), "data"), flags...)
	ctx := context.Background()
	info, err := d.client.PrefetchImage(ctx, img)
	if err != nil {
		t.Fatal(err)
	}
	if info, err = d.client.WaitImage(ctx, info.Key, nil); err != nil || info.State != "ready" {
		t.Fatalf("image: %+v %v", info, err)
	}
	// The daemon bounds the template guest's discovery at 5 minutes; a
	// request still open after that (and some) is a hang.
	tctx, cancel := context.WithTimeout(ctx, 7*time.Minute)
	defer cancel()
	tpl, err := d.client.MakeTemplate(tctx, info.Key, api.TemplateRequest{CPUs: 1, Memory: 128, NetworkType: "nat"})
	if !isAPIError(err, 409, api.CodeTemplateNoAgent) {
		t.Fatalf("template of the agentless guest: %+v, %v; want 409 %s", tpl, err, api.CodeTemplateNoAgent)
	}
	t.Logf("refused: %v", err)
	if ts, err := d.client.Templates(ctx, info.Key); err != nil || len(ts) != 0 {
		t.Errorf("templates: %+v %v, want none", ts, err)
	}
	ents, _ := os.ReadDir(filepath.Join(d.dataDir, "templates", info.Key))
	if len(ents) != 0 {
		t.Errorf("the refused template left %v behind", ents)
	}
	if p := processesMatching(filepath.Join(d.dataDir, "templates")); len(p) != 0 {
		t.Errorf("processes of the refused template still run: %v", p)
	}

	v := mustCreate(t, d, createReq(img, ""))
	v = waitStatus(t, d, v.ID, api.StatusRunning, bootTimeout)
	if v.StartedFrom != api.StartedFromBoot || v.IPAddress == "" {
		t.Errorf("VM of the agentless guest: %s, want booted cold with an address", fmtVM(v))
	}
	if err := d.client.DeleteVM(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	assertGone(t, d, v.ID)
}

// TestWarmStartPerVMUIDs: under a root daemon's default, QEMU under a user
// id per VM, VMs start from a sealed memfd copy of the template's RAM,
// mapped privately: each QEMU runs under a user id of its own and is given
// no template file it could write (all are root's; the RAM file is not
// opened at all; the memfd refuses writes, even root's), and each VM has
// its own address. --warm-templates is accepted in this mode.
func TestWarmStartPerVMUIDs(t *testing.T) {
	requireEnv(t)
	if os.Geteuid() != 0 {
		t.Skip("per-VM user ids need a root daemon")
	}
	d, _, img := qcow2Daemon(t, "--warm-templates", "1")
	key := prefetchedTemplate(t, d, img)
	dirs, err := filepath.Glob(filepath.Join(d.dataDir, "templates", key, "*"))
	if err != nil || len(dirs) != 1 {
		t.Fatalf("template directories: %v %v", dirs, err)
	}
	for name, mode := range map[string]os.FileMode{"layer.qcow2": 0o444, "ram.bin": 0o444, "state.bin": 0o444, "stream.bin": 0o644} {
		fi, err := os.Stat(filepath.Join(dirs[0], name))
		if err != nil {
			t.Errorf("template file: %v", err)
			continue
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != 0 || fi.Mode().Perm() != mode {
			t.Errorf("%s: owner %d, mode %v; want root's, %v", name, st.Uid, fi.Mode().Perm(), mode)
		}
	}

	uids := map[string]string{}
	ips := map[string]string{}
	for range 2 {
		v := mustCreate(t, d, createReq(img, ""))
		v = waitStatus(t, d, v.ID, api.StatusRunning, bootTimeout)
		if v.StartedFrom != api.StartedFromTemplate || v.IPAddress == "" {
			t.Fatalf("%s, want running from the template with an address", fmtVM(v))
		}
		if other, ok := ips[v.IPAddress]; ok {
			t.Errorf("%s has %s's address %s", v.ID, other, v.IPAddress)
		}
		ips[v.IPAddress] = v.ID
		pids := processesMatching("goldvm-" + v.ID)
		if len(pids) != 1 {
			t.Fatalf("QEMU processes of %s: %v", v.ID, pids)
		}
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pids[0]))
		m := regexp.MustCompile(`memory-backend-file,id=mem0,size=\d+M,mem-path=/proc/self/fd/(\d+),share=off`).FindSubmatch(cmdline)
		if m == nil || strings.Contains(string(cmdline), "ram.bin") {
			t.Errorf("%s: QEMU runs %q, want the RAM from a descriptor, mapped privately, and no RAM file", v.ID, strings.ReplaceAll(string(cmdline), "\x00", " "))
		} else {
			memfd := fmt.Sprintf("/proc/%d/fd/%s", pids[0], m[1])
			if target, err := os.Readlink(memfd); err != nil || !strings.HasPrefix(target, "/memfd:goldvm-template-") {
				t.Errorf("%s: QEMU's RAM descriptor is %q (%v), want the template's memfd", v.ID, target, err)
			}
			// Sealed: nobody writes the memory the next VM starts with.
			if f, err := os.OpenFile(memfd, os.O_RDWR, 0); err != nil {
				t.Errorf("%s: open %s: %v", v.ID, memfd, err)
			} else {
				if _, err := f.WriteAt([]byte{1}, 0); !errors.Is(err, syscall.EPERM) {
					t.Errorf("%s: writing the template's memfd as root: %v, want EPERM", v.ID, err)
				}
				f.Close()
			}
		}
		fds, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", pids[0]))
		for _, fd := range fds {
			if target, _ := os.Readlink(fd); strings.HasSuffix(target, "ram.bin") {
				t.Errorf("%s: QEMU has the RAM file open (%s)", v.ID, fd)
			}
		}
		status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pids[0]))
		var uid string
		for _, line := range strings.Split(string(status), "\n") {
			if f := strings.Fields(line); len(f) > 1 && f[0] == "Uid:" {
				uid = f[1]
			}
		}
		if uid == "" || uid == "0" {
			t.Errorf("%s: QEMU runs as uid %q, want a user id of its own", v.ID, uid)
		}
		if other, ok := uids[uid]; ok {
			t.Errorf("%s: QEMU runs as uid %s, as %s's does", v.ID, uid, other)
		}
		uids[uid] = v.ID
	}
	for _, id := range uids {
		if err := d.client.DeleteVM(context.Background(), id); err != nil {
			t.Fatal(err)
		}
		assertGone(t, d, id)
	}
}
