package image

import (
	"archive/tar"
	"archive/zip"
	"bufio"
	"bytes"
	"compress/bzip2"
	"context"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"
	"sync"

	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// Magic numbers recognised by content. The file name in the URL is never
// used to pick a decoder.
var (
	magicGzip   = []byte{0x1f, 0x8b}
	magicBzip2  = []byte("BZh")
	magicZstd   = []byte{0x28, 0xb5, 0x2f, 0xfd}
	magicXz     = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}
	magicZip    = []byte("PK\x03\x04")
	magicZipEnd = []byte("PK\x05\x06") // empty zip
	magicQcow2  = []byte("QFI\xfb")
	magicVMDK   = []byte("KDMV")
	magicVMDKd  = []byte("# Disk DescriptorFile")
)

// Names under which a bare disk image is stored in the image directory.
const (
	DiskQcow2 = "disk.qcow2" // a bare qcow2 download
	DiskVMDK  = "disk.vmdk"  // a bare VMDK download (sparse extent or descriptor)
	DiskRaw   = "disk.raw"   // a bare raw disk (URL path ending in .img or .raw)
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
}

func newExtractor(ctx context.Context, root *os.Root, lim limits) *extractor {
	return &extractor{
		ctx: ctx, root: root, lim: lim,
		dirs: map[string]bool{".": true}, regular: map[string]int64{},
	}
}

// trackErr remembers the first non-EOF error of the source stream, so that
// a network failure surfacing through a decompressor is reported as what it
// is and not as a corrupt archive. It is read by a decompressing goroutine
// and asked from the extracting one.
type trackErr struct {
	r   io.Reader
	mu  sync.Mutex
	err error
}

func (t *trackErr) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if err != nil && err != io.EOF {
		t.mu.Lock()
		if t.err == nil {
			t.err = err
		}
		t.mu.Unlock()
	}
	return n, err
}

func (t *trackErr) failed() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.err
}

// countReader fails once more than limit() bytes have passed through it.
type countReader struct {
	r     io.Reader
	n     int64
	limit func() int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if c.n > c.limit() {
		return n, errTooLarge("decompressed stream exceeds the image size limit")
	}
	return n, err
}

// classify turns a read error met while decoding into the error to report:
// the source's own failure if it had one, our own typed error as is, else
// "image-corrupt".
func classify(src *trackErr, what string, err error) error {
	if src != nil {
		if err := src.failed(); err != nil {
			return err
		}
	}
	if isTyped(err) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return errCorrupt(what, err)
}

func isTyped(err error) bool {
	var e *errdefs.Error
	return errors.As(err, &e)
}

func hasPrefix(b, p []byte) bool { return bytes.HasPrefix(b, p) }

