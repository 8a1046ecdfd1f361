package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/records"
)

// seededMarker starts the error message of every record the load test seeds,
// so a seeded record can never be mistaken for a real VM.
const seededMarker = "SEEDED by e2e TestLoad: not a real VM"

// rssBound is the resident memory the daemon may use after the load test.
// Generous: the point is that a thousand records and tens of thousands of
// requests do not make the daemon grow without bound, not a tight budget.
const rssBound = 300 << 20

// TestLoadReadPath seeds 1,000 error records into the store before the
// daemon starts, creates 2 real guests through the API, then fires a fixed
// number of GET /vms/{id} and GET /vms on loopback with 8 workers. It
// proves the daemon starts over a large store, serves every request
// correctly under concurrency (no error, every record intact), and keeps its
// resident memory under rssBound. Speed is reported (LOAD: line), never
// asserted.
func TestLoadReadPath(t *testing.T) {
	requireEnv(t)
	seeded, guests, gets, lists, workers := 1000, 2, 20000, 200, 8
	if testing.Short() {
		seeded, guests, gets, lists = 200, 1, 2000, 20
	}
	// Baseline for the start-up time: the same daemon on an empty store.
	t0 := time.Now()
	empty := startDaemon(t, filepath.Join(t.TempDir(), "empty"))
	startupEmpty := time.Since(t0)
	empty.stop()

	dataDir := filepath.Join(t.TempDir(), "data")
	t0 = time.Now()
	seededIDs := seedErrorRecords(t, dataDir, seeded)
	t.Logf("seeded %d records in %s", seeded, time.Since(t0).Round(time.Millisecond))

	t0 = time.Now()
	d := startDaemon(t, dataDir)
	startup := time.Since(t0)
	t.Logf("daemon started over %d records in %s (empty store: %s)", seeded, startup.Round(time.Millisecond), startupEmpty.Round(time.Millisecond))

	// Recovery left the seeded records as they were.
	list, err := d.client.ListVMs(context.Background())
	if err != nil || len(list) != seeded {
		t.Fatalf("list after start: %v, %d records, want %d", err, len(list), seeded)
	}
	for _, v := range list {
		if v.Status != api.StatusError || v.Error == nil || !strings.HasPrefix(v.Error.Message, seededMarker) {
			t.Fatalf("seeded record changed by the daemon's start: %s", fmtVM(&v))
		}
	}

	srv := newImageServer(t)
	img := publish(t, srv, "qcow2")
	var realIDs []string
	for range guests {
		realIDs = append(realIDs, mustCreate(t, d, createReq(img, "")).ID)
	}
	for _, id := range realIDs {
		if got := waitVM(t, d, id, bootTimeout); got.Status != api.StatusRunning {
			t.Fatalf("guest %s: %s, want running", id, fmtVM(got))
		}
	}
	if n := srv.count("/qcow2/guest.qcow2"); n != 1 {
		t.Errorf("image downloaded %d times for %d guests, want once", n, guests)
	}

	pid := d.cmd.Process.Pid
	rssBefore, _ := procMemory(t, pid)
	ids := append(append([]string(nil), seededIDs...), realIDs...)

	cl := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: workers, MaxConnsPerHost: workers}}
	defer cl.CloseIdleConnections()
	base := "http://" + d.addr
	getStats := hammer(t, cl, gets, workers, func(i int) (string, func([]byte) error) {
		id := ids[i%len(ids)]
		return base + "/vms/" + id, func(b []byte) error {
			var v api.VM
			if err := json.Unmarshal(b, &v); err != nil {
				return err
			}
			if v.ID != id {
				return fmt.Errorf("asked for %s, got %s", id, v.ID)
			}
			return nil
		}
	})
	listStats := hammer(t, cl, lists, workers, func(int) (string, func([]byte) error) {
		return base + "/vms", func(b []byte) error {
			var l api.VMList
			if err := json.Unmarshal(b, &l); err != nil {
				return err
			}
			if len(l.VMs) != len(ids) {
				return fmt.Errorf("list has %d records, want %d", len(l.VMs), len(ids))
			}
			return nil
		}
	})
	rssAfter, hwm := procMemory(t, pid)
	load, _ := os.ReadFile("/proc/loadavg")

	t.Logf("GET /vms/{id}: %s", getStats)
	t.Logf("GET /vms (%d records each): %s", len(ids), listStats)
	t.Logf("daemon RSS: %d MiB before, %d MiB after, peak %d MiB", rssBefore>>20, rssAfter>>20, hwm>>20)
	fmt.Printf("LOAD: records=%d guests=%d workers=%d get_by_id=%d get_rps=%.0f get_p50=%s get_p99=%s list=%d list_rps=%.1f list_p50=%s list_p99=%s rss_before_mib=%d rss_after_mib=%d rss_peak_mib=%d startup=%s startup_empty=%s cores=%d loadavg=%q\n",
		len(ids), guests, workers, gets, getStats.rps, getStats.p50, getStats.p99,
		lists, listStats.rps, listStats.p50, listStats.p99, rssBefore>>20, rssAfter>>20, hwm>>20,
		startup.Round(time.Millisecond), startupEmpty.Round(time.Millisecond), runtime.NumCPU(), strings.TrimSpace(string(load)))

	if getStats.errors > 0 || listStats.errors > 0 {
		t.Errorf("%d GET /vms/{id} and %d GET /vms failed (first: %v %v)", getStats.errors, listStats.errors, getStats.firstErr, listStats.firstErr)
	}
	if rssAfter > rssBound {
		t.Errorf("daemon RSS %d MiB after the load, bound %d MiB", rssAfter>>20, rssBound>>20)
	}

	// The guests still run and are deleted cleanly; the seeded records stay.
	for _, id := range realIDs {
		if v, err := d.client.GetVM(context.Background(), id); err != nil || v.Status != api.StatusRunning {
			t.Errorf("guest %s after the load: %v %s", id, err, fmtVM(v))
		}
		if err := d.client.DeleteVM(context.Background(), id); err != nil {
			t.Fatalf("delete %s: %v", id, err)
		}
		assertGone(t, d, id)
	}
	if list, err := d.client.ListVMs(context.Background()); err != nil || len(list) != seeded {
		t.Errorf("list at the end: %v, %d records, want the %d seeded", err, len(list), seeded)
	}
}

