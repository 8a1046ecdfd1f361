package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/goldvm/goldvm/internal/diskfmt"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/hypervisor"
)

// A gold image is hostile until published. PrepareGold decides its disk's
// format once, from the content (internal/diskfmt), refuses every disk
// that names another file, asks qemu-img itself (with the format given,
// never probed) whether it sees any reference, and converts a VMDK, whose
// references qemu-img reports only partly, into a qcow2 that is served
// instead. From then on the format goes explicitly to every qemu-img and
// QEMU invocation, and QEMU opens the gold disk as a -blockdev node whose
// backing is null: no file name inside an image is ever followed.

// codeUnsafeDisk is the error code of a disk that names a file outside its
// image or is in a format goldvm does not open.
const codeUnsafeDisk = "image-unsafe-disk"

func unsafeDisk(format string, args ...any) error {
	return errdefs.Newf(errdefs.ErrInvalid, codeUnsafeDisk, format, args...)
}

func badDisk(msg string, cause error) error {
	return errdefs.New(errdefs.ErrInvalid, "image-bad-disk", msg, cause)
}

// Limits of the qemu-img runs on a disk that is not published yet.
const (
	inspectTimeout = 2 * time.Minute
	inspectMemory  = 1 << 30 // address space, bytes
)

var _ hypervisor.GoldPreparer = (*Driver)(nil)

// PrepareGold implements hypervisor.GoldPreparer.
func (d *Driver) PrepareGold(ctx context.Context, files, scratch string) (hypervisor.GoldDisk, error) {
	disk, err := findGoldDisk(files)
	if err != nil {
		return hypervisor.GoldDisk{}, err
	}
	rel, _ := filepath.Rel(files, disk.Path)
	info, err := d.inspect(ctx, files, disk.Path, disk.Format)
	if err != nil {
		return hypervisor.GoldDisk{}, err
	}
	if disk.Format != string(diskfmt.VMDK) {
		return hypervisor.GoldDisk{Path: disk.Path, Format: disk.Format, VirtualSize: info.VirtualSize,
			GuestOS: d.imageOS(ctx, disk.Path, disk.Format)}, nil
	}
	// Converted once, sparse; the package's VMDK stays as it came.
	out := filepath.Join(scratch, "disk.qcow2")
	if _, err := d.runConfined(ctx, 0, "convert", "-q", "-f", "vmdk", "-O", "qcow2", disk.Path, out); err != nil {
		os.Remove(out)
		return hypervisor.GoldDisk{}, badDisk(fmt.Sprintf("cannot convert the VMDK disk %s to qcow2", rel), err)
	}
	conv, err := d.inspect(ctx, scratch, out, "qcow2")
	if err != nil {
		os.Remove(out)
		return hypervisor.GoldDisk{}, err
	}
	return hypervisor.GoldDisk{Path: out, Format: "qcow2", VirtualSize: conv.VirtualSize, Source: filepath.ToSlash(rel),
		GuestOS: d.imageOS(ctx, out, "qcow2")}, nil
}

// inspect runs `qemu-img info` on a disk of the given format, inside root,
// and refuses a disk that names any file: a backing file or data file of
// any kind, an extent outside root.
func (d *Driver) inspect(ctx context.Context, root, disk, format string) (imgInfo, error) {
	out, err := d.runConfined(ctx, inspectTimeout, "info", "-U", "--output=json", "-f", format, disk)
	rel, _ := filepath.Rel(root, disk)
	if err != nil {
		return imgInfo{}, badDisk(fmt.Sprintf("qemu-img cannot read %s as %s", rel, format), err)
	}
	var info imgInfo
	if err := json.Unmarshal(out, &info); err != nil {
		return imgInfo{}, badDisk("qemu-img info answered what goldvm cannot read", err)
	}
	if err := checkImgInfo(root, disk, out); err != nil {
		return imgInfo{}, err
	}
	return info, nil
}

// checkImgInfo reads qemu-img info's JSON answer about disk for file
// references: any backing file or data file is refused; any other file
// name (a VMDK's extents) must resolve inside root.
func checkImgInfo(root, disk string, answer []byte) error {
	var doc map[string]any
	if err := json.Unmarshal(answer, &doc); err != nil {
		return badDisk("qemu-img info answered what goldvm cannot read", err)
	}
	rel, _ := filepath.Rel(root, disk)
	var walk func(key string, v any, top bool) error
	walk = func(key string, v any, top bool) error {
		switch v := v.(type) {
		case map[string]any:
			keys := make([]string, 0, len(v))
			for k := range v {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				if err := walk(k, v[k], top && k != "format-specific" && k != "children"); err != nil {
					return err
				}
			}
		case []any:
			for _, e := range v {
				if err := walk(key, e, false); err != nil {
					return err
				}
			}
		case string:
			switch {
			case key == "backing-filename" || key == "full-backing-filename" || key == "data-file" || key == "backing-image":
				return unsafeDisk("disk %s names the %s %q: a gold disk must stand alone", rel, key, diskfmt.ShortName(v))
			case key == "filename" && !top:
				if err := insideRoot(root, filepath.Dir(disk), v, true); err != nil {
					return unsafeDisk("disk %s names the file %q, which lies outside the image", rel, diskfmt.ShortName(v))
				}
			}
		}
		return nil
	}
	return walk("", doc, true)
}

