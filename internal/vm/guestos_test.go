package vm

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/hypervisor"
)

// imageOSDriver is the fake driver with a guest whose agent is late:
// discovery reports the OS of the image, and the agent answers when told.
type imageOSDriver struct {
	hypervisor.Driver
	agent chan string
}

func (d *imageOSDriver) Discover(ctx context.Context, spec hypervisor.Spec) (hypervisor.GuestInfo, error) {
	info, err := d.Driver.Discover(ctx, spec)
	info.GuestOS, info.GuestOSSource, info.IPSource = "Image Linux 1", api.SourceImage, api.SourceDHCPLease
	return info, err
}

func (d *imageOSDriver) ProbeGuestOS(ctx context.Context, spec hypervisor.Spec) (string, error) {
	select {
	case name := <-d.agent:
		return name, nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// A VM reported running with its image's OS keeps asking the agent, and
// the agent's answer replaces the image's, with its source.
func TestGuestOSFromImageThenAgent(t *testing.T) {
	e := newEnv(t)
	e.m.Close() // newEnv's, with the plain fake driver
	drv := &imageOSDriver{Driver: e.host.New(), agent: make(chan string)}
	e.m = New(Config{
		VMDir: filepath.Join(e.dir, "vms"), Store: e.db, Images: e.images, Driver: drv,
		Logger: slog.New(slog.DiscardHandler), DestroyTimeout: 30 * time.Second,
	})
	t.Cleanup(e.m.Close)
	v := e.create()
	got := e.waitStatus(v.ID, api.StatusRunning)
	if got.GuestOS != "Image Linux 1" || got.Sources == nil || got.Sources.GuestOS != api.SourceImage || got.Sources.IPAddress != api.SourceDHCPLease {
		t.Fatalf("running with guest_os %q, sources %+v; want the image's", got.GuestOS, got.Sources)
	}
	drv.agent <- "Agent Linux 2"
	e.wait(v.ID, "with the agent's OS", func(v *api.VM, err error) bool {
		return err == nil && v.GuestOS == "Agent Linux 2" && v.GuestOSName == "Agent Linux 2" &&
			v.Sources != nil && v.Sources.GuestOS == api.SourceGuestAgent && v.Sources.IPAddress == api.SourceDHCPLease
	})
}
