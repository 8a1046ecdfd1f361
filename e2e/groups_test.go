package e2e

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/client"
)

// waitGroup polls a group until ok holds for it; each poll's group is
// also given to each (when not nil), which may fail the test.
func waitGroup(t *testing.T, d *daemon, name string, timeout time.Duration, each func(*api.Group), ok func(*api.Group) bool) *api.Group {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var g *api.Group
	var err error
	for time.Now().Before(deadline) {
		g, err = d.client.GetGroup(context.Background(), name)
		if err == nil {
			if each != nil {
				each(g)
			}
			if ok(g) {
				return g
			}
		}
		time.Sleep(300 * time.Millisecond)
	}
	b, _ := os.ReadFile(d.logPath)
	t.Fatalf("group %s: condition not met within %s (last: %+v, err %v)\n%s", name, timeout, g, err, lastLines(string(b), 30))
	return nil
}

// settled reports whether every VM of g is current and running and there
// are exactly size of them.
func settled(size int) func(*api.Group) bool {
	return func(g *api.Group) bool {
		if len(g.VMs) != size || g.Running != size {
			return false
		}
		for _, v := range g.VMs {
			if !v.Current {
				return false
			}
		}
		return true
	}
}

func groupIDs(g *api.Group) []string {
	var ids []string
	for _, v := range g.VMs {
		ids = append(ids, v.ID)
	}
	slices.Sort(ids)
	return ids
}

// qcow2Daemon publishes the test guest as a qcow2 image and starts a
// daemon (with extra flags) that is stopped, its strays killed, at the end.
func qcow2Daemon(t *testing.T, extra ...string) (*daemon, *imageServer, api.Image) {
	t.Helper()
	srv := newImageServer(t)
	img := publish(t, srv, "qcow2")
	dir := t.TempDir()
	d := startDaemon(t, dir, extra...)
	t.Cleanup(func() { d.stop(); killStrays(t, dir) })
	return d, srv, img
}

// TestGroup drives a group of tiny real guests through the daemon: it
// comes up at its size with its tags; a VM whose QEMU is killed and a VM
// deleted through the API are replaced; it scales 2→1→2; suspend keeps a
// VM in the group and resume brings it back; a template change rolls it
// over with never fewer than size running; a SIGKILL of the daemon during
// a scale-up leaves no duplicate; deleting the group destroys its VMs.
func TestGroup(t *testing.T) {
	requireEnv(t)
	d, _, img := qcow2Daemon(t)
	dir := d.dataDir
	ctx := context.Background()
	c := d.client

	tpl := createReq(img, "")
	tpl.Tags = map[string]string{"env": "e2e"}
	spec := api.GroupSpec{Size: 2, MaxSurge: 2, Template: tpl}
	g, err := c.PutGroup(ctx, "web", spec)
	if err != nil {
		t.Fatal(err)
	}
	hash := g.TemplateHash
	g = waitGroup(t, d, "web", 5*time.Minute, nil, settled(2))
	t.Logf("group up: %v", groupIDs(g))

	// Tags: the group's and the template's, filtered with AND.
	l, err := c.ListVMsPage(ctx, client.ListOptions{Tags: map[string]string{api.TagGroup: "web", "env": "e2e", api.TagTemplate: hash}})
	if err != nil || len(l.VMs) != 2 {
		t.Fatalf("VMs tagged group=web, env=e2e, template=%s: %d (%v), want 2", hash, len(l.VMs), err)
	}
	ci := "ci"
	first := g.VMs[0].ID
	if _, err := c.PatchVM(ctx, first, map[string]*string{"team": &ci}); err != nil {
		t.Fatal(err)
	}
	l, err = c.ListVMsPage(ctx, client.ListOptions{Tags: map[string]string{"env": "e2e", "team": "ci"}, Status: []api.Status{api.StatusRunning}})
	if err != nil || len(l.VMs) != 1 || l.VMs[0].ID != first {
		t.Fatalf("VMs tagged env=e2e and team=ci: %+v (%v), want only %s", l, err, first)
	}

	// A VM whose QEMU dies is replaced.
	pids := processesMatching("goldvm-" + first)
	if len(pids) == 0 {
		t.Fatalf("no QEMU process for %s", first)
	}
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	g = waitGroup(t, d, "web", 5*time.Minute, nil, func(g *api.Group) bool {
		return settled(2)(g) && !slices.Contains(groupIDs(g), first)
	})
	assertGone(t, d, first)

	// A VM deleted through the API is replaced.
	second := g.VMs[0].ID
	if err := c.DeleteVM(ctx, second); err != nil {
		t.Fatal(err)
	}
	g = waitGroup(t, d, "web", 5*time.Minute, nil, func(g *api.Group) bool {
		return settled(2)(g) && !slices.Contains(groupIDs(g), second)
	})

	// Scale 2→1 keeps the newest; 1→2 adds one.
	ids := groupIDs(g)
	spec.Size = 1
	if _, err := c.PutGroup(ctx, "web", spec); err != nil {
		t.Fatal(err)
	}
	g = waitGroup(t, d, "web", 2*time.Minute, nil, settled(1))
	if kept := g.VMs[0].ID; kept != ids[1] {
		t.Errorf("scale down kept %s, want the newest %s", kept, ids[1])
	}
	spec.Size = 2
	if _, err := c.PutGroup(ctx, "web", spec); err != nil {
		t.Fatal(err)
	}
	g = waitGroup(t, d, "web", 5*time.Minute, nil, settled(2))

	// Suspend: still a member (nothing created for it); resume of a
	// running VM is a 409; resume brings it back.
	sus := g.VMs[0].ID
	if _, err := c.VMAction(ctx, g.VMs[1].ID, "resume"); !isAPIError(err, 409, api.CodeVMInvalidState) {
		t.Errorf("resume of a running VM: %v, want 409 %s", err, api.CodeVMInvalidState)
	}
	v, err := c.VMAction(ctx, sus, "suspend")
	if err != nil || v.Status != api.StatusSuspended {
		t.Fatalf("suspend: %+v, %v", v, err)
	}
	time.Sleep(3 * time.Second) // a few reconcile passes
	if g, err = c.GetGroup(ctx, "web"); err != nil || len(g.VMs) != 2 {
		t.Fatalf("group with a suspended VM: %+v, %v; want its 2 VMs and no new one", g, err)
	}
	if v, err = c.VMAction(ctx, sus, "resume"); err != nil || v.Status != api.StatusRunning {
		t.Fatalf("resume: %+v, %v", v, err)
	}

	// A template change rolls over: new VMs first, never fewer than 2 running.
	old := groupIDs(g)
	spec.Template.Memory = 144
	spec.MaxSurge = 1
	if _, err := c.PutGroup(ctx, "web", spec); err != nil {
		t.Fatal(err)
	}
	g = waitGroup(t, d, "web", 8*time.Minute, func(g *api.Group) {
		if g.Running < 2 {
			t.Errorf("during the roll-over only %d VMs ran: %+v", g.Running, g.VMs)
		}
	}, settled(2))
	for _, id := range groupIDs(g) {
		if slices.Contains(old, id) {
			t.Errorf("VM %s of the old template is still in the group", id)
		}
	}
	for _, id := range old {
		assertGone(t, d, id)
	}

	// SIGKILL of the daemon while it scales up: after the restart the
	// group has exactly its size, and no QEMU without a record runs.
	spec.Size = 3
	if _, err := c.PutGroup(ctx, "web", spec); err != nil {
		t.Fatal(err)
	}
	waitGroup(t, d, "web", time.Minute, nil, func(g *api.Group) bool { return len(g.VMs) == 3 })
	d.kill()
	d.start()
	g = waitGroup(t, d, "web", 5*time.Minute, nil, settled(3))
	all, err := d.client.ListVMs(ctx)
	if err != nil || len(all) != 3 {
		t.Fatalf("after the crash the daemon has %d VMs (%v), want 3", len(all), err)
	}
	if n := len(processesMatching(filepath.Join(dir, "vms"))); n != 3 {
		t.Errorf("%d QEMU processes run after the crash, want 3", n)
	}

	// Deleting the group destroys its VMs, then the group.
	if err := d.client.DeleteGroup(ctx, "web", false); err != nil {
		t.Fatal(err)
	}
	for _, id := range groupIDs(g) {
		assertGone(t, d, id)
	}
	if _, err := d.client.GetGroup(ctx, "web"); !isAPIError(err, 404, api.CodeGroupNotFound) {
		t.Errorf("GET of a deleted group: %v, want 404", err)
	}
}

