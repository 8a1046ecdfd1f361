package qemu

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/goldvm/goldvm/internal/errdefs"
)

// goldDisk is the disk found in a gold image directory.
type goldDisk struct {
	Path   string // absolute
	Format string // "qcow2", "vmdk" or "raw"
}

// vmdkExtentRe matches an extent line of a VMDK descriptor:
//
//	RW 4192256 SPARSE "disk-s001.vmdk"
var vmdkExtentRe = regexp.MustCompile(`^\s*(RW|RDONLY|NOACCESS)\s+\d+\s+\w+\s+"([^"]+)"`)

// sniffDisk tells a disk's format from its first bytes; "" when it is not a
// disk. A VMDK descriptor also returns the extent files it names.
func sniffDisk(path string) (format string, extents []string, err error) {
	f, err := os.Open(path)
	if err != nil {
		return "", nil, err
	}
	defer f.Close()
	head := make([]byte, 512)
	n, err := io.ReadFull(f, head)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return "", nil, err
	}
	head = head[:n]
	switch {
	case bytes.HasPrefix(head, []byte("QFI\xfb")):
		return "qcow2", nil, nil
	case bytes.HasPrefix(head, []byte("KDMV")), bytes.HasPrefix(head, []byte("COWD")):
		return "vmdk", nil, nil
	case bytes.HasPrefix(head, []byte("# Disk DescriptorFile")):
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return "", nil, err
		}
		sc := bufio.NewScanner(io.LimitReader(f, 1<<20))
		for sc.Scan() {
			if m := vmdkExtentRe.FindStringSubmatch(sc.Text()); m != nil {
				extents = append(extents, filepath.Join(filepath.Dir(path), m[2]))
			}
		}
		return "vmdk", extents, nil
	}
	switch strings.ToLower(filepath.Ext(path)) {
	case ".img", ".raw":
		if n == 0 {
			return "", nil, nil
		}
		return "raw", nil, nil
	}
	return "", nil, nil
}

// findGoldDisk walks root and returns its one disk. Symlinks are not
// followed. Extents named by a VMDK descriptor are part of that disk.
func findGoldDisk(root string) (goldDisk, error) {
	root, err := filepath.Abs(root)
	if err != nil {
		return goldDisk{}, err
	}
	var found []goldDisk
	isExtent := map[string]bool{}
	err = filepath.WalkDir(root, func(path string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !de.Type().IsRegular() {
			return nil
		}
		format, extents, err := sniffDisk(path)
		if err != nil {
			return err
		}
		if format == "" {
			return nil
		}
		for _, e := range extents {
			isExtent[filepath.Clean(e)] = true
		}
		found = append(found, goldDisk{Path: path, Format: format})
		return nil
	})
	if err != nil {
		return goldDisk{}, errdefs.New(errdefs.ErrInvalid, "image-no-disk", "cannot read the image directory", err)
	}
	var disks []goldDisk
	for _, d := range found {
		if !isExtent[filepath.Clean(d.Path)] {
			disks = append(disks, d)
		}
	}
	switch len(disks) {
	case 0:
		return goldDisk{}, errdefs.Newf(errdefs.ErrInvalid, "image-no-disk",
			"the image contains no disk (looked for qcow2, VMDK, and raw *.img/*.raw files)")
	case 1:
		return disks[0], nil
	}
	names := make([]string, len(disks))
	for i, d := range disks {
		rel, _ := filepath.Rel(root, d.Path)
		names[i] = rel
	}
	sort.Strings(names)
	return goldDisk{}, errdefs.Newf(errdefs.ErrInvalid, "image-many-disks",
		"the image contains %d disks, want exactly one: %s", len(disks), strings.Join(names, ", "))
}

// imgInfo is the part of `qemu-img info --output=json` we read.
type imgInfo struct {
	Format          string `json:"format"`
	VirtualSize     int64  `json:"virtual-size"`
	BackingFilename string `json:"backing-filename"`
	FullBacking     string `json:"full-backing-filename"`
	BackingFormat   string `json:"backing-filename-format"`
}

// qemuImgInfo runs qemu-img info. With force (-U) it works on images that a
// running QEMU holds locked.
func (d *Driver) qemuImgInfo(ctx context.Context, path string, force bool) (imgInfo, error) {
	args := []string{"info", "--output=json"}
	if force {
		args = append(args, "-U")
	}
	args = append(args, path)
	out, err := d.run(ctx, d.cfg.QemuImg, args...)
	if err != nil {
		return imgInfo{}, err
	}
	var info imgInfo
	if err := json.Unmarshal(out, &info); err != nil {
		return imgInfo{}, fmt.Errorf("qemu-img info %s: %w", path, err)
	}
	return info, nil
}
