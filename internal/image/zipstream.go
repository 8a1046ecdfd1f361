package image

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"math"
	"strings"

	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/klauspost/compress/flate"
)

// Record signatures and fixed lengths of the zip format (APPNOTE.TXT).
const (
	zsLocalSig    = 0x04034b50 // local file header
	zsCentralSig  = 0x02014b50 // central directory file header
	zsEndSig      = 0x06054b50 // end of central directory record
	zs64EndSig    = 0x06064b50 // zip64 end of central directory record
	zs64LocSig    = 0x07064b50 // zip64 end of central directory locator
	zsDescSig     = 0x08074b50 // optional data descriptor signature
	zsExtraDatSig = 0x08064b50 // archive extra data record (central directory encryption)

	zsLocalLen   = 30
	zsCentralLen = 46
	zsEndLen     = 22
	zs64EndLen   = 56
	zs64LocLen   = 20
	// zsDescPeek covers the longest data descriptor (signature, CRC,
	// two 8-byte sizes) and the signature of the record after it.
	zsDescPeek = 4 + 4 + 16 + 4

	zsZip64ID = 0x0001 // zip64 extended information extra field

	zsFlagEncrypted = 0x0001
	zsFlagDesc      = 0x0008
	zsFlagStrong    = 0x0040 // strong encryption
	zsFlagMasked    = 0x2000 // local header values masked (encrypted directory)

	zsMax16 = 0xffff
	zsMax32 = 0xffffffff

	// zsBufSize is the read buffer. It must hold the longest record this
	// reader peeks at whole: a central directory header with a 64 KiB
	// name, extra field and comment (46 + 3*65535 bytes).
	zsBufSize = 256 << 10
	// zsMax64Ext bounds the extensible data of a zip64 end record.
	zsMax64Ext = 1 << 20
)

// errZipNeedsSpool means the archive cannot be read as a stream (e.g. a
// stored entry whose sizes are only in a data descriptor, so its end cannot
// be found): the caller falls back to spooling it and reading it by its
// central directory.
var errZipNeedsSpool = errors.New("zip archive cannot be read as a stream")

// zipStream reads a zip archive as a stream, front to back.
type zipStream struct {
	src     zsCounter
	br      *bufio.Reader
	fr      io.ReadCloser   // inflater, created for the first deflated entry
	frReset flate.Resetter  // fr, to reuse it for later entries
	cur     *zipStreamEntry // entry whose data Next handed out last
	ents    []zipLocal      // finished entries, in archive order
	err     error           // sticky: the first failure
	atDir   bool            // Next met the central directory (or end records)
	dirOff  int64           // offset of that record
	central []zipCentral    // Finish's result, once it succeeded
	scratch []byte          // for skipping unread entry data
}

// zsCounter counts the bytes read from the source and remembers the
// source's first error other than io.EOF, so that a failed download is
// told apart from a corrupt archive.
type zsCounter struct {
	r   io.Reader
	n   int64
	err error
}

// Read reads from the source, counting and recording its failure.
func (c *zsCounter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if err != nil && err != io.EOF && c.err == nil {
		c.err = err
	}
	return n, err
}

// newZipStream starts reading a zip archive at the first byte of r.
func newZipStream(r io.Reader) *zipStream {
	z := &zipStream{src: zsCounter{r: r}}
	z.br = bufio.NewReaderSize(&z.src, zsBufSize)
	return z
}

// zipLocal is one entry as read from its local header (and, after its
// data, its data descriptor).
type zipLocal struct {
	Name             string
	Method           uint16
	Flags            uint16
	Offset           int64  // offset of the local header in the archive
	CRC32            uint32 // known once the entry's data has been read to EOF
	CompressedSize   uint64 // likewise
	UncompressedSize uint64 // likewise
	// DeclaredSize is the uncompressed size from the local header (or its
	// zip64 extra), -1 when a data descriptor follows (or the header does
	// not give the size).
	DeclaredSize int64
}

// zipCentral is what the central directory says about an entry that only
// it knows.
type zipCentral struct {
	Name string
	// Mode is from the external attributes, as archive/zip's
	// FileHeader.Mode computes it.
	Mode fs.FileMode
}