// insideRoot reports an error unless name, relative to dir, is a plain
// relative path that resolves (following symlinks) inside root. With
// allowAbs, an absolute name inside root is accepted too (qemu-img reports
// the extents of a disk opened by its absolute path that way).
func insideRoot(root, dir, name string, allowAbs bool) error {
	path := filepath.Join(dir, name)
	switch {
	case allowAbs && filepath.IsAbs(name) && !strings.ContainsAny(name, ":\\\x00"):
		path = name
	case !diskfmt.PlainName(name):
		return errors.New("not a plain relative path")
	}
	realRoot, err := filepath.EvalSymlinks(root)
	if err != nil {
		return err
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return err
	}
	rel, err := filepath.Rel(realRoot, real)
	if err != nil || !filepath.IsLocal(rel) {
		return errors.New("outside the image")
	}
	return nil
}

// runConfined runs qemu-img on a disk that is not trusted yet: with an
// empty environment, bounded in time (when timeout > 0) and address space,
// and, as root, in a network namespace of its own (no network at all).
func (d *Driver) runConfined(ctx context.Context, timeout time.Duration, args ...string) ([]byte, error) {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	argv := confined(append([]string{d.cfg.QemuImg}, args...))
	return d.runEnv(ctx, confinedEnv, argv[0], argv[1:]...)
}

// confinedEnv is the whole environment of a confined program.
// MALLOC_ARENA_MAX bounds glibc's per-thread malloc arenas, each of which
// reserves 64 MiB of address space: qemu-img's threads (16 arenas on 2
// cores) otherwise use up inspectMemory on their own, and a convert of a
// VMDK once died of it ("qemu_thread_create: Resource temporarily
// unavailable"). Measured: a 256 MiB VMDK converts under a 300 MiB limit
// with it, and fails under 400 MiB without it.
var confinedEnv = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "MALLOC_ARENA_MAX=2"}

// confined returns argv run bounded in address space and, as root, in a
// network namespace of its own (no network at all).
func confined(argv []string) []string {
	if prlimit, err := exec.LookPath("prlimit"); err == nil {
		argv = append([]string{prlimit, fmt.Sprintf("--as=%d", inspectMemory), "--"}, argv...)
	}
	if os.Geteuid() == 0 {
		if unshare, err := exec.LookPath("unshare"); err == nil {
			argv = append([]string{unshare, "--net", "--"}, argv...)
		}
	}
	return argv
}

// goldDisk is the disk found in a gold image directory.
type goldDisk struct {
	Path   string // absolute
	Format string // "qcow2", "vmdk" or "raw"
}

// findGoldDisk walks root and returns its one disk, its format decided
// from its content. Symlinks are not followed. Files that a VMDK
// descriptor names as its extents are part of that disk. Any disk in a
// format goldvm does not open, or naming a file outside root, is refused.
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
		rel, _ := filepath.Rel(root, path)
		format, refs, err := sniffDisk(path, rel)
		if err != nil || format == "" {
			return err
		}
		for _, r := range refs {
			if r.Kind != "extent" || insideRoot(root, filepath.Dir(path), r.Name, false) != nil {
				return unsafeDisk("disk %s names the %s %q, which is not a file of the image beside it", rel, r.Kind, diskfmt.ShortName(r.Name))
			}
			// A monolithic sparse VMDK names itself.
			if ext := filepath.Join(filepath.Dir(path), r.Name); ext != path {
				isExtent[ext] = true
			}
		}
		if format == diskfmt.VMDK && len(refs) == 0 && !isSparseVMDK(path) {
			return nil // text that only looks like a descriptor
		}
		found = append(found, goldDisk{Path: path, Format: string(format)})
		return nil
	})
	var coded *errdefs.Error
	if errors.As(err, &coded) {
		return goldDisk{}, err
	}
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

// sniffDisk decides the format of the file at path (rel in messages) and
// returns the files it names.
func sniffDisk(path, rel string) (diskfmt.Format, []diskfmt.Ref, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", nil, err
	}
	defer f.Close()
	format, refs, err := diskfmt.Inspect(f, path)
	switch {
	case errors.Is(err, diskfmt.ErrUnsafe):
		return "", nil, unsafeDisk("disk %s: %v", rel, err)
	case errors.Is(err, diskfmt.ErrCorrupt):
		return "", nil, badDisk(rel+": "+err.Error(), err)
	}
	return format, refs, err
}

func isSparseVMDK(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	head := make([]byte, 4)
	_, err = f.ReadAt(head, 0)
	return err == nil && (string(head) == "KDMV" || string(head) == "COWD")
}

// checkGold refuses a Spec whose gold disk was not decided by PrepareGold.
func checkGold(g hypervisor.GoldDisk) error {
	if !filepath.IsAbs(g.Path) || (g.Format != "qcow2" && g.Format != "raw") || g.VirtualSize <= 0 {
		return badDisk(fmt.Sprintf("the gold image has no inspected disk (path %q, format %q); delete the image and fetch it again", g.Path, g.Format), nil)
	}
	return nil
}
