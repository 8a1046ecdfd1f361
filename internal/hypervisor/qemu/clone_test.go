package qemu

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/hypervisor"
)

// sparseGold makes a gold directory with a sparse qcow2 of the given
// virtual size (qemu-img create allocates only metadata).
func sparseGold(tb testing.TB, size string) string {
	tb.Helper()
	if _, err := exec.LookPath("qemu-img"); err != nil {
		if os.Getenv("CI") == "true" {
			tb.Fatal("qemu-img is needed under CI")
		}
		tb.Skip("qemu-img not installed")
	}
	dir := filepath.Join(tb.TempDir(), "gold")
	os.MkdirAll(dir, 0o755)
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", filepath.Join(dir, "big.qcow2"), size).CombinedOutput(); err != nil {
		tb.Fatalf("%v: %s", err, out)
	}
	return dir
}

func TestCloneIsLinked(t *testing.T) {
	gold := sparseGold(t, "100G")
	d, err := New(Config{UserNet: true})
	if err != nil {
		unavailable(t, "qemu driver: %v", err)
	}
	spec := hypervisor.Spec{ID: "clone", Dir: t.TempDir(), GoldDir: gold, GoldDisk: preparedGold(t, gold), CPUs: 1, MemoryMiB: 128, Network: api.NetworkNAT}
	if err := d.Clone(context.Background(), spec); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(spec.Dir, fileDisk))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() > 1<<20 || fi.Mode().Perm() != 0o600 {
		t.Errorf("overlay of a 100 GiB gold: %d bytes, mode %v", fi.Size(), fi.Mode().Perm())
	}
	ii, err := d.qemuImgInfo(context.Background(), filepath.Join(spec.Dir, fileDisk), "qcow2", true)
	if err != nil || ii.VirtualSize != 100<<30 || ii.BackingFormat != "qcow2" {
		t.Errorf("overlay info %+v %v", ii, err)
	}
	// Clone again (e.g. a retried creation) replaces the overlay.
	if err := d.Clone(context.Background(), spec); err != nil {
		t.Fatal(err)
	}
	// bridged without a configured bridge is refused before anything is made.
	spec.Network = api.NetworkBridged
	if err := d.Clone(context.Background(), spec); codeOf(err) != "bridged-not-configured" {
		t.Errorf("bridged: %v", err)
	}
}
