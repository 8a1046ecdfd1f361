package records

import (
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
)

// bucketGroups holds the groups: groups → <name> → JSON of Group. It is
// made by the first write, so databases from before groups open as they are.
var bucketGroups = []byte("groups")

// Group is a group as goldvm keeps it: its desired state and what the
// reconcile loop must remember across restarts. Its VMs are not listed
// here: they are the VM records that carry the tag api.TagGroup=Name, each
// stored (tags and all) in one transaction before anything of the VM is
// made, so a creation under way is never lost nor counted twice.
type Group struct {
	Name string        `json:"name"`
	Spec api.GroupSpec `json:"spec"`
	// TemplateHash is the hash of Spec.Template (api.TagTemplate).
	TemplateHash string `json:"template_hash"`
	// Failures counts the creations from TemplateHash that failed in a
	// row; NextRetry is when the next one may start.
	Failures  int        `json:"failures,omitempty"`
	NextRetry time.Time  `json:"next_retry,omitzero"`
	LastError *api.Error `json:"last_error,omitempty"`
	// Deleting is set by DELETE /groups/{name}: the group's VMs are being
	// destroyed (or, with KeepVMs, detached), then the group goes.
	Deleting  bool      `json:"deleting,omitempty"`
	KeepVMs   bool      `json:"keep_vms,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

func groupNotFound(name string) error {
	return errdefs.Newf(errdefs.ErrNotFound, api.CodeGroupNotFound, "no group named %q", name)
}

// PutGroup creates the group or, when fn is given and the group exists,
// lets fn change it; fn sees nil for a new group and returns the group to
// store. The write is one transaction.
func (s *DB) PutGroup(name string, fn func(old *Group) (*Group, error)) (*Group, error) {
	var out *Group
	err := s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketGroups)
		if err != nil {
			return err
		}
		var old *Group
		if v := b.Get([]byte(name)); v != nil {
			old = new(Group)
			if err := json.Unmarshal(v, old); err != nil {
				return fmt.Errorf("decode group %s: %w", name, err)
			}
		}
		g, err := fn(old)
		if err != nil {
			return err
		}
		g.Name = name
		g.UpdatedAt = time.Now().UTC()
		data, err := json.Marshal(g)
		if err != nil {
			return err
		}
		out = g
		return b.Put([]byte(name), data)
	})
	return out, err
}

// UpdateGroup changes an existing group (ErrNotFound when there is none).
func (s *DB) UpdateGroup(name string, fn func(g *Group) error) (*Group, error) {
	return s.PutGroup(name, func(old *Group) (*Group, error) {
		if old == nil {
			return nil, groupNotFound(name)
		}
		return old, fn(old)
	})
}

// GetGroup returns a group, or an errdefs.ErrNotFound error.
func (s *DB) GetGroup(name string) (*Group, error) {
	var g *Group
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketGroups)
		if b == nil {
			return groupNotFound(name)
		}
		v := b.Get([]byte(name))
		if v == nil {
			return groupNotFound(name)
		}
		g = new(Group)
		return json.Unmarshal(v, g)
	})
	return g, err
}

// ListGroups returns every group, by name.
func (s *DB) ListGroups() ([]*Group, error) {
	var out []*Group
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketGroups)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			g := new(Group)
			if err := json.Unmarshal(v, g); err != nil {
				return fmt.Errorf("decode group %s: %w", k, err)
			}
			out = append(out, g)
			return nil
		})
	})
	return out, err
}

// DeleteGroup removes a group's record (its VMs are the caller's concern).
func (s *DB) DeleteGroup(name string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketGroups)
		if b == nil || b.Get([]byte(name)) == nil {
			return groupNotFound(name)
		}
		return b.Delete([]byte(name))
	})
}
