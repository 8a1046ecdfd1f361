// Command listbench measures GET /vms pages against GET /vms/{id} on the
// real API (server, VM manager, bbolt store) over loopback HTTP, with a
// store of -n VM records. It writes the records as a database from before
// the listing indexes (the vms bucket alone), so opening it also measures
// the one-time index rebuild of an upgrade. It prints the p50 and p99 of
// each request and the ratio of its p50 to that of GET /vms/{id} in the
// same run. bench/list.sh runs it at 1,000 and 100,000 records.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/hypervisor/fakedriver"
	"github.com/goldvm/goldvm/internal/image"
	"github.com/goldvm/goldvm/internal/records"
	"github.com/goldvm/goldvm/internal/server"
	"github.com/goldvm/goldvm/internal/vm"
)

func main() {
	n := flag.Int("n", 1000, "VM records in the store")
	reqs := flag.Int("reqs", 2000, "requests per endpoint")
	full := flag.Int("full", 20, "requests of GET /vms without a limit (0: none)")
	profile := flag.String("cpuprofile", "", "write a CPU profile of the requests to this file")
	flag.Parse()
	if *profile != "" {
		f, err := os.Create(*profile)
		if err != nil {
			log.Fatal(err)
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	if err := run(*n, *reqs, *full); err != nil {
		pprof.StopCPUProfile()
		log.Fatal(err)
	}
}

const crockford = "0123456789abcdefghjkmnpqrstvwxyz"

// idAt is an id as records.NewID makes it at time t.
func idAt(t time.Time, rng *rand.Rand) string {
	b := []byte("vm-")
	ms := uint64(t.UnixMilli())
	for i := 9; i >= 0; i-- {
		b = append(b, crockford[(ms>>(uint(i)*5))&31])
	}
	for range 10 {
		b = append(b, crockford[rng.IntN(32)])
	}
	return string(b)
}

// seed writes n records, one a minute up to now: 70% running, the rest
// stopped, error or creating; a third carry team=a|b|c, every tenth the
// tags of a group. It returns their ids, oldest first.
func seed(path string, n int) ([]string, error) {
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	rng := rand.New(rand.NewPCG(1, 2))
	base := time.Now().UTC().Add(-time.Duration(n) * time.Minute)
	ids := make([]string, 0, n)
	statuses := []api.Status{api.StatusRunning, api.StatusRunning, api.StatusRunning, api.StatusRunning, api.StatusRunning, api.StatusRunning, api.StatusRunning, api.StatusStopped, api.StatusError, api.StatusCreating}
	for start := 0; start < n; start += 10000 {
		err := db.Update(func(tx *bolt.Tx) error {
			meta, err := tx.CreateBucketIfNotExists([]byte("meta"))
			if err != nil {
				return err
			}
			if err := meta.Put([]byte("schema"), []byte("1")); err != nil {
				return err
			}
			b, err := tx.CreateBucketIfNotExists([]byte("vms"))
			if err != nil {
				return err
			}
			for i := start; i < min(n, start+10000); i++ {
				created := base.Add(time.Duration(i) * time.Minute)
				id := idAt(created, rng)
				r := records.Record{VM: api.VM{
					ID: id, Status: statuses[i%len(statuses)], Backend: "fake", CPUs: 2, MemoryMiB: 2048,
					NetworkType: api.NetworkNAT, Headless: true, ToolsInitTimeout: api.Duration(5 * time.Minute),
					Image: api.Image{URL: "http://images.example/ci/debian-" + strconv.Itoa(i%20) + ".tar.gz",
						Checksum: fmt.Sprintf("%064x", i%20), ChecksumType: "sha256"},
					IPAddress: fmt.Sprintf("10.0.%d.%d", i/250%250, i%250+2), GuestOS: "Debian GNU/Linux 12 (bookworm)",
					CreatedAt: created, UpdatedAt: created.Add(20 * time.Second),
				}, Dir: "/var/lib/goldvm/vms/" + id}
				if i%3 == 0 {
					r.Tags = map[string]string{"team": string(rune('a' + i%9/3))}
				}
				if i%10 == 0 {
					if r.Tags == nil {
						r.Tags = map[string]string{}
					}
					r.Tags[api.TagGroup] = "ci"
					r.Tags[api.TagTemplate] = "0123456789abcdef"
				}
				data, err := json.Marshal(r)
				if err != nil {
					return err
				}
				if err := b.Put([]byte(id), data); err != nil {
					return err
				}
				ids = append(ids, id)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return ids, nil
}

// get sends one GET and returns how long the reply took to the last byte.
func get(c *http.Client, url string) (time.Duration, error) {
	start := time.Now()
	resp, err := c.Get(url)
	if err != nil {
		return 0, err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return time.Since(start), nil
}

func pct(lat []time.Duration, p int) time.Duration { return lat[(len(lat)-1)*p/100] }

func ms(d time.Duration) string { return strconv.FormatFloat(d.Seconds()*1000, 'f', 3, 64) }

func run(n, reqs, full int) error {
	dir, err := os.MkdirTemp("", "listbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "goldvm.db")
	ids, err := seed(path, n)
	if err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	start := time.Now()
	db, err := records.Open(path)
	if err != nil {
		return err
	}
	defer db.Close()
	rebuild := time.Since(start)
	quiet := slog.New(slog.DiscardHandler)
	images, err := image.NewStore(filepath.Join(dir, "images"), image.Options{Logger: quiet})
	if err != nil {
		return err
	}
	defer images.Close()
	mgr := vm.New(vm.Config{VMDir: filepath.Join(dir, "vms"), Store: db, Images: images, Driver: fakedriver.NewHost().New(), Logger: quiet})
	defer mgr.Close()
	srv := httptest.NewServer(server.New(server.Config{VMs: mgr, Images: images, Logger: quiet}))
	defer srv.Close()
	c := srv.Client()

	rng := rand.New(rand.NewPCG(3, 4))
	middle := ids[len(ids)/2]
	type row struct {
		name string
		reqs int
		next func(int) string
	}
	rows := []row{
		{"GET /vms/{id}", reqs, func(int) string { return "/vms/" + ids[rng.IntN(len(ids))] }},
		{"GET /vms?limit=50", reqs, func(int) string { return "/vms?limit=50" }},
		{"GET /vms?limit=50&after={middle}", reqs, func(int) string { return "/vms?limit=50&after=" + middle }},
		{"GET /vms?limit=50&status=running", reqs, func(int) string { return "/vms?limit=50&status=running" }},
		{"GET /vms?limit=50&status=error", reqs, func(int) string { return "/vms?limit=50&status=error" }},
		{"GET /vms?limit=50&tag=team=b", reqs, func(int) string { return "/vms?limit=50&tag=team=b" }},
		{"GET /vms?limit=50&status=running&tag=goldvm.group=ci", reqs, func(int) string {
			return "/vms?limit=50&status=running&tag=goldvm.group=ci"
		}},
	}
	if full > 0 {
		rows = append(rows, row{"GET /vms (all " + strconv.Itoa(n) + ")", full, func(int) string { return "/vms" }})
	}
	fmt.Printf("records: %d   index rebuild on open: %s ms   requests: %d per row, one at a time, the rows in turn\n\n", n, ms(rebuild), reqs)
	// The rows take turns, one request each, so that a change of the
	// machine's load during the run weighs on all of them alike.
	lat := make([][]time.Duration, len(rows))
	for round := -50; round < reqs; round++ { // 50 rounds of warm-up
		for i, r := range rows {
			if round >= r.reqs {
				continue
			}
			d, err := get(c, srv.URL+r.next(round))
			if err != nil {
				return err
			}
			if round >= 0 {
				lat[i] = append(lat[i], d)
			}
		}
	}
	fmt.Printf("%-56s %10s %10s %12s\n", "request", "p50 ms", "p99 ms", "p50/get")
	for i, r := range rows {
		slices.Sort(lat[i])
		fmt.Printf("%-56s %10s %10s %12.1f\n", r.name, ms(pct(lat[i], 50)), ms(pct(lat[i], 99)), float64(pct(lat[i], 50))/float64(pct(lat[0], 50)))
	}
	return nil
}
