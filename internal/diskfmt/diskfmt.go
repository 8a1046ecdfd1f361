// Package diskfmt decides, from its content, what format a disk image file
// is in, and finds the other files it names.
//
// A disk image from a URL is hostile. Formats other than raw can name other
// files that QEMU opens when it opens the image: a qcow2 backing file or
// external data file, the extents and parent of a VMDK, the parent locators
// of VPC and VHDX. goldvm decides a disk's format once, here, when the image
// is published, passes it explicitly to every later qemu-img and QEMU
// invocation (so no probe ever decides again), and refuses every format
// whose references it does not check.
//
// Detection is deliberately broader than QEMU's own probes: whatever QEMU
// could take for a format that names files is classified as that format and
// checked, and the reference checks are stricter than QEMU's parsers (a
// VMDK descriptor is searched for extents the way QEMU's sscanf reads them,
// from every token, not only at the start of a line).
package diskfmt

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
)

// Format is a disk image format, named as QEMU names its block driver.
type Format string

// Formats goldvm serves.
const (
	Raw   Format = "raw"
	Qcow2 Format = "qcow2"
	VMDK  Format = "vmdk"
)

// Formats goldvm recognises and refuses: each can name other files, or is
// one QEMU could be made to probe an image as.
const (
	Qcow      Format = "qcow" // qcow version 1, with a backing file
	QED       Format = "qed"
	VPC       Format = "vpc"
	VHDX      Format = "vhdx"
	VDI       Format = "vdi"
	Parallels Format = "parallels"
	LUKS      Format = "luks"
	Cloop     Format = "cloop"
	Bochs     Format = "bochs"
	DMG       Format = "dmg"
)

// Served reports whether goldvm accepts disks of format f.
func (f Format) Served() bool { return f == Raw || f == Qcow2 || f == VMDK }

// ErrUnsafe is wrapped by every error about a disk that names a file
// outside its image, or is in a format goldvm does not open.
var ErrUnsafe = errors.New("unsafe disk image")

// ErrCorrupt is wrapped by errors about a disk whose header cannot be read.
var ErrCorrupt = errors.New("corrupt disk image")

func unsafef(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrUnsafe}, args...)...)
}

func corruptf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrCorrupt}, args...)...)
}

// headSize is how much of a file Detect reads.
const headSize = 4096

// Detect tells the format of the file name (a slash-separated path; its
// extension matters only for raw disks and DMG) from its first bytes. It
// returns "" for a file that is not a disk: no signature of any format
// and not named *.img or *.raw.
func Detect(r io.ReaderAt, name string) (Format, error) {
	head := make([]byte, headSize)
	n, err := r.ReadAt(head, 0)
	if err != nil && err != io.EOF {
		return "", err
	}
	head = head[:n]
	if f := detectHead(head); f != "" {
		return f, nil
	}
	switch strings.ToLower(filepath.Ext(name)) {
	case ".dmg":
		return DMG, nil // QEMU's dmg probe goes by the name
	case ".img", ".raw":
		if n == 0 {
			return "", nil
		}
		return Raw, nil
	}
	return "", nil
}

var cloopMagic = []byte("#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$IMAGE\n")

func detectHead(head []byte) Format {
	has := func(off int, magic string) bool {
		return len(head) >= off+len(magic) && string(head[off:off+len(magic)]) == magic
	}
	switch {
	case has(0, "QFI\xfb"):
		if len(head) >= 8 && binary.BigEndian.Uint32(head[4:]) == 1 {
			return Qcow
		}
		return Qcow2
	case has(0, "KDMV"), has(0, "COWD"):
		return VMDK
	case has(0, "QED\x00"):
		return QED
	case has(0, "conectix"):
		return VPC
	case has(0, "vhdxfile"):
		return VHDX
	case len(head) >= 68 && binary.LittleEndian.Uint32(head[64:]) == 0xbeda107f:
		return VDI
	case has(0, "WithoutFreeSpace"), has(0, "WithouFreSpacExt"):
		return Parallels
	case has(0, "LUKS\xba\xbe"):
		return LUKS
	case bytes.HasPrefix(head, cloopMagic):
		return Cloop
	case has(0, "Bochs Virtual HD Image"):
		return Bochs
	case isVMDKDescriptor(head):
		return VMDK
	}
	return ""
}

// isVMDKDescriptor reports whether head may be a VMDK text descriptor:
// what QEMU's vmdk probe accepts (the first line that is neither a
// comment nor blank is "version=1", "2" or "3"), and more: any text that
// starts "# Disk DescriptorFile" or sets a createType.
func isVMDKDescriptor(head []byte) bool {
	if bytes.HasPrefix(head, []byte("# Disk DescriptorFile")) || bytes.Contains(head, []byte("createType")) {
		return true
	}
	for len(head) > 0 {
		line, rest, _ := bytes.Cut(head, []byte("\n"))
		head = rest
		t := bytes.TrimSpace(line)
		if len(t) == 0 || t[0] == '#' {
			continue
		}
		return bytes.HasPrefix(t, []byte("version="))
	}
	return false
}
