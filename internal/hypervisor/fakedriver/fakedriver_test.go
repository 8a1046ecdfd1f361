package fakedriver

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/goldvm/goldvm/internal/hypervisor"
	"github.com/goldvm/goldvm/internal/hypervisor/drivertest"
)

// TestConformance runs the driver contract's suite against the fake: it
// must behave as the real drivers do for the manager's tests to mean
// anything.
func TestConformance(t *testing.T) {
	gold := filepath.Join(t.TempDir(), "files")
	if err := os.MkdirAll(gold, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(gold, "disk.img"), []byte("gold disk"), 0o444); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(gold, 0o555); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(gold, 0o755) })
	host := NewHost()
	drivertest.Run(t, drivertest.Env{
		New:      func(*testing.T) hypervisor.Driver { return host.New() },
		GoldDir:  gold,
		ImageKey: "sha256-00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
	})
}
