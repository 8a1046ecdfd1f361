package image

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/goldvm/goldvm/internal/errdefs"
)

// Stable error codes returned by this package (as the Code of an
// *errdefs.Error). The VM manager copies them into the failed VM's error.
//
// Categories: a problem with what the caller asked for or with the image it
// points at (bad checksum syntax, content that does not match the checksum,
// a corrupt, unsafe, oversized or unsupported package) is errdefs.ErrInvalid:
// retrying the same request cannot succeed. checksum-mismatch is ErrInvalid
// too: either the checksum in the request is wrong or the URL serves other
// bytes; goldvm cannot tell which, and retrying does not help. A failing image
// server or a full disk is errdefs.ErrUnavailable: the same request may
// succeed later.
const (
	// CodeInvalidChecksum: checksum_type unknown or checksum not hex of the
	// right length (ErrInvalid).
	CodeInvalidChecksum = "invalid-checksum"
	// CodeChecksumMismatch: the downloaded bytes do not hash to the checksum
	// (ErrInvalid).
	CodeChecksumMismatch = "checksum-mismatch"
	// CodeDownloadFailed: the server answered a final 4xx, or network errors
	// / 5xx persisted after all retries (ErrUnavailable). The message names the
	// HTTP status when there was one.
	CodeDownloadFailed = "image-download-failed"
	// CodeCorrupt: the package cannot be decompressed or read as an archive,
	// or is truncated (ErrInvalid).
	CodeCorrupt = "image-corrupt"
	// CodeUnsafeArchive: an entry would land outside the image directory
	// (.., absolute name, link pointing out, a write through a symlinked
	// directory) or is a device node or fifo (ErrInvalid).
	CodeUnsafeArchive = "image-unsafe-archive"
	// CodeUnsafeDisk: a disk image names a file outside the image (a backing
	// file, data file, extent or parent), or is in a format goldvm does not
	// open (ErrInvalid).
	CodeUnsafeDisk = "image-unsafe-disk"
	// CodeTooLarge: the download or the unpacked image exceeds the configured
	// limits, whether declared or actual (ErrInvalid).
	CodeTooLarge = "image-too-large"
	// CodeDiskFull: the store ran out of disk space or quota (ErrUnavailable).
	CodeDiskFull = "disk-full"
	// CodeUnsupported: the content is neither a supported archive nor a
	// recognisable disk image (ErrInvalid).
	CodeUnsupported = "image-unsupported"
	// CodeNotFound: no published image has this key (ErrNotFound).
	CodeNotFound = "image-not-found"
	// CodeInUse: the image is used by a VM and cannot be deleted (ErrConflict).
	CodeInUse = "image-in-use"
	// CodeDamaged: the stored image no longer matches its completion
	// marker, but VMs depend on it, so it is kept (not served to new VMs)
	// until the last of them is gone (ErrConflict).
	CodeDamaged = "image-damaged"
	// CodeInvalidURL: the image URL is not an absolute http(s) URL (ErrInvalid).
	CodeInvalidURL = "invalid-image-url"
)

func errdefs400URL(cause error) error {
	return errdefs.New(errdefs.ErrInvalid, CodeInvalidURL, "image url must be an absolute http or https URL", cause)
}

func errInvalidChecksum(format string, args ...any) error {
	return errdefs.Newf(errdefs.ErrInvalid, CodeInvalidChecksum, format, args...)
}

func errCorrupt(msg string, cause error) error {
	return errdefs.New(errdefs.ErrInvalid, CodeCorrupt, msg, cause)
}

func errUnsafe(format string, args ...any) error {
	return errdefs.Newf(errdefs.ErrInvalid, CodeUnsafeArchive, format, args...)
}

func errTooLarge(format string, args ...any) error {
	return errdefs.Newf(errdefs.ErrInvalid, CodeTooLarge, format, args...)
}

func errUnsupported(format string, args ...any) error {
	return errdefs.Newf(errdefs.ErrInvalid, CodeUnsupported, format, args...)
}

func errDownload(msg string, cause error) error {
	return errdefs.New(errdefs.ErrUnavailable, CodeDownloadFailed, msg, cause)
}

// isDiskFull reports whether err means the file system is out of space.
func isDiskFull(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// ioErr classifies a local file-system error: disk-full when the disk is
// full, otherwise a plain wrapped (internal) error.
func ioErr(op string, err error) error {
	if err == nil {
		return nil
	}
	var de *errdefs.Error
	if errors.As(err, &de) {
		return err
	}
	if isDiskFull(err) {
		return errdefs.New(errdefs.ErrUnavailable, CodeDiskFull, "no space left for the image", fmt.Errorf("%s: %w", op, err))
	}
	return fmt.Errorf("%s: %w", op, err)
}
