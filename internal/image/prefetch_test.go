package image

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/goldvm/goldvm/internal/errdefs"
)

// holdingServer serves data, but its first request sends only the first
// half of the body and then waits until release is called or the client
// goes away (a fetch stays under way as long as the test wants).
func holdingServer(t *testing.T, data []byte) (srv *server, release func()) {
	srv = newServer(t, data)
	released := make(chan struct{})
	srv.hook = func(n int, w http.ResponseWriter, r *http.Request) bool {
		if n != 1 {
			return false
		}
		w.Header().Set("ETag", srv.etag)
		w.Header().Set("Content-Length", fmt.Sprint(len(data)))
		w.WriteHeader(http.StatusOK)
		w.Write(data[:len(data)/2])
		w.(http.Flusher).Flush()
		select {
		case <-released:
		case <-r.Context().Done():
		}
		panic(http.ErrAbortHandler)
	}
	var once sync.Once
	release = func() { once.Do(func() { close(released) }) }
	t.Cleanup(release)
	return srv, release
}

func newPrefetcher(t *testing.T, s *Store, opts PrefetchOptions) *Prefetcher {
	t.Helper()
	p, err := NewPrefetcher(s, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// downloading reports whether the pre-fetch of key has received bytes.
func downloading(p *Prefetcher, key string) func() bool {
	return func() bool {
		info, ok := p.Get(key)
		return ok && info.Progress != nil && info.Progress.BytesDone > 0
	}
}

// TestPrefetchCancel: DELETE /images/{key} during a pre-fetch (Cancel)
// stops the fetch, removes its partial download and its record, and the
// image is never published afterwards. Before, the delete answered 204
// and the fetch went on to publish the image.
func TestPrefetchCancel(t *testing.T) {
	data := gz(t, buildTar(t, []entry{{name: "disk.qcow2", body: diskBytes("QFI\xfb", 2<<20, 3)}}))
	srv, release := holdingServer(t, data)
	s := newStore(t, testOptions())
	p := newPrefetcher(t, s, PrefetchOptions{})
	spec := specFor(srv.URL+"/img.tar.gz", data)
	info, err := p.Start(spec)
	if err != nil {
		t.Fatal(err)
	}
	key := info.Key
	if info.State != PrefetchFetching {
		t.Fatalf("state %q, want fetching", info.State)
	}
	if _, err := os.Stat(p.recordPath(key)); err != nil {
		t.Fatalf("no record of the pre-fetch: %v", err)
	}
	waitFor(t, downloading(p, key))

	found, err := p.Cancel(context.Background(), key, func(string) int { return 0 })
	if !found || err != nil {
		t.Fatalf("Cancel = %v, %v; want found, nil", found, err)
	}
	// The fetch has ended: no flight, and its partial download is free.
	s.mu.Lock()
	flying := s.flights[key] != nil
	s.mu.Unlock()
	if flying || !s.plocks.tryLock(key) {
		t.Fatal("the fetch still runs after Cancel returned")
	}
	s.plocks.unlock(key)
	release()
	if _, ok := p.Get(key); ok {
		t.Error("the cancelled pre-fetch is still listed")
	}
	if _, err := s.Get(key); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("image after the cancel: %v, want not found", err)
	}
	// Nothing left: no partial, no temp dir, no record.
	if names := storeNames(t, s); !slices.Equal(names, []string{prefetchDirName}) {
		t.Errorf("store holds %v after the cancel, want only %s", names, prefetchDirName)
	}
	if names := listDir(t, p.dir); len(names) != 0 {
		t.Errorf("pre-fetch records left: %v", names)
	}
	// Cancelling again finds nothing.
	if found, err := p.Cancel(context.Background(), key, nil); found || err != nil {
		t.Errorf("second Cancel = %v, %v; want not found", found, err)
	}
	// A new pre-fetch of the same image starts from scratch and publishes.
	if _, err := p.Start(spec); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { _, err := s.Get(key); return err == nil })
	waitFor(t, func() bool { _, ok := p.Get(key); return !ok })
}

// TestPrefetchCancelWhileAVMWaits: a pre-fetch whose image a VM waits for
// is not cancelled (image-in-use) and goes on to publish.
func TestPrefetchCancelWhileAVMWaits(t *testing.T) {
	data := gz(t, buildTar(t, sampleEntries()))
	srv, release := holdingServer(t, data)
	s := newStore(t, testOptions())
	p := newPrefetcher(t, s, PrefetchOptions{})
	info, err := p.Start(specFor(srv.URL+"/img.tar.gz", data))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, downloading(p, info.Key))
	found, err := p.Cancel(context.Background(), info.Key, func(string) int { return 1 })
	if !found {
		t.Error("Cancel did not find the pre-fetch")
	}
	wantCode(t, err, CodeInUse, errdefs.ErrConflict)
	release()
	waitFor(t, func() bool { _, err := s.Get(info.Key); return err == nil })
}

