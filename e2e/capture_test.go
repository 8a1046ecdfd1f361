package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
)

// The test guest runs from its initramfs and never mounts its disk: the
// change a capture must keep is a marker written into the disk's last
// sectors (free space of its FAT file system), read back the same way.
const markerScript = `s=$(cat /sys/block/vda/size); dd if=/dev/vda bs=512 skip=$((s-8)) count=1 2>/dev/null | head -c 64 | tr -d '\000'`

func writeMarker(t *testing.T, d *daemon, id, marker string) {
	t.Helper()
	guestShell(t, d, id, fmt.Sprintf(`s=$(cat /sys/block/vda/size); printf '%%s' '%s' | dd of=/dev/vda bs=512 seek=$((s-8)) conv=notrunc,fsync 2>/dev/null && sync`, marker))
	if got := guestShell(t, d, id, markerScript); got != marker {
		t.Fatalf("marker written reads back as %q", got)
	}
}

// TestCaptureAndPackage changes a VM's disk (through its guest agent),
// captures it, and boots a VM from the captured image that sees the
// change; the image's package, fetched by URL and its sha256 by a second
// daemon, has the same key and checksum there and boots too. Bad input:
// capture of an unknown VM (404), of a running VM without stop (409
// vm-not-stopped), a malformed empty_disk (400), a key not on the host.
func TestCaptureAndPackage(t *testing.T) {
	requireEnv(t)
	d, _, img := qcow2Daemon(t)
	ctx := context.Background()
	c := d.client

	v := mustCreate(t, d, createReq(img, ""))
	v = waitStatus(t, d, v.ID, api.StatusRunning, 5*time.Minute)
	marker := "goldvm-capture-" + v.ID
	writeMarker(t, d, v.ID, marker)

	if _, err := c.Capture(ctx, "vm-no-such-vm", false); !isAPIError(err, 404, api.CodeVMNotFound) {
		t.Errorf("capture of an unknown VM: %v", err)
	}
	if _, err := c.Capture(ctx, v.ID, false); !isAPIError(err, 409, api.CodeVMNotStopped) {
		t.Errorf("capture of a running VM without stop: %v", err)
	}
	// goldvm capture --stop, as a user would.
	out, err := exec.Command(goldvmBin, "capture", "--addr", d.addr, "--json", "--stop", v.ID).CombinedOutput()
	if err != nil {
		t.Fatalf("goldvm capture: %v\n%s", err, out)
	}
	var info *api.ImageInfo
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatalf("goldvm capture --json: %v\n%s", err, out)
	}
	t.Logf("captured %+v", info)
	if info.Parent == nil || info.Parent.VM != v.ID || info.Parent.Key == "" || info.Parent.Key == info.Key ||
		"sha256-"+info.PackageSHA256 != info.Key || info.State != "ready" {
		t.Fatalf("captured image %+v", info)
	}
	if got, err := c.GetVM(ctx, v.ID); err != nil || got.Status != api.StatusStopped {
		t.Fatalf("captured VM after capture: %+v %v", got, err)
	}
	images, err := c.ListImages(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, i := range images {
		if i.Key == info.Key && i.Parent != nil && i.Parent.VM == v.ID {
			found = true
		}
	}
	if !found {
		t.Fatalf("GET /images does not list the capture with its parent: %+v", images)
	}

	// goldvm images package: the file is the package, its sha256 the key's.
	pkg := filepath.Join(t.TempDir(), "captured.tar.zst")
	if out, err := exec.Command(goldvmBin, "images", "package", "--addr", d.addr, info.Key, "-o", pkg).CombinedOutput(); err != nil ||
		strings.TrimSpace(string(out)) != "sha256 "+info.PackageSHA256 {
		t.Fatalf("goldvm images package: %v\n%s", err, out)
	}
	if sum := sha256File(t, pkg); sum != info.PackageSHA256 {
		t.Fatalf("package file has sha256 %s, want %s", sum, info.PackageSHA256)
	}

	// Bad input to creates naming images.
	bad := createReq(api.Image{EmptyDisk: "20 gigs"}, "")
	if _, err := c.CreateVM(ctx, bad); !isAPIError(err, 400, api.CodeInvalidRequest) {
		t.Errorf("create with a malformed empty_disk: %v", err)
	}
	gone := mustCreate(t, d, createReq(api.Image{Key: "sha256-" + strings.Repeat("0", 64)}, ""))
	if g := waitVM(t, d, gone.ID, 2*time.Minute); g.Status != api.StatusError || g.Error == nil || g.Error.Code != api.CodeImageNotFound {
		t.Errorf("create from a key not on the host: %s", fmtVM(g))
	}

	// A VM from the capture, by key, sees the change.
	w := mustCreate(t, d, createReq(api.Image{Key: info.Key}, ""))
	w = waitStatus(t, d, w.ID, api.StatusRunning, 5*time.Minute)
	if got := guestShell(t, d, w.ID, markerScript); got != marker {
		t.Fatalf("VM from the capture reads %q, want %q", got, marker)
	}

	// The package, fetched by URL and checksum on a second daemon.
	d2 := startDaemon(t, filepath.Join(t.TempDir(), "data2"))
	pkgURL := "http://" + d.addr + "/images/" + info.Key + "/package"
	x := mustCreate(t, d2, createReq(api.Image{URL: pkgURL, Checksum: info.PackageSHA256, ChecksumType: "sha256"}, ""))
	x = waitStatus(t, d2, x.ID, api.StatusRunning, 5*time.Minute)
	if got := guestShell(t, d2, x.ID, markerScript); got != marker {
		t.Fatalf("VM from the re-imported package reads %q, want %q", got, marker)
	}
	sum2, err := d2.client.ImagePackage(ctx, info.Key, io.Discard)
	if err != nil || sum2 != info.PackageSHA256 {
		t.Fatalf("second daemon's package of %s: sha256 %s %v, want %s", info.Key, sum2, err, info.PackageSHA256)
	}
	if i2, err := d2.client.GetImage(ctx, info.Key); err != nil || i2.PackageSHA256 != info.PackageSHA256 {
		t.Fatalf("second daemon's image: %+v %v", i2, err)
	}
}

