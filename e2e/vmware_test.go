package e2e

import (
	"context"
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
	if goldvmBin == "" {
		t.Fatalf("goldvm was not built: %v", setupErr)
	}
	tmp := t.TempDir()
	vmrun := filepath.Join(tmp, "vmrun")
	build := exec.Command("go", "build", "-o", vmrun, "./internal/hypervisor/vmware/testdata/fakevmrun")
	build.Dir = repoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build stand-in vmrun: %v\n%s", err, out)
	}
	state := filepath.Join(tmp, "vmrun-state")
	os.MkdirAll(state, 0o700)

	srv := newImageServer(t)
	pkg := filepath.Join(tmp, "pkg", "debian12")
	bundle := filepath.Join(pkg, "Debian 12.vmwarevm")
	os.MkdirAll(bundle, 0o755)
	os.WriteFile(filepath.Join(bundle, "Debian 12.vmx"), []byte(testVMX), 0o644)
	os.WriteFile(filepath.Join(bundle, "Debian 12.vmdk"), []byte(testVMDK), 0o644)
	run(t, filepath.Join(tmp, "pkg"), "tar", "-czf", filepath.Join(srv.dir, "debian12.tar.gz"), "debian12")
	img := api.Image{URL: srv.URL + "/debian12.tar.gz", Checksum: sha256File(t, filepath.Join(srv.dir, "debian12.tar.gz")), ChecksumType: "sha256"}

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
