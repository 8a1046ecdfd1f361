package image

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
)

const (
	blockSize  = 4096 // granularity of hole detection
	maxLinkLen = 4096 // longest symlink target accepted
	maxHops    = 40   // symlinks followed when checking a target
)

var zeroBlock = make([]byte, blockSize)

// limits bound what one image may unpack to.
type limits struct {
	maxBytes   int64 // logical bytes of all files, declared and actual
	maxEntries int
	verbatim   bool // store the download as one file, MediaFile (Options.Verbatim)
}

// fileRecord describes one entry of a published image (in the marker).
type fileRecord struct {
	Path   string `json:"path"`
	Type   string `json:"type"` // "file", "dir", "symlink", "hardlink"
	Size   int64  `json:"size,omitempty"`
	Target string `json:"target,omitempty"`
}

// extractor writes one image's files beneath root. Every write goes through
// os.Root, so nothing can land outside even if a check below were wrong;
// the checks exist to reject unsafe archives with a clear error instead of
// half-extracting them.
type extractor struct {
	ctx      context.Context
	root     *os.Root
	lim      limits
	declared int64 // sum of declared entry sizes
	written  int64 // logical bytes actually produced
	entries  int
	dirs     map[string]bool  // real directories known to exist
	regular  map[string]int64 // regular files written (hardlink targets)
	symlinks []string
	records  []fileRecord
	format   string
	total    int64               // declared unpacked size of a zip, for progress
	onWrite  func(written int64) // unpack progress, may be nil
	// spoolReason says why extractStream could not unpack a zip as it
	// streamed (it returned needsSpool).
	spoolReason error
}

func newExtractor(ctx context.Context, root *os.Root, lim limits) *extractor {
	return &extractor{
		ctx: ctx, root: root, lim: lim,
		dirs: map[string]bool{".": true}, regular: map[string]int64{},
	}
}

