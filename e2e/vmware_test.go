package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
)

// A gold VMware VM as a CI image pipeline would package it: a .vmwarevm
// bundle holding the .vmx and its disk, one level down in the archive.
const testVMX = `.encoding = "UTF-8"
config.version = "8"
virtualHW.version = "19"
displayName = "Debian 12 gold"
guestOS = "debian12-64"
numvcpus = "2"
memsize = "2048"
scsi0.present = "TRUE"
scsi0:0.present = "TRUE"
scsi0:0.fileName = "Debian 12.vmdk"
ethernet0.present = "TRUE"
ethernet0.connectionType = "bridged"
ethernet0.addressType = "generated"
ethernet0.generatedAddress = "00:0c:29:aa:bb:cc"
uuid.bios = "56 4d 11 22 33 44 55 66-77 88 99 aa bb cc dd ee"
`

const testVMDK = "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicSparse\"\n"

// TestVMwareBackendThroughTheDaemon runs the daemon with --backend vmware
// against the stand-in vmrun (internal/hypervisor/vmware/testdata/fakevmrun,
// which follows vmrun's command-line contract): create -> running with an IP
// and guest OS -> delete, through the real API and image store. It proves the
// wiring, not VMware itself (see internal/hypervisor/vmware/README.md).
func TestVMwareBackendThroughTheDaemon(t *testing.T) {
	tmp := t.TempDir()
	vmrun, state, _, img := vmwareSetup(t, tmp)

	cb := newCallbackServer(t)
	d := startDaemonEnv(t, filepath.Join(tmp, "data"),
		[]string{"VMRUN_PATH=" + vmrun, "FAKEVMRUN_STATE=" + state, "FAKEVMRUN_IP_DELAY=1s"},
		"--backend", "vmware")
	req := createReq(img, cb.URL)
	req.CPUs, req.Memory, req.NetworkType = 2, 1025, "hostonly"
	v := mustCreate(t, d, req)
	got := waitVM(t, d, v.ID, time.Minute)
	if got.Status != api.StatusRunning || got.IPAddress == "" || got.GuestOS != "debian12-64" || !strings.Contains(got.GuestOSName, "Debian") || got.Backend != "vmware" {
		t.Fatalf("got %s, want a running vmware VM with IP, the .vmx guestOS identifier in guest_os and a Debian guest_os_name", fmtVM(got))
	}
	if body := cb.waitCallback(t, v.ID, 30*time.Second); body.Status != api.StatusRunning {
		t.Errorf("callback %s", fmtVM(&body))
	}
	// The clone's .vmx carries the request.
	vmx, err := os.ReadFile(filepath.Join(d.dataDir, "vms", v.ID, v.ID+".vmx"))
	if err != nil {
		matches, _ := filepath.Glob(filepath.Join(d.dataDir, "vms", v.ID, "*.vmx"))
		t.Fatalf("clone .vmx: %v (found %v)", err, matches)
	}
	for _, want := range []string{`numvcpus = "2"`, `memsize = "1028"`, `ethernet0.connectionType = "hostonly"`} {
		if !strings.Contains(string(vmx), want) {
			t.Errorf("clone .vmx lacks %s:\n%s", want, vmx)
		}
	}
	calls, _ := os.ReadFile(filepath.Join(state, "calls.log"))
	if !strings.Contains(string(calls), "clone\t") || !strings.Contains(string(calls), "linked") {
		t.Errorf("vmrun was not asked for a linked clone:\n%s", calls)
	}
	if err := d.client.DeleteVM(context.Background(), v.ID); err != nil {
		t.Fatalf("delete: %v", err)
	}
	assertGone(t, d, v.ID)
	if running, _ := os.ReadDir(filepath.Join(state, "running")); len(running) != 0 {
		t.Errorf("stand-in vmrun still has %d running VMs", len(running))
	}
}