// TestLoadConcurrentCreatesShareOneDownload sends 50 concurrent POST /vms of
// the same new image. The image server holds its answer until all 50 are
// accepted, so every creation waits on the same fetch. The package (a valid
// tar.gz holding only a README) downloads and verifies, then every VM fails
// at the clone with image-no-disk, so no guest boots. It proves: one
// download for 50 creations, 50 distinct ids, each record listed exactly
// once and ending in the same final error, and 50 deletes leaving nothing.
func TestLoadConcurrentCreatesShareOneDownload(t *testing.T) {
	requireEnv(t)
	n := 50
	if testing.Short() {
		n = 20
	}
	files := newImageServer(t)
	img := serveReadmeOnly(t, files, "concurrent")
	path := img.URL[len(files.URL):]
	gate := make(chan struct{})
	var gateOnce sync.Once
	openGate := func() { gateOnce.Do(func() { close(gate) }) }
	var downloads atomic.Int32
	held := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == path {
			downloads.Add(1)
			select {
			case <-gate:
			case <-time.After(30 * time.Second): // never hang the suite
			}
		}
		http.FileServer(http.Dir(files.dir)).ServeHTTP(w, r)
	}))
	t.Cleanup(held.Close)
	t.Cleanup(openGate) // runs first: a held handler must not block Close
	img.URL = held.URL + path

	d := startDaemon(t, filepath.Join(t.TempDir(), "data"))
	ids := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err := d.client.CreateVM(context.Background(), createReq(img, ""))
			if err == nil {
				ids[i] = v.ID
				if v.Status != api.StatusCreating {
					err = fmt.Errorf("answered %s", fmtVM(v))
				}
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	openGate()
	seen := map[string]bool{}
	for i, err := range errs {
		if err != nil {
			t.Fatalf("POST %d: %v", i, err)
		}
		if seen[ids[i]] {
			t.Fatalf("id %s handed out twice", ids[i])
		}
		seen[ids[i]] = true
	}

	var final []api.VM
	waitFor(t, fmt.Sprintf("%d creations to end", n), 3*time.Minute, func() bool {
		list, err := d.client.ListVMs(context.Background())
		if err != nil {
			t.Fatalf("list: %v", err)
		}
		for _, v := range list {
			if !v.Status.IsFinal() {
				return false
			}
		}
		final = list
		return true
	})
	count := map[string]int{}
	for _, v := range final {
		count[v.ID]++
		if v.Status != api.StatusError || v.Error == nil || v.Error.Code != "image-no-disk" {
			t.Errorf("VM %s ended %s, want error image-no-disk", v.ID, fmtVM(&v))
		}
	}
	if len(final) != n {
		t.Errorf("list has %d records, want %d", len(final), n)
	}
	for _, id := range ids {
		if count[id] != 1 {
			t.Errorf("VM %s listed %d times, want once", id, count[id])
		}
	}
	if got := downloads.Load(); got != 1 {
		t.Errorf("the image server saw %d downloads for %d concurrent creations, want 1", got, n)
	}
	// The package has no disk: refused before it is published, so the
	// store holds nothing.
	assertImageStoreHolds(t, d.dataDir)

	// Delete them all, 8 at a time.
	work := make(chan string)
	var delErrs atomic.Int32
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range work {
				if err := d.client.DeleteVM(context.Background(), id); err != nil {
					delErrs.Add(1)
					t.Errorf("delete %s: %v", id, err)
				}
			}
		}()
	}
	for _, id := range ids {
		work <- id
	}
	close(work)
	wg.Wait()
	for _, id := range ids {
		if _, err := d.client.GetVM(context.Background(), id); !isAPIError(err, 404, "vm-not-found") {
			t.Errorf("GET %s after delete: %v, want 404", id, err)
		}
	}
	if list, err := d.client.ListVMs(context.Background()); err != nil || len(list) != 0 {
		t.Errorf("list after deleting all: %v, %d records", err, len(list))
	}
	if entries, _ := os.ReadDir(filepath.Join(d.dataDir, "vms")); len(entries) != 0 {
		t.Errorf("vms directory not empty: %v", entries)
	}
	if pids := processesMatching(filepath.Join(d.dataDir, "vms")); len(pids) != 0 {
		t.Errorf("processes refer to the VM directory: %v", pids)
	}
}

