package image

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"os"
	"path"
	"strings"
)

// A disk image can name other files that the hypervisor opens when the VM
// boots: a qcow2 backing file or external data file, the extents and parent
// of a VMDK. A gold image that named /etc/shadow or /dev/sda that way would
// escape the image directory as surely as a symlink, so every such
// reference must be a relative path that resolves inside the image.

const (
	qcow2ExtEnd      = 0x00000000
	qcow2ExtDataFile = 0x44415441 // "DATA": external data file name
	maxDescriptor    = 1 << 20    // largest VMDK descriptor read
)

// checkDiskRefs inspects every regular file of the image that is a qcow2
// or VMDK and refuses references leading outside.
func (x *extractor) checkDiskRefs() error {
	for name := range x.regular {
		if err := x.checkDiskFile(name); err != nil {
			return err
		}
	}
	return nil
}

func (x *extractor) checkDiskFile(name string) error {
	f, err := x.root.Open(name)
	if err != nil {
		return ioErr("opening "+name, err)
	}
	defer f.Close()
	head := make([]byte, 512)
	n, err := io.ReadFull(f, head)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return ioErr("reading "+name, err)
	}
	head = head[:n]
	switch {
	case hasPrefix(head, magicQcow2):
		return x.checkQcow2(name, f, head)
	case hasPrefix(head, magicVMDK):
		if len(head) < 44 {
			return nil
		}
		off := int64(binary.LittleEndian.Uint64(head[28:])) * 512
		size := int64(binary.LittleEndian.Uint64(head[36:])) * 512
		if off == 0 || size == 0 {
			return nil
		}
		return x.checkDescriptor(name, io.NewSectionReader(f, off, min(size, maxDescriptor)))
	case hasPrefix(head, magicVMDKd):
		return x.checkDescriptor(name, io.LimitReader(io.MultiReader(bytes.NewReader(head), f), maxDescriptor))
	}
	return nil
}

// checkQcow2 checks the backing file name and the external data file
// header extension.
func (x *extractor) checkQcow2(name string, f *os.File, head []byte) error {
	if len(head) < 72 {
		return errCorrupt("qcow2 header of "+name+" is truncated", nil)
	}
	be := binary.BigEndian
	version := be.Uint32(head[4:])
	backingOff := be.Uint64(head[8:])
	backingLen := be.Uint32(head[16:])
	clusterBits := be.Uint32(head[20:])
	if backingOff != 0 && backingLen != 0 {
		if backingLen > 1023 {
			return errUnsafe("qcow2 %s has an over-long backing file name", name)
		}
		b := make([]byte, backingLen)
		if _, err := f.ReadAt(b, int64(backingOff)); err != nil {
			return errCorrupt("reading the backing file name of "+name, err)
		}
		if err := x.checkRef(name, "backing file", string(b)); err != nil {
			return err
		}
	}
	// Header extensions follow the header, within the first cluster.
	extOff := int64(72)
	if version >= 3 {
		if len(head) < 104 {
			return errCorrupt("qcow2 header of "+name+" is truncated", nil)
		}
		extOff = int64(be.Uint32(head[100:]))
	}
	if clusterBits < 9 || clusterBits > 21 {
		return errCorrupt("qcow2 "+name+" has an invalid cluster size", nil)
	}
	end := int64(1) << clusterBits
	r := bufio.NewReader(io.NewSectionReader(f, extOff, max(end-extOff, 0)))
	for range 1024 {
		var hdr [8]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return nil // extensions run to the end of the cluster
		}
		typ, length := be.Uint32(hdr[:4]), be.Uint32(hdr[4:])
		if typ == qcow2ExtEnd {
			return nil
		}
		padded := (int64(length) + 7) &^ 7
		if padded > end {
			return errCorrupt("qcow2 "+name+" has an invalid header extension", nil)
		}
		data := make([]byte, padded)
		if _, err := io.ReadFull(r, data); err != nil {
			return errCorrupt("qcow2 "+name+" has a truncated header extension", err)
		}
		if typ == qcow2ExtDataFile {
			if err := x.checkRef(name, "external data file", string(data[:length])); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkDescriptor checks the extent file names and parent hint of a VMDK
// descriptor.
func (x *extractor) checkDescriptor(name string, r io.Reader) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxDescriptor)
	for sc.Scan() {
		line := strings.TrimSpace(strings.TrimRight(sc.Text(), "\x00"))
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		for _, access := range []string{"RW ", "RDONLY ", "NOACCESS "} {
			if !strings.HasPrefix(line, access) {
				continue
			}
			i := strings.IndexByte(line, '"')
			j := strings.LastIndexByte(line, '"')
			if i < 0 || j <= i {
				continue
			}
			if err := x.checkRef(name, "extent", line[i+1:j]); err != nil {
				return err
			}
		}
		if k, v, ok := strings.Cut(line, "="); ok && strings.TrimSpace(k) == "parentFileNameHint" {
			if err := x.checkRef(name, "parent", strings.Trim(strings.TrimSpace(v), `"`)); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkRef refuses a reference from disk file name to ref unless ref is a
// plain relative path resolving inside the image (following its symlinks).
func (x *extractor) checkRef(name, what, ref string) error {
	if ref == "" {
		return nil
	}
	if strings.HasPrefix(ref, "/") || strings.ContainsAny(ref, ":\\\x00") {
		return errUnsafe("disk %s names the %s %q, which is not a relative path inside the image", name, what, ref)
	}
	if err := x.resolveFrom(path.Dir(name), ref, name); err != nil {
		return errUnsafe("disk %s names the %s %q, which lies outside the image", name, what, ref)
	}
	return nil
}