// extractStream reads a package from raw, detects its format by content
// and unpacks it. A zip is unpacked as it streams and checked against its
// central directory at the end; the rare zip that cannot be read as a
// stream (a stored entry whose size only follows its data) makes
// needsSpool true: extractStream stops reading, and the caller unpacks the
// whole package with extractZip into an empty directory once it is
// downloaded and verified. urlPath decides only whether an unrecognised,
// uncompressed or decompressed stream may be stored as a raw disk.
func (x *extractor) extractStream(raw io.Reader, urlPath string) (needsSpool bool, err error) {
	src := &trackErr{r: raw}
	br := bufio.NewReaderSize(src, 64<<10)
	head, perr := br.Peek(8)
	if len(head) == 0 {
		if perr != nil && perr != io.EOF {
			return false, classify(src, "reading the package", perr)
		}
		return false, errCorrupt("the package is empty", nil)
	}
	var dec io.Reader = br
	closeDec := func() {}
	switch {
	case hasPrefix(head, magicZip) || hasPrefix(head, magicZipEnd):
		x.format = "zip"
		err := x.extractZipStream(br)
		if errors.Is(err, errZipNeedsSpool) {
			return true, nil
		}
		if err != nil {
			if serr := src.failed(); serr != nil {
				return false, serr
			}
			return false, err
		}
		return false, nil
	case hasPrefix(head, magicGzip):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return false, classify(src, "bad gzip header", err)
		}
		dec, closeDec, x.format = zr, func() { zr.Close() }, "gz"
	case hasPrefix(head, magicBzip2):
		dec, x.format = bzip2.NewReader(br), "bz2"
	case hasPrefix(head, magicZstd):
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(2), zstd.WithDecoderMaxMemory(1<<30))
		if err != nil {
			return false, classify(src, "bad zstd stream", err)
		}
		dec, closeDec, x.format = zr, zr.Close, "zst"
	case hasPrefix(head, magicXz):
		zr, err := xz.NewReader(br)
		if err != nil {
			return false, classify(src, "bad xz header", err)
		}
		dec, x.format = zr, "xz"
	}
	compressed := x.format != ""
	defer closeDec()
	// The decompressor runs in this goroutine, the file writes in a
	// fileWriter's: decompressing and writing use two cores.

	// Everything after decompression counts against the size limit, with
	// room for tar headers and padding.
	counted := &countReader{r: dec, limit: func() int64 {
		return x.lim.maxBytes + int64(x.entries+4)*1024
	}}
	inner := bufio.NewReaderSize(counted, 64<<10)
	h, perr := inner.Peek(512)
	if perr != nil && perr != io.EOF && perr != bufio.ErrBufferFull {
		return false, classify(src, "decompressing the package", perr)
	}
	switch {
	case len(h) >= 262 && string(h[257:262]) == "ustar":
		x.format = join(x.format, "tar")
		err = x.extractTar(inner)
	case hasPrefix(h, magicQcow2):
		x.format = join(x.format, "qcow2")
		err = x.writeDisk(DiskQcow2, inner)
	case hasPrefix(h, magicVMDK) || hasPrefix(h, magicVMDKd):
		x.format = join(x.format, "vmdk")
		err = x.writeDisk(DiskVMDK, inner)
	case len(h) == 0:
		return false, errCorrupt("the package decompresses to nothing", nil)
	case compressed && (hasPrefix(h, magicZip) || hasPrefix(h, magicGzip) || hasPrefix(h, magicZstd) ||
		hasPrefix(h, magicXz) || hasPrefix(h, magicBzip2)):
		return false, errUnsupported("nested compression or a compressed zip is not supported")
	case rawAllowed(urlPath):
		x.format = join(x.format, "raw")
		err = x.writeDisk(DiskRaw, inner)
	default:
		return false, errUnsupported("content is not a tar, zip, qcow2 or vmdk image (a raw disk needs a URL ending in .img or .raw)")
	}
	if err == nil {
		err = x.finish()
	}
	if err != nil {
		if serr := src.failed(); serr != nil {
			return false, serr
		}
		return false, err
	}
	// Read the decoder to its end so its own integrity checks (gzip CRC,
	// xz/zstd checksums) run; anything after a tar's end counts against
	// the limit.
	if _, err := io.Copy(io.Discard, inner); err != nil {
		return false, classify(src, "decompressing the package", err)
	}
	return false, nil
}

func join(a, b string) string {
	if a == "" {
		return b
	}
	return b + "." + a
}

// rawAllowed reports whether an unrecognised stream from urlPath may be
// stored as a raw disk: only when the path ends in .img or .raw, possibly
// followed by a compression suffix.
func rawAllowed(urlPath string) bool {
	p := strings.ToLower(urlPath)
	for _, s := range []string{".gz", ".bz2", ".zst", ".xz"} {
		p = strings.TrimSuffix(p, s)
	}
	return strings.HasSuffix(p, ".img") || strings.HasSuffix(p, ".raw")
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

// extractTar unpacks a tar stream.
func (x *extractor) extractTar(r io.Reader) error {
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if errors.Is(err, tar.ErrInsecurePath) && hdr != nil {
			return errUnsafe("archive entry %q has an insecure path", hdr.Name)
		}
		if err != nil {
			return classify(nil, "reading the tar archive", err)
		}
		if err := x.entry(); err != nil {
			return err
		}
		if hdr.Typeflag == tar.TypeXGlobalHeader {
			continue
		}
		name, err := cleanName(hdr.Name)
		if err != nil {
			return err
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := x.mkdirs(name); err != nil {
				return err
			}
		case tar.TypeReg, '\x00', tar.TypeGNUSparse, tar.TypeCont:
			if name == "" {
				return errCorrupt("regular file entry without a name", nil)
			}
			if hdr.Size < 0 {
				return errCorrupt(fmt.Sprintf("entry %q has a negative size", name), nil)
			}
			if err := x.writeFile(name, hdr.Size, tr); err != nil {
				return err
			}
		case tar.TypeSymlink:
			if name == "" {
				return errUnsafe("symlink replaces the image root")
			}
			if err := x.symlink(name, hdr.Linkname); err != nil {
				return err
			}
		case tar.TypeLink:
			if name == "" {
				return errUnsafe("hardlink replaces the image root")
			}
			if err := x.hardlink(name, hdr.Linkname); err != nil {
				return err
			}
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			return errUnsafe("archive entry %q is a device node or fifo", hdr.Name)
		default:
			return errUnsupported("archive entry %q has unsupported type %q", hdr.Name, hdr.Typeflag)
		}
	}
	return nil
}

