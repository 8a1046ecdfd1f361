// Package store keeps goldvm's VM records in an embedded bbolt database.
//
// Schema (bucket → key → value):
//
//	meta → "schema"   → "1"
//	vms    → <vm id>    → JSON of Record
//	groups → <name>     → JSON of Group (see groups.go; made by the first write)
//	vms_by_status, vms_by_tag: indexes of the records (see index.go)
//
// VM ids sort by creation time (see NewID), so a reverse cursor walk lists
// the newest first. Every write is one bbolt transaction: fsynced and atomic,
// so a crash leaves either the old or the new record, never half of one.
package records

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
)

const schemaVersion = "1"

var (
	bucketMeta = []byte("meta")
	bucketVMs  = []byte("vms")
)

// Record is a VM as goldvm keeps it: the API view plus what the daemon needs
// to find its files again after a restart. (Its gold image follows from
// VM.Image: the image store's key is derived from the checksum.)
type Record struct {
	api.VM
	// Dir is the VM's own directory; every file the driver made lives there.
	Dir string `json:"dir"`
	// UserData is the cloud-init user-data given at creation. It is kept
	// here, not in the API view, because it may hold secrets: only the VM
	// itself reads it back (seed CD-ROM, metadata service).
	UserData string `json:"user_data,omitempty"`
	// Requested is the hardware the create request asked for (its
	// machine object with cpus and memory folded in), kept to merge with
	// the image's when a creation is resumed.
	Requested *api.Machine `json:"requested_machine,omitempty"`
	// VNCSocket is the VM's VNC server's unix socket, for drivers that
	// have one.
	VNCSocket string `json:"vnc_socket,omitempty"`
	// KernelPath, InitrdPath and CDROMPaths are the VM's boot media in
	// the media store, set once they are fetched.
	KernelPath string   `json:"kernel_path,omitempty"`
	InitrdPath string   `json:"initrd_path,omitempty"`
	CDROMPaths []string `json:"cdrom_paths,omitempty"`
	// PhaseSince is when the creation entered its current phase (for
	// VM.PhaseTimes).
	PhaseSince time.Time `json:"phase_since,omitzero"`
}

// DB is the VM record database. It is safe for concurrent use.
type DB struct {
	db *bolt.DB
}

// Open opens (creating if needed) the database at path. It fails with a clear
// error if another goldvm process holds the database.
func Open(path string) (*DB, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create store directory: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("open %s: another goldvm daemon is using this data directory", path)
		}
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		if v := meta.Get([]byte("schema")); v != nil && string(v) != schemaVersion {
			return fmt.Errorf("store schema %q is not supported (want %s)", v, schemaVersion)
		}
		if err := meta.Put([]byte("schema"), []byte(schemaVersion)); err != nil {
			return err
		}
		_, err = tx.CreateBucketIfNotExists(bucketVMs)
		return err
	})
	if err == nil {
		err = (&DB{db: db}).ensureIndexes()
	}
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("initialise store %s: %w", path, err)
	}
	return &DB{db: db}, nil
}

// Close closes the database.
func (s *DB) Close() error { return s.db.Close() }

// notFound is the error for an unknown VM id.
func notFound(id string) error {
	return errdefs.Newf(errdefs.ErrNotFound, "vm-not-found", "no VM with id %q", id)
}

// Create stores a new record; it fails if the id is taken or is not one
// NewID makes.
func (s *DB) Create(r *Record) error {
	return s.db.Update(func(tx *bolt.Tx) error { return putRecord(tx, r) })
}

// putRecord stores a new record and its index entries in tx.
func putRecord(tx *bolt.Tx, r *Record) error {
	if !ValidID(r.ID) {
		return fmt.Errorf("record id %q is not one NewID makes", r.ID)
	}
	data, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode record %s: %w", r.ID, err)
	}
	b := tx.Bucket(bucketVMs)
	if b.Get([]byte(r.ID)) != nil {
		return fmt.Errorf("record %s already exists", r.ID)
	}
	if err := b.Put([]byte(r.ID), data); err != nil {
		return err
	}
	return reindex(tx, nil, r)
}

// Get returns the record with the given id, or an errdefs.ErrNotFound error.
func (s *DB) Get(id string) (*Record, error) {
	var r *Record
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketVMs).Get([]byte(id))
		if v == nil {
			return notFound(id)
		}
		r = new(Record)
		return json.Unmarshal(v, r)
	})
	return r, err
}

// Update reads the record, lets fn change it and writes it back in one
// transaction. If fn returns an error nothing is written. UpdatedAt is set.
func (s *DB) Update(id string, fn func(*Record) error) (*Record, error) {
	var r *Record
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketVMs)
		v := b.Get([]byte(id))
		if v == nil {
			return notFound(id)
		}
		r = new(Record)
		if err := json.Unmarshal(v, r); err != nil {
			return fmt.Errorf("decode record %s: %w", id, err)
		}
		indexed := indexEntries(r)
		if err := fn(r); err != nil {
			return err
		}
		r.UpdatedAt = time.Now().UTC()
		data, err := json.Marshal(r)
		if err != nil {
			return err
		}
		if err := b.Put([]byte(id), data); err != nil {
			return err
		}
		return reindex(tx, indexed, r)
	})
	if err != nil {
		return nil, err
	}
	return r, nil
}

// Delete removes a record. Deleting an unknown id returns ErrNotFound.
func (s *DB) Delete(id string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketVMs)
		v := b.Get([]byte(id))
		if v == nil {
			return notFound(id)
		}
		old := new(Record)
		if err := json.Unmarshal(v, old); err != nil {
			return fmt.Errorf("decode record %s: %w", id, err)
		}
		if err := b.Delete([]byte(id)); err != nil {
			return err
		}
		return reindex(tx, indexEntries(old), nil)
	})
}

// List returns all records, newest first.
func (s *DB) List() ([]*Record, error) {
	var out []*Record
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketVMs).Cursor()
		for k, v := c.Last(); k != nil; k, v = c.Prev() {
			r := new(Record)
			if err := json.Unmarshal(v, r); err != nil {
				return fmt.Errorf("decode record %s: %w", k, err)
			}
			out = append(out, r)
		}
		return nil
	})
	return out, err
}

// crockford is the lower-case Crockford base32 alphabet: sortable, no i/l/o/u.
const crockford = "0123456789abcdefghjkmnpqrstvwxyz"

// NewID returns a new VM id: "vm-" followed by 10 characters of millisecond
// time and 10 of randomness, so ids sort by creation time.
func NewID() string {
	var b strings.Builder
	b.WriteString("vm-")
	ms := uint64(time.Now().UnixMilli())
	for i := 9; i >= 0; i-- {
		b.WriteByte(crockford[(ms>>(uint(i)*5))&31])
	}
	var rnd [10]byte
	rand.Read(rnd[:])
	for _, c := range rnd {
		b.WriteByte(crockford[c&31])
	}
	return b.String()
}

// ValidID reports whether s has the shape of an id made by NewID. Ids are
// used in paths, so anything else is refused before it reaches the disk.
func ValidID(s string) bool {
	if len(s) != 23 || !strings.HasPrefix(s, "vm-") {
		return false
	}
	for _, c := range s[3:] {
		if !strings.ContainsRune(crockford, c) {
			return false
		}
	}
	return true
}
