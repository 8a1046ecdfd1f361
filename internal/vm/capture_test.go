package vm

import (
	"context"
	"errors"
	"testing"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/image"
)

// An image's machine.json MAC in the block goldvm derives MACs from fails
// the VM with image-bad-machine, unless the request gives its own MAC.
func TestImageMACInDerivedBlock(t *testing.T) {
	e := newEnv(t)
	gold := &image.Gold{Machine: &api.Machine{MAC: "52:54:00:01:02:03"}}
	_, err := e.m.machineFor(api.Machine{}, gold)
	if code, _ := errdefs.CodeOf(err); code != api.CodeImageBadMachine {
		t.Errorf("image MAC in the derived block: %v, want %s", err, api.CodeImageBadMachine)
	}
	hw, err := e.m.machineFor(api.Machine{MAC: "02:00:00:01:02:03"}, gold)
	if err != nil || hw.MAC != "02:00:00:01:02:03" {
		t.Errorf("request MAC over the image's: %+v %v", hw, err)
	}
}

// Capture refuses an unknown VM (404), a running one without stop (409
// vm-not-stopped, before asking the backend), and one to stop on a backend
// that cannot (400 not-supported); the VM keeps running.
func TestCaptureRefusals(t *testing.T) {
	e := newEnv(t)
	v := e.create()
	e.waitStatus(v.ID, api.StatusRunning)
	ctx := context.Background()
	for _, c := range []struct {
		id   string
		stop bool
		code string
		cat  error
	}{
		{"vm-0000000000zzzzzzzzzz", false, api.CodeVMNotFound, errdefs.ErrNotFound},
		{"../x", true, api.CodeVMNotFound, errdefs.ErrNotFound},
		{v.ID, false, api.CodeVMNotStopped, errdefs.ErrConflict},
		{v.ID, true, api.CodeNotSupported, errdefs.ErrInvalid},
	} {
		_, err := e.m.Capture(ctx, c.id, c.stop)
		if code, _ := errdefs.CodeOf(err); code != c.code || !errors.Is(err, c.cat) {
			t.Errorf("capture %s (stop %v): %v, want %s", c.id, c.stop, err, c.code)
		}
	}
	if got, err := e.m.Get(ctx, v.ID); err != nil || got.Status != api.StatusRunning {
		t.Errorf("VM after refused captures: %+v %v", got, err)
	}
}
