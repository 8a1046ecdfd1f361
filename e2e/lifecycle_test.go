package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
)

// TestLifecycleActions: a real guest is stopped (its QEMU ends, its disk
// stays), started again (discovered anew), restarted, and answers 409
// where its status does not allow the action.
func TestLifecycleActions(t *testing.T) {
	requireEnv(t)
	d, _, img := qcow2Daemon(t)
	ctx := context.Background()
	c := d.client
	v := waitVM(t, d, mustCreate(t, d, createReq(img, "")).ID, 3*time.Minute)
	if v.Status != api.StatusRunning {
		t.Fatalf("VM did not come up: %s", fmtVM(v))
	}
	if _, err := c.VMAction(ctx, v.ID, "start"); !isAPIError(err, 409, api.CodeVMInvalidState) {
		t.Errorf("start of a running VM: %v, want 409 %s", err, api.CodeVMInvalidState)
	}
	s, err := c.VMAction(ctx, v.ID, "stop")
	if err != nil || s.Status != api.StatusStopped || s.StopReason != "stopped by request" {
		t.Fatalf("stop: %+v, %v", s, err)
	}
	if n := len(processesMatching("goldvm-" + v.ID)); n != 0 {
		t.Errorf("%d QEMU processes after stop, want 0", n)
	}
	if _, err := c.VMAction(ctx, v.ID, "suspend"); !isAPIError(err, 409, api.CodeVMInvalidState) {
		t.Errorf("suspend of a stopped VM: %v, want 409 %s", err, api.CodeVMInvalidState)
	}
	s, err = c.VMAction(ctx, v.ID, "start")
	if err != nil || s.Status != api.StatusRunning || s.IPAddress == "" {
		t.Fatalf("start: %+v, %v", s, err)
	}
	s, err = c.VMAction(ctx, v.ID, "restart")
	if err != nil || s.Status != api.StatusRunning || s.IPAddress == "" {
		t.Fatalf("restart: %+v, %v", s, err)
	}
	if err := c.DeleteVM(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	assertGone(t, d, v.ID)
}
