package qemu

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/hypervisor"
)

var _ hypervisor.Capturer = (*Driver)(nil)

// Capture implements hypervisor.Capturer: `qemu-img convert` reads the
// VM's overlay through its backing chain (the gold disk, whose format the
// overlay names, as Clone wrote it) and writes one standalone qcow2,
// sparse (zero clusters are left out) and compressed (-c, zlib). On the
// test guest, whose disk is mostly a compressed kernel and initramfs,
// compression takes the capture from 18.9 to 15.9 MB for 1.2 s of CPU
// instead of 0.1 s; an installed system compresses much better, and a
// gold disk is written once and read by many VMs. A running machine holds
// the overlay's write lock: the convert fails and the capture is refused
// with vm-locked.
func (d *Driver) Capture(ctx context.Context, spec hypervisor.Spec, dst string) (string, error) {
	if err := checkSpec(spec); err != nil {
		return "", err
	}
	l := d.vmLock(spec.ID)
	l.life.Lock()
	defer l.life.Unlock()
	disk := p(spec.Dir, fileDisk)
	if _, err := os.Stat(disk); errors.Is(err, fs.ErrNotExist) {
		return "", errdefs.New(errdefs.ErrConflict, api.CodeVMDiskMissing, "the VM has no disk to capture", err)
	}
	out := filepath.Join(dst, fileDisk)
	if _, err := d.run(ctx, d.cfg.QemuImg, "convert", "-q", "-f", "qcow2", "-O", "qcow2", "-c", disk, out); err != nil {
		os.Remove(out)
		if isLockError(err.Error()) {
			return "", lockedErr(err)
		}
		return "", errdefs.New(errdefs.ErrUnavailable, api.CodeCaptureFailed, "cannot flatten the VM's disk", err)
	}
	if err := syncFile(out); err != nil {
		return "", err
	}
	d.log.Info("captured", "vm", spec.ID, "disk", out)
	return fileDisk, nil
}