// zipStreamEntry reads the data of one entry, checking its CRC-32 and sizes
// when the data ends.
type zipStreamEntry struct {
	z       *zipStream
	loc     *zipLocal
	deflate bool
	desc    bool   // a data descriptor follows the data
	zip64   bool   // the local header has a zip64 extra field
	crc     uint32 // CRC-32 from the local header (without descriptor)
	csize   uint64 // compressed size from the local header, if cKnown
	usize   uint64 // uncompressed size from the local header, if uKnown
	cKnown  bool
	uKnown  bool
	start   int64  // archive offset of the first data byte
	remain  uint64 // stored entries: data bytes not read yet
	n       uint64 // uncompressed bytes produced so far
	sum     uint32 // running CRC-32 of them
	err     error  // io.EOF once the entry was read and checked
}

// pos is the archive offset of the next byte the reader will consume.
func (z *zipStream) pos() int64 { return z.src.n - int64(z.br.Buffered()) }

// fail records err as the stream's failure and returns it.
func (z *zipStream) fail(err error) error {
	if z.err == nil {
		z.err = err
	}
	return z.err
}

// readErr classifies an error met while reading (where says where, e.g.
// "in the central directory"): a failure of the source passes through
// (wrapped), an early end means the archive is truncated, anything else
// (an inflate error) means it is corrupt.
func (z *zipStream) readErr(where string, err error) error {
	if z.src.err != nil {
		return fmt.Errorf("zip: reading the archive failed %s: %w", where, z.src.err)
	}
	if err == nil || err == io.EOF || err == io.ErrUnexpectedEOF {
		return errCorrupt("zip archive is truncated "+where, io.ErrUnexpectedEOF)
	}
	var typed *errdefs.Error
	if errors.As(err, &typed) {
		return err
	}
	return errCorrupt("zip archive is corrupt "+where, err)
}

// need returns the next n bytes without consuming them, failing the
// stream if fewer are left.
func (z *zipStream) need(n int, where string) ([]byte, error) {
	b, err := z.br.Peek(n)
	if len(b) < n {
		return nil, z.fail(z.readErr(where, err))
	}
	return b, nil
}

// skip consumes n bytes (n may exceed the buffer).
func (z *zipStream) skip(n int64, where string) error {
	for n > 0 {
		step := int(min(n, zsBufSize))
		d, err := z.br.Discard(step)
		n -= int64(d)
		if d < step {
			return z.fail(z.readErr(where, err))
		}
	}
	return nil
}

// lastName says where the entries end so far, for error messages.
func (z *zipStream) lastName() string {
	if len(z.ents) == 0 {
		return "at the start of the archive"
	}
	return fmt.Sprintf("after entry %q", z.ents[len(z.ents)-1].Name)
}

// zsU16, zsU32 and zsU64 decode little-endian integers.
func zsU16(b []byte) uint16 { return binary.LittleEndian.Uint16(b) }
func zsU32(b []byte) uint32 { return binary.LittleEndian.Uint32(b) }
func zsU64(b []byte) uint64 { return binary.LittleEndian.Uint64(b) }

