package image

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/goldvm/goldvm/internal/errdefs"
)

// statusWriter records the status a handler answered with.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// crashServer serves data in two "runs" of the daemon. In the first, the
// first request gets the headers and half the body, then hangs until the
// client goes away. Requests after that are answered by second (nil: the
// normal handler, with Range and If-Range support), and the statuses
// answered are recorded.
type crashServer struct {
	*server
	half     int
	mu       sync.Mutex
	statuses []int
	second   func(w http.ResponseWriter, r *http.Request)
}

func newCrashServer(t *testing.T, data []byte) *crashServer {
	cs := &crashServer{server: newServer(t, data), half: len(data) / 2}
	cs.hook = func(n int, w http.ResponseWriter, r *http.Request) bool {
		if n == 1 {
			w.Header().Set("ETag", cs.etag)
			w.Header().Set("Content-Length", itoa(len(cs.data)))
			w.WriteHeader(http.StatusOK)
			w.Write(cs.data[:cs.half])
			w.(http.Flusher).Flush()
			<-r.Context().Done()
			return true
		}
		sw := &statusWriter{ResponseWriter: w}
		if cs.second != nil {
			cs.second(sw, r)
		} else {
			sw.Header().Set("ETag", cs.etag)
			http.ServeContent(sw, r, "", time.Unix(1700000000, 0), bytes.NewReader(cs.data))
		}
		cs.mu.Lock()
		cs.statuses = append(cs.statuses, sw.code)
		cs.mu.Unlock()
		return true
	}
	return cs
}

func (cs *crashServer) setRequests(n int) {
	cs.server.mu.Lock()
	cs.requests = n
	cs.server.mu.Unlock()
}

func (cs *crashServer) seen() (requests int, ranges, ifRanges []string, statuses []int) {
	cs.server.mu.Lock()
	requests, ranges, ifRanges = cs.requests, slices.Clone(cs.ranges), slices.Clone(cs.ifRanges)
	cs.server.mu.Unlock()
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return requests, ranges, ifRanges, slices.Clone(cs.statuses)
}

