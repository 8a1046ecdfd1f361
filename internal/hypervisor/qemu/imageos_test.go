package qemu

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/goldvm/goldvm/internal/osrelease"
)

// PrepareGold reads the OS from the gold disk's os-release, whatever the
// disk's format (a VMDK through its converted qcow2), through a confined
// qemu-nbd; a disk without an ext file system has none.
func TestPrepareGoldReadsOSRelease(t *testing.T) {
	needQemuImg(t)
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("e2fsprogs is not installed")
	}
	d, err := New(Config{UserNet: true})
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(t.TempDir(), "root")
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.MkdirAll(filepath.Join(root, "usr/lib"), 0o755)
	os.WriteFile(filepath.Join(root, "usr/lib/os-release"), []byte("PRETTY_NAME=\"Gold Linux 7\"\nID=gold\n"), 0o644)
	os.Symlink("../usr/lib/os-release", filepath.Join(root, "etc/os-release"))
	src := filepath.Join(t.TempDir(), "fs.raw")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", root, src, "16M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	for _, c := range []struct{ format, name string }{{"raw", "disk.raw"}, {"qcow2", "disk.qcow2"}, {"vmdk", "disk.vmdk"}} {
		dir := t.TempDir()
		qemuImg(t, "convert", "-f", "raw", "-O", c.format, src, filepath.Join(dir, c.name))
		g, err := d.PrepareGold(context.Background(), dir, t.TempDir())
		if err != nil {
			t.Fatalf("%s: %v", c.format, err)
		}
		if g.GuestOS != "Gold Linux 7" {
			t.Errorf("%s: GuestOS = %q", c.format, g.GuestOS)
		}
	}
	// A qcow2 whose backing file holds the OS: the backing file is not
	// opened (PrepareGold refuses such a disk; qemu-nbd is told too).
	top := filepath.Join(t.TempDir(), "top.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-b", src, "-F", "raw", top)
	if name, err := d.readImageOS(context.Background(), top, "qcow2"); name != "" || !errors.Is(err, osrelease.ErrNotFound) {
		t.Errorf("qcow2 over a backing file with an OS: %q, %v; want no OS", name, err)
	}
	blank := t.TempDir()
	qemuImg(t, "create", "-q", "-f", "qcow2", filepath.Join(blank, "disk.qcow2"), "8M")
	if g, err := d.PrepareGold(context.Background(), blank, t.TempDir()); err != nil || g.GuestOS != "" {
		t.Errorf("blank disk: %+v, %v", g, err)
	}
}
