package e2e

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
)

// uptimeAndBoot reads the guest's uptime (seconds) and boot id.
func uptimeAndBoot(t *testing.T, d *daemon, id string) (float64, string) {
	t.Helper()
	out := guestShell(t, d, id, "cat /proc/uptime /proc/sys/kernel/random/boot_id")
	f := strings.Fields(out)
	if len(f) != 3 {
		t.Fatalf("guest's uptime and boot id: %q", out)
	}
	up, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		t.Fatalf("guest's uptime %q: %v", f[0], err)
	}
	return up, f[2]
}

// TestSuspendKeepsUptime: a real guest suspended through the API and
// resumed carries on with the same boot: the same boot_id, its uptime
// further on than before the suspend, and its agent answers.
func TestSuspendKeepsUptime(t *testing.T) {
	requireEnv(t)
	d, _, img := qcow2Daemon(t)
	ctx := context.Background()
	v := waitVM(t, d, mustCreate(t, d, createReq(img, "")).ID, 3*time.Minute)
	if v.Status != api.StatusRunning {
		t.Fatalf("VM did not come up: %s", fmtVM(v))
	}
	up1, boot1 := uptimeAndBoot(t, d, v.ID)
	if s, err := d.client.VMAction(ctx, v.ID, "suspend"); err != nil || s.Status != api.StatusSuspended {
		t.Fatalf("suspend: %+v, %v", s, err)
	}
	time.Sleep(3 * time.Second) // suspended a while
	if s, err := d.client.GetVM(ctx, v.ID); err != nil || s.Status != api.StatusSuspended {
		t.Fatalf("while suspended: %+v, %v", s, err)
	}
	if s, err := d.client.VMAction(ctx, v.ID, "resume"); err != nil || s.Status != api.StatusRunning {
		t.Fatalf("resume: %+v, %v", s, err)
	}
	up2, boot2 := uptimeAndBoot(t, d, v.ID)
	t.Logf("uptime %.2fs before the suspend, %.2fs after the resume; boot %s", up1, up2, boot1)
	if boot2 != boot1 {
		t.Errorf("boot_id %s after the resume, was %s: the guest rebooted", boot2, boot1)
	}
	if up2 <= up1 {
		t.Errorf("uptime %.2fs after the resume, %.2fs before: it did not run on", up2, up1)
	}
	if s, err := d.client.GetVM(ctx, v.ID); err != nil || s.Status != api.StatusRunning || s.IPAddress != v.IPAddress {
		t.Errorf("after the resume: %+v, %v", s, err)
	}
}
