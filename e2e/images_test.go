package e2e

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
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

// TestImagePullWaits: `goldvm images pull` pre-fetches through POST /images
// and waits, showing the download's progress, until the image is ready;
// GET /images/{key} shows the fetch's phase and bytes meanwhile. The test's
// server sends half the package and holds the rest until the test has
// seen the progress. A wrong checksum makes pull fail naming the code and
// leaves the image in state "error"; an unknown key is 404.
func TestImagePullWaits(t *testing.T) {
	requireEnv(t)
	files := newImageServer(t)
	img := publish(t, files, "tar.gz")
	data, err := os.ReadFile(filepath.Join(files.dir, "tar-gz", filepath.Base(img.URL)))
	if err != nil {
		t.Fatal(err)
	}
	half := len(data) / 2
	release := make(chan struct{})
	gated := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(data)))
		w.Write(data[:half])
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		w.Write(data[half:])
	}))
	t.Cleanup(gated.Close)
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	d := startDaemon(t, filepath.Join(t.TempDir(), "data"))
	ctx := context.Background()

	pull := func(args ...string) (*exec.Cmd, *lockedBuffer, *lockedBuffer) {
		cmd := exec.Command(goldvmBin, append([]string{"images", "pull", "--addr", d.addr}, args...)...)
		var out, errOut lockedBuffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd, &out, &errOut
	}
	url := gated.URL + "/guest.tar.gz"
	cmd, out, errOut := pull("--checksum", img.Checksum, url)
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	key := "sha256-" + img.Checksum
	var seen *api.ImageInfo
	// The store reports progress at most every 256 KiB read, so a stalled
	// download shows up to that much less than has arrived.
	waitFor(t, "the pre-fetch to show half the package downloaded", time.Minute, func() bool {
		info, err := d.client.GetImage(ctx, key)
		if err == nil && info.State == "fetching" && info.Phase == api.PhaseDownloading && info.Progress != nil &&
			info.Progress.BytesDone >= int64(half-256<<10) && info.Progress.BytesDone <= int64(half) {
			seen = info
			return true
		}
		return false
	})
	if seen.Progress.BytesTotal != int64(len(data)) || seen.URL != url {
		t.Errorf("fetching image: %+v, progress %+v; want bytes_total %d and its URL", seen, seen.Progress, len(data))
	}
	waitFor(t, "pull to show the download", time.Minute, func() bool { return strings.Contains(errOut.String(), "downloading") })
	select {
	case err := <-exited:
		t.Fatalf("pull returned before the image was ready: %v\n%s%s", err, out.String(), errOut.String())
	default:
	}
	close(release)
	select {
	case err := <-exited:
		if err != nil || strings.TrimSpace(out.String()) != key+" ready" {
			t.Errorf("pull: %v, stdout %q; want %q", err, out.String(), key+" ready")
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("pull did not return after the download went on")
	}
	if !strings.Contains(errOut.String(), "downloading [") {
		t.Errorf("pull showed no download progress bar: %q", errOut.String())
	}
	if info, err := d.client.GetImage(ctx, key); err != nil || info.State != "ready" || info.SizeBytes <= 0 || info.Progress != nil {
		t.Errorf("GET /images/%s after the pull: %v %+v; want ready with a size", key, err, info)
	}

	// A checksum the package does not have.
	bad := strings.Repeat("0", 64)
	cmd, out, errOut = pull("--checksum", bad, files.URL+"/tar-gz/"+filepath.Base(img.URL))
	if err := cmd.Wait(); err == nil || !strings.Contains(errOut.String(), "checksum-mismatch") {
		t.Errorf("pull with a wrong checksum: %v, stderr %q; want a failure naming checksum-mismatch", err, errOut.String())
	}
	if info, err := d.client.GetImage(ctx, "sha256-"+bad); err != nil || info.State != "error" || info.Error == nil || info.Error.Code != "checksum-mismatch" {
		t.Errorf("GET /images of the failed pull: %v %+v; want state error, checksum-mismatch", err, info)
	}
	// Deleting it forgets the failed pull.
	if err := d.client.DeleteImage(ctx, "sha256-"+bad); err != nil {
		t.Errorf("DELETE the failed pull: %v, want 204", err)
	}
	if _, err := d.client.GetImage(ctx, "sha256-"+bad); !isAPIError(err, http.StatusNotFound, "image-not-found") {
		t.Errorf("GET after deleting the failed pull: %v, want 404 image-not-found", err)
	}
	if _, err := d.client.GetImage(ctx, "sha256-"+strings.Repeat("1", 64)); !isAPIError(err, http.StatusNotFound, "image-not-found") {
		t.Errorf("unknown image: %v, want 404 image-not-found", err)
	}
}
