package records

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"slices"

	bolt "go.etcd.io/bbolt"

	"github.com/goldvm/goldvm/api"
)

// Secondary indexes of the VM records, so that a page of GET /vms costs
// O(page) whatever the number of records:
//
//	vms_by_status → <status> 0x00 <vm id>          → empty
//	vms_by_tag    → <key> 0x00 <value> 0x00 <vm id> → empty
//
// Every entry ends with the VM id, and ids have a fixed length (idLen), so
// an entry belongs to a prefix only when it is exactly idLen bytes longer
// than it: a tag value holding 0x00 cannot pass for another's entry. The
// entries are written in the same transaction as the record, so they
// cannot disagree with it. meta → "index" holds indexVersion; a database
// without it (made before the indexes, or by a version with another
// layout) has its indexes rebuilt by Open.
var (
	bucketByStatus = []byte("vms_by_status")
	bucketByTag    = []byte("vms_by_tag")
	metaIndex      = []byte("index")
)

// indexVersion is the layout of the index buckets above.
const indexVersion = "1"

// idLen is the length of an id made by NewID.
const idLen = 23

// statusPrefix is the prefix of the status index entries of st.
func statusPrefix(st api.Status) []byte {
	return append([]byte(st), 0)
}

// tagPrefix is the prefix of the tag index entries of k=v.
func tagPrefix(k, v string) []byte {
	b := make([]byte, 0, len(k)+len(v)+2)
	b = append(b, k...)
	b = append(b, 0)
	b = append(b, v...)
	return append(b, 0)
}

// indexEntry is one entry of an index bucket.
type indexEntry struct {
	bucket []byte
	key    []byte
}

// indexEntries are the index entries of a record (none for nil).
func indexEntries(r *Record) []indexEntry {
	if r == nil {
		return nil
	}
	out := []indexEntry{{bucketByStatus, append(statusPrefix(r.Status), r.ID...)}}
	for _, k := range slices.Sorted(maps.Keys(r.Tags)) {
		out = append(out, indexEntry{bucketByTag, append(tagPrefix(k, r.Tags[k]), r.ID...)})
	}
	return out
}

// reindex replaces the index entries a record had (nil for a new record)
// by those of cur (nil for a deleted record), in tx.
func reindex(tx *bolt.Tx, had []indexEntry, cur *Record) error {
	want := indexEntries(cur)
	has := func(list []indexEntry, e indexEntry) bool {
		return slices.ContainsFunc(list, func(x indexEntry) bool {
			return bytes.Equal(x.bucket, e.bucket) && bytes.Equal(x.key, e.key)
		})
	}
	for _, e := range had {
		if !has(want, e) {
			if err := tx.Bucket(e.bucket).Delete(e.key); err != nil {
				return fmt.Errorf("index entry %q: %w", e.key, err)
			}
		}
	}
	for _, e := range want {
		if has(had, e) {
			continue
		}
		if err := tx.Bucket(e.bucket).Put(e.key, []byte{}); err != nil {
			return fmt.Errorf("index of %s: %w", cur.ID, err)
		}
	}
	return nil
}

// rebuildBatch is how many records one transaction of a rebuild indexes:
// one transaction for all would cost more than linear time in bbolt. (A
// variable for the tests, which rebuild in many small batches.)
var rebuildBatch = 5000

// ensureIndexes makes the index buckets and, when meta does not say they
// are of indexVersion, rebuilds them from the records, rebuildBatch
// records a transaction. meta says indexVersion only once all are done, so
// a rebuild cut short starts again at the next Open.
func (s *DB) ensureIndexes() error {
	done := false
	s.db.View(func(tx *bolt.Tx) error {
		done = string(tx.Bucket(bucketMeta).Get(metaIndex)) == indexVersion &&
			tx.Bucket(bucketByStatus) != nil && tx.Bucket(bucketByTag) != nil
		return nil
	})
	if done {
		return nil
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketMeta).Delete(metaIndex); err != nil {
			return err
		}
		for _, name := range [][]byte{bucketByStatus, bucketByTag} {
			if tx.Bucket(name) != nil {
				if err := tx.DeleteBucket(name); err != nil {
					return err
				}
			}
			if _, err := tx.CreateBucket(name); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("rebuild indexes: %w", err)
	}
	var last []byte
	for more := true; more; {
		err := s.db.Update(func(tx *bolt.Tx) error {
			c := tx.Bucket(bucketVMs).Cursor()
			k, v := c.First()
			if last != nil {
				if k, v = c.Seek(last); bytes.Equal(k, last) {
					k, v = c.Next()
				}
			}
			for i := 0; k != nil && i < rebuildBatch; i++ {
				r := new(Record)
				if err := json.Unmarshal(v, r); err != nil {
					return fmt.Errorf("decode record %s: %w", k, err)
				}
				if err := reindex(tx, nil, r); err != nil {
					return err
				}
				last = slices.Clone(k)
				k, v = c.Next()
			}
			more = k != nil
			return nil
		})
		if err != nil {
			return fmt.Errorf("rebuild indexes: %w", err)
		}
	}
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(metaIndex, []byte(indexVersion)) })
}

