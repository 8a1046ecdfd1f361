package osrelease

import (
	"bytes"
	"encoding/binary"
)

// span is a byte range of the disk.
type span struct{ off, len int64 }

const sector = 512

// partitions returns the partitions of the disk's MBR, or of its GPT when
// the MBR is a protective one, at most maxPartitions of them, each within
// the disk. Extended (logical) MBR partitions are not read. A disk without
// a partition table has none.
func partitions(b *budget) []span {
	mbr := make([]byte, sector)
	if b.readAt(mbr, 0) != nil || mbr[510] != 0x55 || mbr[511] != 0xAA {
		return nil
	}
	var out []span
	for i := range 4 {
		e := mbr[446+16*i : 446+16*(i+1)]
		typ := e[4]
		if typ == 0xEE {
			return gpt(b)
		}
		if typ == 0 || typ == 0x05 || typ == 0x0F || typ == 0x85 {
			continue
		}
		out = appendSpan(out, b, int64(binary.LittleEndian.Uint32(e[8:]))*sector, int64(binary.LittleEndian.Uint32(e[12:]))*sector)
	}
	return out
}

// gpt reads the partition entries of a GPT with 512-byte sectors.
func gpt(b *budget) []span {
	h := make([]byte, sector)
	if b.readAt(h, sector) != nil || !bytes.Equal(h[:8], []byte("EFI PART")) {
		return nil
	}
	lba := binary.LittleEndian.Uint64(h[72:])
	n := binary.LittleEndian.Uint32(h[80:])
	size := binary.LittleEndian.Uint32(h[84:])
	if size < 128 || size > 4096 || size%8 != 0 || lba > uint64(b.size/sector) {
		return nil
	}
	n = min(n, 128)
	entries := make([]byte, int(n)*int(size))
	if b.readAt(entries, int64(lba)*sector) != nil {
		return nil
	}
	var out []span
	for i := range int(n) {
		e := entries[i*int(size) : (i+1)*int(size)]
		if bytes.Equal(e[:16], make([]byte, 16)) {
			continue
		}
		first, last := binary.LittleEndian.Uint64(e[32:]), binary.LittleEndian.Uint64(e[40:])
		if last < first || last >= uint64(b.size/sector) {
			continue
		}
		out = appendSpan(out, b, int64(first)*sector, int64(last-first+1)*sector)
		if len(out) == maxPartitions {
			break
		}
	}
	return out
}

// appendSpan appends the partition at off of length n when it lies within
// the disk.
func appendSpan(out []span, b *budget, off, n int64) []span {
	if off <= 0 || n <= 0 || off >= b.size || n > b.size-off || len(out) >= maxPartitions {
		return out
	}
	return append(out, span{off, n})
}