// Next skips whatever is left of the previous entry's data (reading it,
// checking it), then returns the next entry and a reader of its
// uncompressed content. The reader returns io.EOF only after it has checked
// the CRC-32 and both sizes (against the local header, or the data
// descriptor that follows the data). Next returns io.EOF when the next
// record is the central directory (or the end record of an empty archive).
func (z *zipStream) Next() (*zipLocal, io.Reader, error) {
	if z.err != nil {
		return nil, nil, z.err
	}
	if z.atDir {
		return nil, nil, io.EOF
	}
	if e := z.cur; e != nil {
		if err := e.drain(); err != nil {
			return nil, nil, z.fail(err)
		}
		z.cur = nil
	}
	off := z.pos()
	b, err := z.br.Peek(4)
	if len(b) < 4 {
		return nil, nil, z.fail(z.readErr(z.lastName(), err))
	}
	switch zsU32(b) {
	case zsLocalSig:
	case zsCentralSig, zsEndSig, zs64EndSig:
		z.atDir, z.dirOff = true, off
		return nil, nil, io.EOF
	case zsExtraDatSig:
		return nil, nil, z.fail(errUnsupported("zip archive has an encrypted central directory"))
	default:
		return nil, nil, z.fail(errCorrupt(fmt.Sprintf("zip archive has unexpected bytes %q at offset %d, %s", b, off, z.lastName()), nil))
	}

	hlen := zsLocalLen
	h, err := z.br.Peek(hlen)
	if len(h) == hlen {
		hlen += int(zsU16(h[26:])) + int(zsU16(h[28:]))
		h, err = z.br.Peek(hlen)
	}
	if len(h) < hlen {
		return nil, nil, z.fail(z.readErr("in a local file header "+z.lastName(), err))
	}
	nameEnd := zsLocalLen + int(zsU16(h[26:]))
	loc := &zipLocal{
		Name:         string(h[zsLocalLen:nameEnd]),
		Flags:        zsU16(h[6:]),
		Method:       zsU16(h[8:]),
		Offset:       off,
		DeclaredSize: -1,
	}
	e := &zipStreamEntry{
		z:       z,
		loc:     loc,
		deflate: loc.Method == 8,
		desc:    loc.Flags&zsFlagDesc != 0,
		crc:     zsU32(h[14:]),
		csize:   uint64(zsU32(h[18:])),
		usize:   uint64(zsU32(h[22:])),
	}
	e.cKnown, e.uKnown = e.csize != zsMax32, e.usize != zsMax32
	if f, ok := zsExtraField(h[nameEnd:hlen], zsZip64ID); ok {
		e.zip64 = true
		if len(f) >= 16 {
			// APPNOTE 4.5.3: in a local header the field holds both sizes.
			if !e.uKnown {
				e.usize, e.uKnown = zsU64(f), true
			}
			if !e.cKnown {
				e.csize, e.cKnown = zsU64(f[8:]), true
			}
		} else {
			if !e.uKnown && len(f) >= 8 {
				e.usize, e.uKnown = zsU64(f), true
				f = f[8:]
			}
			if !e.cKnown && len(f) >= 8 {
				e.csize, e.cKnown = zsU64(f), true
			}
		}
	}
	if _, err := z.br.Discard(hlen); err != nil {
		return nil, nil, z.fail(z.readErr("in a local file header", err))
	}
	e.start = z.pos()

	if loc.Flags&(zsFlagEncrypted|zsFlagStrong|zsFlagMasked) != 0 {
		return nil, nil, z.fail(errUnsupported("zip entry %q is encrypted", loc.Name))
	}
	if loc.Method != 0 && loc.Method != 8 {
		return nil, nil, z.fail(errUnsupported("zip entry %q uses unsupported compression method %d%s", loc.Name, loc.Method, zsMethodName(loc.Method)))
	}
	if err := e.plan(); err != nil {
		return nil, nil, z.fail(err)
	}
	if e.deflate {
		if z.fr == nil {
			z.fr = flate.NewReader(z.br)
			z.frReset = z.fr.(flate.Resetter)
		} else if err := z.frReset.Reset(z.br, nil); err != nil {
			return nil, nil, z.fail(fmt.Errorf("zip: resetting the inflater: %w", err))
		}
	}
	z.cur = e
	return loc, e, nil
}

