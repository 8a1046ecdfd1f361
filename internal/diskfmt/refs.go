package diskfmt

import (
	"bytes"
	"encoding/binary"
	"io"
	"io/fs"
	"strings"
)

// Ref is another file that a disk names.
type Ref struct {
	// Kind is what the file is to the disk: "backing file",
	// "external data file", "extent" or "parent".
	Kind string
	// Name is the file name as the disk gives it (may be empty when the
	// disk asks for such a file without naming it).
	Name string
}

const (
	qcow2ExtEnd      = 0x00000000
	qcow2ExtDataFile = 0x44415441 // "DATA"
	// qcow2IncompatDataFile is the incompatible feature bit that makes
	// QEMU open an external data file.
	qcow2IncompatDataFile = 1 << 2
	// descWindow is how far a VMDK descriptor is read: QEMU reads at most
	// 1 MiB from the descriptor's offset.
	descWindow = 1 << 20
	// sparseDescOffset is where QEMU looks for a sparse VMDK's parent hint.
	sparseDescOffset = 0x200
)

// Refs returns every file that the disk in r (of format f, as Detect
// decided) names. Only qcow2, qcow and VMDK name files in ways checked
// here; for other formats that goldvm refuses anyway it returns nil.
func Refs(r io.ReaderAt, size int64, f Format) ([]Ref, error) {
	switch f {
	case Qcow2, Qcow:
		return qcowRefs(r, f)
	case VMDK:
		return vmdkRefs(r, size)
	}
	return nil, nil
}

func readAtMost(r io.ReaderAt, off, n int64) ([]byte, error) {
	if off < 0 || n <= 0 {
		return nil, nil
	}
	b := make([]byte, n)
	m, err := r.ReadAt(b, off)
	if err != nil && err != io.EOF {
		return nil, err
	}
	return b[:m], nil
}

// qcowRefs reads a qcow/qcow2 header: the backing file, the external data
// file feature and header extension.
func qcowRefs(r io.ReaderAt, f Format) ([]Ref, error) {
	head, err := readAtMost(r, 0, 104)
	if err != nil {
		return nil, err
	}
	if len(head) < 24 {
		return nil, corruptf("%s header is truncated", f)
	}
	be := binary.BigEndian
	var refs []Ref
	// qcow (v1) and qcow2 keep the backing file name's offset at 8 and its
	// length at 16.
	backingOff, backingLen := be.Uint64(head[8:]), be.Uint32(head[16:])
	if backingOff != 0 || backingLen != 0 {
		name := ""
		if backingLen > 0 && backingLen <= 4096 {
			b, err := readAtMost(r, int64(min(backingOff, 1<<40)), int64(backingLen))
			if err != nil {
				return nil, err
			}
			name = string(b)
		}
		refs = append(refs, Ref{Kind: "backing file", Name: name})
	}
	if f != Qcow2 {
		return refs, nil
	}
	if len(head) < 72 {
		return nil, corruptf("qcow2 header is truncated")
	}
	version := be.Uint32(head[4:])
	clusterBits := be.Uint32(head[20:])
	if clusterBits < 9 || clusterBits > 21 {
		return nil, corruptf("qcow2 header has an invalid cluster size")
	}
	extOff := int64(72)
	if version >= 3 {
		if len(head) < 104 {
			return nil, corruptf("qcow2 header is truncated")
		}
		if be.Uint64(head[72:])&qcow2IncompatDataFile != 0 {
			refs = append(refs, Ref{Kind: "external data file"})
		}
		extOff = int64(be.Uint32(head[100:]))
	}
	// Header extensions follow the header, within the first cluster.
	end := int64(1) << clusterBits
	ext, err := readAtMost(r, extOff, end-extOff)
	if err != nil {
		return nil, err
	}
	for len(ext) >= 8 {
		typ, length := be.Uint32(ext[:4]), int64(be.Uint32(ext[4:]))
		ext = ext[8:]
		if typ == qcow2ExtEnd {
			break
		}
		if length > int64(len(ext)) {
			return nil, corruptf("qcow2 header extension %#x runs past the first cluster", typ)
		}
		if typ == qcow2ExtDataFile {
			refs = append(refs, Ref{Kind: "external data file", Name: string(ext[:length])})
		}
		ext = ext[min((length+7)&^7, int64(len(ext))):]
	}
	return refs, nil
}

