package vmware

import (
	"testing"

	"github.com/goldvm/goldvm/internal/hypervisor"
	"github.com/goldvm/goldvm/internal/hypervisor/drivertest"
)

// TestConformance runs the driver contract's suite against the stand-in
// vmrun; every driver instance shares the stand-in's state and the
// driver's directory, as a daemon and its restarted successor do.
func TestConformance(t *testing.T) {
	e := newEnv(t)
	g := makeGold(t, "debian 12 (ci)")
	drivertest.Run(t, drivertest.Env{
		New:      func(t *testing.T) hypervisor.Driver { return e.driver(t) },
		GoldDir:  g.root,
		ImageKey: g.key,
	})
}
