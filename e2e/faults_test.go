package e2e

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
)

// TestFaultDiskFullWhileUnpacking puts the daemon's data directory on a
// 48 MiB tmpfs and serves an image that unpacks to more than that: the VM
// must end in status "error" with code "disk-full", the half-unpacked image
// must be gone (space freed, no .tmp-* dir), and the daemon must keep
// serving: a VM from a small image then boots and is deleted on the same
// small file system.
func TestFaultDiskFullWhileUnpacking(t *testing.T) {
	requireEnv(t)
	requireMountNS(t)
	dataDir := tmpfsDataDir(t, "48m")

	srv := newImageServer(t)
	cb := newCallbackServer(t)
	// The guest disk plus 100 MiB without a single zero block (zero blocks
	// become holes and would take no space): about 120 MiB unpacked, a few
	// hundred KiB compressed.
	big := writeTarGz(t, srv.dir, "big.tar.gz", []tarEntry{
		{name: "guest/README", body: strings.NewReader("goldvm test guest with filler\n")},
		{name: "guest/disk.qcow2", path: guestDisk},
		{name: "guest/filler.bin", size: 100 << 20, body: patternReader(100 << 20)},
	})
	big.URL = srv.URL + big.URL
	small := publish(t, srv, "qcow2")

	d := startDaemon(t, dataDir)
	freeBefore := freeBytes(t, dataDir)

	v := mustCreate(t, d, createReq(big, cb.URL))
	got := waitVM(t, d, v.ID, 3*time.Minute)
	if got.Status != api.StatusError || got.Error == nil || got.Error.Code != "disk-full" {
		t.Fatalf("got %s, want status error with code disk-full", fmtVM(got))
	}
	t.Logf("disk full: %s", got.Error.Message)
	// The message names the file, but not where the data dir lives.
	if strings.Contains(got.Error.Message, dataDir) || !strings.Contains(got.Error.Message, "$GOLDVM_DATA_DIR/images/") {
		t.Errorf("error message %q shows the host's data dir %s instead of $GOLDVM_DATA_DIR", got.Error.Message, dataDir)
	}
	if body := cb.waitCallback(t, v.ID, time.Minute); body.Status != api.StatusError || body.Error == nil || body.Error.Code != "disk-full" {
		t.Errorf("callback %s, want the disk-full error", fmtVM(&body))
	}
	assertImageStoreHolds(t, d.dataDir) // nothing: no image, no temp dir
	if free := freeBytes(t, dataDir); free < freeBefore-(4<<20) {
		t.Errorf("after the failed fetch %d bytes are free, %d before: the half-unpacked image was not removed", free, freeBefore)
	}
	if _, err := os.Stat(filepath.Join(dataDir, "vms", v.ID)); !os.IsNotExist(err) {
		t.Errorf("the failed VM left its directory (err %v)", err)
	}

	// The daemon goes on: a small image fits, boots and is deleted.
	v2 := mustCreate(t, d, createReq(small, ""))
	got2 := waitVM(t, d, v2.ID, bootTimeout)
	if got2.Status != api.StatusRunning || got2.IPAddress == "" {
		t.Fatalf("after disk full: %s, want running", fmtVM(got2))
	}
	for _, id := range []string{v.ID, v2.ID} {
		if err := d.client.DeleteVM(context.Background(), id); err != nil {
			t.Fatalf("delete %s: %v", id, err)
		}
		assertGone(t, d, id)
	}
	list, err := d.client.ListVMs(context.Background())
	if err != nil || len(list) != 0 {
		t.Errorf("list after deletes: %v, %d records, want none", err, len(list))
	}
}

