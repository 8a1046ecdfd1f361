package lxd_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/group"
	"github.com/goldvm/goldvm/internal/hypervisor"
	"github.com/goldvm/goldvm/internal/hypervisor/drivertest"
	"github.com/goldvm/goldvm/internal/hypervisor/lxd"
	"github.com/goldvm/goldvm/internal/image"
	"github.com/goldvm/goldvm/internal/records"
	"github.com/goldvm/goldvm/internal/vm"
)

// fakeCluster answers the part of LXD's REST API the driver uses, for a
// cluster of several members whose status the test sets. It stands in
// for LXD only here: a member going offline needs a second machine (a
// real LXD cluster member cannot be stopped on this one host without
// stopping the test's own LXD), and what matters is LXD's answers, which
// it gives as LXD 5.0 does: an instance on an offline member is listed
// with its location and status "Error", and asking for it or changing it
// fails.
type fakeCluster struct {
	mu        sync.Mutex
	members   []string          // in order
	status    map[string]string // member → Online, Offline
	instances map[string]*fakeInstance
	next      int // round-robin placement
	ips       int
}

type fakeInstance struct {
	Name     string            `json:"name"`
	Status   string            `json:"status"`
	Location string            `json:"location"`
	Config   map[string]string `json:"config"`
	ip       string
}

func newFakeCluster(t *testing.T, members ...string) (*fakeCluster, string) {
	f := &fakeCluster{members: members, status: map[string]string{}, instances: map[string]*fakeInstance{}}
	for _, m := range members {
		f.status[m] = "Online"
	}
	sock := filepath.Join(t.TempDir(), "lxd.socket")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(f.serve))
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return f, "unix://" + sock
}

func (f *fakeCluster) setStatus(m, s string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.status[m] = s
}

// names lists the instances, sorted.
func (f *fakeCluster) names() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ns []string
	for n := range f.instances {
		ns = append(ns, n)
	}
	slices.Sort(ns)
	return ns
}

func sync200(w http.ResponseWriter, meta any) {
	json.NewEncoder(w).Encode(map[string]any{"type": "sync", "status": "Success", "status_code": 200, "metadata": meta})
}

func lxdError(w http.ResponseWriter, code int, msg string) {
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]any{"type": "error", "error_code": code, "error": msg})
}

func (f *fakeCluster) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := r.URL.Path
	route := r.Method + " " + p
	switch {
	case route == "GET /1.0":
		sync200(w, map[string]any{"environment": map[string]any{"server_name": f.members[0], "server_clustered": true}})
	case r.Method == http.MethodGet && (strings.HasPrefix(p, "/1.0/projects/") || strings.HasPrefix(p, "/1.0/images/aliases/")):
		sync200(w, map[string]any{})
	case route == "GET /1.0/cluster/members":
		var ms []map[string]string
		for _, m := range f.members {
			msg := "Fully operational"
			if f.status[m] != "Online" {
				msg = "No heartbeat for 30s"
			}
			ms = append(ms, map[string]string{"server_name": m, "status": f.status[m], "message": msg})
		}
		sync200(w, ms)
	case route == "GET /1.0/instances":
		ins := []fakeInstance{}
		for _, in := range f.instances {
			c := *in
			if f.status[in.Location] != "Online" {
				// LXD 5.0: name, location and status only.
				c.Status, c.Config = "Error", nil
			}
			ins = append(ins, c)
		}
		sync200(w, ins)
	case route == "POST /1.0/instances":
		var body struct {
			Name   string            `json:"name"`
			Config map[string]string `json:"config"`
		}
		json.NewDecoder(r.Body).Decode(&body)
		if f.instances[body.Name] != nil {
			lxdError(w, http.StatusConflict, "Instance already exists")
			return
		}
		loc := r.URL.Query().Get("target")
		for i := 0; loc == "" && i < len(f.members); i++ {
			m := f.members[(f.next+i)%len(f.members)]
			if f.status[m] == "Online" {
				loc, f.next = m, f.next+i+1
			}
		}
		f.ips++
		body.Config["image.description"] = "fake"
		f.instances[body.Name] = &fakeInstance{Name: body.Name, Status: "Stopped", Location: loc, Config: body.Config, ip: fmt.Sprintf("10.0.0.%d", f.ips)}
		sync200(w, nil)
	case strings.HasPrefix(p, "/1.0/instances/"):
		rest := strings.TrimPrefix(p, "/1.0/instances/")
		name, sub, _ := strings.Cut(rest, "/")
		in := f.instances[name]
		if in == nil {
			lxdError(w, http.StatusNotFound, "Instance not found")
			return
		}
		if f.status[in.Location] != "Online" {
			lxdError(w, http.StatusInternalServerError, "Failed to connect to cluster member "+in.Location)
			return
		}
		switch r.Method + " " + sub {
		case "GET ":
			sync200(w, in)
		case "GET state":
			sync200(w, map[string]any{"status": in.Status, "network": map[string]any{"eth0": map[string]any{
				"type": "broadcast", "addresses": []map[string]string{{"family": "inet", "address": in.ip, "scope": "global"}}}}})
		case "PUT state":
			var body struct{ Action string }
			json.NewDecoder(r.Body).Decode(&body)
			in.Status = map[string]string{"start": "Running", "stop": "Stopped", "freeze": "Frozen", "unfreeze": "Running"}[body.Action]
			sync200(w, nil)
		case "DELETE ":
			delete(f.instances, name)
			sync200(w, nil)
		case "GET console":
			w.Write(nil)
		default:
			lxdError(w, http.StatusNotImplemented, "not in the fake: "+route)
		}
	default:
		lxdError(w, http.StatusNotImplemented, "not in the fake: "+route)
	}
}