// vmdkRefs finds the extents and parent that a VMDK names, in each place
// QEMU reads a descriptor: a text descriptor's first MiB; a sparse
// (KDMV, COWD) file's embedded descriptor at the header's descriptor
// offset, whatever its declared size, and the parent hint at 0x200.
func vmdkRefs(r io.ReaderAt, size int64) ([]Ref, error) {
	regions := [][2]int64{{0, descWindow + sparseDescOffset}}
	head, err := readAtMost(r, 0, 44)
	if err != nil {
		return nil, err
	}
	if bytes.HasPrefix(head, []byte("KDMV")) && len(head) >= 44 {
		if off := binary.LittleEndian.Uint64(head[28:]); off != 0 && off < uint64(size)/512+1 {
			regions = append(regions, [2]int64{int64(off) * 512, descWindow})
		}
	}
	var refs []Ref
	seen := map[Ref]bool{}
	for _, reg := range regions {
		text, err := readAtMost(r, reg[0], reg[1])
		if err != nil {
			return nil, err
		}
		for _, ref := range descriptorRefs(text) {
			if !seen[ref] {
				seen[ref] = true
				refs = append(refs, ref)
			}
		}
	}
	return refs, nil
}

// descriptorRefs finds extent lines and parent hints in descriptor text.
// QEMU reads an extent line with
//
//	sscanf(p, "%10s %" SCNd64 " %10s \"%511[^\n\r\"]\"", access, &sectors, type, name)
//
// at the start of each line; sscanf skips any whitespace, newlines
// included. This reads the same way from the start of every token, a
// superset of what QEMU reads.
func descriptorRefs(text []byte) []Ref {
	var refs []Ref
	// QEMU finds the parent with strstr and skips the `="` after it.
	for rest := text; ; {
		i := bytes.Index(rest, []byte("parentFileNameHint"))
		if i < 0 {
			break
		}
		rest = rest[i+len("parentFileNameHint"):]
		name := rest[min(2, len(rest)):]
		if j := bytes.IndexByte(name, '"'); j >= 0 {
			name = name[:j]
		}
		refs = append(refs, Ref{Kind: "parent", Name: string(name[:min(len(name), 1024)])})
	}
	for i := range text {
		if i > 0 && !isSpace(text[i-1]) || isSpace(text[i]) {
			continue
		}
		if name, ok := scanExtent(text[i:]); ok {
			refs = append(refs, Ref{Kind: "extent", Name: name})
		}
	}
	return refs
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'
}

// scanExtent mimics QEMU's sscanf of an extent line on s and returns the
// file name when the access mode is one QEMU knows.
func scanExtent(s []byte) (string, bool) {
	pos := 0
	skip := func() {
		for pos < len(s) && isSpace(s[pos]) {
			pos++
		}
	}
	word := func(max int) string { // %10s
		skip()
		start := pos
		for pos < len(s) && pos-start < max && !isSpace(s[pos]) && s[pos] != 0 {
			pos++
		}
		return string(s[start:pos])
	}
	access := word(10)
	if access != "RW" && access != "RDONLY" && access != "NOACCESS" {
		return "", false
	}
	skip()
	if pos < len(s) && (s[pos] == '+' || s[pos] == '-') {
		pos++
	}
	digits := pos
	for pos < len(s) && s[pos] >= '0' && s[pos] <= '9' {
		pos++
	}
	if pos == digits {
		return "", false
	}
	if word(10) == "" {
		return "", false
	}
	skip()
	if pos >= len(s) || s[pos] != '"' {
		return "", false
	}
	pos++
	start := pos
	for pos < len(s) && pos-start < 511 && s[pos] != '\n' && s[pos] != '\r' && s[pos] != '"' && s[pos] != 0 {
		pos++
	}
	if pos == start {
		return "", false
	}
	return string(s[start:pos]), true
}

// PlainName reports whether a referenced name is a plain relative path
// (no protocol, no absolute path, no backslash or NUL); whether it stays
// inside an image is for the caller to resolve.
func PlainName(name string) bool {
	return name != "" && !strings.HasPrefix(name, "/") && !strings.ContainsAny(name, ":\\\x00")
}

// File is what Inspect reads: an open disk file.
type File interface {
	io.ReaderAt
	Stat() (fs.FileInfo, error)
}

// Inspect decides the format of the disk file f (name gives its extension,
// see Detect) and returns the files it names. A file that is not a disk is
// "" and no error. A disk in a format goldvm does not open is an error
// wrapping ErrUnsafe, a header that cannot be read one wrapping
// ErrCorrupt; other errors are the file's.
func Inspect(f File, name string) (Format, []Ref, error) {
	format, err := Detect(f, name)
	if err != nil || format == "" {
		return "", nil, err
	}
	if !format.Served() {
		return format, nil, unsafef("it is in %s format, which goldvm does not open (only qcow2, VMDK and raw disks are accepted; convert it with qemu-img convert -O qcow2)", format)
	}
	fi, err := f.Stat()
	if err != nil {
		return format, nil, err
	}
	refs, err := Refs(f, fi.Size(), format)
	return format, refs, err
}

// ShortName cuts a name read from a hostile disk for a message.
func ShortName(s string) string {
	if len(s) > 128 {
		return s[:128] + "…"
	}
	return s
}
