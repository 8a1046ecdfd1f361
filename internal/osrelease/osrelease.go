// Package osrelease reads /etc/os-release from a disk image without
// mounting it: the disk is a byte range (an io.ReaderAt, e.g. an NBD
// export of a qcow2 disk served by a confined qemu-nbd), its partitions
// are read from its MBR or GPT, and each ext2/3/4 file system on it is read
// by a small reader of its own. A disk image is hostile input: everything
// read is bounded (bytes read in all, file and directory sizes, symlinks
// followed, extent tree depth), nothing recurses on the disk's data, and a
// malformed structure ends the search of that file system, never the
// process. Other file systems are not read.
package osrelease

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Limits of one Find.
const (
	// MaxRead bounds the bytes Find reads from the disk in all.
	MaxRead = 64 << 20
	// maxFile bounds the size of an os-release file.
	maxFile = 64 << 10
	// maxDirBlocks bounds the blocks of one directory that are scanned.
	maxDirBlocks = 4096
	// maxSymlinks bounds the symlinks followed resolving one path.
	maxSymlinks = 16
	// maxLink bounds a symlink's target.
	maxLink = 4096
	// maxPartitions bounds the partitions looked at.
	maxPartitions = 16
)

// ErrNotFound is returned (wrapped) when no ext2/3/4 file system on the
// disk has an os-release file.
var ErrNotFound = errors.New("no os-release found")

// paths are where an os-release file is looked for, in order
// (os-release(5)).
var paths = []string{"/etc/os-release", "/usr/lib/os-release"}

// Release is an os-release file's variables.
type Release map[string]string

// Name is how the OS names itself: PRETTY_NAME, else NAME and VERSION
// (as the QEMU guest agent's pretty-name, else name and version).
func (r Release) Name() string {
	if s := strings.TrimSpace(r["PRETTY_NAME"]); s != "" {
		return s
	}
	return strings.TrimSpace(strings.TrimSpace(r["NAME"]) + " " + strings.TrimSpace(r["VERSION"]))
}

// Find looks for an os-release file on each ext2/3/4 file system of the
// disk r of size bytes: in the partitions of its MBR or GPT, then in the
// whole disk. It returns the first it finds. An error wraps ErrNotFound
// when the disk was read and has none, or is the reader's error.
func Find(r io.ReaderAt, size int64) (Release, error) {
	b := &budget{r: r, size: size, left: MaxRead}
	spans := partitions(b)
	spans = append(spans, span{0, size})
	var why []string
	for _, s := range spans {
		f, err := openExt(b, s)
		if err != nil {
			if b.failed != nil {
				return nil, b.failed
			}
			continue
		}
		for _, p := range paths {
			data, err := f.readPath(p, maxFile)
			if err == nil {
				return Parse(data), nil
			}
			if b.failed != nil {
				return nil, b.failed
			}
			why = append(why, fmt.Sprintf("%s at offset %d: %v", p, s.off, err))
		}
	}
	if len(why) == 0 {
		return nil, fmt.Errorf("%w: no ext2/3/4 file system", ErrNotFound)
	}
	return nil, fmt.Errorf("%w: %s", ErrNotFound, strings.Join(why, "; "))
}

// Parse reads os-release's variable assignments (os-release(5): one
// KEY=value a line, the value optionally quoted in shell style; comments
// and other lines are ignored).
func Parse(data []byte) Release {
	rel := Release{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), maxFile)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		key, val, ok := strings.Cut(line, "=")
		if !ok || !validKey(key) {
			continue
		}
		rel[key] = unquote(val)
	}
	return rel
}

func validKey(k string) bool {
	if k == "" {
		return false
	}
	for _, c := range k {
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// unquote undoes os-release's shell-style quoting: "…" with backslash
// escapes of $ " \ `, '…' verbatim, or an unquoted word.
func unquote(v string) string {
	if len(v) >= 2 && v[0] == '\'' && v[len(v)-1] == '\'' {
		return v[1 : len(v)-1]
	}
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		v = v[1 : len(v)-1]
	}
	var sb strings.Builder
	for i := 0; i < len(v); i++ {
		if v[i] == '\\' && i+1 < len(v) && strings.IndexByte("$\"\\`", v[i+1]) >= 0 {
			i++
		}
		sb.WriteByte(v[i])
	}
	return sb.String()
}

// budget is the disk, read within its size and at most left bytes in all.
// The first error of the underlying reader is kept in failed: it ends the
// search (a corrupt structure ends only the file system's).
type budget struct {
	r      io.ReaderAt
	size   int64
	left   int64
	failed error
}

var errBounds = errors.New("read outside the disk")

func (b *budget) readAt(p []byte, off int64) error {
	if off < 0 || int64(len(p)) > b.size || off > b.size-int64(len(p)) {
		return errBounds
	}
	if int64(len(p)) > b.left {
		b.failed = fmt.Errorf("reading the disk: more than %d bytes read in all", int64(MaxRead))
		return b.failed
	}
	b.left -= int64(len(p))
	if n, err := b.r.ReadAt(p, off); n < len(p) {
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		b.failed = fmt.Errorf("reading the disk at %d: %w", off, err)
		return b.failed
	}
	return nil
}
