package image

import (
	"bufio"
	"bytes"
	"compress/bzip2"
	"context"
	"errors"
	"io"
	"strings"
	"sync"

	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/image/zipstream"
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
	// MediaFile is the one file of an image in a Verbatim store.
	MediaFile = "media"
)

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
	if x.lim.verbatim {
		x.format = "file"
		err := x.writeDisk(MediaFile, br)
		if err == nil {
			err = x.finish()
		}
		if serr := src.failed(); err != nil && serr != nil {
			return false, serr
		}
		return false, err
	}
	var dec io.Reader = br
	closeDec := func() {}
	switch {
	case hasPrefix(head, magicZip) || hasPrefix(head, magicZipEnd):
		x.format = "zip"
		if spoolAllZips {
			x.spoolReason = errors.New("every zip is unpacked after its download (spoolAllZips)")
			return true, nil
		}
		err := x.extractZipStream(br)
		if errors.Is(err, zipstream.ErrNeedsSpool) {
			x.spoolReason = err
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
