package image

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/machine"
)

// publish syncs and seals the files, writes the marker last and renames
// the temp dir into place.
func (s *Store) publish(ctx context.Context, tmp, key string, spec Spec, x *extractor, report func(Progress), log *slog.Logger) (*Gold, error) {
	mach, disk, size, err := s.inspect(ctx, tmp, report)
	if err != nil {
		return nil, err
	}
	kind, sum, _ := parseKey(key)
	m := &marker{Version: 1, Key: key, URL: displayURL(spec.URL), Checksum: sum, ChecksumType: kind,
		Format: x.format, Size: size, Files: x.records, Created: s.opts.Now().UTC(), Disk: disk, Machine: mach}
	return s.commit(tmp, m, &spec, log)
}

// inspect reads the machine.json of the image being published in tmp,
// has its disk prepared (Options.PrepareDisk), seals its files and
// returns their size.
func (s *Store) inspect(ctx context.Context, tmp string, report func(Progress)) (*api.Machine, *Disk, int64, error) {
	files := filepath.Join(tmp, filesDirName)
	mach, err := readMachine(files)
	if err != nil {
		return nil, nil, 0, err
	}
	disk, err := s.prepareDisk(ctx, tmp, files, report)
	if err != nil {
		return nil, nil, 0, err
	}
	if err := sealTree(files); err != nil {
		return nil, nil, 0, err
	}
	size, _, err := treeSize(files)
	if err != nil {
		return nil, nil, 0, err
	}
	return mach, disk, size, nil
}

// commit writes the marker m of the image in tmp (synced, last) and
// renames tmp into place as m.Key. When that key was published meanwhile,
// tmp is discarded and the published image returned.
func (s *Store) commit(tmp string, m *marker, spec *Spec, log *slog.Logger) (*Gold, error) {
	if m.Disk != nil && m.Version < 2 {
		m.Version = 2
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encoding marker: %w", err)
	}
	if err := writeSynced(filepath.Join(tmp, markerName), b, 0o444); err != nil {
		return nil, err
	}
	// Searchable, not listable: a hypervisor running as another user
	// (goldvm serve --qemu-user) opens the disk inside by its path.
	if err := os.Chmod(tmp, 0o711); err != nil {
		return nil, ioErr("publishing image", err)
	}
	if err := syncDir(tmp); err != nil {
		return nil, err
	}
	dst := filepath.Join(s.dir, m.Key)
	if err := os.Rename(tmp, dst); err != nil {
		// Someone published the same key meanwhile: theirs is as good.
		if g, gerr := s.Get(m.Key); gerr == nil {
			log.Info("image was published concurrently; discarding this copy")
			if rerr := removeTree(tmp); rerr != nil {
				log.Error("cannot remove temp dir", "dir", tmp, "err", rerr)
			}
			return g, nil
		}
		return nil, ioErr("publishing image", err)
	}
	if err := syncDir(s.dir); err != nil {
		return nil, err
	}
	return s.gold(m.Key, m, spec), nil
}

// readMachine reads and checks the machine.json at the root of an image's
// files; nil when there is none. A bad one fails the fetch with code
// image-bad-machine.
func readMachine(files string) (*api.Machine, error) {
	path := filepath.Join(files, machine.FileName)
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, ioErr("reading machine.json", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, machine.ImageError(errors.New("not a regular file"))
	}
	if fi.Size() > machine.MaxFileSize {
		return nil, machine.ImageError(fmt.Errorf("%d bytes is more than the %d allowed", fi.Size(), machine.MaxFileSize))
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, ioErr("reading machine.json", err)
	}
	m, err := machine.Parse(b)
	if err != nil {
		return nil, err
	}
	return &m, nil
}

// prepareDisk runs Options.PrepareDisk on an image about to be published
// in tmp and returns its disk with a path relative to tmp; nil without
// PrepareDisk.
func (s *Store) prepareDisk(ctx context.Context, tmp, files string, report func(Progress)) (*Disk, error) {
	if s.opts.PrepareDisk == nil {
		return nil, nil
	}
	report(Progress{Phase: PhaseVerifying})
	d, err := s.opts.PrepareDisk(ctx, files, tmp)
	if err != nil {
		return nil, err
	}
	rel, err := filepath.Rel(tmp, d.Path)
	if err != nil || !filepath.IsLocal(rel) {
		return nil, fmt.Errorf("prepared disk %s is not inside the image", d.Path)
	}
	fi, err := os.Lstat(d.Path)
	if err != nil {
		return nil, ioErr("prepared disk", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("prepared disk %s is not a regular file", d.Path)
	}
	if !strings.HasPrefix(rel, filesDirName+string(filepath.Separator)) {
		// A disk made beside the files (a conversion): read-only and synced
		// like them.
		if err := os.Chmod(d.Path, 0o444); err != nil {
			return nil, ioErr("prepared disk", err)
		}
		if err := syncFile(d.Path); err != nil {
			return nil, err
		}
	}
	d.Path = filepath.ToSlash(rel)
	d.Size = fi.Size()
	return &d, nil
}
