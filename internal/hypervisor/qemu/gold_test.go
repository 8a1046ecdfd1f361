package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/goldvm/goldvm/internal/diskfmt/diskfmttest"
	"github.com/goldvm/goldvm/internal/hypervisor"
)

// needQemuImg fails under CI and skips elsewhere when qemu-img is missing.
func needQemuImg(tb testing.TB) {
	tb.Helper()
	if _, err := exec.LookPath("qemu-img"); err != nil {
		if os.Getenv("CI") == "true" {
			tb.Fatal("qemu-img is needed under CI")
		}
		tb.Skip("qemu-img not installed")
	}
}

// preparedGold runs PrepareGold on a gold directory, as the image store
// does before publishing it, and returns the disk a Spec carries.
func preparedGold(tb testing.TB, gold string) hypervisor.GoldDisk {
	tb.Helper()
	needQemuImg(tb)
	d, err := New(Config{UserNet: true})
	if err != nil {
		tb.Fatal(err)
	}
	g, err := d.PrepareGold(context.Background(), gold, tb.TempDir())
	if err != nil {
		tb.Fatalf("PrepareGold(%s): %v", gold, err)
	}
	return g
}

// qemuImg runs qemu-img in the directory of its last argument (relative
// names it writes into an image, e.g. a data file, land beside it).
func qemuImg(tb testing.TB, args ...string) {
	tb.Helper()
	cmd := exec.Command("qemu-img", args...)
	cmd.Dir = filepath.Dir(args[len(args)-1])
	if len(args) > 1 && !filepath.IsAbs(args[len(args)-1]) {
		cmd.Dir = filepath.Dir(args[len(args)-2])
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("qemu-img %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// Every hostile disk is refused with image-unsafe-disk, and neither goldvm
// nor any qemu-img it runs opens the file the disk aims at.
func TestPrepareGoldRefusesHostileDisks(t *testing.T) {
	needQemuImg(t)
	d, err := New(Config{UserNet: true})
	if err != nil {
		t.Fatal(err)
	}
	target, opened := diskfmttest.Target(t, t.TempDir())
	for _, c := range diskfmttest.Hostile(target) {
		t.Run(c.Name, func(t *testing.T) {
			files := t.TempDir()
			if err := c.WriteTo(files); err != nil {
				t.Fatal(err)
			}
			g, err := d.PrepareGold(context.Background(), files, t.TempDir())
			if codeOf(err) != codeUnsafeDisk {
				t.Fatalf("got %+v, %v; want %s", g, err, codeUnsafeDisk)
			}
			if n := opened(); n != 0 {
				t.Fatalf("the target was opened or read %d times", n)
			}
		})
	}
}

// What qemu-img itself reports is checked too, apart from goldvm's own
// reading of the headers: a real qcow2 overlay and one with an external
// data file, made by qemu-img, even pointing inside the image.
func TestInspectRefusesWhatQemuImgReports(t *testing.T) {
	needQemuImg(t)
	d, err := New(Config{UserNet: true})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	qemuImg(t, "create", "-q", "-f", "qcow2", filepath.Join(dir, "base.qcow2"), "16M")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", filepath.Join(dir, "top.qcow2"))
	qemuImg(t, "create", "-q", "-f", "qcow2", "-o", "data_file=data.raw", filepath.Join(dir, "dd.qcow2"), "16M")
	for _, name := range []string{"top.qcow2", "dd.qcow2"} {
		if _, err := d.inspect(context.Background(), dir, filepath.Join(dir, name), "qcow2"); codeOf(err) != codeUnsafeDisk {
			t.Errorf("%s: %v, want %s", name, err, codeUnsafeDisk)
		}
		// And the whole preparation refuses the image.
		if _, err := d.PrepareGold(context.Background(), dir, t.TempDir()); codeOf(err) != codeUnsafeDisk {
			t.Errorf("PrepareGold with %s: %v", name, err)
		}
	}
	if _, err := d.inspect(context.Background(), dir, filepath.Join(dir, "base.qcow2"), "qcow2"); err != nil {
		t.Errorf("a standalone qcow2: %v", err)
	}
	// A VMDK extent outside the image, as qemu-img reports it.
	out := []byte(`{"format":"vmdk","filename":"x.vmdk","format-specific":{"type":"vmdk","data":{"extents":[{"filename":"../../outside","format":"FLAT"}]}}}`)
	if err := checkImgInfo(dir, filepath.Join(dir, "x.vmdk"), out); codeOf(err) != codeUnsafeDisk {
		t.Errorf("extent outside: %v", err)
	}
}

// A VMDK (here split into 2 GB extents, as VMware writes them) is served as
// a qcow2 converted once, with the same contents; qcow2 and raw disks are
// served as they are, with their format decided from their content.
func TestPrepareGoldFormats(t *testing.T) {
	needQemuImg(t)
	d, err := New(Config{UserNet: true})
	if err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(t.TempDir(), "src.raw")
	data := bytes.Repeat([]byte("goldvm-"), 300000)
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	qemuImg(t, "resize", "-q", "-f", "raw", src, "8M")

	vmdk := t.TempDir()
	qemuImg(t, "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=twoGbMaxExtentSparse", src, filepath.Join(vmdk, "machine.vmdk"))
	os.WriteFile(filepath.Join(vmdk, "machine.vmx"), []byte(".encoding = \"UTF-8\"\nconfig.version = \"8\"\n"), 0o644)
	scratch := t.TempDir()
	g, err := d.PrepareGold(context.Background(), vmdk, scratch)
	if err != nil {
		t.Fatal(err)
	}
	if g.Format != "qcow2" || g.Source != "machine.vmdk" || filepath.Dir(g.Path) != scratch || g.VirtualSize != 8<<20 {
		t.Fatalf("vmdk prepared as %+v", g)
	}
	qemuImg(t, "compare", "-q", "-f", "raw", "-F", "qcow2", src, g.Path)

	qc := t.TempDir()
	qemuImg(t, "convert", "-f", "raw", "-O", "qcow2", src, filepath.Join(qc, "disk.img")) // a qcow2, whatever its name
	if g, err := d.PrepareGold(context.Background(), qc, t.TempDir()); err != nil || g.Format != "qcow2" || g.Path != filepath.Join(qc, "disk.img") {
		t.Errorf("qcow2: %+v, %v", g, err)
	}
	raw := t.TempDir()
	os.Link(src, filepath.Join(raw, "disk.raw"))
	if g, err := d.PrepareGold(context.Background(), raw, t.TempDir()); err != nil || g.Format != "raw" || g.VirtualSize != 8<<20 {
		t.Errorf("raw: %+v, %v", g, err)
	}
}

// The gold disk is opened as explicit -blockdev nodes: its driver given,
// nothing below it, and the overlay's backing set to it.
func TestDiskArgs(t *testing.T) {
	args := diskArgs("/g/a,b.qcow2", "qcow2", "/vm/disk.qcow2", "virtio-blk")
	var gold, disk map[string]any
	if len(args) != 6 || args[0] != "-blockdev" || json.Unmarshal([]byte(args[1]), &gold) != nil || json.Unmarshal([]byte(args[3]), &disk) != nil {
		t.Fatalf("disk args %q", args)
	}
	if b, ok := gold["backing"]; !ok || b != nil || gold["driver"] != "qcow2" || gold["read-only"] != true {
		t.Errorf("gold node %v", gold)
	}
	if f := gold["file"].(map[string]any); f["driver"] != "file" || f["filename"] != "/g/a,b.qcow2" {
		t.Errorf("gold file %v", f)
	}
	if disk["backing"] != "gold" || disk["driver"] != "qcow2" || disk["file"].(map[string]any)["filename"] != "/vm/disk.qcow2" {
		t.Errorf("overlay node %v", disk)
	}
	if args[5] != "virtio-blk-pci,drive=disk" {
		t.Errorf("device %q", args[5])
	}
	var raw map[string]any
	json.Unmarshal([]byte(diskArgs("/g/d.raw", "raw", "/vm/disk.qcow2", "virtio-blk")[1]), &raw)
	if _, ok := raw["backing"]; ok || raw["driver"] != "raw" {
		t.Errorf("raw gold node %v", raw)
	}
}

func TestSeedArgs(t *testing.T) {
	a := buildArgs(launchParams{ID: "x", Dir: "/vms/x", MemoryMiB: 128, Seed: "/vms/x/seed.iso"})
	joined := strings.Join(a, " ")
	for _, want := range []string{
		`-device virtio-scsi-pci,id=cdscsi`,
		`-blockdev {"driver":"raw","file":{"driver":"file","filename":"/vms/x/seed.iso","read-only":true},"node-name":"cd0","read-only":true}`,
		`-device scsi-cd,bus=cdscsi.0,drive=cd0`,
	} {
		if !strings.Contains(joined, want) {
			t.Errorf("args lack %s:\n%s", want, joined)
		}
	}
	if a := strings.Join(buildArgs(launchParams{ID: "x", Dir: "/vms/x", MemoryMiB: 128}), " "); strings.Contains(a, "seed") {
		t.Errorf("a VM without a seed has one: %s", a)
	}
}