// firstRun starts a fetch of spec in a store on dir, waits until half the
// body has gone through it, and closes the store, as a daemon that stops
// mid-download. It returns the sidecar the store left.
func firstRun(t *testing.T, dir string, spec Spec, half int) partialState {
	t.Helper()
	opts := testOptions()
	opts.ProgressInterval = time.Nanosecond // a report for every chunk
	s, err := NewStore(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	var done atomic.Int64
	errc := make(chan error, 1)
	go func() {
		_, err := s.Ensure(context.Background(), spec, func(p Progress) { done.Store(p.BytesDone) })
		errc <- err
	}()
	waitFor(t, func() bool { return done.Load() >= int64(half) })
	s.Close()
	if err := <-errc; err == nil {
		t.Fatal("first run succeeded")
	}
	if names := listDir(t, dir); len(names) != 1 || names[0] != partialPrefix+mustKey(t, spec) {
		t.Fatalf("after the first run the store holds %v", names)
	}
	b, err := os.ReadFile(filepath.Join(dir, partialPrefix+mustKey(t, spec), partialStateName))
	if err != nil {
		t.Fatal(err)
	}
	var st partialState
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	if st.Bytes != int64(half) {
		t.Fatalf("sidecar records %d bytes, the server sent %d", st.Bytes, half)
	}
	return st
}

// TestResumeAcrossRestart: a store closed mid-download leaves a partial
// download; a new store on the same directory continues it with exactly
// one Range request from where it stopped, or starts cleanly from byte 0
// when the server cannot continue it.
func TestResumeAcrossRestart(t *testing.T) {
	disk := diskBytes("QFI\xfb", 4<<20, 21)
	tarball := buildTar(t, []entry{{name: "disk.qcow2", body: disk}, {name: "meta/info.txt", body: []byte("hello")}})
	formats := []struct {
		name string
		data []byte
	}{
		{"tar.gz", gz(t, tarball)},
		{"tar.zst", zst(t, tarball)},
		{"zip", buildZip(t, []entry{{name: "disk.qcow2", body: disk}, {name: "meta/info.txt", body: []byte("hello")}})},
	}
	type run struct {
		cs   *crashServer
		dir  string
		spec Spec
		st   partialState
	}
	tests := []struct {
		desc string
		// between runs the test may change the server or the files
		between func(t *testing.T, r *run)
		// what the server must have seen in the second run
		wantRange  bool // exactly one Range request, from the partial's length
		wantStatus []int
		wantErr    string
	}{
		{
			desc:       "resumed with one Range request",
			wantRange:  true,
			wantStatus: []int{http.StatusPartialContent},
		},
		{
			desc: "bytes written after the last checkpoint are cut off",
			between: func(t *testing.T, r *run) {
				f, err := os.OpenFile(filepath.Join(r.dir, partialPrefix+mustKey(t, r.spec), partialDataName), os.O_WRONLY|os.O_APPEND, 0)
				if err != nil {
					t.Fatal(err)
				}
				f.Write(bytes.Repeat([]byte{0xee}, 3000)) // never recorded in the sidecar
				f.Close()
			},
			wantRange:  true,
			wantStatus: []int{http.StatusPartialContent},
		},
		{
			desc: "server ignores Range: clean restart from 0",
			between: func(t *testing.T, r *run) {
				r.cs.second = func(w http.ResponseWriter, req *http.Request) {
					w.Header().Set("ETag", r.cs.etag)
					w.Write(r.cs.data)
				}
			},
			wantRange:  true,
			wantStatus: []int{http.StatusOK},
		},
		{
			desc: "file changed on the server (new ETag): restart from 0",
			between: func(t *testing.T, r *run) {
				r.cs.etag = `"changed"`
			},
			wantRange:  true,
			wantStatus: []int{http.StatusOK},
		},
		{
			desc: "corrupt sidecar: restart from 0",
			between: func(t *testing.T, r *run) {
				p := filepath.Join(r.dir, partialPrefix+mustKey(t, r.spec), partialStateName)
				if err := os.WriteFile(p, []byte(`{"version":1,"key":`), 0o644); err != nil {
					t.Fatal(err)
				}
			},
			wantStatus: []int{http.StatusOK},
		},
		{
			desc: "another URL: restart from 0",
			between: func(t *testing.T, r *run) {
				r.spec.URL += "?mirror=2"
			},
			wantStatus: []int{http.StatusOK},
		},
		{
			desc: "404 on resume is final and removes the partial",
			between: func(t *testing.T, r *run) {
				r.cs.second = func(w http.ResponseWriter, req *http.Request) { http.NotFound(w, req) }
			},
			wantRange:  true,
			wantStatus: []int{http.StatusNotFound},
			wantErr:    CodeDownloadFailed,
		},
		{
			desc: "other bytes under the same ETag: checksum mismatch removes the partial",
			between: func(t *testing.T, r *run) {
				other := bytes.Clone(r.cs.data)
				for i := r.cs.half; i < len(other); i += 997 {
					other[i] ^= 0x55
				}
				r.cs.second = func(w http.ResponseWriter, req *http.Request) {
					w.Header().Set("ETag", r.cs.etag)
					http.ServeContent(w, req, "", time.Unix(1700000000, 0), bytes.NewReader(other))
				}
			},
			wantRange:  true,
			wantStatus: []int{http.StatusPartialContent},
			wantErr:    "any", // checksum-mismatch, or image-corrupt if the decompressor notices first
		},
	}
	for _, f := range formats {
		for _, tt := range tests {
			t.Run(f.name+"/"+tt.desc, func(t *testing.T) {
				cs := newCrashServer(t, f.data)
				r := &run{cs: cs, dir: filepath.Join(t.TempDir(), "images"), spec: specFor(cs.URL+"/image."+f.name, f.data)}
				r.st = firstRun(t, r.dir, r.spec, cs.half)
				if r.st.Validator != cs.etag || r.st.Total != int64(len(f.data)) {
					t.Fatalf("sidecar %+v", r.st)
				}
				if tt.between != nil {
					tt.between(t, r)
				}
				s, err := NewStore(r.dir, testOptions())
				if err != nil {
					t.Fatal(err)
				}
				defer s.Close()
				g, err := ensure(t, s, r.spec)

				n, ranges, ifRanges, statuses := cs.seen()
				if tt.wantRange {
					if want := "bytes=" + itoa(cs.half) + "-"; len(ranges) != 1 || ranges[0] != want {
						t.Errorf("server saw ranges %v, want exactly [%s]", ranges, want)
					}
					if len(ifRanges) != 1 || ifRanges[0] != r.st.Validator {
						t.Errorf("server saw If-Range %q, want %q", ifRanges, r.st.Validator)
					}
				} else if len(ranges) != 0 {
					t.Errorf("server saw ranges %v, want none", ranges)
				}
				if !slices.Equal(statuses, tt.wantStatus) || n != 1+len(tt.wantStatus) {
					t.Errorf("second run: server answered %v (%d requests in all), want %v", statuses, n, tt.wantStatus)
				}
				if tt.wantErr != "" {
					if tt.wantErr == "any" {
						if !errors.Is(err, errdefs.ErrInvalid) {
							t.Fatalf("want an invalid-image error, got %v", err)
						}
					} else {
						wantCode(t, err, tt.wantErr, nil)
					}
					wantEmpty(t, s)
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				got := tree(t, g.Dir)
				if got["disk.qcow2"] != "file:"+sha(disk) || got["meta/info.txt"] != "file:"+sha([]byte("hello")) {
					t.Fatalf("tree %v", got)
				}
				if names := storeNames(t, s); !slices.Equal(names, []string{g.Key}) {
					t.Fatalf("after the second run the store holds %v", names)
				}
			})
		}
	}
}

// A partial that already holds every byte (the daemon stopped after the
// download, before publishing) is confirmed by a 416 for the range past
// its end, and not downloaded again.
func TestResumeCompletePartial(t *testing.T) {
	data := gz(t, buildTar(t, sampleEntries()))
	cs := newCrashServer(t, data)
	dir := filepath.Join(t.TempDir(), "images")
	spec := specFor(cs.URL+"/x.tgz", data)
	key := mustKey(t, spec)
	pdir := filepath.Join(dir, partialPrefix+key)
	if err := os.MkdirAll(pdir, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(pdir, partialDataName), data, 0o644)
	st, _ := json.Marshal(partialState{Version: 1, Key: key, URL: spec.URL, URLSHA256: urlHash(spec.URL),
		Validator: cs.etag, Total: int64(len(data)), Bytes: int64(len(data)), Updated: time.Now()})
	os.WriteFile(filepath.Join(pdir, partialStateName), st, 0o644)
	cs.setRequests(1) // skip the crashServer's first-run answer

	s := newStoreAt(t, dir, testOptions())
	g, err := ensure(t, s, spec)
	if err != nil {
		t.Fatal(err)
	}
	_, ranges, _, statuses := cs.seen()
	if want := "bytes=" + itoa(len(data)) + "-"; len(ranges) != 1 || ranges[0] != want || !slices.Equal(statuses, []int{http.StatusRequestedRangeNotSatisfiable}) {
		t.Fatalf("server saw ranges %v and answered %v", ranges, statuses)
	}
	if got := tree(t, g.Dir); !equalMaps(got, sampleTree(false)) {
		t.Fatalf("tree %v", got)
	}
	if names := storeNames(t, s); !slices.Equal(names, []string{key}) {
		t.Fatalf("store holds %v", names)
	}
}

func newStoreAt(t *testing.T, dir string, opts Options) *Store {
	t.Helper()
	s, err := NewStore(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// Partials are bounded: Evict removes idle ones and counts their bytes,
// NewStore removes ones older than MaxPartialAge, and a partial without a
// validator is never kept.
func TestPartialBounds(t *testing.T) {
	data := gz(t, buildTar(t, []entry{{name: "disk.raw", body: diskBytes("", 2<<20, 4)}}))
	cs := newCrashServer(t, data)
	dir := filepath.Join(t.TempDir(), "images")
	spec := specFor(cs.URL+"/x.tgz", data)
	st := firstRun(t, dir, spec, cs.half)
	pdir := filepath.Join(dir, partialPrefix+mustKey(t, spec))

	var clock atomic.Int64
	clock.Store(st.Updated.UnixNano())
	opts := testOptions()
	opts.Now = func() time.Time { return time.Unix(0, clock.Load()) }
	s := newStoreAt(t, dir, opts)
	if _, err := os.Stat(pdir); err != nil {
		t.Fatalf("NewStore removed a fresh partial: %v", err)
	}
	// Not idle yet, under the budget: kept.
	if _, err := s.Evict(EvictPolicy{MaxIdle: time.Hour, MaxBytes: 1 << 30}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(pdir); err != nil {
		t.Fatalf("Evict removed a fresh partial: %v", err)
	}
	// Over a budget smaller than the partial: removed.
	if _, err := s.Evict(EvictPolicy{MaxBytes: 1}, nil); err != nil {
		t.Fatal(err)
	}
	wantEmpty(t, s)
	s.Close()

	// Idle longer than MaxIdle: removed.
	cs.setRequests(0)
	st = firstRun(t, dir, spec, cs.half)
	clock.Store(st.Updated.Add(2 * time.Hour).UnixNano())
	s = newStoreAt(t, dir, opts)
	if _, err := s.Evict(EvictPolicy{MaxIdle: time.Hour}, nil); err != nil {
		t.Fatal(err)
	}
	wantEmpty(t, s)
	s.Close()

	// Older than MaxPartialAge: NewStore removes it.
	cs.setRequests(0)
	st = firstRun(t, dir, spec, cs.half)
	clock.Store(st.Updated.Add(8 * 24 * time.Hour).UnixNano())
	s = newStoreAt(t, dir, opts)
	wantEmpty(t, s)
	s.Close()

	// No validator: nothing to check a resume against, nothing kept.
	srv := newServer(t, data)
	started := make(chan struct{})
	srv.hook = func(n int, w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set("Content-Length", itoa(len(data)))
		w.WriteHeader(http.StatusOK)
		w.Write(data[:len(data)/2])
		w.(http.Flusher).Flush()
		close(started)
		<-r.Context().Done()
		return true
	}
	s = newStoreAt(t, dir, testOptions())
	errc := make(chan error, 1)
	go func() { _, err := ensure(t, s, specFor(srv.URL+"/x.tgz", data)); errc <- err }()
	<-started
	s.Close()
	<-errc
	if names := listDir(t, dir); len(names) != 0 {
		t.Fatalf("store holds %v", names)
	}
	if !strings.HasPrefix(partialPrefix, ".") {
		t.Fatal("partials must be hidden names")
	}
}

// Once the partial's bytes have been re-fed, a server that stops
// continuing the stream (here: a 206 cut before its first byte, then 200s
// ignoring Range) makes the whole fetch start again from 0, never splices
// a fresh stream onto the re-fed bytes.
func TestResumeThenRangeIgnored(t *testing.T) {
	data := gz(t, buildTar(t, []entry{{name: "disk.raw", body: diskBytes("", 2<<20, 8)}}))
	cs := newCrashServer(t, data)
	dir := filepath.Join(t.TempDir(), "images")
	spec := specFor(cs.URL+"/x.tgz", data)
	firstRun(t, dir, spec, cs.half)
	var n atomic.Int32
	cs.second = func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			// The headers of a 206, then the connection closes.
			conn, _, err := w.(*statusWriter).ResponseWriter.(http.Hijacker).Hijack()
			if err != nil {
				panic(err)
			}
			fmt.Fprintf(conn, "HTTP/1.1 206 Partial Content\r\nETag: %s\r\nContent-Range: bytes %d-%d/%d\r\nContent-Length: %d\r\n\r\n",
				cs.etag, cs.half, len(data)-1, len(data), len(data)-cs.half)
			conn.Close()
			w.(*statusWriter).code = http.StatusPartialContent
			return
		}
		w.Header().Set("ETag", cs.etag)
		w.Write(data)
	}
	s := newStoreAt(t, dir, testOptions())
	wantFetchAfterRestart(t, s, cs, spec, 2, []int{206, 200, 200})
}

// A resumed fetch that fails only because the server keeps failing (5xx)
// keeps the partial as it was, and the next run resumes it.
func TestPartialSurvivesTransientFailure(t *testing.T) {
	data := zst(t, buildTar(t, []entry{{name: "disk.raw", body: diskBytes("", 2<<20, 5)}}))
	cs := newCrashServer(t, data)
	dir := filepath.Join(t.TempDir(), "images")
	spec := specFor(cs.URL+"/x.tar.zst", data)
	st := firstRun(t, dir, spec, cs.half)

	cs.second = func(w http.ResponseWriter, r *http.Request) { http.Error(w, "busy", http.StatusServiceUnavailable) }
	opts := testOptions()
	opts.Retries = 1
	s := newStoreAt(t, dir, opts)
	_, err := ensure(t, s, spec)
	wantCode(t, err, CodeDownloadFailed, errdefs.ErrUnavailable)
	s.Close()
	b, err := os.ReadFile(filepath.Join(dir, partialPrefix+mustKey(t, spec), partialStateName))
	if err != nil {
		t.Fatalf("the partial is gone: %v", err)
	}
	var after partialState
	if err := json.Unmarshal(b, &after); err != nil || after.Bytes != st.Bytes || after.Validator != st.Validator {
		t.Fatalf("sidecar %+v (%v), before %+v", after, err, st)
	}

	cs.second = nil
	s = newStoreAt(t, dir, testOptions())
	wantFetchAfterRestart(t, s, cs, spec, 3, []int{503, 503, 206})
}

// wantFetchAfterRestart fetches spec with s, whose first run cs cut at
// cs.half, and checks that the server saw ranged requests (each
// "bytes=<half>-") and answered statuses (all requests of the later runs),
// and that the store then holds only the published one-file image.
func wantFetchAfterRestart(t *testing.T, s *Store, cs *crashServer, spec Spec, ranged int, statuses []int) {
	t.Helper()
	g, err := ensure(t, s, spec)
	if err != nil {
		t.Fatal(err)
	}
	_, ranges, _, got := cs.seen()
	want := slices.Repeat([]string{"bytes=" + itoa(cs.half) + "-"}, ranged)
	if !slices.Equal(ranges, want) || !slices.Equal(got, statuses) {
		t.Fatalf("server saw ranges %v and answered %v", ranges, got)
	}
	if got := tree(t, g.Dir); len(got) != 1 {
		t.Fatalf("tree %v", got)
	}
	if names := storeNames(t, s); !slices.Equal(names, []string{g.Key}) {
		t.Fatalf("store holds %v", names)
	}
}

// A crash leaves what the last periodic checkpoint wrote, with no final
// checkpoint: the on-disk partial, copied while the download still hangs
// (no cancel, no Close), is resumed by a new store from the checkpointed
// length.
func TestResumeAfterCrashSnapshot(t *testing.T) {
	data := gz(t, buildTar(t, []entry{{name: "disk.raw", body: diskBytes("", 3<<20, 6)}}))
	cs := newCrashServer(t, data)
	spec := specFor(cs.URL+"/x.tgz", data)
	key := mustKey(t, spec)
	dir := filepath.Join(t.TempDir(), "images")
	s := newStoreAt(t, dir, testOptions())
	s.checkpointEvery = 10 * time.Millisecond
	go s.Ensure(context.Background(), spec, nil) // hangs until Close at cleanup
	var st partialState
	waitFor(t, func() bool {
		b, err := os.ReadFile(filepath.Join(dir, partialPrefix+key, partialStateName))
		return err == nil && json.Unmarshal(b, &st) == nil && st.Bytes == int64(cs.half)
	})
	// The "crashed" store's directory as it is now, in a new place.
	crashed := filepath.Join(t.TempDir(), "images")
	copyDir(t, dir, crashed)
	os.Chmod(filepath.Join(crashed, partialPrefix+key, partialDataName), 0o644)

	s2 := newStoreAt(t, crashed, testOptions())
	g, err := ensure(t, s2, spec)
	if err != nil {
		t.Fatal(err)
	}
	_, ranges, ifRanges, statuses := cs.seen()
	if want := "bytes=" + itoa(cs.half) + "-"; !slices.Equal(ranges, []string{want}) || !slices.Equal(ifRanges, []string{cs.etag}) ||
		!slices.Equal(statuses, []int{http.StatusPartialContent}) {
		t.Fatalf("server saw ranges %v, If-Range %v, answered %v", ranges, ifRanges, statuses)
	}
	if got := tree(t, g.Dir); got["disk.raw"] != "file:"+sha(diskBytes("", 3<<20, 6)) {
		t.Fatalf("tree %v", got)
	}
	if names := storeNames(t, s2); !slices.Equal(names, []string{key}) {
		t.Fatalf("store holds %v", names)
	}
}
