package osrelease

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// ext2/3/4 on-disk constants (the kernel's Documentation/filesystems/ext4).
const (
	extMagic        = 0xEF53
	rootInode       = 2
	incompatFiletyp = 0x2
	incompatMetaBG  = 0x10
	incompat64bit   = 0x80
	flagIndex       = 0x1000 // hash-indexed directory (read linearly here)
	flagExtents     = 0x80000
	flagInline      = 0x10000000
	modeType        = 0xF000
	modeDir         = 0x4000
	modeReg         = 0x8000
	modeLink        = 0xA000
	extentMagic     = 0xF30A
	maxExtentDepth  = 5
	iBlockLen       = 60
	cacheBlocks     = 64
)

var (
	errCorrupt     = errors.New("corrupt file system")
	errUnsupported = errors.New("unsupported file system feature")
	errNoEntry     = errors.New("no such file")
)

// extFS is an ext2/3/4 file system in a span of the disk.
type extFS struct {
	b           *budget
	span        span
	bs          int64 // block size
	blocks      uint64
	inodes      uint32
	ipg         uint32 // inodes per group
	groups      uint64
	inodeSize   int64
	descSize    int64
	gdt         int64 // block of the group descriptor table
	incompat    uint32
	cache       map[uint64][]byte // block number to contents
	inodeTables map[uint64]uint64 // group to its inode table's block
}

// openExt reads the superblock of the file system in s.
func openExt(b *budget, s span) (*extFS, error) {
	sb := make([]byte, 1024)
	if s.len < 2048 {
		return nil, errCorrupt
	}
	if err := b.readAt(sb, s.off+1024); err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	if le.Uint16(sb[56:]) != extMagic {
		return nil, errCorrupt
	}
	f := &extFS{b: b, span: s, cache: map[uint64][]byte{}, inodeTables: map[uint64]uint64{}}
	logBS := le.Uint32(sb[24:])
	if logBS > 6 {
		return nil, errCorrupt
	}
	f.bs = 1024 << logBS
	f.inodes = le.Uint32(sb[0:])
	f.blocks = uint64(le.Uint32(sb[4:]))
	firstData := uint64(le.Uint32(sb[20:]))
	bpg := uint64(le.Uint32(sb[32:]))
	f.ipg = le.Uint32(sb[40:])
	f.incompat = le.Uint32(sb[96:])
	f.inodeSize, f.descSize = 128, 32
	if le.Uint32(sb[76:]) >= 1 {
		f.inodeSize = int64(le.Uint16(sb[88:]))
	}
	if f.incompat&incompat64bit != 0 {
		f.blocks |= uint64(le.Uint32(sb[0x150:])) << 32
		f.descSize = int64(le.Uint16(sb[254:]))
	}
	switch {
	case f.incompat&incompatMetaBG != 0:
		return nil, fmt.Errorf("%w: meta_bg", errUnsupported)
	case bpg == 0 || f.ipg == 0 || f.inodes == 0 || firstData >= f.blocks:
		return nil, errCorrupt
	case f.inodeSize < 128 || f.inodeSize > f.bs || f.inodeSize&(f.inodeSize-1) != 0:
		return nil, errCorrupt
	case f.descSize < 32 || f.descSize > 1024 || f.descSize&(f.descSize-1) != 0:
		return nil, errCorrupt
	case f.blocks > uint64(s.len/f.bs):
		return nil, fmt.Errorf("%w: %d blocks of %d bytes do not fit in %d bytes", errCorrupt, f.blocks, f.bs, s.len)
	}
	f.groups = (f.blocks - firstData + bpg - 1) / bpg
	f.gdt = int64(firstData) + 1
	return f, nil
}

// block returns the contents of block n (cached; callers do not modify it).
func (f *extFS) block(n uint64) ([]byte, error) {
	if n == 0 || n >= f.blocks {
		return nil, fmt.Errorf("%w: block %d out of range", errCorrupt, n)
	}
	if d, ok := f.cache[n]; ok {
		return d, nil
	}
	d := make([]byte, f.bs)
	if err := f.b.readAt(d, f.span.off+int64(n)*f.bs); err != nil {
		return nil, err
	}
	if len(f.cache) >= cacheBlocks {
		clear(f.cache)
	}
	f.cache[n] = d
	return d, nil
}

// inode is the part of an on-disk inode this reader uses.
type inode struct {
	num   uint32
	mode  uint16
	size  int64
	flags uint32
	block [iBlockLen]byte
}

func (i *inode) typ() uint16 { return i.mode & modeType }

