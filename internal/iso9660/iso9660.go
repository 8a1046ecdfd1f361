// Package iso9660 writes small ISO 9660 volumes: a root directory of plain
// files, with Joliet names (what Linux, cloud-init and Windows read) beside
// 8.3 primary names. It is what goldvm needs for cloud-init's NoCloud seed
// ("cidata") and nothing more: no subdirectories, no Rock Ridge, no boot
// record. The output depends only on the inputs (no clock is read).
//
// Layout, in 2048-byte sectors:
//
//	0-15   system area (zeros)
//	16     primary volume descriptor
//	17     Joliet supplementary volume descriptor (UCS-2 level 3)
//	18     volume descriptor set terminator
//	19-22  path tables: primary L and M, Joliet L and M
//	23..   primary root directory, then the Joliet root directory
//	..     file data, each file starting on a sector of its own
//
// The format is ECMA-119 (ISO 9660:1988) and the Joliet specification
// (Microsoft, 1995).
package iso9660

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
	"unicode/utf16"
)

const sector = 2048

// File is one file in the volume's root directory.
type File struct {
	// Name is the file's name as Joliet gives it (at most 64 UTF-16
	// units, no "/", "\", ":", ";", "*", "?" or control characters).
	Name string
	Data []byte
}

// Options describe the volume.
type Options struct {
	// VolumeID is the volume label, at most 16 characters (Joliet's limit),
	// e.g. "cidata". It is written as given into both descriptors.
	VolumeID string
	// Modified is the time recorded for the volume and its files; the
	// zero time writes "not specified".
	Modified time.Time
}

type entry struct {
	primary string // 8.3 name with ";1"
	joliet  []byte // UCS-2BE name
	data    []byte
	lba     uint32
}

// Write writes a volume holding files to w.
func Write(w io.Writer, opt Options, files []File) error {
	if opt.VolumeID == "" || len(opt.VolumeID) > 16 || !printableASCII(opt.VolumeID) {
		return fmt.Errorf("iso9660: volume id %q must be 1-16 printable ASCII characters", opt.VolumeID)
	}
	entries := make([]*entry, 0, len(files))
	seen := map[string]bool{}
	used := map[string]bool{}
	for _, f := range files {
		if err := checkName(f.Name); err != nil {
			return err
		}
		if seen[strings.ToLower(f.Name)] {
			return fmt.Errorf("iso9660: file %q given twice", f.Name)
		}
		seen[strings.ToLower(f.Name)] = true
		if int64(len(f.Data)) > 1<<31 {
			return fmt.Errorf("iso9660: file %q is too large", f.Name)
		}
		entries = append(entries, &entry{primary: primaryName(f.Name, used), joliet: ucs2(f.Name), data: f.Data})
	}

	// Directory sizes, then where everything goes.
	primRoot := dirBytes(entries, func(e *entry) []byte { return []byte(e.primary) })
	jolRoot := dirBytes(entries, func(e *entry) []byte { return e.joliet })
	const pathTables = 19
	primLBA := uint32(pathTables + 4)
	jolLBA := primLBA + sectors(primRoot)
	next := jolLBA + sectors(jolRoot)
	for _, e := range entries {
		if len(e.data) == 0 {
			continue // an empty file has no extent (its location is 0)
		}
		e.lba = next
		next += sectors(len(e.data))
	}
	total := next

	var img bytes.Buffer
	img.Grow(int(total) * sector)
	img.Write(make([]byte, 16*sector))
	img.Write(volumeDescriptor(1, opt, total, pathTables, primLBA, uint32(primRoot)))
	img.Write(volumeDescriptor(2, opt, total, pathTables+2, jolLBA, uint32(jolRoot)))
	term := make([]byte, sector)
	term[0] = 255
	copy(term[1:], "CD001")
	term[6] = 1
	img.Write(term)
	img.Write(pathTable(primLBA, binary.LittleEndian))
	img.Write(pathTable(primLBA, binary.BigEndian))
	img.Write(pathTable(jolLBA, binary.LittleEndian))
	img.Write(pathTable(jolLBA, binary.BigEndian))
	img.Write(pad(directory(entries, primLBA, uint32(primRoot), opt.Modified, func(e *entry) []byte { return []byte(e.primary) })))
	img.Write(pad(directory(entries, jolLBA, uint32(jolRoot), opt.Modified, func(e *entry) []byte { return e.joliet })))
	for _, e := range entries {
		img.Write(pad(e.data))
	}
	if img.Len() != int(total)*sector {
		return fmt.Errorf("iso9660: internal error: wrote %d bytes, planned %d sectors", img.Len(), total)
	}
	_, err := w.Write(img.Bytes())
	return err
}

func printableASCII(s string) bool {
	for _, r := range s {
		if r < 0x20 || r > 0x7e {
			return false
		}
	}
	return true
}

func checkName(name string) error {
	if name == "" || name == "." || name == ".." {
		return fmt.Errorf("iso9660: file name %q is not usable", name)
	}
	if n := len(utf16.Encode([]rune(name))); n > 64 {
		return fmt.Errorf("iso9660: file name %q is longer than Joliet's 64 characters", name)
	}
	for _, r := range name {
		if r < 0x20 || strings.ContainsRune(`/\:;*?`, r) || r > 0xFFFF {
			return fmt.Errorf("iso9660: file name %q has a character Joliet does not allow (%q)", name, r)
		}
	}
	return nil
}

