package image

import (
	"errors"
	"path"

	"github.com/goldvm/goldvm/internal/diskfmt"
	"github.com/goldvm/goldvm/internal/errdefs"
)

// A disk image can name other files that the hypervisor opens when the VM
// boots: a qcow2 backing file or external data file, the extents and parent
// of a VMDK. A gold image that named /etc/shadow or /dev/sda that way would
// escape the image directory as surely as a symlink. This is the first
// filter, for every backend: every file that diskfmt takes for a disk must
// be in a format goldvm serves, and every file it names must be a plain
// relative path resolving inside the image. The QEMU driver then decides
// the disk's format for good and asks qemu-img (hypervisor.GoldPreparer).

// checkDiskRefs inspects every regular file of the image.
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
	_, refs, err := diskfmt.Inspect(f, name)
	switch {
	case errors.Is(err, diskfmt.ErrUnsafe):
		return errUnsafeDisk("disk %s: %v", name, err)
	case errors.Is(err, diskfmt.ErrCorrupt):
		return errCorrupt(name+": "+err.Error(), err)
	case err != nil:
		return ioErr("reading "+name, err)
	}
	for _, r := range refs {
		if err := x.checkRef(name, r); err != nil {
			return err
		}
	}
	return nil
}

// checkRef refuses a reference from disk file name unless it is a plain
// relative path resolving inside the image (following its symlinks).
func (x *extractor) checkRef(name string, r diskfmt.Ref) error {
	if !diskfmt.PlainName(r.Name) {
		return errUnsafeDisk("disk %s names the %s %q, which is not a relative path inside the image", name, r.Kind, diskfmt.ShortName(r.Name))
	}
	if err := x.resolveFrom(path.Dir(name), r.Name, name); err != nil {
		return errUnsafeDisk("disk %s names the %s %q, which lies outside the image", name, r.Kind, diskfmt.ShortName(r.Name))
	}
	return nil
}

func errUnsafeDisk(format string, args ...any) error {
	return errdefs.Newf(errdefs.ErrInvalid, CodeUnsafeDisk, format, args...)
}
