// Package zipstream reads a zip archive as a stream, front to back: each
// entry's data as it arrives, checked against its CRC-32 and sizes, and at
// the end the central directory, checked against the entries read. A zip
// that cannot be read so (a stored entry whose size only its data
// descriptor or the central directory gives) is reported with
// ErrNeedsSpool, for the caller to read it by its central directory once
// it is whole.
package zipstream

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

	"github.com/klauspost/compress/flate"
)

// Record signatures and fixed lengths of the zip format (APPNOTE.TXT).
const (
	localSig    = 0x04034b50 // local file header
	centralSig  = 0x02014b50 // central directory file header
	endSig      = 0x06054b50 // end of central directory record
	end64Sig    = 0x06064b50 // zip64 end of central directory record
	loc64Sig    = 0x07064b50 // zip64 end of central directory locator
	descSig     = 0x08074b50 // optional data descriptor signature
	extraDatSig = 0x08064b50 // archive extra data record (central directory encryption)

	localLen   = 30
	centralLen = 46
	endLen     = 22
	end64Len   = 56
	loc64Len   = 20
	// descPeek covers the longest data descriptor (signature, CRC,
	// two 8-byte sizes) and the signature of the record after it.
	descPeek = 4 + 4 + 16 + 4

	zip64ID = 0x0001 // zip64 extended information extra field

	flagEncrypted = 0x0001
	flagDesc      = 0x0008
	flagStrong    = 0x0040 // strong encryption
	flagMasked    = 0x2000 // local header values masked (encrypted directory)

	max16 = 0xffff
	max32 = 0xffffffff

	// bufSize is the read buffer. It must hold the longest record this
	// reader peeks at whole: a central directory header with a 64 KiB
	// name, extra field and comment (46 + 3*65535 bytes).
	bufSize = 256 << 10
	// max64Ext bounds the extensible data of a zip64 end record.
	max64Ext = 1 << 20
)

// Reader reads a zip archive as a stream, front to back.
type Reader struct {
	src     counter
	br      *bufio.Reader
	fr      io.ReadCloser  // inflater, created for the first deflated entry
	frReset flate.Resetter // fr, to reuse it for later entries
	cur     *entryReader   // entry whose data Next handed out last
	ents    []Local        // finished entries, in archive order
	err     error          // sticky: the first failure
	atDir   bool           // Next met the central directory (or end records)
	dirOff  int64          // offset of that record
	central []Central      // Finish's result, once it succeeded
	scratch []byte         // for skipping unread entry data
}

// counter counts the bytes read from the source and remembers the
// source's first error other than io.EOF, so that a failed download is
// told apart from a corrupt archive.
type counter struct {
	r   io.Reader
	n   int64
	err error
}

// Read reads from the source, counting and recording its failure.
func (c *counter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if err != nil && err != io.EOF && c.err == nil {
		c.err = err
	}
	return n, err
}

// NewReader starts reading a zip archive at the first byte of r.
func NewReader(r io.Reader) *Reader {
	z := &Reader{src: counter{r: r}}
	z.br = bufio.NewReaderSize(&z.src, bufSize)
	return z
}