// finish checks the finished tree: symlinks resolve inside, and disk images
// reference no file outside.
func (x *extractor) finish() error {
	if err := x.verifyLinks(); err != nil {
		return err
	}
	return x.checkDiskRefs()
}

// extractZipStream unpacks a zip archive from a stream, entry by entry,
// and then checks the files against its central directory, which alone
// tells the entries' modes: symlinks are written as small files first and
// turned into links at the end. The result is what extractZip makes of the
// same archive; an archive whose directory disagrees with its entries is
// refused.
func (x *extractor) extractZipStream(r io.Reader) error {
	zs := newZipStream(r)
	seen := map[string]bool{}
	for {
		e, data, err := zs.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if err := x.entry(); err != nil {
			return err
		}
		name, err := cleanName(e.Name)
		if err != nil {
			return err
		}
		// Later entries of the same name would replace earlier ones, and
		// tools disagree about which wins: refuse the ambiguity.
		if seen[name] {
			return errUnsafe("zip archive has more than one entry named %q", e.Name)
		}
		seen[name] = true
		if strings.HasSuffix(e.Name, "/") {
			if err := x.mkdirs(name); err != nil {
				return err
			}
			continue
		}
		if name == "" {
			return errCorrupt("zip file entry without a name", nil)
		}
		if err := x.writeFile(name, e.DeclaredSize, data); err != nil {
			return err
		}
	}
	central, err := zs.Finish()
	if err != nil {
		return err
	}
	for _, c := range central {
		name, _ := cleanName(c.Name) // checked above
		mode := c.Mode
		switch {
		case strings.HasSuffix(c.Name, "/"):
		case mode.IsDir():
			// A directory by its mode only, streamed as an empty file.
			if x.regular[name] != 0 {
				return errCorrupt(fmt.Sprintf("zip directory entry %q has data", c.Name), nil)
			}
			if err := x.unwriteFile(name); err != nil {
				return err
			}
			if err := x.mkdirs(name); err != nil {
				return err
			}
		case mode&fs.ModeSymlink != 0:
			if name == "" {
				return errUnsafe("symlink replaces the image root")
			}
			if x.regular[name] > maxLinkLen {
				return errUnsafe("symlink %q has an invalid target", c.Name)
			}
			target, err := x.root.ReadFile(name)
			if err != nil {
				return ioErr("reading symlink target "+name, err)
			}
			if err := x.unwriteFile(name); err != nil {
				return err
			}
			if err := x.symlink(name, string(target)); err != nil {
				return err
			}
		case mode.Type() == 0:
		default:
			return errUnsafe("zip entry %q is a device node, fifo or socket", c.Name)
		}
	}
	return x.finish()
}

// unwriteFile removes a regular file written earlier and its record.
func (x *extractor) unwriteFile(name string) error {
	if err := x.root.Remove(name); err != nil {
		return ioErr("replacing "+name, err)
	}
	delete(x.regular, name)
	x.records = slices.DeleteFunc(x.records, func(r fileRecord) bool { return r.Path == name && r.Type == "file" })
	return nil
}

