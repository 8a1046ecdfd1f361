package e2e

import (
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
)

// warmReady reports whether g has exactly warm warm VMs, all ready, and no
// other VM.
func warmReady(warm int) func(*api.Group) bool {
	return func(g *api.Group) bool { return g.WarmReady == warm && len(g.VMs) == warm }
}

// TestGroupWarm: a group of real guests keeps warm VMs; a create with
// from_group gets one at once (running, with its address, in the 202),
// with the request's tags and its callback, and the group boots a
// replacement; a SIGKILL of the daemon while it does leaves no duplicate;
// deleting the group leaves the VM handed out.
func TestGroupWarm(t *testing.T) {
	requireEnv(t)
	d, _, img := qcow2Daemon(t)
	ctx := context.Background()
	c := d.client
	cb := newCallbackServer(t)

	tpl := createReq(img, "")
	if _, err := c.PutGroup(ctx, "pool", api.GroupSpec{Warm: 2, MaxSurge: 2, Template: tpl}); err != nil {
		t.Fatal(err)
	}
	g := waitGroup(t, d, "pool", 5*time.Minute, nil, warmReady(2))
	pool := groupIDs(g)

	v, err := c.CreateVM(ctx, api.CreateVMRequest{FromGroup: "pool", Tags: map[string]string{"job": "7"}, CallbackURL: cb.URL + "/done"})
	if err != nil {
		t.Fatal(err)
	}
	if v.Status != api.StatusRunning || v.IPAddress == "" || !slices.Contains(pool, v.ID) {
		t.Fatalf("from_group answered %s, want a running warm VM of %v with its address", fmtVM(v), pool)
	}
	if v.FromGroup == nil || !v.FromGroup.Warm || v.Tags["job"] != "7" || v.Tags[api.TagGroup] != "" || v.Tags[api.TagWarm] != "" {
		t.Errorf("handed-out VM: %s", fmtVM(v))
	}
	if got := cb.waitCallback(t, v.ID, time.Minute); got.Status != api.StatusRunning || got.IPAddress != v.IPAddress {
		t.Errorf("callback: %s", fmtVM(&got))
	}

	// The daemon dies while the replacement boots: after the restart the
	// pool has 2 warm VMs, and 3 VMs (and 3 QEMUs) exist in all.
	waitGroup(t, d, "pool", time.Minute, nil, func(g *api.Group) bool { return len(g.VMs) == 2 && g.WarmReady == 1 })
	d.kill()
	d.start()
	g = waitGroup(t, d, "pool", 5*time.Minute, nil, warmReady(2))
	if slices.Contains(groupIDs(g), v.ID) {
		t.Errorf("the VM handed out is back in the group: %v", groupIDs(g))
	}
	all, err := c.ListVMs(ctx)
	if err != nil || len(all) != 3 {
		t.Fatalf("after the crash the daemon has %d VMs (%v), want 3", len(all), err)
	}
	if n := len(processesMatching(filepath.Join(d.dataDir, "vms"))); n != 3 {
		t.Errorf("%d QEMU processes run after the crash, want 3", n)
	}
	if got, err := c.GetVM(ctx, v.ID); err != nil || got.Status != api.StatusRunning || got.Tags["job"] != "7" {
		t.Errorf("the VM handed out after the restart: %+v, %v", got, err)
	}

	// The CLI: `goldvm create --from-group` takes a warm VM too, and
	// refuses the flags the group's template decides.
	out, err := exec.Command(goldvmBin, "create", "--addr", d.addr, "--from-group", "pool", "--cpus", "2").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--cpus") {
		t.Errorf("create --from-group --cpus 2: %v: %s; want a refusal naming --cpus", err, out)
	}
	out, err = exec.Command(goldvmBin, "create", "--addr", d.addr, "--from-group", "pool", "--tag", "job=8", "--json").Output()
	var w api.VM
	if err != nil || json.Unmarshal(out, &w) != nil {
		t.Fatalf("goldvm create --from-group pool: %v: %s", err, out)
	}
	if w.Status != api.StatusRunning || w.FromGroup == nil || !w.FromGroup.Warm || w.Tags["job"] != "8" || !slices.Contains(groupIDs(g), w.ID) {
		t.Errorf("goldvm create --from-group pool: %s, want a running warm VM of %v tagged job=8", fmtVM(&w), groupIDs(g))
	}

	// Deleting the group destroys its warm VMs, not the ones handed out.
	g = waitGroup(t, d, "pool", 5*time.Minute, nil, warmReady(2))
	if err := c.DeleteGroup(ctx, "pool", false); err != nil {
		t.Fatal(err)
	}
	for _, id := range groupIDs(g) {
		assertGone(t, d, id)
	}
	for _, id := range []string{v.ID, w.ID} {
		if _, err := c.GetVM(ctx, id); err != nil {
			t.Errorf("the VM %s handed out went with the group: %v", id, err)
		}
	}
}
