package image

import (
	"archive/zip"
	"bufio"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"io/fs"
	"slices"
	"strings"

	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/image/zipstream"
	"github.com/klauspost/compress/flate"
)

// spoolAllZips makes extractStream hand every zip to the spool path, as
// if it could not be read as a stream. Tests set it to unpack the same
// archive both ways.
var spoolAllZips bool

// extractZipStream unpacks a zip archive from a stream, entry by entry,
// and then checks the files against its central directory, which alone
// tells the entries' modes: symlinks are written as small files first and
// turned into links at the end. The result is what extractZip makes of the
// same archive; an archive whose directory disagrees with its entries is
// refused.
func (x *extractor) extractZipStream(r io.Reader) error {
	zs := zipstream.NewReader(r)
	seen := map[string]bool{}
	for {
		e, data, err := zs.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return zipErr(err)
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
		return zipErr(err)
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

// zipErr gives an archive problem found by the zip stream reader its
// code, image-corrupt or image-unsupported, with the reader's message (and
// its cause, io.ErrUnexpectedEOF for a truncated archive). Anything else,
// a failing source in particular, and zipstream.ErrNeedsSpool pass as
// they are.
func zipErr(err error) error {
	var ze *zipstream.Error
	if !errors.As(err, &ze) || ze.Kind == zipstream.ErrNeedsSpool || isTyped(err) {
		return err
	}
	if ze.Kind == zipstream.ErrUnsupported {
		return errdefs.New(errdefs.ErrInvalid, CodeUnsupported, ze.Msg, ze.Err)
	}
	return errdefs.New(errdefs.ErrInvalid, CodeCorrupt, ze.Msg, ze.Err)
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
	if errors.Is(err, zip.ErrFormat) {
		return errCorrupt("zip archive has no valid end record or central directory (it is cut short, damaged, or not a zip archive)", err)
	}
	if err != nil {
		return errCorrupt("reading the zip archive's central directory", err)
	}
	if x.lim.maxEntries > 0 && len(zr.File) > x.lim.maxEntries {
		return errTooLarge("archive has %d entries; the limit is %d", len(zr.File), x.lim.maxEntries)
	}
	var total uint64
	for _, f := range zr.File {
		if f.Flags&0x1 != 0 { // as the stream reader, whatever the entry
			return errUnsupported("zip entry %q is encrypted", f.Name)
		}
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
