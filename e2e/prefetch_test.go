package e2e

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

// TestImagePrefetchSurvivesRestart: a pre-fetch (POST /images) under way
// when the daemon stops (SIGTERM) or dies (SIGKILL) is taken up again by
// the next daemon, which publishes the image without being asked again;
// after a clean stop it continues with a Range request. Before, the
// pre-fetch was a goroutine on context.Background() and lost.
func TestImagePrefetchSurvivesRestart(t *testing.T) {
	requireEnv(t)
	files := newImageServer(t)
	img := publish(t, files, "tar.gz")
	data, err := os.ReadFile(filepath.Join(files.dir, "tar-gz", filepath.Base(img.URL)))
	if err != nil {
		t.Fatal(err)
	}
	for _, how := range []string{"stop", "kill"} {
		t.Run(how, func(t *testing.T) {
			// The first request gets half the package and then nothing
			// more; later ones are served in full, ranges included.
			var mu sync.Mutex
			var requests int
			var ranges []string
			sent := make(chan struct{})
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				requests++
				n := requests
				if rg := r.Header.Get("Range"); rg != "" {
					ranges = append(ranges, rg)
				}
				mu.Unlock()
				w.Header().Set("ETag", `"e2e-prefetch"`)
				if n == 1 {
					w.Header().Set("Content-Length", strconv.Itoa(len(data)))
					w.Write(data[:len(data)/2])
					w.(http.Flusher).Flush()
					close(sent)
					<-r.Context().Done()
					return
				}
				http.ServeContent(w, r, "", time.Unix(1700000000, 0), bytes.NewReader(data))
			}))
			defer srv.Close()
			gated := img
			gated.URL = srv.URL + "/guest.tar.gz"

			d := startDaemon(t, filepath.Join(t.TempDir(), "data"))
			ctx := context.Background()
			info, err := d.client.PrefetchImage(ctx, gated)
			if err != nil {
				t.Fatal(err)
			}
			<-sent
			if how == "stop" {
				// A clean stop saves the partial download; the next
				// start resumes it.
				d.stop()
			} else {
				d.kill()
			}
			d.start()
			deadline := time.Now().Add(2 * time.Minute)
			for {
				got, err := d.client.GetImage(ctx, info.Key)
				if err == nil && got.State == "ready" {
					break
				}
				if err != nil || got.State == "error" || time.Now().After(deadline) {
					t.Fatalf("after the restart: %+v, %v; want the pre-fetch to resume and publish", got, err)
				}
				time.Sleep(100 * time.Millisecond)
			}
			mu.Lock()
			defer mu.Unlock()
			if requests != 2 {
				t.Errorf("image server saw %d requests, want 2 (the cut one, the resumed one)", requests)
			}
			if how == "stop" && len(ranges) != 1 {
				t.Errorf("the resumed pre-fetch sent ranges %v, want one Range request", ranges)
			}
		})
	}
}