// extractZip unpacks a spooled zip file. Sizes are checked twice: the
// declared total before anything is written, and the bytes actually
// inflated while writing (the header of a zip bomb lies).
func (x *extractor) extractZip(ra io.ReaderAt, size int64) error {
	zr, err := zip.NewReader(ra, size)
	if errors.Is(err, zip.ErrInsecurePath) {
		return errUnsafe("zip archive has an entry with an insecure path")
	}
	if err != nil {
		return errCorrupt("reading the zip archive", err)
	}
	if x.lim.maxEntries > 0 && len(zr.File) > x.lim.maxEntries {
		return errTooLarge("archive has %d entries; the limit is %d", len(zr.File), x.lim.maxEntries)
	}
	var total uint64
	for _, f := range zr.File {
		total += f.UncompressedSize64
		if total > uint64(x.lim.maxBytes) || f.UncompressedSize64 > uint64(x.lim.maxBytes) {
			return errTooLarge("zip archive declares more than %d bytes", x.lim.maxBytes)
		}
	}
	x.total = int64(total)
	for _, f := range zr.File {
		if err := x.entry(); err != nil {
			return err
		}
		name, err := cleanName(f.Name)
		if err != nil {
			return err
		}
		mode := f.Mode()
		switch {
		case mode.IsDir():
			if err := x.mkdirs(name); err != nil {
				return err
			}
		case mode&fs.ModeSymlink != 0:
			if name == "" {
				return errUnsafe("symlink replaces the image root")
			}
			ze, err := openZipEntry(f)
			if err != nil {
				return err
			}
			b, err := io.ReadAll(io.LimitReader(ze, maxLinkLen+1))
			ze.Close()
			if err != nil {
				return err
			}
			if err := x.symlink(name, string(b)); err != nil {
				return err
			}
		case mode.Type() == 0:
			if name == "" {
				return errCorrupt("zip file entry without a name", nil)
			}
			ze, err := openZipEntry(f)
			if err != nil {
				return err
			}
			err = x.writeFile(name, int64(f.UncompressedSize64), ze)
			ze.Close()
			if err != nil {
				return err
			}
		default:
			return errUnsafe("zip entry %q is a device node, fifo or socket", f.Name)
		}
	}
	return x.finish()
}

// zipEntry inflates a zip entry itself (not via zip.File.Open, which
// stops at the header's size) and checks the size and CRC at the end. The
// bytes it produces are counted by the extractor, so a lying header cannot
// smuggle a bomb past the limit.
type zipEntry struct {
	f      *zip.File
	r      io.Reader
	closer io.Closer
	crc    hash.Hash32
	n      uint64
}

func openZipEntry(f *zip.File) (*zipEntry, error) {
	raw, err := f.OpenRaw()
	if err != nil {
		return nil, errCorrupt("opening zip entry "+f.Name, err)
	}
	z := &zipEntry{f: f, crc: crc32.NewIEEE()}
	switch f.Method {
	case zip.Store:
		z.r = raw
	case zip.Deflate:
		// A large *bufio.Reader: fewer reads of the spool file, and the
		// inflater's fast path.
		fr := flate.NewReader(bufio.NewReaderSize(raw, 1<<20))
		z.r, z.closer = fr, fr
	default:
		return nil, errUnsupported("zip entry %q uses unsupported compression method %d", f.Name, f.Method)
	}
	return z, nil
}

func (z *zipEntry) Read(p []byte) (int, error) {
	n, err := z.r.Read(p)
	z.crc.Write(p[:n])
	z.n += uint64(n)
	switch {
	case err == io.EOF:
		if z.n != z.f.UncompressedSize64 {
			return n, errCorrupt(fmt.Sprintf("zip entry %q inflates to %d bytes, its header says %d", z.f.Name, z.n, z.f.UncompressedSize64), nil)
		}
		if z.crc.Sum32() != z.f.CRC32 {
			return n, errCorrupt(fmt.Sprintf("zip entry %q fails its CRC check", z.f.Name), nil)
		}
	case err != nil:
		return n, errCorrupt("inflating zip entry "+z.f.Name, err)
	}
	return n, err
}

func (z *zipEntry) Close() error {
	if z.closer != nil {
		return z.closer.Close()
	}
	return nil
}

// verifyLinks resolves every symlink of the finished tree, following links
// inside it, and refuses the image if any resolution leaves the tree.
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
