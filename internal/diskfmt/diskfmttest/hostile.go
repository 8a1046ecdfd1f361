// Package diskfmttest builds hostile disk images for tests: disks that
// name a file outside their image (a backing file, data file, extent or
// parent), in every way found in QEMU's block drivers, byte for byte in Go.
package diskfmttest

import (
	"encoding/binary"
	"strings"
)

// File is one file of an image package.
type File struct {
	Name string
	Data []byte
}

// Case is one hostile image: its files, all aimed at the target.
type Case struct {
	Name  string
	Files []File
}

// Hostile returns the hostile images aimed at target, an absolute path of
// a file outside any image. Each must be refused with image-unsafe-disk.
func Hostile(target string) []Case {
	up := strings.Repeat("../", 16) + strings.TrimPrefix(target, "/")
	flat := func(sep, name string) []byte {
		return []byte("# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\n" +
			"RW" + sep + "65536 FLAT \"" + name + "\" 0\n")
	}
	one := func(name string, data []byte) []File { return []File{{name, data}} }
	return []Case{
		// The adversarial run's finds.
		{"vmdk descriptor saved as raw, starting version=1", one("disk.img",
			[]byte("version=1\nCID=fffffffe\ncreateType=\"monolithicFlat\"\nRW 65536 FLAT \""+target+"\" 0\n"))},
		{"vmdk extent separated by a tab", one("disk.vmdk", flat("\t", target))},
		{"sparse vmdk with descriptor size 0", one("disk.vmdk", Sparse(0, 1, 0, flat(" ", target)))},
		{"vmdk3 (COWD) parent hint", one("disk.vmdk", cowd("parentFileNameHint=\""+target+"\"\n"))},
		// VMDK descriptor quirks.
		{"monolithicFlat with an absolute extent", one("disk.vmdk", flat(" ", target))},
		{"extent with a relative path climbing out", one("disk.vmdk", flat(" ", up))},
		{"extent line split over lines (sscanf skips newlines)", one("disk.vmdk",
			[]byte("# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\nRW\n65536\nFLAT\n\""+target+"\"\n"))},
		{"descriptor with CRLF and indented extent", one("disk.vmdk",
			[]byte("version=1\r\ncreateType=\"monolithicFlat\"\r\n   RW 65536 FLAT \""+target+"\" 0\r\n"))},
		{"extent through the json: protocol", one("disk.vmdk",
			flat(" ", "json:{'driver':'file','filename':'"+target+"'}"))},
		{"raw device extent (vmfsRaw)", one("disk.vmdk",
			[]byte("# Disk DescriptorFile\nversion=1\ncreateType=\"vmfsRaw\"\nRW 65536 VMFSRAW \""+target+"\"\n"))},
		{"read-only extent", one("disk.vmdk",
			[]byte("# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\nRDONLY 65536 FLAT \""+target+"\" 0\n"))},
		{"twoGbMaxExtentFlat whose second extent escapes", []File{
			{"disk.vmdk", []byte("# Disk DescriptorFile\nversion=1\ncreateType=\"twoGbMaxExtentFlat\"\n" +
				"RW 2048 FLAT \"disk-f001.vmdk\" 0\nRW 2048 FLAT \"" + target + "\" 0\n")},
			{"disk-f001.vmdk", make([]byte, 2048*512)},
		}},
		{"sparse extent whose embedded descriptor escapes (capacity 0)", []File{
			{"disk.vmdk", []byte("# Disk DescriptorFile\nversion=1\ncreateType=\"twoGbMaxExtentSparse\"\n" +
				"RW 2048 SPARSE \"disk-s001.vmdk\"\n")},
			{"disk-s001.vmdk", Sparse(0, 1, 20, flat(" ", target))},
		}},
		{"monolithicSparse with a parent hint", one("disk.vmdk",
			Sparse(2048, 1, 20, []byte("# Disk DescriptorFile\nversion=1\nparentFileNameHint=\""+target+"\"\ncreateType=\"monolithicSparse\"\n")))},
		{"descriptor without version, with createType, as raw", one("disk.raw",
			[]byte("createType=\"monolithicFlat\"\nRW 65536 FLAT \""+target+"\" 0\n"))},
		// qcow2 backing files and external data files.
		{"qcow2 backed by the target", one("disk.qcow2", Qcow2(3, target, "", false))},
		{"qcow2 v2 backed by the target", one("disk.qcow2", Qcow2(2, target, "", false))},
		{"qcow2 backed by a path climbing out", one("disk.qcow2", Qcow2(3, up, "", false))},
		{"qcow2 backed through json:", one("disk.qcow2",
			Qcow2(3, `json:{"driver":"file","filename":"`+target+`"}`, "", false))},
		{"qcow2 with an external data file", one("disk.qcow2", Qcow2(3, "", target, true))},
		{"qcow2 data-file extension without the feature bit", one("disk.qcow2", Qcow2(3, "", target, false))},
		{"qcow (version 1) backed by the target", one("disk.qcow", qcow1(target))},
		// Other formats that name parents.
		{"qed backed by the target", one("disk.qed", qed(target))},
		{"vpc with a parent locator", one("disk.vhd", vpc(target))},
		{"vhdx with a parent locator", one("disk.vhdx", vhdx(target))},
		// Raw disks that look like each of them.
		{"raw that looks like qcow2", one("disk.img", Qcow2(3, target, "", false))},
		{"raw that looks like qed", one("disk.raw", qed(target))},
		{"raw that looks like vpc", one("disk.img", vpc(target))},
		{"raw that looks like vhdx", one("disk.img", vhdx(target))},
		{"raw that looks like a sparse vmdk", one("disk.img", Sparse(0, 1, 0, flat(" ", target)))},
	}
}

