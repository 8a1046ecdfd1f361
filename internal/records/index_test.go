package records

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/goldvm/goldvm/api"
)

// testID is the i-th of a series of valid ids in creation order.
func testID(i int) string {
	var b strings.Builder
	b.WriteString("vm-")
	for d := 19; d >= 0; d-- {
		b.WriteByte(crockford[(i>>(uint(d)*5))&31])
	}
	return b.String()
}

var (
	testStatuses = []api.Status{api.StatusCreating, api.StatusRunning, api.StatusStopped, api.StatusError, api.StatusSuspended}
	// testTagValues hold values that are prefixes of each other and values
	// with 0x00, which must not pass for one another in the tag index.
	testTagValues = []string{"a", "a\x00", "a\x00b", "ab", "", "b"}
)

// randomTags returns up to three tags of keys k0..k2.
func randomTags(rng *rand.Rand) map[string]string {
	tags := map[string]string{}
	for k := range 3 {
		if rng.IntN(2) == 0 {
			tags[fmt.Sprintf("k%d", k)] = testTagValues[rng.IntN(len(testTagValues))]
		}
	}
	if len(tags) == 0 {
		return nil
	}
	return tags
}

// fill writes n records with random statuses and tags, then changes and
// deletes some, and returns the rng for the queries.
func fill(t *testing.T, s *DB, n int) *rand.Rand {
	t.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range n {
		r := &Record{VM: api.VM{ID: testID(i + 1), Status: testStatuses[rng.IntN(len(testStatuses))], Tags: randomTags(rng)}}
		if err := s.Create(r); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		switch rng.IntN(4) {
		case 0:
			if _, err := s.Update(testID(i+1), func(r *Record) error {
				r.Status = testStatuses[rng.IntN(len(testStatuses))]
				r.Tags = randomTags(rng)
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		case 1:
			if err := s.Delete(testID(i + 1)); err != nil {
				t.Fatal(err)
			}
		}
	}
	return rng
}

// matches is what Page must return for q, from a scan of every record.
func matches(t *testing.T, s *DB, q Query) []string {
	t.Helper()
	all, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range all {
		if (q.After == "" || r.ID < q.After) && q.Match(r) {
			out = append(out, r.ID)
		}
	}
	return out
}

// pageAll pages through q with Page and returns every id, checking that
// each page holds at most q.Limit records and that next is its last id.
func pageAll(t *testing.T, s *DB, q Query) []string {
	t.Helper()
	var out []string
	for pages := 0; ; pages++ {
		recs, next, err := s.Page(q)
		if err != nil {
			t.Fatalf("Page(%+v): %v", q, err)
		}
		if q.Limit > 0 && len(recs) > q.Limit {
			t.Fatalf("Page(%+v) returned %d records", q, len(recs))
		}
		for _, r := range recs {
			out = append(out, r.ID)
		}
		if next == "" {
			return out
		}
		if next != recs[len(recs)-1].ID {
			t.Fatalf("Page(%+v): next %s is not the last id %s", q, next, recs[len(recs)-1].ID)
		}
		q.After = next
	}
}

// checkQueries compares Page with a scan for filters of statuses and tags
// alone and together, with and without limits and a starting point.
func checkQueries(t *testing.T, s *DB, rng *rand.Rand, n int) {
	t.Helper()
	queries := []Query{{}, {Limit: 1}, {Limit: 7}, {After: testID(n / 2)}, {After: testID(n + 10), Limit: 3}}
	for range 200 {
		q := Query{Limit: rng.IntN(12)}
		for _, st := range testStatuses {
			if rng.IntN(3) == 0 {
				q.Statuses = append(q.Statuses, st)
			}
		}
		q.Tags = randomTags(rng)
		if rng.IntN(3) == 0 {
			q.After = testID(1 + rng.IntN(n))
		}
		queries = append(queries, q)
	}
	for _, q := range queries {
		want := matches(t, s, q)
		if got := pageAll(t, s, q); !slices.Equal(got, want) {
			t.Fatalf("Page(%+v) pages hold\n%q\nwant\n%q", q, got, want)
		}
	}
}

// TestPageMatchesScan: paging with every kind of filter returns exactly
// the records a scan of all of them selects, newest first, after creates,
// updates and deletes.
func TestPageMatchesScan(t *testing.T) {
	s, _ := openTemp(t)
	defer s.Close()
	const n = 300
	checkQueries(t, s, fill(t, s, n), n)
}

// TestIndexesRebuiltOnOpen: a database whose indexes are missing (made
// before them) or of another layout gets them rebuilt by Open.
func TestIndexesRebuiltOnOpen(t *testing.T) {
	for _, damage := range []string{"missing", "other version"} {
		t.Run(damage, func(t *testing.T) {
			s, path := openTemp(t)
			const n = 120
			rng := fill(t, s, n)
			err := s.db.Update(func(tx *bolt.Tx) error {
				if damage == "missing" {
					if err := tx.DeleteBucket(bucketByStatus); err != nil {
						return err
					}
					if err := tx.DeleteBucket(bucketByTag); err != nil {
						return err
					}
					return tx.Bucket(bucketMeta).Delete(metaIndex)
				}
				// A layout this version does not know: its entries
				// are wrong for it.
				if err := tx.Bucket(bucketByStatus).Put([]byte("garbage"), []byte{}); err != nil {
					return err
				}
				return tx.Bucket(bucketMeta).Put(metaIndex, []byte("0"))
			})
			if err != nil {
				t.Fatal(err)
			}
			s.Close()
			// Batches of 7 records: the rebuild goes on where each
			// transaction stopped.
			defer func(n int) { rebuildBatch = n }(rebuildBatch)
			rebuildBatch = 7
			s, err = Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			checkQueries(t, s, rng, n)
		})
	}
}

// TestCreateRefusesForeignID: the indexes rely on ids of NewID's shape.
func TestCreateRefusesForeignID(t *testing.T) {
	s, _ := openTemp(t)
	defer s.Close()
	if err := s.Create(&Record{VM: api.VM{ID: "vm-1"}}); err == nil {
		t.Fatal("Create of id vm-1 succeeded")
	}
}

// BenchmarkPage compares a 50-record page, filtered and not, with a Get
// of one record, over 10,000 records (bench/listbench measures the API).
func BenchmarkPage(b *testing.B) {
	s, err := Open(b.TempDir() + "/goldvm.db")
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	const n = 10000
	err = s.db.Update(func(tx *bolt.Tx) error {
		rng := rand.New(rand.NewPCG(1, 2))
		for i := range n {
			r := &Record{VM: api.VM{ID: testID(i + 1), Status: testStatuses[rng.IntN(len(testStatuses))], Tags: randomTags(rng)}}
			if err := putRecord(tx, r); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Run("get", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			if _, err := s.Get(testID(1 + i%n)); err != nil {
				b.Fatal(err)
			}
		}
	})
	for name, q := range map[string]Query{
		"page":            {Limit: 50},
		"page-status":     {Limit: 50, Statuses: []api.Status{api.StatusRunning}},
		"page-tag":        {Limit: 50, Tags: map[string]string{"k1": "a"}},
		"page-status-tag": {Limit: 50, Statuses: []api.Status{api.StatusRunning}, Tags: map[string]string{"k0": "b", "k2": "ab"}},
	} {
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				if _, _, err := s.Page(q); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