// TestPrefetchFailuresAreBounded: failed pre-fetches stay listed with
// their error, at most MaxFailed of them (the newest) and no longer than
// FailedTTL. Before, every failed pull stayed in memory for good.
func TestPrefetchFailuresAreBounded(t *testing.T) {
	srv := newServer(t, nil)
	srv.hook = func(_ int, w http.ResponseWriter, _ *http.Request) bool {
		http.NotFound(w, nil)
		return true
	}
	var mu sync.Mutex
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	s := newStore(t, testOptions())
	p := newPrefetcher(t, s, PrefetchOptions{MaxFailed: 3, FailedTTL: time.Hour, Now: clock})

	var keys []string
	for i := range 5 {
		info, err := p.Start(specFor(fmt.Sprintf("%s/img-%d.tar.gz", srv.URL, i), []byte{byte(i)}))
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, info.Key)
		waitFor(t, func() bool {
			got, ok := p.Get(info.Key)
			return !ok || got.State == PrefetchFailed
		})
		advance(time.Minute)
	}
	list := p.List()
	var listed []string
	for _, in := range list {
		if in.State != PrefetchFailed || in.Err == nil {
			t.Errorf("%s: state %q, err %v; want failed with its error", in.Key, in.State, in.Err)
		}
		wantCode(t, in.Err, CodeDownloadFailed, nil)
		listed = append(listed, in.Key)
	}
	if want := keys[2:]; !slices.Equal(listed, want) {
		t.Errorf("listed %v, want the 3 newest %v", listed, want)
	}
	if names := listDir(t, p.dir); len(names) != 0 {
		t.Errorf("failed pre-fetches keep records: %v", names)
	}
	// The failures happened a minute apart; the last one 1m before now.
	advance(time.Hour - 90*time.Second)
	if list := p.List(); len(list) != 1 || list[0].Key != keys[4] {
		t.Errorf("59.5 minutes after the last failure: %d listed, want only it", len(list))
	}
	advance(2 * time.Minute)
	if list := p.List(); len(list) != 0 {
		t.Errorf("after FailedTTL: %d listed, want none", len(list))
	}
	// A failed pre-fetch is forgotten by Cancel (DELETE), and found.
	info, err := p.Start(specFor(srv.URL+"/again.tar.gz", []byte("again")))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { got, _ := p.Get(info.Key); return got.State == PrefetchFailed })
	if found, err := p.Cancel(context.Background(), info.Key, nil); !found || err != nil {
		t.Errorf("Cancel of a failed pre-fetch = %v, %v", found, err)
	}
	if _, ok := p.Get(info.Key); ok {
		t.Error("failed pre-fetch still listed after Cancel")
	}
}

// TestPrefetchResumesAfterRestart: a pre-fetch under way when the daemon
// stops (Prefetcher and Store closed) keeps its record and partial
// download; the next NewPrefetcher resumes it (with a Range request) and
// publishes the image without being asked again. Before, the pre-fetch
// was a goroutine on context.Background() and lost on restart.
func TestPrefetchResumesAfterRestart(t *testing.T) {
	data := gz(t, buildTar(t, []entry{{name: "disk.qcow2", body: diskBytes("QFI\xfb", 2<<20, 5)}}))
	srv, _ := holdingServer(t, data)
	dir := filepath.Join(t.TempDir(), "images")
	s, err := NewStore(dir, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewPrefetcher(s, PrefetchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	info, err := p.Start(specFor(srv.URL+"/img.tar.gz", data))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, downloading(p, info.Key))
	p.Close()
	s.Close()
	if _, err := os.Stat(filepath.Join(dir, prefetchDirName, info.Key+".json")); err != nil {
		t.Fatalf("record gone after shutdown: %v", err)
	}

	s2, err := NewStore(dir, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	p2 := newPrefetcher(t, s2, PrefetchOptions{})
	if got, ok := p2.Get(info.Key); !ok || got.State != PrefetchFetching {
		t.Fatalf("after the restart: %+v, %v; want the pre-fetch under way", got, ok)
	}
	waitFor(t, func() bool { _, err := s2.Get(info.Key); return err == nil })
	waitFor(t, func() bool { _, ok := p2.Get(info.Key); return !ok })
	if _, ranges := srv.count(); len(ranges) == 0 {
		t.Error("the resumed pre-fetch did not continue with a Range request")
	}
	if names := listDir(t, p2.dir); len(names) != 0 {
		t.Errorf("records left after the pre-fetch published: %v", names)
	}
}