// Qcow2 builds a qcow2 header (version 2 or 3) of a 64 MiB disk in a
// 64 KiB cluster, naming backing as its backing file and dataFile in a
// data-file header extension; dataBit sets the external data file feature.
func Qcow2(version uint32, backing, dataFile string, dataBit bool) []byte {
	be := binary.BigEndian
	b := make([]byte, 3*65536)
	copy(b, "QFI\xfb")
	be.PutUint32(b[4:], version)
	be.PutUint32(b[20:], 16)      // cluster bits
	be.PutUint64(b[24:], 64<<20)  // size
	be.PutUint32(b[36:], 1)       // l1 size
	be.PutUint64(b[40:], 2*65536) // l1 table offset
	be.PutUint64(b[48:], 65536)   // refcount table offset
	be.PutUint32(b[56:], 1)       // refcount table clusters
	ext := 72
	if version >= 3 {
		if dataBit {
			be.PutUint64(b[72:], 1<<2)
		}
		be.PutUint32(b[96:], 4)    // refcount order
		be.PutUint32(b[100:], 104) // header length
		ext = 104
	}
	if dataFile != "" {
		be.PutUint32(b[ext:], 0x44415441)
		be.PutUint32(b[ext+4:], uint32(len(dataFile)))
		copy(b[ext+8:], dataFile)
		ext += 8 + (len(dataFile)+7)&^7
	}
	ext += 8 // end of extensions
	if backing != "" {
		be.PutUint64(b[8:], uint64(ext))
		be.PutUint32(b[16:], uint32(len(backing)))
		copy(b[ext:], backing)
	}
	return b
}

// Sparse builds a sparse VMDK (KDMV) header of capacity sectors whose
// descriptor, desc, is at sector descSector and declared descSectors long.
func Sparse(capacity, descSector, descSectors uint64, desc []byte) []byte {
	le := binary.LittleEndian
	b := make([]byte, 64*512)
	copy(b, "KDMV")
	le.PutUint32(b[4:], 1)
	le.PutUint32(b[8:], 3)
	le.PutUint64(b[12:], capacity)
	le.PutUint64(b[20:], 128) // grain size
	le.PutUint64(b[28:], descSector)
	le.PutUint64(b[36:], descSectors)
	copy(b[descSector*512:], desc)
	return b
}

func cowd(desc string) []byte {
	b := make([]byte, 16*512)
	copy(b, "COWD")
	binary.LittleEndian.PutUint32(b[4:], 1)
	copy(b[0x200:], desc)
	return b
}

func qcow1(backing string) []byte {
	be := binary.BigEndian
	b := make([]byte, 4096)
	copy(b, "QFI\xfb")
	be.PutUint32(b[4:], 1)
	be.PutUint64(b[8:], 48)
	be.PutUint32(b[16:], uint32(len(backing)))
	copy(b[48:], backing)
	return b
}

func qed(backing string) []byte {
	le := binary.LittleEndian
	b := make([]byte, 4096)
	copy(b, "QED\x00")
	le.PutUint32(b[4:], 65536) // cluster size
	le.PutUint32(b[8:], 4)     // table size
	le.PutUint32(b[12:], 1)    // header size
	le.PutUint64(b[16:], 1)    // features: backing file
	le.PutUint32(b[56:], 512)
	le.PutUint32(b[60:], uint32(len(backing)))
	copy(b[512:], backing)
	return b
}

func vpc(parent string) []byte {
	b := make([]byte, 2048)
	copy(b, "conectix")
	copy(b[512:], "cxsparse")
	copy(b[1024:], parent)
	return b
}

func vhdx(parent string) []byte {
	b := make([]byte, 4096)
	copy(b, "vhdxfile")
	copy(b[1024:], "parent_linkage\x00absolute_win32_path\x00"+parent)
	return b
}
