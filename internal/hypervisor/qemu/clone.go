package qemu

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/hypervisor"
)

func isLockError(s string) bool {
	return strings.Contains(s, `Failed to get "write" lock`) || strings.Contains(s, `Failed to get shared "write" lock`) ||
		strings.Contains(s, "Is another process using the image")
}

func lockedErr(cause error) error {
	return errdefs.New(errdefs.ErrConflict, "vm-locked", "the VM's disk is locked by another process", cause)
}

// Clone makes disk.qcow2 in spec.Dir, a qcow2 overlay whose backing file is
// the gold disk that PrepareGold decided on (spec.GoldDisk), with its format
// given explicitly. It costs the same for any image size.
func (d *Driver) Clone(ctx context.Context, spec hypervisor.Spec) error {
	if err := checkSpec(spec); err != nil {
		return err
	}
	if _, err := d.plan(spec); err != nil {
		return err
	}
	if err := checkDisk(spec); err != nil {
		return err
	}
	l := d.vmLock(spec.ID)
	l.life.Lock()
	defer l.life.Unlock()

	gold := spec.GoldDisk
	disk := p(spec.Dir, fileDisk)
	if _, err := os.Stat(disk); err == nil {
		if _, err := d.qemuImgInfo(ctx, disk, "qcow2", false); err != nil && isLockError(err.Error()) {
			return lockedErr(err)
		}
	}
	tmp := p(spec.Dir, fileDiskTmp)
	os.Remove(tmp)
	// -u: the backing file is not opened; its size comes from its record.
	args := []string{"create", "-q", "-u", "-f", "qcow2", "-b", gold.Path, "-F", gold.Format, tmp, strconv.FormatInt(gold.VirtualSize, 10)}
	if spec.EmptyDisk > 0 {
		args = []string{"create", "-q", "-f", "qcow2", tmp, strconv.FormatInt(spec.EmptyDisk, 10)}
	}
	if _, err := d.run(ctx, d.cfg.QemuImg, args...); err != nil {
		os.Remove(tmp)
		return errdefs.New(errdefs.ErrUnavailable, "clone-failed", "cannot create the linked clone", err)
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return err
	}
	cred, err := d.credFor(spec)
	if err != nil {
		return err
	}
	if err := giveTo(cred, tmp); err != nil {
		return err
	}
	if err := syncFile(tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, disk); err != nil {
		return fmt.Errorf("clone: %w", err)
	}
	syncFile(spec.Dir)
	d.log.Debug("cloned", "vm", spec.ID, "gold", gold.Path, "format", gold.Format)
	return nil
}

// checkDisk refuses a Spec without a gold disk PrepareGold decided on,
// unless it asks for an empty disk.
func checkDisk(spec hypervisor.Spec) error {
	if spec.EmptyDisk > 0 {
		return nil
	}
	return checkGold(spec.GoldDisk)
}

func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
