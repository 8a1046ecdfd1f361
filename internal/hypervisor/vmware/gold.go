package vmware

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/hypervisor"
	"github.com/goldvm/goldvm/internal/hypervisor/vmware/vmx"
)

// findGoldVMX returns the one .vmx file anywhere under root (a VM folder,
// maybe a .vmwarevm bundle, maybe nested in the package's top directory).
// macOS resource-fork files ("._x.vmx", __MACOSX) that tar and zip pick up
// on a Mac are ignored, as are VMware's .lck lock directories.
func findGoldVMX(root string) (string, error) {
	var found []string
	err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := e.Name()
		if e.IsDir() {
			if p != root && (name == "__MACOSX" || strings.HasSuffix(strings.ToLower(name), ".lck")) {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasPrefix(name, "._") || !strings.EqualFold(filepath.Ext(name), ".vmx") {
			return nil
		}
		if e.Type().IsRegular() {
			found = append(found, p)
		}
		return nil
	})
	if err != nil {
		return "", errdefs.New(errdefs.ErrInvalid, "image-no-vmx", "cannot read the image directory", err)
	}
	switch len(found) {
	case 0:
		return "", errdefs.Newf(errdefs.ErrInvalid, "image-no-vmx",
			"the image has no .vmx file: a VMware image must be a VM folder (.vmx and .vmdk files)")
	case 1:
		return found[0], nil
	}
	sort.Strings(found)
	rel := make([]string, len(found))
	for i, f := range found {
		rel[i], _ = filepath.Rel(root, f)
	}
	return "", errdefs.Newf(errdefs.ErrInvalid, "image-many-vmx",
		"the image has %d .vmx files (%s); it must hold exactly one VM", len(found), strings.Join(rel, ", "))
}

// baseName is the driver's copy of a gold .vmx in its per-image directory.
const baseName = "base.vmx"

// sourceName records, in the per-image directory, which gold .vmx the base
// was made from (so a stale directory is recognised and rebuilt, and Reap
// can tell when its image is gone).
const sourceName = "source"

// baseDir is the driver's directory for one gold image:
// <Config.StateDir>/<image key>.
func (d *Driver) baseDir(spec hypervisor.Spec) (string, error) {
	if d.cfg.StateDir == "" {
		return "", errdefs.Newf(errdefs.ErrInvalid, "vmware-no-state-dir", "the VMware driver has no state directory (Config.StateDir)")
	}
	if !keyPattern.MatchString(spec.ImageKey) {
		return "", errdefs.Newf(errdefs.ErrInvalid, "invalid-image-key", "image key %q is not usable as a directory name", spec.ImageKey)
	}
	return filepath.Join(d.cfg.StateDir, spec.ImageKey), nil
}

// keyPattern is what an image key may look like ("sha256-<hex>").
var keyPattern = regexp.MustCompile(`^[a-z0-9]+-[0-9a-f]{16,128}$`)

// ensureBase makes sure the driver's base VM of the gold image exists and
// returns its .vmx. The base VM is what vmrun snapshots and clones from: a
// copy of the gold .vmx in the driver's own directory whose disk
// references (every "*.fileName" naming a file of the gold folder) are
// rewritten to the gold files' absolute paths. VMware writes the
// snapshot's state (.vmsd, the base's new delta disk, the rewritten .vmx,
// lock directories, the clones' records) beside the base .vmx, never into
// the gold folder, and the linked clones' delta disks have the gold disk
// as their parent. The caller holds the image's lock.
func (d *Driver) ensureBase(spec hypervisor.Spec, goldVMX string) (string, error) {
	dir, err := d.baseDir(spec)
	if err != nil {
		return "", err
	}
	base := filepath.Join(dir, baseName)
	if src, err := os.ReadFile(filepath.Join(dir, sourceName)); err == nil && exists(base) {
		if comparablePath(strings.TrimSpace(string(src))) == comparablePath(goldVMX) {
			return base, nil
		}
		d.log.Warn("rebuilding the base VM of a moved gold image", "dir", dir, "was", strings.TrimSpace(string(src)), "now", goldVMX)
	}
	if err := os.RemoveAll(dir); err != nil {
		return "", fmt.Errorf("removing a stale base VM: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("creating the base VM directory: %w", err)
	}
	f, err := vmx.ReadFile(goldVMX)
	if err != nil {
		return "", errdefs.New(errdefs.ErrInvalid, "image-bad-vmx", "cannot read the gold image's .vmx", err)
	}
	goldFolder := filepath.Dir(goldVMX)
	for _, k := range f.Keys() {
		if !strings.HasSuffix(strings.ToLower(k), ".filename") {
			continue
		}
		v, _ := f.Get(k)
		if v == "" || filepath.IsAbs(v) {
			continue
		}
		p := filepath.Join(goldFolder, v)
		if st, err := os.Stat(p); err != nil || !st.Mode().IsRegular() {
			continue // a device name ("auto detect"), or not shipped with the image
		}
		if err := f.Set(k, p); err != nil {
			return "", errdefs.New(errdefs.ErrInvalid, "image-bad-vmx", "cannot point the base VM at the gold disk", err)
		}
	}
	if err := f.WriteFile(base, 0o600); err != nil {
		return "", fmt.Errorf("writing the base VM's .vmx: %w", err)
	}
	// The source record is written last: a base without it is rebuilt.
	if err := writeFileSynced(filepath.Join(dir, sourceName), []byte(goldVMX+"\n")); err != nil {
		return "", fmt.Errorf("recording the base VM's gold image: %w", err)
	}
	d.log.Info("made base VM", "vmx", base, "gold", goldVMX)
	return base, nil
}

// writeFileSynced writes data to path through a synced temporary file and
// a rename.
func writeFileSynced(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err != nil {
		return err
	}
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}

// Reap removes the per-image directories whose gold image is gone (the
// image store deleted or evicted it after its last VM). VMs are not
// touched: VMware's processes are not the driver's children, and vmrun
// lists them by .vmx, which the manager's records name.
func (d *Driver) Reap(ctx context.Context, known func(id string) bool) error {
	if d.cfg.StateDir == "" {
		return nil
	}
	ents, err := os.ReadDir(d.cfg.StateDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		if !e.IsDir() || !keyPattern.MatchString(e.Name()) {
			continue
		}
		dir := filepath.Join(d.cfg.StateDir, e.Name())
		src, err := os.ReadFile(filepath.Join(dir, sourceName))
		if err == nil && exists(strings.TrimSpace(string(src))) {
			continue
		}
		d.log.Info("removing the base VM of a gone gold image", "dir", dir)
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ensureSnapshot makes sure the base VM has the driver's snapshot. It asks
// vmrun once per image and driver (the answer is remembered) and creates the
// snapshot if missing; "already exists" (made meanwhile by someone else) is
// fine. The caller holds g's lock.
func (d *Driver) ensureSnapshot(ctx context.Context, g *goldState, baseVMX string) error {
	if g.snapshot {
		return nil
	}
	out, err := d.run(ctx, false, "listSnapshots", baseVMX)
	if err != nil {
		return mapErr("listing the base VM's snapshots", err)
	}
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "Total snapshots") && line == d.cfg.SnapshotName {
			g.snapshot = true
			return nil
		}
	}
	d.log.Info("creating the base VM snapshot", "vmx", baseVMX, "snapshot", d.cfg.SnapshotName)
	if _, err := d.run(ctx, false, "snapshot", baseVMX, d.cfg.SnapshotName); err != nil && !isExists(err) {
		return mapErr("snapshotting the base VM", err)
	}
	g.snapshot = true
	return nil
}