// seedErrorRecords writes n records in status "error" straight into the
// store of dataDir, as a long-lived daemon would have accumulated, and
// returns their ids. Every one is marked with seededMarker.
func seedErrorRecords(t *testing.T, dataDir string, n int) []string {
	t.Helper()
	db, err := records.Open(filepath.Join(dataDir, "goldvm.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	codes := []string{"checksum-mismatch", "image-download-failed", "discovery-timeout", "image-no-disk"}
	ids := make([]string, 0, n)
	base := time.Now().UTC().Add(-time.Duration(n) * time.Minute)
	for i := range n {
		sum := make([]byte, 32)
		rand.Read(sum)
		id := records.NewID()
		created := base.Add(time.Duration(i) * time.Minute)
		r := &records.Record{
			VM: api.VM{
				ID: id, Status: api.StatusError, Backend: "qemu", CPUs: 1 + i%4, MemoryMiB: int64(128 << (i % 3)),
				NetworkType: "nat", Headless: true, ToolsInitTimeout: api.Duration(5 * time.Minute),
				Image: api.Image{URL: "http://127.0.0.1:9/seeded/image-" + strconv.Itoa(i%20) + ".tar.gz",
					Checksum: hex.EncodeToString(sum), ChecksumType: "sha256"},
				Error: &api.Error{Code: codes[i%len(codes)],
					Message: seededMarker + " (#" + strconv.Itoa(i) + "): the image of this record never existed"},
				CreatedAt: created, UpdatedAt: created.Add(20 * time.Second),
			},
			Dir: filepath.Join(dataDir, "vms", id),
		}
		if i%3 == 0 {
			r.CallbackURL = "http://127.0.0.1:9/seeded-callback"
			r.Callback = &api.CallbackDelivery{State: api.CallbackDelivered, Attempts: 1, StatusCode: 200,
				LastAttempt: r.UpdatedAt, DeliveredAt: r.UpdatedAt}
		}
		if err := db.Create(r); err != nil {
			t.Fatalf("seed record %d: %v", i, err)
		}
		ids = append(ids, id)
	}
	return ids
}

// loadStats summarises one batch of requests.
type loadStats struct {
	n, errors int
	firstErr  error
	elapsed   time.Duration
	rps       float64
	p50, p99  time.Duration
	max       time.Duration
}

func (s loadStats) String() string {
	return fmt.Sprintf("%d requests in %s: %.0f req/s, p50 %s, p99 %s, max %s, %d errors",
		s.n, s.elapsed.Round(time.Millisecond), s.rps, s.p50, s.p99, s.max, s.errors)
}

// hammer sends n GETs with the given number of workers; req(i) names the
// URL of request i and a check of its 200 body. It is bounded by count (and
// each request by a 30s timeout), never by a time budget.
func hammer(t *testing.T, cl *http.Client, n, workers int, req func(i int) (string, func([]byte) error)) loadStats {
	t.Helper()
	var next atomic.Int64
	var mu sync.Mutex
	st := loadStats{n: n}
	lat := make([]time.Duration, 0, n)
	var wg sync.WaitGroup
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mine := make([]time.Duration, 0, n/workers+1)
			var errs int
			var first error
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					break
				}
				url, check := req(i)
				t0 := time.Now()
				err := getOnce(cl, url, check)
				mine = append(mine, time.Since(t0))
				if err != nil {
					errs++
					if first == nil {
						first = err
					}
				}
			}
			mu.Lock()
			lat = append(lat, mine...)
			st.errors += errs
			if st.firstErr == nil {
				st.firstErr = first
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	st.elapsed = time.Since(start)
	st.rps = float64(n) / st.elapsed.Seconds()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[min(len(lat)-1, int(p*float64(len(lat))))].Round(10 * time.Microsecond)
	}
	st.p50, st.p99, st.max = pct(0.50), pct(0.99), pct(1)
	return st
}

func getOnce(cl *http.Client, url string, check func([]byte) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := cl.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %d %s", url, resp.StatusCode, b)
	}
	return check(b)
}

// procMemory returns the current and peak resident set of a process, from
// /proc/<pid>/status (VmRSS, VmHWM).
func procMemory(t *testing.T, pid int) (rss, hwm int64) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("daemon status: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			rss = kb << 10
		case "VmHWM:":
			hwm = kb << 10
		}
	}
	return rss, hwm
}
