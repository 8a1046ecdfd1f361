package e2e

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
)

// slowWriter paces a response so a crash can land in the middle of a download.
type slowWriter struct {
	http.ResponseWriter
}

func (w slowWriter) Write(p []byte) (int, error) {
	time.Sleep(5 * time.Millisecond) // ~32 KiB per write: a few MB/s
	return w.ResponseWriter.Write(p)
}

// TestCrashAtEveryStep SIGKILLs the daemon at each step of creation, of
// callback delivery and of deletion (GOLDVM_CRASH_AT), restarts it, and
// checks that the VM the API accepted ends running (or is gone, for a
// delete), the callback arrives, and nothing half-made is left or served.
func TestCrashAtEveryStep(t *testing.T) {
	requireEnv(t)
	srv := newImageServer(t)
	imgs := map[string]api.Image{}
	for _, f := range []string{"qcow2", "tar.gz", "zip-stored"} {
		imgs[f] = publish(t, srv, f)
	}
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.FileServer(http.Dir(srv.dir)).ServeHTTP(slowWriter{w}, r)
	}))
	t.Cleanup(slow.Close) // parallel subtests run after this function returns
	for f, img := range imgs {
		img.URL = strings.Replace(img.URL, srv.URL, slow.URL, 1)
		imgs[f] = img
	}

	tests := []struct {
		point  string
		format string
		delete bool // crash while deleting a running VM
	}{
		{point: "downloading", format: "tar.gz"},
		{point: "unpacking", format: "zip-stored"},
		{point: "cloned", format: "qcow2"},
		{point: "booting", format: "qcow2"},
		{point: "discovering", format: "qcow2"},
		{point: "callback", format: "qcow2"},
		{point: "deleting", format: "qcow2", delete: true},
		{point: "destroyed", format: "qcow2", delete: true},
	}
	for _, tt := range tests {
		t.Run(tt.point, func(t *testing.T) {
			t.Parallel()
			cb := newCallbackServer(t)
			d := startDaemonEnv(t, filepath.Join(t.TempDir(), "data"), []string{"GOLDVM_CRASH_AT=" + tt.point})
			v := mustCreate(t, d, createReq(imgs[tt.format], cb.URL))
			if tt.delete {
				got := waitVM(t, d, v.ID, bootTimeout)
				if got.Status != api.StatusRunning {
					t.Fatalf("before the delete: %s", fmtVM(got))
				}
				go d.client.DeleteVM(context.Background(), v.ID) // the daemon dies under it
			}
			waitCrash(t, d, v.ID, tt.point)
			d.cmd = nil
			if b, _ := os.ReadFile(d.logPath); !strings.Contains(string(b), "crash testing: killing the daemon") {
				t.Fatalf("daemon died, but not at the crash point:\n%s", lastLines(string(b), 30))
			}

			d.env = nil
			d.start()
			if tt.delete {
				// Recovery finishes the delete before the daemon serves.
				assertGone(t, d, v.ID)
				return
			}
			got := waitVM(t, d, v.ID, bootTimeout)
			if got.Status != api.StatusRunning || got.IPAddress == "" || !strings.Contains(got.GuestOS, "goldvm test guest") {
				t.Fatalf("after restart: %s, want running with ip and guest os", fmtVM(got))
			}
			if pids := processesMatching("goldvm-" + v.ID); len(pids) != 1 {
				t.Errorf("QEMU processes for %s: %v, want exactly 1", v.ID, pids)
			}
			body := cb.waitCallback(t, v.ID, time.Minute)
			if body.Status != api.StatusRunning {
				t.Errorf("callback after restart: %s", fmtVM(&body))
			}
			assertImagesComplete(t, d)
			list, err := d.client.ListVMs(context.Background())
			if err != nil || len(list) != 1 {
				t.Errorf("list after restart: %v, %d records, want 1", err, len(list))
			}
			if err := d.client.DeleteVM(context.Background(), v.ID); err != nil {
				t.Fatalf("delete: %v", err)
			}
			assertGone(t, d, v.ID)
		})
	}
}

// assertImagesComplete checks that every image in the store has its
// completion marker and no fetch is left half done.
func assertImagesComplete(t *testing.T, d *daemon) {
	t.Helper()
	dir := filepath.Join(d.dataDir, "images")
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			if e.Name() != ".lock" {
				t.Errorf("leftover %s in the image store", e.Name())
			}
			continue
		}
		if _, err := os.Stat(filepath.Join(dir, e.Name(), "image.json")); err != nil {
			t.Errorf("image %s has no completion marker: %v", e.Name(), err)
		}
	}
}

// waitCrash waits until the daemon has killed itself at its crash point, and
// fails the test if the VM's creation ends first.
func waitCrash(t *testing.T, d *daemon, id, point string) {
	t.Helper()
	deadline := time.Now().Add(bootTimeout)
	for time.Now().Before(deadline) {
		select {
		case <-d.exited:
			return
		case <-time.After(200 * time.Millisecond):
		}
		if got, err := d.client.GetVM(context.Background(), id); err == nil && got.Status.IsFinal() && got.Status != api.StatusRunning {
			t.Fatalf("VM ended before crash point %q: %s", point, fmtVM(got))
		}
	}
	t.Fatalf("the daemon never reached crash point %q", point)
}