// cleanName validates an archive entry name and returns it cleaned, or ""
// for the archive's root itself.
func cleanName(name string) (string, error) {
	if name == "" {
		return "", errCorrupt("archive entry without a name", nil)
	}
	if strings.ContainsRune(name, 0) {
		return "", errUnsafe("archive entry name contains NUL")
	}
	if strings.HasPrefix(name, "/") || strings.HasPrefix(name, `\`) {
		return "", errUnsafe("archive entry %q has an absolute path", name)
	}
	for _, c := range strings.FieldsFunc(name, func(r rune) bool { return r == '/' || r == '\\' }) {
		if c == ".." {
			return "", errUnsafe("archive entry %q contains ..", name)
		}
	}
	c := path.Clean(name)
	if c == "." {
		return "", nil
	}
	return c, nil
}

// entry counts an archive entry against the limit.
func (x *extractor) entry() error {
	x.entries++
	if x.lim.maxEntries > 0 && x.entries > x.lim.maxEntries {
		return errTooLarge("archive has more than %d entries", x.lim.maxEntries)
	}
	return x.ctx.Err()
}

// mkdirs makes name and its parents as real directories, refusing to go
// through anything that is not a directory (a symlink in particular, so a
// file's real location is always its lexical one).
func (x *extractor) mkdirs(name string) error {
	if name == "" || name == "." || x.dirs[name] {
		return nil
	}
	if err := x.mkdirs(path.Dir(name)); err != nil {
		return err
	}
	fi, err := x.root.Lstat(name)
	switch {
	case err == nil && fi.IsDir():
	case err == nil:
		return errUnsafe("archive entry %q goes through a non-directory", name)
	case errors.Is(err, fs.ErrNotExist):
		if err := x.root.Mkdir(name, 0o755); err != nil {
			return ioErr("creating directory "+name, err)
		}
		x.records = append(x.records, fileRecord{Path: name, Type: "dir"})
	default:
		return ioErr("checking "+name, err)
	}
	x.dirs[name] = true
	return nil
}

// prepare makes the parents of name and removes an earlier regular file of
// the same name (later tar entries win); anything else in the way is
// refused.
func (x *extractor) prepare(name string) error {
	if err := x.mkdirs(path.Dir(name)); err != nil {
		return err
	}
	fi, err := x.root.Lstat(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return ioErr("checking "+name, err)
	}
	if !fi.Mode().IsRegular() {
		return errUnsafe("archive entry %q replaces a directory or link", name)
	}
	delete(x.regular, name)
	if err := x.root.Remove(name); err != nil {
		return ioErr("replacing "+name, err)
	}
	return nil
}

// writeFile creates name with the content of r, which must be exactly
// declared bytes long (declared < 0: unknown). Runs of zero blocks become
// holes. Both the declared and the actual size count against the limit.
func (x *extractor) writeFile(name string, declared int64, r io.Reader) error {
	if declared > 0 {
		if declared > x.lim.maxBytes-x.declared {
			return errTooLarge("entry %q declares %d bytes; the image limit is %d bytes", name, declared, x.lim.maxBytes)
		}
		x.declared += declared
	}
	if err := x.prepare(name); err != nil {
		return err
	}
	f, err := x.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return ioErr("creating "+name, err)
	}
	n, err := x.copySparse(f, r)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = ioErr("closing "+name, cerr)
	}
	if err != nil {
		return err
	}
	if declared >= 0 && n != declared {
		return errCorrupt(fmt.Sprintf("entry %q has %d bytes, its header says %d", name, n, declared), nil)
	}
	x.regular[name] = n
	x.records = append(x.records, fileRecord{Path: name, Type: "file", Size: n})
	return nil
}

// copySparse copies r into f, leaving all-zero blocks as holes, and
// returns the number of bytes read.
func (x *extractor) copySparse(f *os.File, r io.Reader) (int64, error) {
	w := newFileWriter(f)
	var off int64 // bytes read
	err := func() error {
		for {
			if err := x.ctx.Err(); err != nil {
				return err
			}
			buf, err := w.buffer()
			if err != nil {
				return err
			}
			n, rerr := io.ReadFull(r, buf)
			if n == 0 {
				w.release(buf)
			} else {
				x.written += int64(n)
				if x.written > x.lim.maxBytes {
					w.release(buf)
					return errTooLarge("image unpacks to more than %d bytes", x.lim.maxBytes)
				}
				w.submit(buf[:n], off)
				off += int64(n)
				if x.onWrite != nil {
					x.onWrite(x.written)
				}
			}
			if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
				return nil
			}
			if rerr != nil {
				return classify(nil, "reading "+f.Name(), rerr)
			}
		}
	}()
	end, werr := w.finish()
	if err == nil {
		err = werr
	}
	if err != nil {
		return off, err
	}
	if off > end {
		if err := f.Truncate(off); err != nil {
			return off, ioErr("setting the length of "+f.Name(), err)
		}
	}
	return off, nil
}

func isZero(b []byte) bool { return bytes.Equal(b, zeroBlock[:len(b)]) }

// writeDisk stores a bare disk image stream.
func (x *extractor) writeDisk(name string, r io.Reader) error {
	if err := x.entry(); err != nil {
		return err
	}
	return x.writeFile(name, -1, r)
}

// symlink creates name -> target if target stays inside the tree as far
// as can be told now; verifyLinks re-checks the finished tree.
func (x *extractor) symlink(name, target string) error {
	if target == "" || len(target) > maxLinkLen || strings.ContainsRune(target, 0) {
		return errUnsafe("symlink %q has an invalid target", name)
	}
	if strings.HasPrefix(target, "/") {
		return errUnsafe("symlink %q points to the absolute path %q", name, target)
	}
	if j := path.Join(path.Dir(name), target); j == ".." || strings.HasPrefix(j, "../") {
		return errUnsafe("symlink %q points outside the image (%q)", name, target)
	}
	if err := x.prepare(name); err != nil {
		return err
	}
	if err := x.root.Symlink(target, name); err != nil {
		return ioErr("creating symlink "+name, err)
	}
	x.symlinks = append(x.symlinks, name)
	x.records = append(x.records, fileRecord{Path: name, Type: "symlink", Target: target})
	return nil
}

// hardlink links name to an earlier regular file of the archive.
func (x *extractor) hardlink(name, target string) error {
	t, err := cleanName(target)
	if err != nil {
		return err
	}
	size, ok := x.regular[t]
	if t == "" || !ok {
		return errUnsafe("hardlink %q points to %q, which is not an earlier file of the archive", name, target)
	}
	if err := x.prepare(name); err != nil {
		return err
	}
	if err := x.root.Link(t, name); err != nil {
		return ioErr("creating hardlink "+name, err)
	}
	x.regular[name] = size
	x.records = append(x.records, fileRecord{Path: name, Type: "hardlink", Target: t, Size: size})
	return nil
}

// reference no file outside.
func (x *extractor) finish() error {
	if err := x.verifyLinks(); err != nil {
		return err
	}
	return x.checkDiskRefs()
}

// (A chain like c -> "." plus l -> "c/../x" looks inside when read
// lexically but is not.)
func (x *extractor) verifyLinks() error {
	for _, link := range x.symlinks {
		if err := x.resolveInside(link); err != nil {
			return err
		}
	}
	return nil
}

func splitPath(p string) []string {
	var out []string
	for _, c := range strings.Split(p, "/") {
		if c != "" && c != "." {
			out = append(out, c)
		}
	}
	return out
}

func (x *extractor) resolveInside(link string) error {
	target, err := x.root.Readlink(link)
	if err != nil {
		return ioErr("reading symlink "+link, err)
	}
	return x.resolveFrom(path.Dir(link), target, link)
}

// resolveFrom resolves target relative to directory dir of the tree,
// following the tree's symlinks, and fails with image-unsafe-archive if
// the resolution leaves the tree. what names the origin in messages.
func (x *extractor) resolveFrom(dir, target, what string) error {
	link := what
	stack := splitPath(dir)
	queue := splitPath(target)
	if strings.HasPrefix(target, "/") {
		return errUnsafe("symlink %q points to an absolute path", link)
	}
	hops := 0
	for len(queue) > 0 {
		c := queue[0]
		queue = queue[1:]
		if c == ".." {
			if len(stack) == 0 {
				return errUnsafe("symlink %q resolves outside the image", link)
			}
			stack = stack[:len(stack)-1]
			continue
		}
		stack = append(stack, c)
		p := strings.Join(stack, "/")
		fi, err := x.root.Lstat(p)
		if err != nil || fi.Mode()&fs.ModeSymlink == 0 {
			continue // a missing component resolves lexically from here on
		}
		hops++
		if hops > maxHops {
			return errUnsafe("symlink %q: too many levels of links", link)
		}
		t, err := x.root.Readlink(p)
		if err != nil {
			return ioErr("reading symlink "+p, err)
		}
		if strings.HasPrefix(t, "/") {
			return errUnsafe("symlink %q points to an absolute path", p)
		}
		stack = stack[:len(stack)-1]
		queue = append(splitPath(t), queue...)
	}
	return nil
}