// TestGroupDegraded: a template whose image never verifies marks the group
// degraded after a few failures, each one image request, and the group
// backs off instead of creating VMs in a loop.
func TestGroupDegraded(t *testing.T) {
	requireEnv(t)
	d, srv, img := qcow2Daemon(t, "--group-retry-backoff", "500ms")
	img.Checksum = strings.Repeat("0", 64)
	ctx := context.Background()
	path := strings.TrimPrefix(img.URL, srv.URL)
	if _, err := d.client.PutGroup(ctx, "bad", api.GroupSpec{Size: 2, MaxSurge: 2, Template: createReq(img, "")}); err != nil {
		t.Fatal(err)
	}
	g := waitGroup(t, d, "bad", 2*time.Minute, nil, func(g *api.Group) bool { return g.State == api.GroupDegraded })
	if g.Error == nil || g.Error.Code != api.CodeChecksumMismatch {
		t.Errorf("degraded group's error: %+v, want %s", g.Error, api.CodeChecksumMismatch)
	}
	// The backoff doubles from 500ms: by the 3rd failure the next try is
	// 2s away, the one after 4s. Watch for a while: the failures and the
	// image requests stay few and in step.
	time.Sleep(3 * time.Second)
	g, err := d.client.GetGroup(ctx, "bad")
	if err != nil {
		t.Fatal(err)
	}
	reqs := srv.count(path)
	t.Logf("failures %d, image requests %d, next retry in %s", g.Failures, reqs, time.Until(g.NextRetry).Round(time.Millisecond))
	if reqs > g.Failures+2 || g.Failures > 6 {
		t.Errorf("%d image requests for %d failures: a retry storm", reqs, g.Failures)
	}
	if g.State != api.GroupDegraded || g.NextRetry.IsZero() {
		t.Errorf("group %+v: want degraded with a next retry", g)
	}
	// A fixed template clears it.
	img.Checksum = sha256File(t, filepath.Join(srv.dir, strings.TrimPrefix(path, "/")))
	if _, err := d.client.PutGroup(ctx, "bad", api.GroupSpec{Size: 1, Template: createReq(img, "")}); err != nil {
		t.Fatal(err)
	}
	g = waitGroup(t, d, "bad", 5*time.Minute, nil, settled(1))
	if g.State != api.GroupOK || g.Failures != 0 {
		t.Errorf("fixed group: state %s, %d failures; want ok, 0", g.State, g.Failures)
	}
	if err := d.client.DeleteGroup(ctx, "bad", false); err != nil {
		t.Fatal(err)
	}
	assertGone(t, d, g.VMs[0].ID)
}