// Query selects a page of VM records for Page. The zero Query is every
// record, newest first.
type Query struct {
	// Statuses keeps the records with one of these statuses (none: all).
	Statuses []api.Status
	// Tags keeps the records that carry every key=value given.
	Tags map[string]string
	// After, when set, keeps the records created before the VM of this id
	// (which need not exist any more): the page after the one it ended.
	After string
	// Limit is the most records returned (0: no limit).
	Limit int
}

// Match reports whether Query selects r, After and Limit aside.
func (q Query) Match(r *Record) bool {
	if len(q.Statuses) > 0 && !slices.Contains(q.Statuses, r.Status) {
		return false
	}
	for k, v := range q.Tags {
		if got, ok := r.Tags[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// Page returns the records Query selects, newest first, and, when more
// follow, the id to pass as After for the next page (the last one
// returned). Its cost grows with the records it returns and the index
// entries it skips, not with the number of records: a walk over the ids
// alone, or over the status and tag indexes together (a leapfrog join of
// id-ordered cursors), seeks straight to each next match.
func (s *DB) Page(q Query) ([]*Record, string, error) {
	var out []*Record
	next := ""
	err := s.db.View(func(tx *bolt.Tx) error {
		var streams []idStream
		if len(q.Statuses) > 0 {
			var u unionStream
			for _, st := range slices.Compact(slices.Sorted(slices.Values(q.Statuses))) {
				u = append(u, &prefixStream{c: tx.Bucket(bucketByStatus).Cursor(), prefix: statusPrefix(st)})
			}
			streams = append(streams, u)
		}
		for _, k := range slices.Sorted(maps.Keys(q.Tags)) {
			streams = append(streams, &prefixStream{c: tx.Bucket(bucketByTag).Cursor(), prefix: tagPrefix(k, q.Tags[k])})
		}
		if len(streams) == 0 {
			streams = append(streams, &prefixStream{c: tx.Bucket(bucketVMs).Cursor()})
		}
		b := tx.Bucket(bucketVMs)
		var bound []byte
		inclusive := false
		if q.After != "" {
			bound = []byte(q.After)
		}
		for {
			id, ok := join(streams, bound, inclusive)
			if !ok {
				return nil
			}
			if q.Limit > 0 && len(out) == q.Limit {
				next = out[len(out)-1].ID
				return nil
			}
			v := b.Get(id)
			if v == nil {
				return fmt.Errorf("index entry of %s has no record", id)
			}
			r := new(Record)
			if err := json.Unmarshal(v, r); err != nil {
				return fmt.Errorf("decode record %s: %w", id, err)
			}
			out = append(out, r)
			bound, inclusive = id, false
		}
	})
	return out, next, err
}

// idStream is an id-ordered set of VM ids.
type idStream interface {
	// seek returns the greatest id below bound (at or below it when
	// inclusive; bound nil: no bound), or false when there is none.
	seek(bound []byte, inclusive bool) ([]byte, bool)
}

// join returns the greatest id below bound that every stream holds: a
// leapfrog join, each stream seeking to the candidate of the one before.
func join(streams []idStream, bound []byte, inclusive bool) ([]byte, bool) {
	cand, ok := streams[0].seek(bound, inclusive)
	for i := 1; ok; i++ {
		if i == len(streams) {
			return cand, true
		}
		var got []byte
		if got, ok = streams[i].seek(cand, true); ok && !bytes.Equal(got, cand) {
			// streams[i] has nothing from got up to cand: start again
			// from got.
			cand, ok = streams[0].seek(got, true)
			i = 0
		}
	}
	return nil, false
}

// prefixStream is the ids of the keys of a bucket under a prefix: an index
// bucket, or the records themselves (prefix nil).
type prefixStream struct {
	c      *bolt.Cursor
	prefix []byte
}

func (p *prefixStream) seek(bound []byte, inclusive bool) ([]byte, bool) {
	var k []byte
	if bound == nil {
		// The last key under the prefix: the one before the first key
		// past it (the prefix ends with 0x00, so +1 stays one byte).
		if len(p.prefix) == 0 {
			k, _ = p.c.Last()
		} else {
			end := append(slices.Clone(p.prefix[:len(p.prefix)-1]), p.prefix[len(p.prefix)-1]+1)
			if k, _ = p.c.Seek(end); k == nil {
				k, _ = p.c.Last()
			} else {
				k, _ = p.c.Prev()
			}
		}
	} else {
		key := append(slices.Clone(p.prefix), bound...)
		k, _ = p.c.Seek(key)
		if k == nil {
			k, _ = p.c.Last()
		} else if !inclusive || !bytes.Equal(k, key) {
			k, _ = p.c.Prev()
		}
	}
	// Keys of another prefix that sort within this one (a longer tag
	// value holding 0x00) are skipped by their length.
	for ; k != nil && bytes.HasPrefix(k, p.prefix); k, _ = p.c.Prev() {
		if len(k) == len(p.prefix)+idLen {
			return k[len(p.prefix):], true
		}
	}
	return nil, false
}

// unionStream is the ids of any of its streams.
type unionStream []idStream

func (u unionStream) seek(bound []byte, inclusive bool) ([]byte, bool) {
	var best []byte
	for _, s := range u {
		if id, ok := s.seek(bound, inclusive); ok && bytes.Compare(id, best) > 0 {
			best = id
		}
	}
	return best, best != nil
}