// TestFaultDiskCompletelyFull fills the daemon's file system to the last
// byte (as another tenant of the disk would) and sends creates: each must be
// refused with an error reply or accepted and end in status "error"; none
// may stay "creating". Once space is freed every record is final and
// deletable, the record changes the daemon could not save reach the disk
// (a restart finds every accepted VM in its final status) and the daemon
// fetches images again.
//
// Before 9dfaa74 a final status the store could not write (ENOSPC on
// goldvm.db) was only logged: the record stayed "creating" forever with
// nothing behind it, and its callback carried the non-final record.
func TestFaultDiskCompletelyFull(t *testing.T) {
	requireEnv(t)
	requireMountNS(t)
	dataDir := tmpfsDataDir(t, "16m")
	srv := newImageServer(t)
	cb := newCallbackServer(t)
	d := startDaemon(t, dataDir)
	// A few VMs the daemon knows before the disk fills.
	before := serveReadmeOnly(t, srv, "before")
	for range 3 {
		v := mustCreate(t, d, createReq(before, cb.URL))
		waitFinalOrDump(t, d, v.ID, time.Minute)
	}
	// Creates accepted while there is space wait on a held download; the
	// file system then fills up to the last byte (another tenant of the
	// disk), then the download is released: the fetch and the writes of the
	// final status meet a full disk. More creates arrive on the full disk.
	gate := make(chan struct{})
	var gateOnce sync.Once
	openGate := func() { gateOnce.Do(func() { close(gate) }) }
	held := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-gate:
		case <-time.After(time.Minute):
		}
		http.FileServer(http.Dir(srv.dir)).ServeHTTP(w, r)
	}))
	t.Cleanup(held.Close)
	t.Cleanup(openGate)
	tiny := serveReadmeOnly(t, srv, "full")
	tiny.URL = strings.Replace(tiny.URL, srv.URL, held.URL, 1)
	var accepted []string
	for range 8 {
		accepted = append(accepted, mustCreate(t, d, createReq(tiny, cb.URL)).ID)
	}
	filler := filepath.Join(dataDir, "filler")
	if f, err := os.Create(filler); err == nil {
		io.Copy(f, patternReader(1<<30)) // stops at ENOSPC
		f.Close()
	}
	openGate()
	for i := range 4 {
		v, err := d.client.CreateVM(context.Background(), createReq(tiny, cb.URL))
		if err != nil {
			t.Logf("create %d on a full disk refused: %v", i, err)
			continue
		}
		accepted = append(accepted, v.ID)
	}
	t.Logf("%d creates accepted (8 before the disk filled)", len(accepted))
	stuck := map[string]*api.VM{}
	deadline := time.Now().Add(time.Minute)
	for _, id := range accepted {
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			v, err := d.client.GetVM(ctx, id)
			cancel()
			if err != nil {
				dumpDaemon(t, d, fmt.Sprintf("GET /vms/%s on a full disk: %v", id, err))
			}
			if v.Status.IsFinal() {
				if v.Status != api.StatusError {
					t.Errorf("create on a full disk ended %s", fmtVM(v))
				}
				break
			}
			if time.Now().After(deadline) {
				stuck[id] = v
				break
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
	for id, v := range stuck {
		t.Errorf("VM %s accepted on a full disk is still %s a minute later: %s", id, v.Status, fmtVM(v))
	}
	for _, id := range accepted {
		for _, body := range cb.got(id) {
			if !body.Status.IsFinal() {
				t.Errorf("callback of %s carried a non-final record: %s", id, fmtVM(&body))
			}
		}
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	// Every change the daemon could not save is saved once there is room:
	// after a restart each accepted VM is found, already in its final status.
	var unsaved, saved map[string]bool
	waitFor(t, "the unsaved record changes to be saved", time.Minute, func() bool {
		b, _ := os.ReadFile(d.logPath)
		unsaved, saved = map[string]bool{}, map[string]bool{}
		for _, l := range strings.Split(string(b), "\n") {
			id := logField(l, "vm")
			switch {
			case id == "":
			case strings.Contains(l, "cannot save VM record"):
				unsaved[id] = true
			case strings.Contains(l, "saved VM record that could not be written before"):
				saved[id] = true
			}
		}
		for id := range unsaved {
			if !saved[id] {
				return false
			}
		}
		return true
	})
	t.Logf("%d VM records could not be saved on the full disk; all were saved once space was freed", len(unsaved))
	d.stop()
	d.start()
	for _, id := range accepted {
		v, err := d.client.GetVM(context.Background(), id)
		if err != nil {
			t.Errorf("VM %s accepted on a full disk is lost after a restart: %v", id, err)
		} else if !v.Status.IsFinal() {
			t.Errorf("VM %s found %s after a restart: its final status never reached the disk", id, v.Status)
		}
	}
	// A package without a disk is refused before it is published
	// (image-no-disk), so nothing is kept: no image, no temp dir.
	assertImageStoreHolds(t, d.dataDir)
	for _, id := range accepted {
		if err := d.client.DeleteVM(context.Background(), id); err != nil {
			t.Fatalf("delete %s: %v", id, err)
		}
		assertGone(t, d, id)
	}
	// With space again, the daemon fetches and records as before.
	after := serveReadmeOnly(t, srv, "after")
	v := mustCreate(t, d, createReq(after, ""))
	if got := waitFinalOrDump(t, d, v.ID, time.Minute); got.Error == nil || got.Error.Code != "image-no-disk" {
		t.Errorf("after freeing space: %s, want error image-no-disk (fetched, no disk)", fmtVM(got))
	}
}

// TestFaultImageServerStalls serves the first 64 KiB of a real package, then
// nothing, on every connection (resumes included): with a 2s stall timeout
// and one retry, the VM must end in "error" (image-download-failed) after
// exactly two requests, the daemon must hang up both connections, and no
// temp directory may be left.
func TestFaultImageServerStalls(t *testing.T) {
	requireEnv(t)
	files := newImageServer(t) // only to build the package in a temp dir
	img := publish(t, files, "tar.gz")
	pkg := filepath.Join(files.dir, "tar-gz", "guest.tar.gz")
	fi, err := os.Stat(pkg)
	if err != nil {
		t.Fatal(err)
	}
	prefix := make([]byte, 64<<10)
	f, err := os.Open(pkg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(f, prefix); err != nil {
		t.Fatal(err)
	}
	f.Close()

	var requests, active atomic.Int32
	release := make(chan struct{})
	stall := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		active.Add(1)
		defer active.Add(-1)
		w.Header().Set("ETag", `"stall-1"`)
		w.Header().Set("Content-Type", "application/octet-stream")
		var start int64
		if rng := r.Header.Get("Range"); rng != "" {
			fmt.Sscanf(rng, "bytes=%d-", &start)
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, fi.Size()-1, fi.Size()))
			w.Header().Set("Content-Length", fmt.Sprint(fi.Size()-start))
			w.WriteHeader(http.StatusPartialContent)
		} else {
			w.Header().Set("Content-Length", fmt.Sprint(fi.Size()))
			w.WriteHeader(http.StatusOK)
			w.Write(prefix)
		}
		w.(http.Flusher).Flush()
		select { // then nothing, until the client hangs up
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(stall.Close)
	t.Cleanup(func() { close(release) }) // runs first: frees handlers so Close returns

	d := startDaemon(t, filepath.Join(t.TempDir(), "data"),
		"--image-stall-timeout", "2s", "--image-retries", "1", "--image-retry-backoff", "100ms")
	img.URL = stall.URL + "/guest.tar.gz"
	v := mustCreate(t, d, createReq(img, ""))
	got := waitVM(t, d, v.ID, 2*time.Minute)
	if got.Status != api.StatusError || got.Error == nil || got.Error.Code != "image-download-failed" {
		t.Fatalf("got %s, want status error with code image-download-failed", fmtVM(got))
	}
	t.Logf("stalled download: %s", got.Error.Message)
	if n := requests.Load(); n != 2 {
		t.Errorf("the image server saw %d requests, want 2 (1 + --image-retries 1)", n)
	}
	waitFor(t, "the daemon to hang up its stalled connections", 30*time.Second, func() bool { return active.Load() == 0 })
	assertImageStoreHolds(t, d.dataDir)
	if err := d.client.DeleteVM(context.Background(), v.ID); err != nil {
		t.Fatalf("delete: %v", err)
	}
	assertGone(t, d, v.ID)
}

// TestFaultCallbackReceiverDown creates VMs whose image has a wrong checksum
// (creation fails fast, no guest boots, the callback still carries the error
// record) with callbacks that cannot be delivered or only late:
//   - a closed port and a receiver answering 503 forever: state "failed"
//     after exactly --callback-attempts 4, with a last_error;
//   - a receiver answering 503 twice then 200: "delivered" after 3 attempts,
//     each POST carrying the same error record;
//   - a receiver answering 410: "failed" after 1 attempt (a final refusal is
//     not retried);
//   - a receiver redirecting (302) to another: never followed, "failed"
//     after 4 attempts, the other receiver gets nothing.
func TestFaultCallbackReceiverDown(t *testing.T) {
	requireEnv(t)
	srv := newImageServer(t)
	img := serveReadmeOnly(t, srv, "cb")
	img.Checksum = strings.Repeat("ab", 32) // wrong: creation fails at verification

	d := startDaemon(t, filepath.Join(t.TempDir(), "data"), "--callback-attempts", "4", "--callback-backoff", "200ms")

	type receiver struct {
		mu     sync.Mutex
		bodies []api.VM
	}
	newReceiver := func(answer func(n int) int) (*receiver, string) {
		rc := &receiver{}
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			var v api.VM
			b, _ := io.ReadAll(r.Body)
			if err := json.Unmarshal(b, &v); err != nil {
				t.Errorf("callback body %q: %v", b, err)
			}
			rc.mu.Lock()
			rc.bodies = append(rc.bodies, v)
			n := len(rc.bodies)
			rc.mu.Unlock()
			w.WriteHeader(answer(n))
		}))
		t.Cleanup(s.Close)
		return rc, s.URL + "/hook"
	}
	always503, url503 := newReceiver(func(int) int { return 503 })
	late, urlLate := newReceiver(func(n int) int {
		if n <= 2 {
			return 503
		}
		return 200
	})
	gone, urlGone := newReceiver(func(int) int { return 410 })
	// A receiver that redirects elsewhere: goldvm must not follow.
	target, urlTarget := newReceiver(func(int) int { return 200 })
	redirect := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, urlTarget, http.StatusFound)
	}))
	t.Cleanup(redirect.Close)
	closed := "http://" + freeAddr(t) + "/hook" // nothing listens there

	tests := []struct {
		desc       string
		url        string
		rc         *receiver
		wantState  string
		wantTries  int
		wantStatus int
	}{
		{"closed port", closed, nil, api.CallbackFailed, 4, 0},
		{"503 forever", url503, always503, api.CallbackFailed, 4, 503},
		{"503 twice then 200", urlLate, late, api.CallbackDelivered, 3, 200},
		{"410 gone", urlGone, gone, api.CallbackFailed, 1, 410},
		{"302 elsewhere", redirect.URL + "/hook", nil, api.CallbackFailed, 4, 302},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			t.Parallel()
			v := mustCreate(t, d, createReq(img, tt.url))
			if v.Callback == nil || v.Callback.State != api.CallbackPending {
				t.Errorf("new record's callback %+v, want pending", v.Callback)
			}
			got := waitCallbackEnded(t, d, v.ID, 2*time.Minute)
			if got.Status != api.StatusError || got.Error == nil || got.Error.Code != "checksum-mismatch" {
				t.Errorf("record %s, want error checksum-mismatch", fmtVM(got))
			}
			c := got.Callback
			if c.State != tt.wantState || c.Attempts != tt.wantTries || c.StatusCode != tt.wantStatus {
				t.Errorf("callback %+v, want state %s after %d attempts, last status %d", c, tt.wantState, tt.wantTries, tt.wantStatus)
			}
			if tt.wantState == api.CallbackFailed && c.LastError == "" {
				t.Errorf("failed callback without last_error: %+v", c)
			}
			if tt.wantState == api.CallbackDelivered && (c.LastError != "" || c.DeliveredAt.IsZero()) {
				t.Errorf("delivered callback %+v, want delivered_at and no last_error", c)
			}
			if tt.rc != nil {
				tt.rc.mu.Lock()
				bodies := append([]api.VM(nil), tt.rc.bodies...)
				tt.rc.mu.Unlock()
				if len(bodies) != tt.wantTries {
					t.Errorf("receiver got %d POSTs, want %d", len(bodies), tt.wantTries)
				}
				for _, b := range bodies {
					if b.ID != v.ID || b.Status != api.StatusError || b.Error == nil || b.Error.Code != "checksum-mismatch" {
						t.Errorf("callback body %s, want the error record of %s", fmtVM(&b), v.ID)
					}
				}
			}
			if tt.wantStatus == 302 {
				target.mu.Lock()
				n := len(target.bodies)
				target.mu.Unlock()
				if n != 0 {
					t.Errorf("the redirect was followed: its target got %d POSTs", n)
				}
			}
			// The final state stays: nothing keeps retrying in the background.
			time.Sleep(time.Second)
			again, err := d.client.GetVM(context.Background(), v.ID)
			if err != nil || again.Callback == nil || again.Callback.Attempts != c.Attempts || again.Callback.State != c.State {
				t.Errorf("callback changed after its final state: %v %+v, was %+v", err, again.Callback, c)
			}
			if err := d.client.DeleteVM(context.Background(), v.ID); err != nil {
				t.Fatalf("delete: %v", err)
			}
			assertGone(t, d, v.ID)
		})
	}
}

