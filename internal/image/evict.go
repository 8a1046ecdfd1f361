package image

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
)

// Delete removes the published image key. inUse (may be nil) tells how many
// VMs use the image; if any do, Delete fails with errdefs.ErrConflict, code
// "image-in-use". The caller must make sure inUse counts a VM from the
// moment it obtained the Gold (or serialise VM creation with Delete).
func (s *Store) Delete(key string, inUse func(key string) int) error {
	s.delMu.Lock()
	defer s.delMu.Unlock()
	if err := s.deleteLocked(key, inUse); err != nil {
		return err
	}
	s.announce(api.ActionDeleted, key, Spec{}, nil, nil)
	return nil
}

func (s *Store) deleteLocked(key string, inUse func(key string) int) error {
	if _, err := s.Get(key); err != nil && s.damagedReason(key) == "" {
		return err
	}
	if inUse != nil {
		if n := inUse(key); n > 0 {
			return errdefs.Newf(errdefs.ErrConflict, CodeInUse, "image %s is used by %d VM(s)", key, n)
		}
	}
	// Renaming first makes the delete atomic for readers: the key is gone
	// at once, and NewStore finishes a delete that a crash interrupted.
	tomb, err := os.MkdirTemp(s.dir, delPrefix+key+"-")
	if err != nil {
		return ioErr("deleting image", err)
	}
	if err := os.Remove(tomb); err != nil {
		return ioErr("deleting image", err)
	}
	if err := os.Rename(filepath.Join(s.dir, key), tomb); err != nil {
		return ioErr("deleting image", err)
	}
	s.dmu.Lock()
	delete(s.damaged, key)
	s.dmu.Unlock()
	if err := syncDir(s.dir); err != nil {
		return err
	}
	s.log.Info("deleted image", "key", key)
	err = removeTree(tomb)
	if s.opts.Removed != nil {
		s.opts.Removed(key)
	}
	return err
}

// EvictPolicy says which unused images Evict may remove.
type EvictPolicy struct {
	// MaxBytes: while all images together take more disk space than this,
	// remove the least recently used unused one. 0: no size bound.
	MaxBytes int64
	// MaxIdle: remove unused images not used for longer than this.
	// 0: no idle bound.
	MaxIdle time.Duration
}

// Evict removes unused images by policy, least recently used first, and
// returns the removed image keys. An image for which inUse returns > 0 is
// never removed, even if the store stays over MaxBytes, and neither is an
// image captured here (it cannot be fetched again) unless it is damaged.
//
// Partial downloads (see partial.go) take part too: their disk space
// counts towards MaxBytes, their last checkpoint is their last use, and
// one older than Options.MaxPartialAge always goes. One that a fetch is
// using is never removed. Removed partials are logged, not returned.
func (s *Store) Evict(policy EvictPolicy, inUse func(key string) int) ([]string, error) {
	s.delMu.Lock()
	defer s.delMu.Unlock()
	infos, err := s.List()
	if err != nil {
		return nil, err
	}
	partials, err := s.partials()
	if err != nil {
		return nil, err
	}
	type candidate struct {
		ImageInfo
		partial *partialInfo
	}
	var cands []candidate
	var total int64
	for _, in := range infos {
		cands = append(cands, candidate{ImageInfo: in})
		total += in.DiskBytes
	}
	for i, p := range partials {
		cands = append(cands, candidate{ImageInfo: ImageInfo{Key: p.key, DiskBytes: p.disk, LastUsed: p.updated}, partial: &partials[i]})
		total += p.disk
	}
	sort.SliceStable(cands, func(i, j int) bool { return cands[i].LastUsed.Before(cands[j].LastUsed) })
	now := s.opts.Now()
	var removed []string
	var errs []error
	for _, in := range cands {
		idle := policy.MaxIdle > 0 && now.Sub(in.LastUsed) > policy.MaxIdle
		over := policy.MaxBytes > 0 && total > policy.MaxBytes
		if p := in.partial; p != nil {
			if !idle && !over && now.Sub(in.LastUsed) <= s.opts.MaxPartialAge {
				continue
			}
			if !s.plocks.tryLock(p.key) {
				continue // a fetch is using it
			}
			err := removeTree(p.dir)
			s.plocks.unlock(p.key)
			if err != nil {
				errs = append(errs, fmt.Errorf("evicting partial download %s: %w", p.key, err))
				continue
			}
			total -= in.DiskBytes
			s.log.Info("evicted partial image download", "key", p.key, "idle", idle, "disk_bytes", in.DiskBytes)
			continue
		}
		if !idle && !over && in.Damaged == "" {
			continue
		}
		if in.Parent != nil && in.Damaged == "" {
			// A capture is the only copy: only DELETE removes it.
			continue
		}
		if inUse != nil && inUse(in.Key) > 0 {
			continue
		}
		if err := s.deleteLocked(in.Key, inUse); err != nil {
			var e *errdefs.Error
			if errors.As(err, &e) && (e.Code == CodeInUse || e.Code == CodeNotFound) {
				continue
			}
			errs = append(errs, fmt.Errorf("evicting %s: %w", in.Key, err))
			continue
		}
		total -= in.DiskBytes
		removed = append(removed, in.Key)
		s.log.Info("evicted image", "key", in.Key, "idle", idle, "disk_bytes", in.DiskBytes)
		s.announce(api.ActionEvicted, in.Key, Spec{URL: in.URL, Checksum: in.Checksum, ChecksumType: in.ChecksumType}, nil, nil)
	}
	return removed, errors.Join(errs...)
}
