package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
)

// TestOutgoingNetworkPolicy: by default the daemon refuses to fetch images
// from, or send callbacks to, link-local addresses (cloud instance
// metadata); --url-deny adds networks. Refused requests fail at once,
// without retries, and say why.
func TestOutgoingNetworkPolicy(t *testing.T) {
	requireEnv(t)
	srv := newImageServer(t)
	cb := newCallbackServer(t)
	img := publish(t, srv, "qcow2")

	t.Run("default denies link-local", func(t *testing.T) {
		d := startDaemon(t, filepath.Join(t.TempDir(), "data"))
		meta := img
		meta.URL = "http://169.254.169.254/latest/disk.qcow2"
		v := mustCreate(t, d, createReq(meta, "http://169.254.169.254/callback"))
		got := waitStatus(t, d, v.ID, api.StatusError, time.Minute)
		if got.Error == nil || got.Error.Code != "image-download-failed" || !strings.Contains(got.Error.Message, "denied network 169.254.0.0/16") {
			t.Fatalf("got %s, want image-download-failed naming the denied network", fmtVM(got))
		}
		deadline := time.Now().Add(time.Minute)
		for got.Callback == nil || got.Callback.State == api.CallbackPending {
			if time.Now().After(deadline) {
				t.Fatalf("callback still pending: %s", fmtVM(got))
			}
			time.Sleep(100 * time.Millisecond)
			got, _ = d.client.GetVM(context.Background(), v.ID)
		}
		if got.Callback.State != api.CallbackFailed || got.Callback.Attempts != 1 || !strings.Contains(got.Callback.LastError, "denied network") {
			t.Errorf("callback %+v, want failed after 1 attempt naming the policy", got.Callback)
		}
	})

	t.Run("url-deny", func(t *testing.T) {
		d := startDaemon(t, filepath.Join(t.TempDir(), "data"), "--url-deny", "127.0.0.0/8")
		v := mustCreate(t, d, createReq(img, cb.URL))
		got := waitStatus(t, d, v.ID, api.StatusError, time.Minute)
		if got.Error == nil || got.Error.Code != "image-download-failed" || !strings.Contains(got.Error.Message, "denied network 127.0.0.0/8") {
			t.Fatalf("got %s, want image-download-failed naming the denied network", fmtVM(got))
		}
		if n := srv.count(strings.TrimPrefix(img.URL, srv.URL)); n != 0 {
			t.Errorf("image server saw %d requests, want none", n)
		}
	})
}