// Local is one entry as read from its local header (and, after its
// data, its data descriptor).
type Local struct {
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

// Central is what the central directory says about an entry that only
// it knows.
type Central struct {
	Name string
	// Mode is from the external attributes, as archive/zip's
	// FileHeader.Mode computes it.
	Mode fs.FileMode
}

// entryReader reads the data of one entry, checking its CRC-32 and sizes
// when the data ends.
type entryReader struct {
	z       *Reader
	loc     *Local
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
func (z *Reader) pos() int64 { return z.src.n - int64(z.br.Buffered()) }

// fail records err as the stream's failure and returns it.
func (z *Reader) fail(err error) error {
	if z.err == nil {
		z.err = err
	}
	return z.err
}

// readErr classifies an error met while reading (where says where, e.g.
// "in the central directory"): a failure of the source passes through
// (wrapped), an early end means the archive is truncated, anything else
// (an inflate error) means it is corrupt.
func (z *Reader) readErr(where string, err error) error {
	if z.src.err != nil {
		return fmt.Errorf("zip: reading the archive failed %s: %w", where, z.src.err)
	}
	if err == nil || err == io.EOF || err == io.ErrUnexpectedEOF {
		return corrupt("zip archive is truncated "+where, io.ErrUnexpectedEOF)
	}
	var typed *Error
	if errors.As(err, &typed) {
		return err
	}
	return corrupt("zip archive is corrupt "+where, err)
}

// need returns the next n bytes without consuming them, failing the
// stream if fewer are left.
func (z *Reader) need(n int, where string) ([]byte, error) {
	b, err := z.br.Peek(n)
	if len(b) < n {
		return nil, z.fail(z.readErr(where, err))
	}
	return b, nil
}

// skip consumes n bytes (n may exceed the buffer).
func (z *Reader) skip(n int64, where string) error {
	for n > 0 {
		step := int(min(n, bufSize))
		d, err := z.br.Discard(step)
		n -= int64(d)
		if d < step {
			return z.fail(z.readErr(where, err))
		}
	}
	return nil
}

// lastName says where the entries end so far, for error messages.
func (z *Reader) lastName() string {
	if len(z.ents) == 0 {
		return "at the start of the archive"
	}
	return fmt.Sprintf("after entry %q", z.ents[len(z.ents)-1].Name)
}

// u16, u32 and u64 decode little-endian integers.
func u16(b []byte) uint16 { return binary.LittleEndian.Uint16(b) }
func u32(b []byte) uint32 { return binary.LittleEndian.Uint32(b) }
func u64(b []byte) uint64 { return binary.LittleEndian.Uint64(b) }

// Next skips whatever is left of the previous entry's data (reading it,
// checking it), then returns the next entry and a reader of its
// uncompressed content. The reader returns io.EOF only after it has checked
// the CRC-32 and both sizes (against the local header, or the data
// descriptor that follows the data). Next returns io.EOF when the next
// record is the central directory (or the end record of an empty archive).
func (z *Reader) Next() (*Local, io.Reader, error) {
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
	switch u32(b) {
	case localSig:
	case centralSig, endSig, end64Sig:
		z.atDir, z.dirOff = true, off
		return nil, nil, io.EOF
	case extraDatSig:
		return nil, nil, z.fail(unsupportedf("zip archive has an encrypted central directory"))
	default:
		return nil, nil, z.fail(corruptf("zip archive has unexpected bytes %q at offset %d, %s", b, off, z.lastName()))
	}

	hlen := localLen
	h, err := z.br.Peek(hlen)
	if len(h) == hlen {
		hlen += int(u16(h[26:])) + int(u16(h[28:]))
		h, err = z.br.Peek(hlen)
	}
	if len(h) < hlen {
		return nil, nil, z.fail(z.readErr("in a local file header "+z.lastName(), err))
	}
	nameEnd := localLen + int(u16(h[26:]))
	loc := &Local{
		Name:         string(h[localLen:nameEnd]),
		Flags:        u16(h[6:]),
		Method:       u16(h[8:]),
		Offset:       off,
		DeclaredSize: -1,
	}
	e := &entryReader{
		z:       z,
		loc:     loc,
		deflate: loc.Method == 8,
		desc:    loc.Flags&flagDesc != 0,
		crc:     u32(h[14:]),
		csize:   uint64(u32(h[18:])),
		usize:   uint64(u32(h[22:])),
	}
	e.cKnown, e.uKnown = e.csize != max32, e.usize != max32
	if f, ok := extraField(h[nameEnd:hlen], zip64ID); ok {
		e.zip64 = true
		if len(f) >= 16 {
			// APPNOTE 4.5.3: in a local header the field holds both sizes.
			if !e.uKnown {
				e.usize, e.uKnown = u64(f), true
			}
			if !e.cKnown {
				e.csize, e.cKnown = u64(f[8:]), true
			}
		} else {
			if !e.uKnown && len(f) >= 8 {
				e.usize, e.uKnown = u64(f), true
				f = f[8:]
			}
			if !e.cKnown && len(f) >= 8 {
				e.csize, e.cKnown = u64(f), true
			}
		}
	}
	if _, err := z.br.Discard(hlen); err != nil {
		return nil, nil, z.fail(z.readErr("in a local file header", err))
	}
	e.start = z.pos()

	if loc.Flags&(flagEncrypted|flagStrong|flagMasked) != 0 {
		return nil, nil, z.fail(unsupportedf("zip entry %q is encrypted", loc.Name))
	}
	if loc.Method != 0 && loc.Method != 8 {
		return nil, nil, z.fail(unsupportedf("zip entry %q uses unsupported compression method %d%s", loc.Name, loc.Method, methodName(loc.Method)))
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
func (e *entryReader) plan() error {
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
			return needsSpoolf("zip entry %q is stored with its size only in a data descriptor", loc.Name)
		}
		return nil
	}
	if e.uKnown {
		if e.usize > math.MaxInt64 {
			return corruptf("zip entry %q declares an impossible size %d", loc.Name, e.usize)
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
			return needsSpoolf("zip entry %q is stored with its size only in the central directory", loc.Name)
		}
		if e.uKnown && e.usize != e.csize && loc.Method == 0 {
			return corruptf("zip entry %q is stored but its local header gives %d compressed and %d uncompressed bytes", loc.Name, e.csize, e.usize)
		}
		e.remain = e.csize
	}
	return nil
}

// emptyDescFollows reports whether the next bytes are a data descriptor
// (with signature) of an empty entry, followed by the next record.
func (z *Reader) emptyDescFollows(zip64 bool) bool {
	b, _ := z.br.Peek(descPeek)
	if len(b) < 4 || u32(b) != descSig {
		return false
	}
	for _, wide := range [2]bool{zip64, !zip64} {
		if n := descriptorLen(b, 0, 0, 0, wide, false); n > 0 && len(b) >= n+4 && recordFollows(b[n:]) {
			return true
		}
	}
	return false
}

// Read reads the entry's uncompressed content. At the end of the data it
// checks the CRC-32 and sizes and only then returns io.EOF.
func (e *entryReader) Read(p []byte) (int, error) {
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
				err = corruptf("zip entry %q inflates to more than the %d bytes its header says", e.loc.Name, e.usize)
			} else if e.cKnown && e.deflate && uint64(z.pos()-e.start) > e.csize {
				err = corruptf("zip entry %q has more than the %d compressed bytes its header says", e.loc.Name, e.csize)
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
func (e *entryReader) finish() error {
	z, loc := e.z, e.loc
	csize := uint64(z.pos() - e.start)
	if e.desc {
		if err := e.readDescriptor(csize); err != nil {
			return err
		}
	} else {
		switch {
		case e.cKnown && csize != e.csize:
			return corruptf("zip entry %q has %d compressed bytes, its header says %d", loc.Name, csize, e.csize)
		case e.uKnown && e.n != e.usize:
			return corruptf("zip entry %q inflates to %d bytes, its header says %d", loc.Name, e.n, e.usize)
		case e.sum != e.crc:
			return corruptf("zip entry %q fails its CRC check (data %08x, header %08x)", loc.Name, e.sum, e.crc)
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
func (e *entryReader) readDescriptor(csize uint64) error {
	z, name := e.z, e.loc.Name
	b, perr := z.br.Peek(descPeek)
	wide := e.zip64 || csize >= max32 || e.n >= max32
	n := descriptorLen(b, e.sum, csize, e.n, wide, true)
	if n == 0 {
		n = descriptorLen(b, e.sum, csize, e.n, !wide, true)
	}
	if n == 0 {
		n = descriptorLen(b, e.sum, csize, e.n, wide, false)
	}
	if n == 0 {
		off := 0
		if len(b) >= 8 && u32(b) == descSig && (e.sum != descSig || u32(b[4:]) == descSig) {
			off = 4
		}
		var crc uint32
		var cs, us uint64
		switch {
		case wide && len(b) >= off+20:
			crc, cs, us = u32(b[off:]), u64(b[off+4:]), u64(b[off+12:])
		case !wide && len(b) >= off+12:
			crc, cs, us = u32(b[off:]), uint64(u32(b[off+4:])), uint64(u32(b[off+8:]))
		default:
			return z.readErr(fmt.Sprintf("in the data descriptor of entry %q", name), perr)
		}
		if crc != e.sum {
			return corruptf("zip entry %q fails its CRC check (data %08x, data descriptor %08x)", name, e.sum, crc)
		}
		return corruptf("zip entry %q has %d compressed and %d uncompressed bytes, its data descriptor says %d and %d", name, csize, e.n, cs, us)
	}
	if _, err := z.br.Discard(n); err != nil {
		return z.readErr(fmt.Sprintf("in the data descriptor of entry %q", name), err)
	}
	return nil
}

// descriptorLen returns the length of the data descriptor at the start
// of b if it records sum, csize and usize (with or without its signature;
// 8-byte sizes when wide, 4-byte otherwise), else 0. With strict, a record
// signature must follow it, unless b ends there.
func descriptorLen(b []byte, sum uint32, csize, usize uint64, wide, strict bool) int {
	off := 0
	if len(b) >= 8 && u32(b) == descSig && (sum != descSig || u32(b[4:]) == descSig) {
		off = 4
	}
	var n int
	var crc uint32
	var cs, us uint64
	if wide {
		if n = off + 20; len(b) < n {
			return 0
		}
		crc, cs, us = u32(b[off:]), u64(b[off+4:]), u64(b[off+12:])
	} else {
		if n = off + 12; len(b) < n {
			return 0
		}
		crc, cs, us = u32(b[off:]), uint64(u32(b[off+4:])), uint64(u32(b[off+8:]))
	}
	if crc != sum || cs != csize || us != usize {
		return 0
	}
	if strict && len(b) >= n+4 && !recordFollows(b[n:]) {
		return 0
	}
	return n
}

// recordFollows reports whether b starts with the signature of a record
// that may follow an entry.
func recordFollows(b []byte) bool {
	switch u32(b) {
	case localSig, centralSig, endSig, end64Sig, extraDatSig:
		return true
	}
	return false
}

// drain reads what is left of the entry, checking it.
func (e *entryReader) drain() error {
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

// extraField returns the data of the first extra field with the given id.
// Like archive/zip, it stops at a malformed field.
func extraField(extra []byte, id uint16) ([]byte, bool) {
	for len(extra) >= 4 {
		tag, size := u16(extra), int(u16(extra[2:]))
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

// methodName names well-known compression methods for error messages.
func methodName(m uint16) string {
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
func (z *Reader) Finish() ([]Central, error) {
	if z.err != nil {
		return nil, z.err
	}
	if z.central != nil {
		return z.central, nil
	}
	if !z.atDir {
		return nil, errors.New("zip: Finish called before Next returned io.EOF")
	}
	out := make([]Central, 0, len(z.ents))
	for {
		b, err := z.need(4, "in the central directory")
		if err != nil {
			return nil, err
		}
		if u32(b) != centralSig {
			break
		}
		c, err := z.readCentral(len(out))
		if err != nil {
			return nil, z.fail(err)
		}
		out = append(out, c)
	}
	if len(out) < len(z.ents) {
		return nil, z.fail(corruptf("zip central directory lists %d entries, the archive has %d: entry %q is missing", len(out), len(z.ents), z.ents[len(out)].Name))
	}
	if err := z.readEnd(uint64(len(out)), uint64(z.pos()-z.dirOff)); err != nil {
		return nil, z.fail(err)
	}
	z.central = out
	return out, nil
}

// readCentral reads the i-th central directory header and checks it
// against the i-th entry.
func (z *Reader) readCentral(i int) (Central, error) {
	h, err := z.need(centralLen, "in the central directory")
	if err != nil {
		return Central{}, err
	}
	nl, el, cl := int(u16(h[28:])), int(u16(h[30:])), int(u16(h[32:]))
	hlen := centralLen + nl + el + cl
	if h, err = z.need(hlen, "in the central directory"); err != nil {
		return Central{}, err
	}
	name := h[centralLen : centralLen+nl]
	if i >= len(z.ents) {
		return Central{}, corruptf("zip central directory lists more entries than the archive has: %q", name)
	}
	l := &z.ents[i]
	if string(name) != l.Name {
		return Central{}, corruptf("zip central directory entry %d is named %q, the archive's entry %q", i, name, l.Name)
	}
	madeBy, flags, method := u16(h[4:]), u16(h[8:]), u16(h[10:])
	crc := u32(h[16:])
	csize, usize := uint64(u32(h[20:])), uint64(u32(h[24:]))
	disk := uint32(u16(h[34:]))
	ext := u32(h[38:])
	off := uint64(u32(h[42:]))
	if f, ok := extraField(h[centralLen+nl:centralLen+nl+el], zip64ID); ok {
		// Only the fields whose 32-bit (16-bit) value is saturated are
		// present, in this order.
		bad := false
		take := func(v *uint64) {
			if len(f) < 8 {
				bad = true
				return
			}
			*v, f = u64(f), f[8:]
		}
		if usize == max32 {
			take(&usize)
		}
		if csize == max32 {
			take(&csize)
		}
		if off == max32 {
			take(&off)
		}
		if disk == max16 && len(f) >= 4 {
			disk = u32(f)
		}
		if bad {
			return Central{}, corruptf("zip central directory entry %q has a short zip64 extra field", l.Name)
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
	case flags&flagEncrypted != l.Flags&flagEncrypted:
		what = "encryption flag"
	case crc != l.CRC32:
		what = fmt.Sprintf("CRC-32 %08x, data %08x", crc, l.CRC32)
	case csize != l.CompressedSize:
		what = fmt.Sprintf("compressed size %d, data %d", csize, l.CompressedSize)
	case usize != l.UncompressedSize:
		what = fmt.Sprintf("uncompressed size %d, data %d", usize, l.UncompressedSize)
	}
	if what != "" {
		return Central{}, corruptf("zip central directory disagrees with entry %q: %s", l.Name, what)
	}
	c := Central{Name: l.Name, Mode: fileMode(madeBy, ext, l.Name)}
	if _, err := z.br.Discard(hlen); err != nil {
		return Central{}, z.readErr("in the central directory", err)
	}
	return c, nil
}

// readEnd reads the zip64 end record and locator if present and the end
// record, and checks them against the count and size of the central
// directory just read (which started at z.dirOff). Nothing may follow.
func (z *Reader) readEnd(count, dirSize uint64) error {
	dirOff := uint64(z.dirOff)
	b, err := z.need(4, "after the central directory")
	if err != nil {
		return err
	}
	has64 := false
	switch u32(b) {
	case end64Sig:
		has64 = true
		recOff := z.pos()
		h, err := z.need(end64Len, "in the zip64 end record")
		if err != nil {
			return err
		}
		size := u64(h[4:])
		if size < end64Len-12 || size-(end64Len-12) > max64Ext {
			return corruptf("zip64 end record has an invalid size %d", size)
		}
		diskNbr, dirDisk := u32(h[16:]), u32(h[20:])
		recsDisk, recs := u64(h[24:]), u64(h[32:])
		dsize, doff := u64(h[40:]), u64(h[48:])
		switch {
		case diskNbr != 0 || dirDisk != 0:
			return unsupportedf("multi-disk zip archives are not supported")
		case recsDisk != count || recs != count:
			return corruptf("zip64 end record counts %d entries, the central directory has %d", recs, count)
		case dsize != dirSize:
			return corruptf("zip64 end record gives a central directory of %d bytes, it has %d", dsize, dirSize)
		case doff != dirOff:
			return corruptf("zip64 end record places the central directory at offset %d, it is at %d", doff, dirOff)
		}
		if err := z.skip(int64(size)+12, "in the zip64 end record"); err != nil {
			return err
		}
		h, err = z.need(loc64Len, "in the zip64 end locator")
		if err != nil {
			return err
		}
		switch {
		case u32(h) != loc64Sig:
			return corruptf("zip64 end record is not followed by its locator")
		case u32(h[4:]) != 0 || u32(h[16:]) != 1:
			return unsupportedf("multi-disk zip archives are not supported")
		case u64(h[8:]) != uint64(recOff):
			return corruptf("zip64 end locator points at offset %d, the record is at %d", u64(h[8:]), recOff)
		}
		if _, err := z.br.Discard(loc64Len); err != nil {
			return z.readErr("in the zip64 end locator", err)
		}
	case loc64Sig:
		return corruptf("zip64 end locator without a zip64 end record")
	case endSig:
	default:
		return corruptf("zip archive has unexpected bytes %q at offset %d, after its central directory", b, z.pos())
	}

	h, err := z.need(endLen, "in the end record")
	if err != nil {
		return err
	}
	if u32(h) != endSig {
		return corruptf("zip archive has unexpected bytes %q at offset %d, where its end record should be", h[:4], z.pos())
	}
	ok16 := func(v uint16, want uint64) bool { return v == uint16(want) || has64 && v == max16 }
	ok32 := func(v uint32, want uint64) bool { return uint64(v) == want || has64 && v == max32 }
	switch {
	case !ok16(u16(h[4:]), 0) || !ok16(u16(h[6:]), 0):
		return unsupportedf("multi-disk zip archives are not supported")
	case !ok16(u16(h[8:]), count) || !ok16(u16(h[10:]), count):
		return corruptf("zip end record counts %d entries, the central directory has %d", u16(h[10:]), count)
	case !ok32(u32(h[12:]), dirSize):
		return corruptf("zip end record gives a central directory of %d bytes, it has %d", u32(h[12:]), dirSize)
	case !ok32(u32(h[16:]), dirOff):
		return corruptf("zip end record places the central directory at offset %d, it is at %d", u32(h[16:]), dirOff)
	}
	cl := endLen + int(u16(h[20:]))
	if h, err = z.need(cl, "in the end record's comment"); err != nil {
		return err
	}
	// A comment holding an end signature would let readers that search
	// backwards for the end record see a different archive.
	if bytes.Contains(h[endLen:cl], []byte("PK\x05\x06")) {
		return corruptf("zip archive comment contains an end record signature")
	}
	if _, err := z.br.Discard(cl); err != nil {
		return z.readErr("in the end record's comment", err)
	}
	if b, err := z.br.Peek(1); len(b) > 0 {
		return corruptf("zip archive has data after its end record, at offset %d", z.pos())
	} else if err != io.EOF {
		return z.readErr("at the end of the archive", err)
	}
	return nil
}

// fileMode computes an entry's mode from the central directory's "version
// made by" and external attributes, as archive/zip's FileHeader.Mode does.
func fileMode(madeBy uint16, ext uint32, name string) fs.FileMode {
	var m fs.FileMode
	switch madeBy >> 8 {
	case 3, 19: // Unix, OS X
		m = unixMode(ext >> 16)
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

// unixMode converts a Unix st_mode to an fs.FileMode.
func unixMode(u uint32) fs.FileMode {
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