// vmwareSetup builds the stand-in vmrun into tmp, makes its state
// directory, and serves a packaged gold VMware VM; it returns vmrun's
// path, its state directory, the image server and the image.
func vmwareSetup(t *testing.T, tmp string) (vmrun, state string, srv *imageServer, img api.Image) {
	t.Helper()
	if goldvmBin == "" {
		t.Fatalf("goldvm was not built: %v", setupErr)
	}
	vmrun = filepath.Join(tmp, "vmrun")
	build := exec.Command("go", "build", "-o", vmrun, "./internal/hypervisor/vmware/testdata/fakevmrun")
	build.Dir = repoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build stand-in vmrun: %v\n%s", err, out)
	}
	state = filepath.Join(tmp, "vmrun-state")
	os.MkdirAll(state, 0o700)

	srv = newImageServer(t)
	pkg := filepath.Join(tmp, "pkg", "debian12")
	bundle := filepath.Join(pkg, "Debian 12.vmwarevm")
	os.MkdirAll(bundle, 0o755)
	os.WriteFile(filepath.Join(bundle, "Debian 12.vmx"), []byte(testVMX), 0o644)
	os.WriteFile(filepath.Join(bundle, "Debian 12.vmdk"), []byte(testVMDK), 0o644)
	run(t, filepath.Join(tmp, "pkg"), "tar", "-czf", filepath.Join(srv.dir, "debian12.tar.gz"), "debian12")
	img = api.Image{URL: srv.URL + "/debian12.tar.gz", Checksum: sha256File(t, filepath.Join(srv.dir, "debian12.tar.gz")), ChecksumType: "sha256"}

	return vmrun, state, srv, img
}

