package e2e

import (
	"context"
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
