package image

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"

	"github.com/goldvm/goldvm/api"
)

// FormatCaptured is the Format of an image captured from a VM.
const FormatCaptured = "captured"

// Capture publishes an image made on this host (POST /vms/{id}/capture):
// fill writes its files (a disk and, optionally, machine.json) into the
// directory it is given, and the image is then published as a fetched one
// is: its machine.json checked, its disk prepared (Options.PrepareDisk),
// its files sealed, its marker written last and the directory renamed into
// place. Its key is "sha256-" and the sha256 of its package (see
// package.go), so that the package fetched by URL and that checksum by
// another goldvm is stored there under the same key. Capturing the same
// content twice gives the image already published.
func (s *Store) Capture(ctx context.Context, parent api.ImageParent, fill func(ctx context.Context, files string) error) (g *Gold, err error) {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return nil, errors.New("image store is closed")
	}
	log := s.log.With("vm", parent.VM, "parent", parent.Key)
	tmp, undo, err := s.tempDir("capture", log)
	if err != nil {
		return nil, err
	}
	defer func() { undo(err) }()
	files := filepath.Join(tmp, filesDirName)
	if err := os.Mkdir(files, 0o755); err != nil {
		return nil, ioErr("creating temp dir", err)
	}
	if err := fill(ctx, files); err != nil {
		return nil, err
	}
	records, err := regularFiles(files)
	if err != nil {
		return nil, err
	}
	mach, disk, size, err := s.inspect(ctx, tmp, func(Progress) {})
	if err != nil {
		return nil, err
	}
	m := &marker{Version: 1, ChecksumType: api.ChecksumSHA256, Format: FormatCaptured, Size: size, Files: records,
		Created: s.opts.Now().UTC(), Disk: disk, Machine: mach, Parent: &parent}
	entries, err := packageEntries(tmp, m)
	if err != nil {
		return nil, err
	}
	sum, err := packageSum(ctx, entries)
	if err != nil {
		return nil, err
	}
	m.Key, m.Checksum = api.ChecksumSHA256+"-"+sum, sum
	m.Package = &packageRecord{Format: packageFormatVersion, SHA256: sum}
	g, err = s.commit(tmp, m, nil, log.With("key", m.Key))
	if err != nil {
		return nil, err
	}
	log.Info("image captured", "key", g.Key, "size", g.Size)
	s.announce(api.ActionReady, g.Key, Spec{Checksum: sum, ChecksumType: api.ChecksumSHA256}, g, nil)
	return g, nil
}

// regularFiles lists the regular files directly in dir, by name; anything
// else there is an error (a capture writes plain files only).
func regularFiles(dir string) ([]fileRecord, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, ioErr("reading captured files", err)
	}
	var out []fileRecord
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			return nil, ioErr("reading captured files", err)
		}
		if !fi.Mode().IsRegular() {
			return nil, fmt.Errorf("captured file %s is not a regular file", e.Name())
		}
		out = append(out, fileRecord{Path: e.Name(), Type: "file", Size: fi.Size()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

// tempDir makes the temp dir of an image being published (NewStore
// removes those a crash left); undo(err) removes it when err is not nil.
func (s *Store) tempDir(name string, log *slog.Logger) (tmp string, undo func(error), err error) {
	tmp, err = os.MkdirTemp(s.dir, tmpPrefix+name+"-")
	if err != nil {
		return "", nil, ioErr("creating temp dir", err)
	}
	return tmp, func(err error) {
		if err != nil {
			if rerr := removeTree(tmp); rerr != nil {
				log.Error("cannot remove temp dir", "dir", tmp, "err", rerr)
			}
		}
	}, nil
}