// plan decides, from the local header, how the end of the entry's data is
// found and what it is checked against.
func (e *zipStreamEntry) plan() error {
	loc := e.loc
	if e.desc {
		// The header's CRC and sizes are meant to be zero; only a stored
		// entry, which has no end marker of its own, needs a size here.
		if e.deflate {
			return nil
		}
		switch {
		case e.cKnown && e.uKnown && e.csize == e.usize && e.csize > 0:
			// Info-ZIP writing to a pipe: the sizes are known and repeated
			// in the descriptor.
			e.remain = e.csize
		case e.cKnown && e.uKnown && e.csize == 0 && e.usize == 0 && e.z.emptyDescFollows(e.zip64):
			e.remain = 0
		default:
			return fmt.Errorf("zip entry %q is stored with its size only in a data descriptor: %w", loc.Name, errZipNeedsSpool)
		}
		return nil
	}
	if e.uKnown {
		if e.usize > math.MaxInt64 {
			return errCorrupt(fmt.Sprintf("zip entry %q declares an impossible size %d", loc.Name, e.usize), nil)
		}
		loc.DeclaredSize = int64(e.usize)
	}
	if e.deflate && e.cKnown && e.csize == 0 {
		// Not even an empty deflate stream (some tools write empty
		// directories so): the entry is empty, and the inflater must not
		// run on into the next header.
		e.deflate = false
	}
	if !e.deflate {
		if !e.cKnown {
			return fmt.Errorf("zip entry %q is stored with its size only in the central directory: %w", loc.Name, errZipNeedsSpool)
		}
		if e.uKnown && e.usize != e.csize && loc.Method == 0 {
			return errCorrupt(fmt.Sprintf("zip entry %q is stored but its local header gives %d compressed and %d uncompressed bytes", loc.Name, e.csize, e.usize), nil)
		}
		e.remain = e.csize
	}
	return nil
}

// emptyDescFollows reports whether the next bytes are a data descriptor
// (with signature) of an empty entry, followed by the next record.
func (z *zipStream) emptyDescFollows(zip64 bool) bool {
	b, _ := z.br.Peek(zsDescPeek)
	if len(b) < 4 || zsU32(b) != zsDescSig {
		return false
	}
	for _, wide := range [2]bool{zip64, !zip64} {
		if n := zsDescriptorLen(b, 0, 0, 0, wide, false); n > 0 && len(b) >= n+4 && zsRecordFollows(b[n:]) {
			return true
		}
	}
	return false
}

// Read reads the entry's uncompressed content. At the end of the data it
// checks the CRC-32 and sizes and only then returns io.EOF.
func (e *zipStreamEntry) Read(p []byte) (int, error) {
	z := e.z
	if z.cur != e {
		return 0, errors.New("zip: entry read after Next moved past it")
	}
	if e.err != nil {
		return 0, e.err
	}
	if z.err != nil {
		return 0, z.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	var err error
	if e.deflate {
		n, err = z.fr.Read(p)
	} else if e.remain == 0 {
		err = io.EOF
	} else {
		if uint64(len(p)) > e.remain {
			p = p[:e.remain]
		}
		n, err = z.br.Read(p)
		e.remain -= uint64(n)
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		} else if err == nil && e.remain == 0 {
			err = io.EOF
		}
	}
	if n > 0 {
		e.sum = crc32.Update(e.sum, crc32.IEEETable, p[:n])
		e.n += uint64(n)
	}
	switch {
	case err == nil:
		if !e.desc {
			// Fail early rather than inflate a lying entry to its end.
			if e.uKnown && e.n > e.usize {
				err = errCorrupt(fmt.Sprintf("zip entry %q inflates to more than the %d bytes its header says", e.loc.Name, e.usize), nil)
			} else if e.cKnown && e.deflate && uint64(z.pos()-e.start) > e.csize {
				err = errCorrupt(fmt.Sprintf("zip entry %q has more than the %d compressed bytes its header says", e.loc.Name, e.csize), nil)
			}
		}
	case err == io.EOF:
		err = e.finish()
	default:
		err = z.readErr(fmt.Sprintf("in the data of entry %q", e.loc.Name), err)
	}
	if err != nil {
		if err != io.EOF {
			err = z.fail(err)
		}
		e.err = err
	}
	return n, err
}

// finish checks the entry's data once it ended: against the data
// descriptor that follows it, or the local header. It returns io.EOF when
// everything agrees.
func (e *zipStreamEntry) finish() error {
	z, loc := e.z, e.loc
	csize := uint64(z.pos() - e.start)
	if e.desc {
		if err := e.readDescriptor(csize); err != nil {
			return err
		}
	} else {
		switch {
		case e.cKnown && csize != e.csize:
			return errCorrupt(fmt.Sprintf("zip entry %q has %d compressed bytes, its header says %d", loc.Name, csize, e.csize), nil)
		case e.uKnown && e.n != e.usize:
			return errCorrupt(fmt.Sprintf("zip entry %q inflates to %d bytes, its header says %d", loc.Name, e.n, e.usize), nil)
		case e.sum != e.crc:
			return errCorrupt(fmt.Sprintf("zip entry %q fails its CRC check (data %08x, header %08x)", loc.Name, e.sum, e.crc), nil)
		}
	}
	loc.CRC32, loc.CompressedSize, loc.UncompressedSize = e.sum, csize, e.n
	z.ents = append(z.ents, *loc)
	return io.EOF
}

