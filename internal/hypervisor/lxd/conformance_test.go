package lxd

import (
	"testing"

	"github.com/goldvm/goldvm/internal/hypervisor"
	"github.com/goldvm/goldvm/internal/hypervisor/drivertest"
)

// TestConformance runs the driver contract's suite against the host's
// real LXD, with container instances of the test root file system
// (testdata/container/build.sh), in a project of the test's own. Every
// driver instance talks to the same LXD, as a daemon and its restarted
// successor do.
func TestConformance(t *testing.T) {
	requireLXD(t)
	gold, key := goldFromPackage(t, containerPackage(t))
	project := testProject(t)
	drivertest.Run(t, drivertest.Env{
		New:      func(t *testing.T) hypervisor.Driver { return newTestDriver(t, project) },
		GoldDir:  gold,
		ImageKey: key,
	})
}