// waitFinalOrDump polls the VM until its creation ends, each GET bounded by
// 10s. If the daemon stops answering it is made to dump its goroutines
// (SIGQUIT, into its log) and the test fails with the dump.
func waitFinalOrDump(t *testing.T, d *daemon, id string, timeout time.Duration) *api.VM {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		v, err := d.client.GetVM(ctx, id)
		cancel()
		switch {
		case err != nil && ctx.Err() != nil:
			dumpDaemon(t, d, fmt.Sprintf("GET /vms/%s did not answer within 10s", id))
		case err != nil:
			t.Fatalf("GET %s: %v", id, err)
		case v.Status.IsFinal():
			return v
		case time.Now().After(deadline):
			dumpDaemon(t, d, fmt.Sprintf("VM %s still %s after %s: %s", id, v.Status, timeout, fmtVM(v)))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// dumpDaemon makes the daemon print its goroutines and fails the test with
// them. The daemon exits (SIGQUIT).
func dumpDaemon(t *testing.T, d *daemon, why string) {
	t.Helper()
	d.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
	}
	d.cmd = nil
	b, _ := os.ReadFile(d.logPath)
	dump := string(b)
	if i := strings.Index(dump, "SIGQUIT"); i >= 0 {
		var events []string // the log without its request lines
		for _, l := range strings.Split(dump[:i], "\n") {
			if !strings.Contains(l, "msg=http ") {
				events = append(events, l)
			}
		}
		t.Logf("daemon log before the dump (requests left out):\n%s", lastLines(strings.Join(events, "\n"), 40))
		dump = dump[i:]
	}
	os.WriteFile(d.logPath+".goroutines", []byte(dump), 0o600)
	t.Fatalf("%s; the daemon's goroutines:\n%s", why, dump)
}

// logField returns the value of key=value in a slog text line, "" if absent.
func logField(line, key string) string {
	i := strings.Index(line, " "+key+"=")
	if i < 0 {
		return ""
	}
	v := line[i+len(key)+2:]
	if j := strings.IndexByte(v, ' '); j >= 0 {
		v = v[:j]
	}
	return strings.Trim(v, `"`)
}

// requireMountNS fails (under CI) or skips when the test does not run in the
// private mount namespace TestMain makes as root, where it may mount.
func requireMountNS(t *testing.T) {
	t.Helper()
	if os.Getenv(netnsMarker) != "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("this test mounts a tmpfs and needs the private mount namespace of a root run")
	}
	t.Skip("needs root: mounts a tmpfs in the test's private mount namespace")
}