// primaryName makes an ISO 9660 level 1 name (8.3 of A-Z, 0-9, _) for
// name, unique among used: "meta-data" becomes "META_DAT.;1".
func primaryName(name string, used map[string]bool) string {
	clean := func(s string, n int) string {
		var b strings.Builder
		for _, r := range strings.ToUpper(s) {
			if b.Len() == n {
				break
			}
			if (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9') {
				b.WriteRune(r)
			} else {
				b.WriteByte('_')
			}
		}
		return b.String()
	}
	base, ext := name, ""
	if i := strings.LastIndexByte(name, '.'); i > 0 {
		base, ext = name[:i], name[i+1:]
	}
	b, x := clean(base, 8), clean(ext, 3)
	for i := 0; ; i++ {
		cand := b
		if i > 0 {
			suffix := fmt.Sprint(i)
			cand = b[:min(len(b), 8-len(suffix))] + suffix
		}
		full := cand + "." + x + ";1"
		if !used[full] {
			used[full] = true
			return full
		}
	}
}

func ucs2(s string) []byte {
	u := utf16.Encode([]rune(s))
	b := make([]byte, 2*len(u))
	for i, c := range u {
		binary.BigEndian.PutUint16(b[2*i:], c)
	}
	return b
}

func sectors(n int) uint32 { return uint32((n + sector - 1) / sector) }

func pad(b []byte) []byte {
	if r := len(b) % sector; r != 0 {
		return append(b, make([]byte, sector-r)...)
	}
	return b
}

func both32(b []byte, v uint32) {
	binary.LittleEndian.PutUint32(b, v)
	binary.BigEndian.PutUint32(b[4:], v)
}

func both16(b []byte, v uint16) {
	binary.LittleEndian.PutUint16(b, v)
	binary.BigEndian.PutUint16(b[2:], v)
}

// record is a directory record.
func record(name []byte, lba, size uint32, dir bool, t time.Time) []byte {
	n := 33 + len(name)
	if n%2 == 1 {
		n++
	}
	r := make([]byte, n)
	r[0] = byte(n)
	both32(r[2:], lba)
	both32(r[10:], size)
	if !t.IsZero() {
		t = t.UTC()
		r[18] = byte(t.Year() - 1900)
		r[19], r[20], r[21], r[22], r[23] = byte(t.Month()), byte(t.Day()), byte(t.Hour()), byte(t.Minute()), byte(t.Second())
	}
	if dir {
		r[25] = 2
	}
	both16(r[28:], 1)
	r[32] = byte(len(name))
	copy(r[33:], name)
	return r
}

// dirBytes is the size of the root directory: ".", ".." and the files,
// no record crossing a sector boundary.
func dirBytes(entries []*entry, name func(*entry) []byte) int {
	n := 0
	add := func(l int) {
		if n%sector+l > sector {
			n += sector - n%sector
		}
		n += l
	}
	add(34)
	add(34)
	for _, e := range entries {
		add(len(record(name(e), 0, 0, false, time.Time{})))
	}
	return int(sectors(n)) * sector
}

// directory writes the root directory (at lba, size bytes), files sorted
// by their name in this tree as ECMA-119 9.3 asks.
func directory(entries []*entry, lba, size uint32, t time.Time, name func(*entry) []byte) []byte {
	sorted := append([]*entry(nil), entries...)
	sort.Slice(sorted, func(i, j int) bool { return bytes.Compare(name(sorted[i]), name(sorted[j])) < 0 })
	var b []byte
	add := func(r []byte) {
		if len(b)%sector+len(r) > sector {
			b = append(b, make([]byte, sector-len(b)%sector)...)
		}
		b = append(b, r...)
	}
	add(record([]byte{0}, lba, size, true, t))
	add(record([]byte{1}, lba, size, true, t))
	for _, e := range sorted {
		add(record(name(e), e.lba, uint32(len(e.data)), false, t))
	}
	return b
}

// pathTable is the one-entry path table of a volume whose only directory
// is the root at lba.
func pathTable(lba uint32, order binary.ByteOrder) []byte {
	b := make([]byte, sector)
	b[0] = 1
	order.PutUint32(b[2:], lba)
	order.PutUint16(b[6:], 1)
	return b
}

const pathTableSize = 10

// volumeDescriptor is the primary (typ 1) or Joliet (typ 2) descriptor.
func volumeDescriptor(typ byte, opt Options, total, pathLBA, rootLBA, rootSize uint32) []byte {
	b := make([]byte, sector)
	b[0] = typ
	copy(b[1:], "CD001")
	b[6] = 1
	text := func(off, n int, s string) {
		if typ == 2 {
			u := ucs2(s)
			for i := 0; i+1 < n; i += 2 {
				b[off+i], b[off+i+1] = 0, ' '
			}
			copy(b[off:off+n], u)
			return
		}
		copy(b[off:off+n], bytes.Repeat([]byte{' '}, n))
		copy(b[off:off+n], s)
	}
	text(8, 32, "LINUX")
	text(40, 32, opt.VolumeID)
	both32(b[80:], total)
	if typ == 2 {
		copy(b[88:], "%/E") // UCS-2 level 3
	}
	both16(b[120:], 1)
	both16(b[124:], 1)
	both16(b[128:], sector)
	both32(b[132:], pathTableSize)
	binary.LittleEndian.PutUint32(b[140:], pathLBA)
	binary.BigEndian.PutUint32(b[148:], pathLBA+1)
	copy(b[156:], record([]byte{0}, rootLBA, rootSize, true, opt.Modified))
	text(190, 128, "")
	text(318, 128, "")
	text(446, 128, "")
	text(574, 128, "GOLDVM")
	text(702, 37, "")
	text(739, 37, "")
	text(776, 37, "")
	date := func(off int, t time.Time) {
		if t.IsZero() {
			copy(b[off:], "0000000000000000")
			return
		}
		copy(b[off:], t.UTC().Format("20060102150405")+"00")
	}
	date(813, opt.Modified)
	date(830, opt.Modified)
	date(847, time.Time{})
	date(864, opt.Modified)
	b[881] = 1
	return b
}
