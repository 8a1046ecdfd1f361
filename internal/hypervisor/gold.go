package hypervisor

import "context"

// GoldDisk is a gold image's disk as a driver decided it when the image
// was published. Its format is decided once, from the content, and passed
// explicitly to every tool that opens the disk after: nothing probes it
// again.
type GoldDisk struct {
	// Path is the disk's absolute path.
	Path string
	// Format is the disk's format: "qcow2" or "raw" for QEMU.
	Format string
	// VirtualSize is the size of the disk the guest sees, in bytes.
	VirtualSize int64
	// Source is the package's disk a converted disk was made from, relative
	// to the image's files; empty when Path is that disk.
	Source string
	// GuestOS is the OS the disk names in its /etc/os-release (its
	// PRETTY_NAME), read once when the image is published; "" when the
	// driver could not tell. It is the VM's guest_os when the guest's agent
	// does not answer.
	GuestOS string
}

// GoldPreparer is implemented by drivers that inspect a gold image before
// it is published (the image store calls it through image.Options).
type GoldPreparer interface {
	// PrepareGold finds the one disk among the unpacked files in files,
	// decides its format, refuses a disk that names any other file (errors
	// with code "image-unsafe-disk") and may write a converted disk into
	// scratch, a directory of the image beside files.
	PrepareGold(ctx context.Context, files, scratch string) (GoldDisk, error)
}