// tmpfsDataDir mounts a tmpfs of the given size as a fresh data directory.
// Its unmount is registered before any daemon's cleanup, so it runs after
// the daemon has stopped.
func tmpfsDataDir(t *testing.T, size string) string {
	t.Helper()
	dataDir := filepath.Join(t.TempDir(), "data")
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	run(t, "", "mount", "-t", "tmpfs", "-o", "size="+size+",mode=0700", "tmpfs", dataDir)
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dataDir).CombinedOutput(); err != nil {
			t.Logf("umount %s: %v: %s; detaching it", dataDir, err, out)
			exec.Command("umount", "-l", dataDir).Run()
		}
	})
	return dataDir
}

// freeBytes is the space available on the file system holding dir.
func freeBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * int64(st.Bsize)
}

// assertImageStoreHolds checks that <dataDir>/images holds exactly the
// given image keys, no fetch in progress and no deletion left over.
func assertImageStoreHolds(t *testing.T, dataDir string, keys ...string) {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(dataDir, "images"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	for _, k := range keys {
		want[k] = true
	}
	for _, e := range entries {
		switch {
		case e.Name() == ".lock":
		case strings.HasPrefix(e.Name(), ".partial-"):
			// Raw bytes of an interrupted download, kept so the next request
			// resumes with Range; never served as an image (no marker).
		case want[e.Name()]:
			delete(want, e.Name())
		default:
			t.Errorf("image store holds %s, want only %v", e.Name(), keys)
		}
	}
	for k := range want {
		t.Errorf("image %s is missing from the store", k)
	}
}

// waitFor polls cond every 100ms until it holds or timeout passes.
// waitCallbackEnded waits until VM id's callback delivery is no longer
// pending (delivered or failed, as recorded) and returns the record.
func waitCallbackEnded(t *testing.T, d *daemon, id string, timeout time.Duration) *api.VM {
	t.Helper()
	var got *api.VM
	waitFor(t, "the callback delivery to end", timeout, func() bool {
		g, err := d.client.GetVM(context.Background(), id)
		if err != nil {
			t.Fatalf("get: %v", err)
		}
		got = g
		return g.Callback != nil && g.Callback.State != api.CallbackPending
	})
	return got
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// tarEntry is one regular file of a package: from path, or size bytes of body.
type tarEntry struct {
	name string
	path string
	size int64
	body io.Reader
}

// writeTarGz writes a tar.gz of entries to dir/name and returns its spec as
// served by an imageServer rooted at dir.
func writeTarGz(t *testing.T, dir, name string, entries []tarEntry) api.Image {
	t.Helper()
	out, err := os.Create(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	zw, _ := gzip.NewWriterLevel(out, gzip.BestSpeed)
	tw := tar.NewWriter(zw)
	for _, e := range entries {
		body, size := e.body, e.size
		if e.path != "" {
			f, err := os.Open(e.path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			fi, _ := f.Stat()
			body, size = f, fi.Size()
		} else if sr, ok := body.(*strings.Reader); ok && size == 0 {
			size = sr.Size()
		}
		if err := tw.WriteHeader(&tar.Header{Name: e.name, Mode: 0o644, Size: size, Typeflag: tar.TypeReg, ModTime: time.Unix(1700000000, 0)}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.CopyN(tw, body, size); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return api.Image{
		URL:          "/" + name, // callers prefix the server URL
		Checksum:     sha256File(t, filepath.Join(dir, name)),
		ChecksumType: "sha256",
	}
}

// serveReadmeOnly serves a valid tar.gz holding only a README (no disk) under
// a name unique to tag, and returns its spec with the server's URL. It is
// downloaded and verified, then refused before it is published
// (image-no-disk): a creation from it fails fast without booting.
func serveReadmeOnly(t *testing.T, srv *imageServer, tag string) api.Image {
	t.Helper()
	img := writeTarGz(t, srv.dir, "readme-"+tag+".tar.gz", []tarEntry{
		{name: "pkg/README", body: strings.NewReader("goldvm e2e: a package without a disk (" + tag + ")\n")},
	})
	img.URL = srv.URL + img.URL
	return img
}

// patternReader yields n bytes of a repeating non-zero pattern: it
// compresses to almost nothing but has no all-zero block to leave as a hole.
func patternReader(n int64) io.Reader {
	return io.LimitReader(repeatByte('g'), n)
}

type repeatByte byte

func (b repeatByte) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(b)
	}
	return len(p), nil
}