// inode reads inode n.
func (f *extFS) inode(n uint32) (*inode, error) {
	if n == 0 || n > f.inodes {
		return nil, fmt.Errorf("%w: inode %d out of range", errCorrupt, n)
	}
	group, idx := uint64((n-1)/f.ipg), int64((n-1)%f.ipg)
	if group >= f.groups {
		return nil, fmt.Errorf("%w: inode %d beyond the last group", errCorrupt, n)
	}
	table, ok := f.inodeTables[group]
	if !ok {
		off := f.gdt*f.bs + int64(group)*f.descSize
		d := make([]byte, f.descSize)
		if off+f.descSize > f.span.len {
			return nil, errCorrupt
		}
		if err := f.b.readAt(d, f.span.off+off); err != nil {
			return nil, err
		}
		table = uint64(binary.LittleEndian.Uint32(d[8:]))
		if f.descSize >= 64 {
			table |= uint64(binary.LittleEndian.Uint32(d[0x28:])) << 32
		}
		f.inodeTables[group] = table
	}
	if table == 0 || table >= f.blocks {
		return nil, fmt.Errorf("%w: inode table of group %d out of range", errCorrupt, group)
	}
	off := int64(table)*f.bs + idx*f.inodeSize
	if off < 0 || off+128 > f.span.len {
		return nil, errCorrupt
	}
	raw := make([]byte, 128)
	if err := f.b.readAt(raw, f.span.off+off); err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	ino := &inode{num: n, mode: le.Uint16(raw[0:]), flags: le.Uint32(raw[32:])}
	size := uint64(le.Uint32(raw[4:])) | uint64(le.Uint32(raw[108:]))<<32
	if size > 1<<50 {
		return nil, fmt.Errorf("%w: inode %d has size %d", errCorrupt, n, size)
	}
	ino.size = int64(size)
	copy(ino.block[:], raw[40:40+iBlockLen])
	return ino, nil
}

// mapBlock returns the block that holds the file's logical block l; 0 for
// a hole (or an unwritten extent, which reads as zeros).
func (f *extFS) mapBlock(ino *inode, l uint64) (uint64, error) {
	var phys uint64
	var err error
	if ino.flags&flagExtents != 0 {
		phys, err = f.mapExtent(ino.block[:], l)
	} else {
		phys, err = f.mapIndirect(ino.block[:], l)
	}
	if err == nil && phys >= f.blocks {
		return 0, fmt.Errorf("%w: block %d out of range", errCorrupt, phys)
	}
	return phys, err
}

// mapExtent walks an extent tree from its root in node (the inode's
// i_block), at most maxExtentDepth levels down.
func (f *extFS) mapExtent(node []byte, l uint64) (uint64, error) {
	le := binary.LittleEndian
	for level := 0; ; level++ {
		if len(node) < 12 || le.Uint16(node[0:]) != extentMagic {
			return 0, fmt.Errorf("%w: bad extent header", errCorrupt)
		}
		entries, depth := int(le.Uint16(node[2:])), int(le.Uint16(node[6:]))
		if depth > maxExtentDepth || level > maxExtentDepth || 12+12*entries > len(node) {
			return 0, fmt.Errorf("%w: bad extent node", errCorrupt)
		}
		if depth == 0 {
			for i := range entries {
				e := node[12+12*i:]
				start, n := uint64(le.Uint32(e[0:])), uint64(le.Uint16(e[4:]))
				if n > 32768 { // unwritten
					if l >= start && l < start+n-32768 {
						return 0, nil
					}
					continue
				}
				if l >= start && l < start+n {
					return (uint64(le.Uint16(e[6:]))<<32 | uint64(le.Uint32(e[8:]))) + l - start, nil
				}
			}
			return 0, nil
		}
		// The index entry with the largest first block not after l.
		var child uint64
		var best int64 = -1
		for i := range entries {
			e := node[12+12*i:]
			if first := int64(le.Uint32(e[0:])); uint64(first) <= l && first > best {
				best, child = first, uint64(le.Uint16(e[8:]))<<32|uint64(le.Uint32(e[4:]))
			}
		}
		if best < 0 {
			return 0, nil
		}
		next, err := f.block(child)
		if err != nil {
			return 0, err
		}
		node = next
	}
}

// mapIndirect maps l through the ext2/3 block map in iblock: 12 direct
// blocks, then single, double and triple indirect blocks.
func (f *extFS) mapIndirect(iblock []byte, l uint64) (uint64, error) {
	le := binary.LittleEndian
	if l < 12 {
		return uint64(le.Uint32(iblock[4*l:])), nil
	}
	l -= 12
	per := uint64(f.bs / 4)
	span := per
	for level := 1; level <= 3; level++ {
		if l < span {
			blk := uint64(le.Uint32(iblock[4*(11+level):]))
			for d := level; d > 0; d-- {
				if blk == 0 {
					return 0, nil
				}
				data, err := f.block(blk)
				if err != nil {
					return 0, err
				}
				span /= per
				blk = uint64(le.Uint32(data[4*(l/span):]))
				l %= span
			}
			return blk, nil
		}
		l -= span
		span *= per
	}
	return 0, fmt.Errorf("%w: block beyond the triple indirect map", errCorrupt)
}

