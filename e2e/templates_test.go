package e2e

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
)

// TestWarmStartTemplates makes a template of the test guest through the
// API, then creates VMs: those of the template's shape start from it (each
// with its own address), one of another shape boots.
func TestWarmStartTemplates(t *testing.T) {
	requireEnv(t)
	// QEMU 7.2 maps a RAM file only with write access, so templates need
	// QEMU under one user rather than a user id per VM.
	d, _, img := qcow2Daemon(t, "--qemu-user", "root")
	ctx := context.Background()
	c := d.client

	first := mustCreate(t, d, createReq(img, ""))
	v := waitStatus(t, d, first.ID, api.StatusRunning, 5*time.Minute)
	if v.StartedFrom != api.StartedFromBoot {
		t.Errorf("first VM started_from %q, want %q", v.StartedFrom, api.StartedFromBoot)
	}
	images, err := c.ListImages(ctx)
	if err != nil || len(images) != 1 {
		t.Fatalf("images: %+v %v", images, err)
	}
	key := images[0].Key
	tpl, err := c.MakeTemplate(ctx, key, api.TemplateRequest{CPUs: 1, Memory: 128, NetworkType: "nat"})
	if err != nil {
		t.Fatalf("make template: %v", err)
	}
	t.Logf("template %+v", tpl)
	if ts, err := c.Templates(ctx, key); err != nil || len(ts) != 1 || ts[0].Key != tpl.Key {
		t.Errorf("templates: %+v %v", ts, err)
	}

	ips := map[string]string{v.IPAddress: v.ID}
	for range 2 {
		t0 := time.Now()
		w := mustCreate(t, d, createReq(img, ""))
		w = waitStatus(t, d, w.ID, api.StatusRunning, 5*time.Minute)
		t.Logf("%s: %s, %s after %v (%s)", w.ID, w.StartedFrom, w.IPAddress, time.Since(t0).Round(time.Millisecond), w.WarmStartError)
		if w.StartedFrom != api.StartedFromTemplate {
			t.Errorf("%s: started_from %q (%s), want template", w.ID, w.StartedFrom, w.WarmStartError)
		}
		if other, ok := ips[w.IPAddress]; ok || w.IPAddress == "" {
			t.Errorf("%s: address %q (also %s)", w.ID, w.IPAddress, other)
		}
		ips[w.IPAddress] = w.ID
	}
	req := createReq(img, "")
	req.Memory = 192
	o := mustCreate(t, d, req)
	o = waitStatus(t, d, o.ID, api.StatusRunning, 5*time.Minute)
	if o.StartedFrom != api.StartedFromBoot {
		t.Errorf("VM of another shape started_from %q, want %q", o.StartedFrom, api.StartedFromBoot)
	}
}

// TestWarmTemplatesAutomatic: with --warm-templates 1 the daemon makes a
// shape's template by itself after one cold boot of it, and the next VM of
// that shape starts from it (no booting phase in its phase_times); the
// image cannot be deleted while its VMs run, and when it is, its templates
// go with it. Templates of an image gone while the daemon was down, and
// half-made ones, are removed at the next start.
func TestWarmTemplatesAutomatic(t *testing.T) {
	requireEnv(t)
	flags := []string{"--qemu-user", "root", "--warm-templates", "1"}
	d, _, img := qcow2Daemon(t, flags...)
	ctx := context.Background()
	c := d.client
	hasPhase := func(v *api.VM, p api.Phase) bool {
		return slices.ContainsFunc(v.PhaseTimes, func(pt api.PhaseTime) bool { return pt.Phase == p })
	}

	cold := mustCreate(t, d, createReq(img, ""))
	cold = waitStatus(t, d, cold.ID, api.StatusRunning, 5*time.Minute)
	if cold.StartedFrom != api.StartedFromBoot || !hasPhase(cold, api.PhaseBooting) {
		t.Fatalf("first VM: started_from %q, phases %+v; want a cold boot", cold.StartedFrom, cold.PhaseTimes)
	}
	images, err := c.ListImages(ctx)
	if err != nil || len(images) != 1 {
		t.Fatalf("images: %+v %v", images, err)
	}
	key := images[0].Key
	deadline := time.Now().Add(5 * time.Minute)
	for {
		ts, err := c.Templates(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if len(ts) == 1 {
			t.Logf("template made by itself: %+v", ts[0])
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no template after one cold boot with --warm-templates 1: %+v", ts)
		}
		time.Sleep(time.Second)
	}
	warm := mustCreate(t, d, createReq(img, ""))
	warm = waitStatus(t, d, warm.ID, api.StatusRunning, 5*time.Minute)
	if warm.StartedFrom != api.StartedFromTemplate || hasPhase(warm, api.PhaseBooting) {
		t.Fatalf("second VM: started_from %q (%s), phases %+v; want a start from the template", warm.StartedFrom, warm.WarmStartError, warm.PhaseTimes)
	}
	t.Logf("warm start phases: %+v", warm.PhaseTimes)

	if err := c.DeleteImage(ctx, key); !isAPIError(err, 409, "image-in-use") {
		t.Fatalf("delete the image of running VMs: %v, want 409 image-in-use", err)
	}
	for _, id := range []string{cold.ID, warm.ID} {
		if err := c.DeleteVM(ctx, id); err != nil {
			t.Fatal(err)
		}
		assertGone(t, d, id)
	}
	if err := c.DeleteImage(ctx, key); err != nil {
		t.Fatalf("delete the unused image: %v", err)
	}
	if ts, err := c.Templates(ctx, key); err != nil || len(ts) != 0 {
		t.Errorf("templates of the deleted image: %+v %v", ts, err)
	}
	if _, err := os.Stat(filepath.Join(d.dataDir, "templates", key)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the deleted image's template directory is still there: %v", err)
	}

	// Left behind while the daemon was down: the templates of an image
	// that is gone, and a template a crash interrupted.
	d.stop()
	gone := filepath.Join(d.dataDir, "templates", "sha256-"+strings.Repeat("0", 64), "k")
	if err := os.MkdirAll(gone, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(gone, "template.json"), []byte("{}"), 0o644)
	half := filepath.Join(d.dataDir, "templates", ".tmp-0123456789ab-1")
	if err := os.MkdirAll(half, 0o755); err != nil {
		t.Fatal(err)
	}
	d.start(flags...)
	for _, p := range []string{filepath.Dir(gone), half} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s was not removed at start: %v", p, err)
		}
	}
}