// TestMemberOffline: the driver's view of an instance whose cluster
// member goes offline: Watch ends with the member's status as the reason,
// State is stopped, Destroy fails (LXD cannot reach the member) until the
// member is back.
func TestMemberOffline(t *testing.T) {
	f, url := newFakeCluster(t, "m1", "m2")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d, err := lxd.New(ctx, lxd.Config{URL: url, InstanceType: lxd.TypeContainer, PollInterval: 10 * time.Millisecond, Logger: drivertest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	spec := hypervisor.Spec{ID: "vm-01", ImageKey: "sha256-00", CPUs: 1, MemoryMiB: 64, Network: api.NetworkNAT, Placement: &api.Placement{Member: "m2"}}
	if err := d.Clone(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	info, err := d.Discover(ctx, spec)
	if err != nil || info.Location != "m2" {
		t.Fatalf("Discover: %+v, %v; want location m2", info, err)
	}
	watched := make(chan string, 1)
	go func() {
		reason, err := d.Watch(ctx, spec)
		if err != nil {
			reason = "error: " + err.Error()
		}
		watched <- reason
	}()
	f.setStatus("m2", "Offline")
	if reason := <-watched; reason != "cluster member m2 is offline: No heartbeat for 30s" {
		t.Errorf("Watch: %q", reason)
	}
	if st, err := d.State(ctx, spec); st != hypervisor.StateStopped || err != nil {
		t.Errorf("State: %s, %v; want stopped", st, err)
	}
	if err := d.Destroy(ctx, spec); err == nil {
		t.Error("Destroy with the member offline succeeded")
	}
	// A restarted daemon's Reap cannot tell whose it is: it is left.
	if err := d.Reap(ctx, func(string) bool { return false }); err != nil || len(f.names()) != 1 {
		t.Errorf("Reap with the member offline: %v, instances %v", err, f.names())
	}
	f.setStatus("m2", "Online")
	if st, err := d.State(ctx, spec); st != hypervisor.StateRunning || err != nil {
		t.Errorf("State with the member back: %s, %v; want running", st, err)
	}
	if err := d.Destroy(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if ns := f.names(); len(ns) != 0 {
		t.Errorf("instances left: %v", ns)
	}
}

// goldTarGz is an image package of a bare root file system.
func goldTarGz(t *testing.T) []byte {
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	tw := tar.NewWriter(zw)
	body := []byte("#!/bin/sh\n")
	tw.WriteHeader(&tar.Header{Name: "sbin/init", Mode: 0o755, Size: int64(len(body)), Typeflag: tar.TypeReg})
	tw.Write(body)
	tw.Close()
	zw.Close()
	return b.Bytes()
}

// TestGroupHealsMemberOffline: a group of two VMs on a three-member
// cluster (placed round-robin by the fake's scheduler). A member goes
// offline: its VM is marked stopped with the member's status as the
// reason, the group replaces it on an online member, and its delete fails
// while the member is away. When the member returns, the group's delete
// goes through: goldvm and LXD each have exactly the group's two VMs, no
// duplicate.
func TestGroupHealsMemberOffline(t *testing.T) {
	f, url := newFakeCluster(t, "m1", "m2", "m3")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	log := slog.New(slog.DiscardHandler)
	d, err := lxd.New(ctx, lxd.Config{URL: url, InstanceType: lxd.TypeContainer, PollInterval: 10 * time.Millisecond, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	db, err := records.Open(filepath.Join(dir, "goldvm.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	images, err := image.NewStore(filepath.Join(dir, "images"), image.Options{Logger: log, InUse: vm.ImageUsers(db)})
	if err != nil {
		t.Fatal(err)
	}
	defer images.Close()
	pkg := goldTarGz(t)
	imgSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(pkg) }))
	defer imgSrv.Close()
	sum := sha256.Sum256(pkg)
	m := vm.New(vm.Config{VMDir: filepath.Join(dir, "vms"), Store: db, Images: images, Driver: d, Logger: log, DestroyTimeout: 5 * time.Second})
	defer m.Close()
	g := group.New(group.Config{Store: db, VMs: m, Interval: 20 * time.Millisecond, RetryBase: 20 * time.Millisecond, Logger: log})
	gctx, stop := context.WithCancel(ctx)
	defer stop()
	go g.Run(gctx)

	tmpl := api.CreateVMRequest{CPUs: 1, Memory: 64, Image: api.Image{URL: imgSrv.URL + "/gold.tar.gz", Checksum: hex.EncodeToString(sum[:]), ChecksumType: "sha256"}}
	if _, err := g.Put(ctx, "farm", api.GroupSpec{Size: 2, Template: tmpl}); err != nil {
		t.Fatal(err)
	}
	vms := func() []api.VM {
		all, err := m.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return all
	}
	waitUntil := func(what string, ok func([]api.VM) bool) []api.VM {
		t.Helper()
		for ctx.Err() == nil {
			if all := vms(); ok(all) {
				return all
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("timed out waiting for %s: %+v", what, vms())
		return nil
	}
	running := func(all []api.VM) (n int) {
		for _, v := range all {
			if v.Status == api.StatusRunning {
				n++
			}
		}
		return n
	}
	all := waitUntil("two running VMs", func(all []api.VM) bool { return len(all) == 2 && running(all) == 2 })
	var lost api.VM
	for _, v := range all {
		if v.Location == "" {
			t.Errorf("VM %s has no location", v.ID)
		}
		if v.Location == "m2" {
			lost = v
		}
	}
	if lost.ID == "" {
		t.Fatalf("no VM on m2: %+v", all)
	}

	f.setStatus("m2", "Offline")
	all = waitUntil("the VM on m2 stopped and replaced", func(all []api.VM) bool {
		stopped := false
		for _, v := range all {
			stopped = stopped || (v.ID == lost.ID && v.Status == api.StatusStopped)
		}
		return stopped && running(all) == 2
	})
	for _, v := range all {
		if v.ID == lost.ID && v.StopReason != "cluster member m2 is offline: No heartbeat for 30s" {
			t.Errorf("stop_reason %q", v.StopReason)
		}
		if v.Status == api.StatusRunning && v.Location == "m2" {
			t.Errorf("replacement %s placed on the offline member", v.ID)
		}
	}
	if n := len(f.names()); n != 3 {
		t.Errorf("LXD has %d instances while m2 is away, want 3 (the lost one cannot be deleted yet)", n)
	}

	f.setStatus("m2", "Online")
	all = waitUntil("the lost VM deleted", func(all []api.VM) bool { return len(all) == 2 && running(all) == 2 })
	var want []string
	for _, v := range all {
		if v.ID == lost.ID {
			t.Errorf("the lost VM %s is still a group VM", v.ID)
		}
		want = append(want, "goldvm-"+v.ID)
	}
	slices.Sort(want)
	// The group's delete and LXD's state settle: exactly the two VMs.
	for ctx.Err() == nil && !slices.Equal(f.names(), want) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := f.names(); !slices.Equal(got, want) {
		t.Errorf("LXD instances %v, want the group's %v", got, want)
	}
	if grp, err := g.Get(ctx, "farm"); err != nil || len(grp.VMs) != 2 {
		t.Errorf("group: %+v, %v", grp, err)
	}
}
