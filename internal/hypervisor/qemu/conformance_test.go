package qemu

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/goldvm/goldvm/internal/hypervisor"
	"github.com/goldvm/goldvm/internal/hypervisor/drivertest"
)

// TestE2EConformance runs the driver contract's suite with real QEMU and
// the test guest. The gold image is read-only, as the image store seals it;
// every driver instance shares the run directory, as a daemon and its
// restarted successor do.
func TestE2EConformance(t *testing.T) {
	guest := testGuest(t)
	gold := goldDir(t, guest)
	if err := os.Chmod(filepath.Join(gold, "guest.qcow2"), 0o444); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(gold, 0o555); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(gold, 0o755) })
	runDir := t.TempDir()
	drivertest.Run(t, drivertest.Env{
		New: func(t *testing.T) hypervisor.Driver {
			d, err := New(Config{UserNet: true, Sandbox: true, RunDir: runDir, Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(d.Close)
			return d
		},
		GoldDir:  gold,
		ImageKey: "sha256-" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
	})
}
