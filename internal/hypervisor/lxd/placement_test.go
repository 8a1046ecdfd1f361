package lxd

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/hypervisor"
)

// TestPlacementStandalone: what LXD 5.0 does with ?target= when it is not
// clustered, found on the host's standalone LXD: it refuses every target,
// its own server name's included, with 400 "Target only allowed when
// clustered". So the driver refuses placement there with code
// placement-not-supported, naming the field, before anything is made.
func TestPlacementStandalone(t *testing.T) {
	requireLXD(t)
	project := testProject(t)
	d := newTestDriver(t, project)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	si := d.server.Load()
	if si == nil || si.Environment.ServerClustered || si.Environment.ServerName == "" {
		t.Fatalf("host LXD: %+v, want a standalone server with a name", si)
	}
	self := si.Environment.ServerName
	for _, target := range []string{self, "@default", "no-such-member"} {
		_, err := d.c.raw(ctx, http.MethodPost, "/1.0/instances?target="+target,
			map[string]any{"name": "goldvm-target-probe", "source": map[string]string{"type": "none"}}, nil)
		if !isStatus(err, http.StatusBadRequest) || !strings.Contains(err.Error(), "Target only allowed when clustered") {
			t.Errorf("standalone LXD, ?target=%s: %v, want 400 Target only allowed when clustered", target, err)
		}
	}
	if _, ok, err := d.state(ctx, "goldvm-target-probe"); ok || err != nil {
		t.Errorf("a refused target left an instance (%v, %v)", ok, err)
	}
	for _, p := range []api.Placement{{Member: self}, {Group: "default"}} {
		err := d.CheckPlacement(p)
		wantCode(t, err, api.CodePlacementUnsupported)
		if !strings.Contains(err.Error(), "placement") || !strings.Contains(err.Error(), self) {
			t.Errorf("%v does not name the field and the server", err)
		}
	}
	if info, _ := api.LookupCode(api.CodePlacementUnsupported); info.Status != http.StatusBadRequest {
		t.Errorf("placement-not-supported is HTTP %d, want 400", info.Status)
	}
}

// TestPlacementCluster: on the one-member test cluster
// (scripts/lxd-cluster-init.sh, a real LXD), placement by member and by
// cluster group is LXD's ?target=, the member LXD chose is the VM's
// location (from Discover, with its address), and an unknown member
// fails the clone with LXD's message.
func TestPlacementCluster(t *testing.T) {
	url := requireLXDCluster(t, 1)
	gold, key := goldFromPackage(t, containerPackage(t))
	project := testProjectAt(t, url)
	d := newTestDriverAt(t, url, project)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if si := d.server.Load(); !si.Environment.ServerClustered || si.Environment.ServerName != "member1" {
		t.Fatalf("test cluster: %+v", si)
	}
	suffix := project[len(project)-8:]
	spec := func(id string, p *api.Placement) hypervisor.Spec {
		return hypervisor.Spec{ID: id + "-" + suffix, GoldDir: gold, ImageKey: key, CPUs: 1, MemoryMiB: 64, Network: api.NetworkNAT, Placement: p}
	}
	for _, p := range []api.Placement{{Member: "member1"}, {Group: "default"}} {
		if err := d.CheckPlacement(p); err != nil {
			t.Fatal(err)
		}
	}
	byMember, byGroup := spec("member", &api.Placement{Member: "member1"}), spec("group", &api.Placement{Group: "default"})
	for _, s := range []hypervisor.Spec{byMember, byGroup} {
		if err := d.Clone(ctx, s); err != nil {
			t.Fatal(err)
		}
		defer d.Destroy(context.Background(), s)
		in, err := d.get(ctx, namePrefix+s.ID)
		if err != nil || in.Location != "member1" {
			t.Fatalf("%s: location %q (%v), want member1", s.ID, in.Location, err)
		}
	}
	if err := d.Start(ctx, byMember); err != nil {
		t.Fatal(err)
	}
	dctx, dcancel := context.WithTimeout(ctx, time.Minute)
	defer dcancel()
	info, err := d.Discover(dctx, byMember)
	if err != nil {
		t.Fatal(err)
	}
	if info.Location != "member1" || !strings.HasPrefix(info.IPAddress, "10.187.43.") {
		t.Errorf("Discover: %+v, want location member1 and an address on goldvmbr1", info)
	}

	unknown := spec("unknown", &api.Placement{Member: "member9"})
	err = d.Clone(ctx, unknown)
	wantCode(t, err, api.CodeCloneFailed)
	if _, ok, _ := d.state(ctx, namePrefix+unknown.ID); ok {
		t.Error("a clone on an unknown member left an instance")
	}
	t.Logf("unknown member: %v", err)
}