// readDescriptor reads and checks the data descriptor after the entry's
// data. Its sizes are 8 bytes each when the local header has a zip64 extra
// field or a size does not fit in 32 bits (as archive/zip writes them),
// otherwise 4; the other width is accepted if only it matches.
func (e *zipStreamEntry) readDescriptor(csize uint64) error {
	z, name := e.z, e.loc.Name
	b, perr := z.br.Peek(zsDescPeek)
	wide := e.zip64 || csize >= zsMax32 || e.n >= zsMax32
	n := zsDescriptorLen(b, e.sum, csize, e.n, wide, true)
	if n == 0 {
		n = zsDescriptorLen(b, e.sum, csize, e.n, !wide, true)
	}
	if n == 0 {
		n = zsDescriptorLen(b, e.sum, csize, e.n, wide, false)
	}
	if n == 0 {
		off := 0
		if len(b) >= 8 && zsU32(b) == zsDescSig && (e.sum != zsDescSig || zsU32(b[4:]) == zsDescSig) {
			off = 4
		}
		var crc uint32
		var cs, us uint64
		switch {
		case wide && len(b) >= off+20:
			crc, cs, us = zsU32(b[off:]), zsU64(b[off+4:]), zsU64(b[off+12:])
		case !wide && len(b) >= off+12:
			crc, cs, us = zsU32(b[off:]), uint64(zsU32(b[off+4:])), uint64(zsU32(b[off+8:]))
		default:
			return z.readErr(fmt.Sprintf("in the data descriptor of entry %q", name), perr)
		}
		if crc != e.sum {
			return errCorrupt(fmt.Sprintf("zip entry %q fails its CRC check (data %08x, data descriptor %08x)", name, e.sum, crc), nil)
		}
		return errCorrupt(fmt.Sprintf("zip entry %q has %d compressed and %d uncompressed bytes, its data descriptor says %d and %d", name, csize, e.n, cs, us), nil)
	}
	if _, err := z.br.Discard(n); err != nil {
		return z.readErr(fmt.Sprintf("in the data descriptor of entry %q", name), err)
	}
	return nil
}

// zsDescriptorLen returns the length of the data descriptor at the start
// of b if it records sum, csize and usize (with or without its signature;
// 8-byte sizes when wide, 4-byte otherwise), else 0. With strict, a record
// signature must follow it, unless b ends there.
func zsDescriptorLen(b []byte, sum uint32, csize, usize uint64, wide, strict bool) int {
	off := 0
	if len(b) >= 8 && zsU32(b) == zsDescSig && (sum != zsDescSig || zsU32(b[4:]) == zsDescSig) {
		off = 4
	}
	var n int
	var crc uint32
	var cs, us uint64
	if wide {
		if n = off + 20; len(b) < n {
			return 0
		}
		crc, cs, us = zsU32(b[off:]), zsU64(b[off+4:]), zsU64(b[off+12:])
	} else {
		if n = off + 12; len(b) < n {
			return 0
		}
		crc, cs, us = zsU32(b[off:]), uint64(zsU32(b[off+4:])), uint64(zsU32(b[off+8:]))
	}
	if crc != sum || cs != csize || us != usize {
		return 0
	}
	if strict && len(b) >= n+4 && !zsRecordFollows(b[n:]) {
		return 0
	}
	return n
}

// zsRecordFollows reports whether b starts with the signature of a record
// that may follow an entry.
func zsRecordFollows(b []byte) bool {
	switch zsU32(b) {
	case zsLocalSig, zsCentralSig, zsEndSig, zs64EndSig, zsExtraDatSig:
		return true
	}
	return false
}