// guestBootFiles copies the test guest's kernel and initrd off its FAT
// disk (guest.raw) into srv, and returns a func naming a file of srv by URL
// and checksum. It skips the test without guest.raw.
func guestBootFiles(t *testing.T, srv *imageServer) func(name string) api.Image {
	t.Helper()
	raw := filepath.Join(filepath.Dir(guestDisk), "guest.raw")
	if _, err := os.Stat(raw); err != nil {
		t.Skipf("the test guest's FAT disk (guest.raw) is not beside %s: %v", guestDisk, err)
	}
	for _, f := range []string{"vmlinuz", "initrd.gz"} {
		cmd := exec.Command("mcopy", "-i", raw, "::/"+f, filepath.Join(srv.dir, f))
		cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("mcopy %s: %v\n%s", f, err, out)
		}
	}
	return func(name string) api.Image {
		b, err := os.ReadFile(filepath.Join(srv.dir, name))
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(b)
		return api.Image{URL: srv.URL + "/" + name, Checksum: hex.EncodeToString(sum[:]), ChecksumType: "sha256"}
	}
}

// TestEmptyDisk: a VM on an empty 64 MiB disk (no gold image), booted from
// the test guest's kernel and initrd, sees a blank disk of that size;
// written and captured, it gives an image without a parent image that a
// new VM boots with the data there. A size that is not one, and an empty
// disk with nothing to boot from, are refused.
func TestEmptyDisk(t *testing.T) {
	requireEnv(t)
	srv := newImageServer(t)
	file := guestBootFiles(t, srv)
	d := startDaemon(t, filepath.Join(t.TempDir(), "data"))
	ctx := context.Background()
	req := createReq(api.Image{EmptyDisk: "64mib"}, "")
	initrd := file("initrd.gz")
	req.Boot = &api.Boot{Kernel: file("vmlinuz"), Initrd: &initrd, Append: "console=ttyS0,115200 panic=-1 8250.nr_uarts=1"}

	for _, bad := range []api.Image{{EmptyDisk: "lots"}, {EmptyDisk: "1kib"}, {EmptyDisk: "1gb"}, {EmptyDisk: "1gib", Key: "sha256-" + strings.Repeat("0", 64)}} {
		b := req
		b.Image = bad
		if _, err := d.client.CreateVM(ctx, b); !isAPIError(err, 400, api.CodeInvalidRequest) || !strings.Contains(err.Error(), "empty_disk") {
			t.Errorf("image %+v: %v", bad, err)
		}
	}
	nothing := req
	nothing.Boot = nil
	if _, err := d.client.CreateVM(ctx, nothing); !isAPIError(err, 400, api.CodeInvalidRequest) || !strings.Contains(err.Error(), "cdroms") {
		t.Errorf("empty disk without boot media: %v", err)
	}

	v := mustCreate(t, d, req)
	v = waitStatus(t, d, v.ID, api.StatusRunning, 5*time.Minute)
	if got := strings.TrimSpace(guestShell(t, d, v.ID, `cat /sys/block/vda/size; dd if=/dev/vda bs=1M count=1 2>/dev/null | tr -d '\000' | wc -c`)); got != "131072\n0" {
		t.Fatalf("the empty disk (sectors, non-zero bytes of its first MiB): %q", got)
	}
	marker := "goldvm-empty-" + v.ID
	writeMarker(t, d, v.ID, marker)
	info, err := d.client.Capture(ctx, v.ID, true)
	if err != nil {
		t.Fatalf("capture: %v", err)
	}
	if info.Parent == nil || info.Parent.Key != "" || info.Parent.VM != v.ID {
		t.Errorf("capture of an empty-disk VM: parent %+v", info.Parent)
	}
	req.Image = api.Image{Key: info.Key}
	w := mustCreate(t, d, req)
	w = waitStatus(t, d, w.ID, api.StatusRunning, 5*time.Minute)
	if got := guestShell(t, d, w.ID, markerScript); got != marker {
		t.Fatalf("VM from the captured empty disk reads %q, want %q", got, marker)
	}
}