// treeListing describes every entry under root: path, mode and size.
func treeListing(t *testing.T, root string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		fmt.Fprintf(&b, "%s %v %d\n", rel, fi.Mode(), fi.Size())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// TestVMwareRestartKeepsGold restarts a vmware daemon with two VMs of one
// gold image: the gold tree is exactly as published (VMware's snapshot
// state is in the driver's own directory), the image is neither removed
// nor fetched again, both VMs are still running, a third VM is cloned from
// the same image, and all of it deletes cleanly afterwards; the driver's
// per-image directory goes with the image.
func TestVMwareRestartKeepsGold(t *testing.T) {
	tmp := t.TempDir()
	vmrun, state, srv, img := vmwareSetup(t, tmp)
	data := filepath.Join(tmp, "data")
	d := startDaemonEnv(t, data, []string{"VMRUN_PATH=" + vmrun, "FAKEVMRUN_STATE=" + state}, "--backend", "vmware")
	ctx := context.Background()
	var ids []string
	for range 2 {
		v := mustCreate(t, d, createReq(img, ""))
		if got := waitVM(t, d, v.ID, time.Minute); got.Status != api.StatusRunning {
			t.Fatalf("got %s, want running", fmtVM(got))
		}
		ids = append(ids, v.ID)
	}
	key := "sha256-" + img.Checksum
	goldDir := filepath.Join(data, "images", key, "files")
	before := treeListing(t, goldDir)
	if _, err := os.Stat(filepath.Join(data, "vmware", key, "base.vmsd")); err != nil {
		t.Errorf("no snapshot state in the driver's directory: %v", err)
	}

	d.stop()
	d.start("--backend", "vmware")
	if log, _ := os.ReadFile(d.logPath); strings.Contains(string(log), "damaged") {
		t.Errorf("the restarted daemon found the image damaged:\n%s", lastLines(string(log), 30))
	}
	if after := treeListing(t, goldDir); after != before {
		t.Errorf("the gold tree changed across the restart:\nbefore:\n%safter:\n%s", before, after)
	}
	info, err := d.client.GetImage(ctx, key)
	if err != nil || info.State != "ready" || info.VMs != 2 {
		t.Fatalf("image after restart: %+v, %v; want ready with 2 VMs", info, err)
	}
	for _, id := range ids {
		if v, err := d.client.GetVM(ctx, id); err != nil || v.Status != api.StatusRunning {
			t.Fatalf("VM %s after restart: %v, %v", id, v, err)
		}
	}
	fetches := srv.count("/debian12.tar.gz")
	v := mustCreate(t, d, createReq(img, ""))
	if got := waitVM(t, d, v.ID, time.Minute); got.Status != api.StatusRunning {
		t.Fatalf("third VM after restart: %s", fmtVM(got))
	}
	ids = append(ids, v.ID)
	if n := srv.count("/debian12.tar.gz"); n != fetches {
		t.Errorf("the image was fetched again after the restart (%d requests, were %d)", n, fetches)
	}

	for _, id := range ids {
		if err := d.client.DeleteVM(ctx, id); err != nil {
			t.Fatalf("delete %s: %v", id, err)
		}
		assertGone(t, d, id)
	}
	if running, _ := os.ReadDir(filepath.Join(state, "running")); len(running) != 0 {
		t.Errorf("stand-in vmrun still has %d running VMs", len(running))
	}
	if left, _ := os.ReadDir(filepath.Join(data, "vms")); len(left) != 0 {
		t.Errorf("VM directories left: %v", left)
	}
	if after := treeListing(t, goldDir); after != before {
		t.Errorf("the gold tree changed:\nbefore:\n%safter:\n%s", before, after)
	}
	if err := d.client.DeleteImage(ctx, key); err != nil {
		t.Fatalf("delete image: %v", err)
	}
	d.stop()
	d.start("--backend", "vmware")
	if _, err := os.Stat(filepath.Join(data, "vmware", key)); !os.IsNotExist(err) {
		t.Errorf("the driver's directory of the deleted image is still there: %v", err)
	}
}

// TestVMwareLifecycleThroughTheDaemon: lifecycle actions on the vmware
// backend through the API and the stand-in vmrun: suspend (vmrun suspend;
// the VM stays suspended across a daemon restart, as its machine has no
// process), resume (vmrun start), restart (vmrun reset), stop and start,
// and 409 where the status does not allow the action.
func TestVMwareLifecycleThroughTheDaemon(t *testing.T) {
	tmp := t.TempDir()
	vmrun, state, _, img := vmwareSetup(t, tmp)
	d := startDaemonEnv(t, filepath.Join(tmp, "data"), []string{"VMRUN_PATH=" + vmrun, "FAKEVMRUN_STATE=" + state}, "--backend", "vmware")
	ctx := context.Background()
	c := d.client
	v := waitVM(t, d, mustCreate(t, d, createReq(img, "")).ID, time.Minute)
	if v.Status != api.StatusRunning {
		t.Fatalf("got %s, want running", fmtVM(v))
	}
	act := func(action string, want api.Status) {
		t.Helper()
		got, err := c.VMAction(ctx, v.ID, action)
		if err != nil || got.Status != want {
			t.Fatalf("%s: %+v, %v; want %s", action, got, err, want)
		}
		if want == api.StatusRunning && got.IPAddress == "" {
			t.Errorf("%s: no address: %s", action, fmtVM(got))
		}
	}
	act("suspend", api.StatusSuspended)
	if _, err := c.VMAction(ctx, v.ID, "suspend"); !isAPIError(err, 409, api.CodeVMInvalidState) {
		t.Errorf("suspend of a suspended VM: %v, want 409", err)
	}
	d.stop()
	d.start("--backend", "vmware")
	if got, err := c.GetVM(ctx, v.ID); err != nil || got.Status != api.StatusSuspended {
		t.Fatalf("after a daemon restart: %+v, %v; want still suspended", got, err)
	}
	act("resume", api.StatusRunning)
	act("restart", api.StatusRunning)
	act("stop", api.StatusStopped)
	act("start", api.StatusRunning)
	calls, _ := os.ReadFile(filepath.Join(state, "calls.log"))
	for _, want := range []string{"\tsuspend\t", "\treset\t", "\tstop\t"} {
		if !strings.Contains(string(calls), want) {
			t.Errorf("vmrun was not asked to %s:\n%s", strings.TrimSpace(want), calls)
		}
	}
	if err := c.DeleteVM(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	assertGone(t, d, v.ID)
}