// readFile returns the contents of a regular file or symlink of at most
// max bytes.
func (f *extFS) readFile(ino *inode, max int64) ([]byte, error) {
	if ino.size > max {
		return nil, fmt.Errorf("%w: %d bytes is more than %d", errUnsupported, ino.size, max)
	}
	if ino.flags&flagInline != 0 {
		if ino.size > iBlockLen {
			return nil, fmt.Errorf("%w: inline data beyond i_block", errUnsupported)
		}
		return append([]byte(nil), ino.block[:ino.size]...), nil
	}
	out := make([]byte, 0, ino.size)
	for l := uint64(0); int64(len(out)) < ino.size; l++ {
		n := min(f.bs, ino.size-int64(len(out)))
		phys, err := f.mapBlock(ino, l)
		if err != nil {
			return nil, err
		}
		if phys == 0 {
			out = append(out, make([]byte, n)...)
			continue
		}
		data, err := f.block(phys)
		if err != nil {
			return nil, err
		}
		out = append(out, data[:n]...)
	}
	return out, nil
}

// lookup finds name in directory dir by a linear scan of its blocks (a
// hash-indexed directory's index blocks look like empty entries to it).
func (f *extFS) lookup(dir *inode, name string) (uint32, error) {
	if dir.typ() != modeDir {
		return 0, fmt.Errorf("%w: not a directory", errNoEntry)
	}
	if dir.flags&flagInline != 0 {
		return 0, fmt.Errorf("%w: inline directory", errUnsupported)
	}
	le := binary.LittleEndian
	nblocks := uint64((dir.size + f.bs - 1) / f.bs)
	if nblocks > maxDirBlocks {
		nblocks = maxDirBlocks
	}
	for l := range nblocks {
		phys, err := f.mapBlock(dir, l)
		if err != nil {
			return 0, err
		}
		if phys == 0 {
			continue
		}
		data, err := f.block(phys)
		if err != nil {
			return 0, err
		}
		for off := 0; off+8 <= len(data); {
			ino := le.Uint32(data[off:])
			recLen := int(le.Uint16(data[off+4:]))
			nameLen := int(le.Uint16(data[off+6:]))
			if f.incompat&incompatFiletyp != 0 {
				nameLen = int(data[off+6])
			}
			if recLen < 8 || recLen%4 != 0 || off+recLen > len(data) || nameLen > recLen-8 {
				return 0, fmt.Errorf("%w: bad directory entry in block %d", errCorrupt, phys)
			}
			if ino != 0 && nameLen == len(name) && string(data[off+8:off+8+nameLen]) == name {
				return ino, nil
			}
			off += recLen
		}
	}
	return 0, errNoEntry
}

// readPath reads the regular file at the absolute path p, following
// symlinks within the file system (at most maxSymlinks).
func (f *extFS) readPath(p string, max int64) ([]byte, error) {
	cur, err := f.inode(rootInode)
	if err != nil {
		return nil, err
	}
	root := cur
	todo := strings.Split(p, "/")
	links := 0
	for len(todo) > 0 {
		name := todo[0]
		todo = todo[1:]
		if name == "" || name == "." {
			continue
		}
		n, err := f.lookup(cur, name)
		if err != nil {
			return nil, err
		}
		ino, err := f.inode(n)
		if err != nil {
			return nil, err
		}
		switch ino.typ() {
		case modeLink:
			if links++; links > maxSymlinks {
				return nil, fmt.Errorf("%w: more than %d symlinks", errCorrupt, maxSymlinks)
			}
			target, err := f.readLink(ino)
			if err != nil {
				return nil, err
			}
			if strings.HasPrefix(target, "/") {
				cur = root
			}
			todo = append(strings.Split(target, "/"), todo...)
		case modeDir:
			cur = ino
		case modeReg:
			if len(todo) > 0 {
				return nil, fmt.Errorf("%w: %s is not a directory", errNoEntry, name)
			}
			return f.readFile(ino, max)
		default:
			return nil, fmt.Errorf("%w: %s is not a regular file", errNoEntry, name)
		}
	}
	return nil, fmt.Errorf("%w: %s is a directory", errNoEntry, p)
}

// readLink returns a symlink's target: in i_block when shorter than it
// (a fast symlink), else in its blocks.
func (f *extFS) readLink(ino *inode) (string, error) {
	if ino.size == 0 || ino.size > maxLink {
		return "", fmt.Errorf("%w: symlink of %d bytes", errCorrupt, ino.size)
	}
	if ino.size < iBlockLen && ino.flags&flagInline == 0 {
		return string(ino.block[:ino.size]), nil
	}
	b, err := f.readFile(ino, maxLink)
	return string(b), err
}