// drain reads what is left of the entry, checking it.
func (e *zipStreamEntry) drain() error {
	if e.z.scratch == nil {
		e.z.scratch = make([]byte, 64<<10)
	}
	for {
		_, err := e.Read(e.z.scratch)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// zsExtraField returns the data of the first extra field with the given id.
// Like archive/zip, it stops at a malformed field.
func zsExtraField(extra []byte, id uint16) ([]byte, bool) {
	for len(extra) >= 4 {
		tag, size := zsU16(extra), int(zsU16(extra[2:]))
		if len(extra)-4 < size {
			break
		}
		if tag == id {
			return extra[4 : 4+size], true
		}
		extra = extra[4+size:]
	}
	return nil, false
}

// zsMethodName names well-known compression methods for error messages.
func zsMethodName(m uint16) string {
	switch m {
	case 1:
		return " (shrink)"
	case 6:
		return " (implode)"
	case 9:
		return " (deflate64)"
	case 12:
		return " (bzip2)"
	case 14:
		return " (lzma)"
	case 93:
		return " (zstd)"
	case 95:
		return " (xz)"
	case 98:
		return " (ppmd)"
	case 99:
		return " (AES encryption)"
	}
	return ""
}

// Finish, after Next returned io.EOF, reads the central directory, the
// zip64 end record and locator if present, and the end record, to the end
// of the stream, and checks that they describe exactly the entries Next
// returned: same number, same order, same names, offsets, methods, flags'
// encryption bit, CRCs and sizes; the central directory starts exactly
// where the last entry ended; the end record's counts, directory size and
// offset agree (zip64 values when present); nothing follows the end
// record's comment. It returns the entries' central information in order.
func (z *zipStream) Finish() ([]zipCentral, error) {
	if z.err != nil {
		return nil, z.err
	}
	if z.central != nil {
		return z.central, nil
	}
	if !z.atDir {
		return nil, errors.New("zip: Finish called before Next returned io.EOF")
	}
	out := make([]zipCentral, 0, len(z.ents))
	for {
		b, err := z.need(4, "in the central directory")
		if err != nil {
			return nil, err
		}
		if zsU32(b) != zsCentralSig {
			break
		}
		c, err := z.readCentral(len(out))
		if err != nil {
			return nil, z.fail(err)
		}
		out = append(out, c)
	}
	if len(out) < len(z.ents) {
		return nil, z.fail(errCorrupt(fmt.Sprintf("zip central directory lists %d entries, the archive has %d: entry %q is missing", len(out), len(z.ents), z.ents[len(out)].Name), nil))
	}
	if err := z.readEnd(uint64(len(out)), uint64(z.pos()-z.dirOff)); err != nil {
		return nil, z.fail(err)
	}
	z.central = out
	return out, nil
}

// readCentral reads the i-th central directory header and checks it
// against the i-th entry.
func (z *zipStream) readCentral(i int) (zipCentral, error) {
	h, err := z.need(zsCentralLen, "in the central directory")
	if err != nil {
		return zipCentral{}, err
	}
	nl, el, cl := int(zsU16(h[28:])), int(zsU16(h[30:])), int(zsU16(h[32:]))
	hlen := zsCentralLen + nl + el + cl
	if h, err = z.need(hlen, "in the central directory"); err != nil {
		return zipCentral{}, err
	}
	name := h[zsCentralLen : zsCentralLen+nl]
	if i >= len(z.ents) {
		return zipCentral{}, errCorrupt(fmt.Sprintf("zip central directory lists more entries than the archive has: %q", name), nil)
	}
	l := &z.ents[i]
	if string(name) != l.Name {
		return zipCentral{}, errCorrupt(fmt.Sprintf("zip central directory entry %d is named %q, the archive's entry %q", i, name, l.Name), nil)
	}
	madeBy, flags, method := zsU16(h[4:]), zsU16(h[8:]), zsU16(h[10:])
	crc := zsU32(h[16:])
	csize, usize := uint64(zsU32(h[20:])), uint64(zsU32(h[24:]))
	disk := uint32(zsU16(h[34:]))
	ext := zsU32(h[38:])
	off := uint64(zsU32(h[42:]))
	if f, ok := zsExtraField(h[zsCentralLen+nl:zsCentralLen+nl+el], zsZip64ID); ok {
		// Only the fields whose 32-bit (16-bit) value is saturated are
		// present, in this order.
		bad := false
		take := func(v *uint64) {
			if len(f) < 8 {
				bad = true
				return
			}
			*v, f = zsU64(f), f[8:]
		}
		if usize == zsMax32 {
			take(&usize)
		}
		if csize == zsMax32 {
			take(&csize)
		}
		if off == zsMax32 {
			take(&off)
		}
		if disk == zsMax16 && len(f) >= 4 {
			disk = zsU32(f)
		}
		if bad {
			return zipCentral{}, errCorrupt(fmt.Sprintf("zip central directory entry %q has a short zip64 extra field", l.Name), nil)
		}
	}
	var what string
	switch {
	case off != uint64(l.Offset):
		what = fmt.Sprintf("local header offset %d, actual %d", off, l.Offset)
	case disk != 0:
		what = fmt.Sprintf("disk number %d", disk)
	case method != l.Method:
		what = fmt.Sprintf("method %d, local header %d", method, l.Method)
	case flags&zsFlagEncrypted != l.Flags&zsFlagEncrypted:
		what = "encryption flag"
	case crc != l.CRC32:
		what = fmt.Sprintf("CRC-32 %08x, data %08x", crc, l.CRC32)
	case csize != l.CompressedSize:
		what = fmt.Sprintf("compressed size %d, data %d", csize, l.CompressedSize)
	case usize != l.UncompressedSize:
		what = fmt.Sprintf("uncompressed size %d, data %d", usize, l.UncompressedSize)
	}
	if what != "" {
		return zipCentral{}, errCorrupt(fmt.Sprintf("zip central directory disagrees with entry %q: %s", l.Name, what), nil)
	}
	c := zipCentral{Name: l.Name, Mode: zsMode(madeBy, ext, l.Name)}
	if _, err := z.br.Discard(hlen); err != nil {
		return zipCentral{}, z.readErr("in the central directory", err)
	}
	return c, nil
}

// readEnd reads the zip64 end record and locator if present and the end
// record, and checks them against the count and size of the central
// directory just read (which started at z.dirOff). Nothing may follow.
func (z *zipStream) readEnd(count, dirSize uint64) error {
	dirOff := uint64(z.dirOff)
	b, err := z.need(4, "after the central directory")
	if err != nil {
		return err
	}
	has64 := false
	switch zsU32(b) {
	case zs64EndSig:
		has64 = true
		recOff := z.pos()
		h, err := z.need(zs64EndLen, "in the zip64 end record")
		if err != nil {
			return err
		}
		size := zsU64(h[4:])
		if size < zs64EndLen-12 || size-(zs64EndLen-12) > zsMax64Ext {
			return errCorrupt(fmt.Sprintf("zip64 end record has an invalid size %d", size), nil)
		}
		diskNbr, dirDisk := zsU32(h[16:]), zsU32(h[20:])
		recsDisk, recs := zsU64(h[24:]), zsU64(h[32:])
		dsize, doff := zsU64(h[40:]), zsU64(h[48:])
		switch {
		case diskNbr != 0 || dirDisk != 0:
			return errUnsupported("multi-disk zip archives are not supported")
		case recsDisk != count || recs != count:
			return errCorrupt(fmt.Sprintf("zip64 end record counts %d entries, the central directory has %d", recs, count), nil)
		case dsize != dirSize:
			return errCorrupt(fmt.Sprintf("zip64 end record gives a central directory of %d bytes, it has %d", dsize, dirSize), nil)
		case doff != dirOff:
			return errCorrupt(fmt.Sprintf("zip64 end record places the central directory at offset %d, it is at %d", doff, dirOff), nil)
		}
		if err := z.skip(int64(size)+12, "in the zip64 end record"); err != nil {
			return err
		}
		h, err = z.need(zs64LocLen, "in the zip64 end locator")
		if err != nil {
			return err
		}
		switch {
		case zsU32(h) != zs64LocSig:
			return errCorrupt("zip64 end record is not followed by its locator", nil)
		case zsU32(h[4:]) != 0 || zsU32(h[16:]) != 1:
			return errUnsupported("multi-disk zip archives are not supported")
		case zsU64(h[8:]) != uint64(recOff):
			return errCorrupt(fmt.Sprintf("zip64 end locator points at offset %d, the record is at %d", zsU64(h[8:]), recOff), nil)
		}
		if _, err := z.br.Discard(zs64LocLen); err != nil {
			return z.readErr("in the zip64 end locator", err)
		}
	case zs64LocSig:
		return errCorrupt("zip64 end locator without a zip64 end record", nil)
	case zsEndSig:
	default:
		return errCorrupt(fmt.Sprintf("zip archive has unexpected bytes %q at offset %d, after its central directory", b, z.pos()), nil)
	}

	h, err := z.need(zsEndLen, "in the end record")
	if err != nil {
		return err
	}
	if zsU32(h) != zsEndSig {
		return errCorrupt(fmt.Sprintf("zip archive has unexpected bytes %q at offset %d, where its end record should be", h[:4], z.pos()), nil)
	}
	ok16 := func(v uint16, want uint64) bool { return v == uint16(want) || has64 && v == zsMax16 }
	ok32 := func(v uint32, want uint64) bool { return uint64(v) == want || has64 && v == zsMax32 }
	switch {
	case !ok16(zsU16(h[4:]), 0) || !ok16(zsU16(h[6:]), 0):
		return errUnsupported("multi-disk zip archives are not supported")
	case !ok16(zsU16(h[8:]), count) || !ok16(zsU16(h[10:]), count):
		return errCorrupt(fmt.Sprintf("zip end record counts %d entries, the central directory has %d", zsU16(h[10:]), count), nil)
	case !ok32(zsU32(h[12:]), dirSize):
		return errCorrupt(fmt.Sprintf("zip end record gives a central directory of %d bytes, it has %d", zsU32(h[12:]), dirSize), nil)
	case !ok32(zsU32(h[16:]), dirOff):
		return errCorrupt(fmt.Sprintf("zip end record places the central directory at offset %d, it is at %d", zsU32(h[16:]), dirOff), nil)
	}
	cl := zsEndLen + int(zsU16(h[20:]))
	if h, err = z.need(cl, "in the end record's comment"); err != nil {
		return err
	}
	// A comment holding an end signature would let readers that search
	// backwards for the end record see a different archive.
	if bytes.Contains(h[zsEndLen:cl], []byte("PK\x05\x06")) {
		return errCorrupt("zip archive comment contains an end record signature", nil)
	}
	if _, err := z.br.Discard(cl); err != nil {
		return z.readErr("in the end record's comment", err)
	}
	if b, err := z.br.Peek(1); len(b) > 0 {
		return errCorrupt(fmt.Sprintf("zip archive has data after its end record, at offset %d", z.pos()), nil)
	} else if err != io.EOF {
		return z.readErr("at the end of the archive", err)
	}
	return nil
}

// zsMode computes an entry's mode from the central directory's "version
// made by" and external attributes, as archive/zip's FileHeader.Mode does.
func zsMode(madeBy uint16, ext uint32, name string) fs.FileMode {
	var m fs.FileMode
	switch madeBy >> 8 {
	case 3, 19: // Unix, OS X
		m = zsUnixMode(ext >> 16)
	case 0, 11, 14: // MS-DOS/FAT, NTFS, VFAT
		m = 0o666
		if ext&0x10 != 0 { // directory
			m = fs.ModeDir | 0o777
		}
		if ext&0x01 != 0 { // read-only
			m &^= 0o222
		}
	}
	if strings.HasSuffix(name, "/") {
		m |= fs.ModeDir
	}
	return m
}

// zsUnixMode converts a Unix st_mode to an fs.FileMode.
func zsUnixMode(u uint32) fs.FileMode {
	m := fs.FileMode(u & 0o777)
	switch u & 0xf000 {
	case 0x1000:
		m |= fs.ModeNamedPipe
	case 0x2000:
		m |= fs.ModeDevice | fs.ModeCharDevice
	case 0x4000:
		m |= fs.ModeDir
	case 0x6000:
		m |= fs.ModeDevice
	case 0xa000:
		m |= fs.ModeSymlink
	case 0xc000:
		m |= fs.ModeSocket
	}
	if u&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if u&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if u&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	return m
}
