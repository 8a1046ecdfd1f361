package e2e

import (
	"context"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
)

// TestImageAPI: POST /images pre-fetches an image before any VM needs it
// (one download, shared by the VM made from it later), GET /images lists it
// with its users, DELETE /images/{key} refuses while a VM depends on it and
// succeeds once none does.
func TestImageAPI(t *testing.T) {
	requireEnv(t)
	srv := newImageServer(t)
	d := startDaemon(t, filepath.Join(t.TempDir(), "data"))
	img := publish(t, srv, "tar.zst")
	ctx := context.Background()

	info, err := d.client.PrefetchImage(ctx, img)
	if err != nil {
		t.Fatalf("prefetch: %v", err)
	}
	key := info.Key
	if key != "sha256-"+img.Checksum {
		t.Fatalf("key %q, want sha256-<checksum>", key)
	}
	deadline := time.Now().Add(time.Minute)
	var ready *api.ImageInfo
	for ready == nil && time.Now().Before(deadline) {
		imgs, err := d.client.ListImages(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for i := range imgs {
			if imgs[i].Key == key && imgs[i].State == "ready" {
				ready = &imgs[i]
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if ready == nil || ready.SizeBytes <= 0 || ready.VMs != 0 {
		t.Fatalf("prefetched image not listed as ready, sized and unused: %+v", ready)
	}
	// Prefetching again answers at once from the store.
	if again, err := d.client.PrefetchImage(ctx, img); err != nil || again.State != "ready" {
		t.Fatalf("second prefetch: %v %+v", err, again)
	}

	v := mustCreate(t, d, createReq(img, ""))
	if err := d.client.DeleteImage(ctx, key); !isAPIError(err, http.StatusConflict, "image-in-use") {
		t.Fatalf("delete image in use: got %v, want 409 image-in-use", err)
	}
	got := waitVM(t, d, v.ID, bootTimeout)
	if got.Status != api.StatusRunning {
		t.Fatalf("VM from the prefetched image: %s", fmtVM(got))
	}
	if n := srv.count("/tar-zst/guest.tar.zst"); n != 1 {
		t.Errorf("image server saw %d downloads, want 1 (prefetch, then the VM uses the gold copy)", n)
	}
	imgs, _ := d.client.ListImages(ctx)
	if len(imgs) != 1 || imgs[0].VMs != 1 {
		t.Errorf("images while a VM uses it: %+v, want one image with vms=1", imgs)
	}
	if err := d.client.DeleteImage(ctx, key); !isAPIError(err, http.StatusConflict, "image-in-use") {
		t.Fatalf("delete image under a running VM: got %v, want 409", err)
	}
	if err := d.client.DeleteVM(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	assertGone(t, d, v.ID)
	if err := d.client.DeleteImage(ctx, key); err != nil {
		t.Fatalf("delete unused image: %v", err)
	}
	if imgs, _ := d.client.ListImages(ctx); len(imgs) != 0 {
		t.Errorf("images after delete: %+v", imgs)
	}
	if err := d.client.DeleteImage(ctx, key); !isAPIError(err, http.StatusNotFound, "image-not-found") {
		t.Errorf("second delete: got %v, want 404 image-not-found", err)
	}
	if err := d.client.DeleteImage(ctx, "..%2f..%2fetc"); err == nil {
		t.Errorf("delete of a path-like key succeeded")
	}
}
