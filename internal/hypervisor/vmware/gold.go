package vmware

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/goldvm/goldvm/internal/errdefs"
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

// withWritableGold runs fn while the folder holding the gold .vmx, and the
// files in it other than disks, are writable by their owner.
//
// goldvm keeps gold images read-only (folders 0555, files 0444), but VMware
// writes into a VM's folder when it snapshots it (a .vmsd, a new delta disk,
// the rewritten .vmx), when it clones it (the .vmx.lck lock directory, the
// clone's record in the .vmsd) and when a linked clone is deleted. The
// window is opened only for those steps, under the gold's mutex; afterwards
// every pre-existing entry gets its mode back and the new files VMware left
// (the .vmsd, the snapshot's delta disk) are made read-only too. The .vmdk
// files that existed before are never made writable: the base disk that all
// clones share stays read-only throughout.
//
// A running clone only takes shared locks on the base disk, which VMware
// manages without writing into a read-only folder.
func withWritableGold(goldVMX string, fn func() error) (err error) {
	dir := filepath.Dir(goldVMX)
	dirInfo, err := os.Stat(dir)
	if err != nil {
		return err
	}
	before := map[string]os.FileMode{}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if info, err := e.Info(); err == nil {
			before[e.Name()] = info.Mode()
		}
	}
	defer func() {
		var errs []error
		after, rerr := os.ReadDir(dir)
		if rerr != nil {
			errs = append(errs, rerr)
		}
		for _, e := range after {
			p := filepath.Join(dir, e.Name())
			mode, existed := before[e.Name()]
			switch {
			case existed && !e.IsDir():
				if info, err := e.Info(); err == nil && info.Mode().Perm() != mode.Perm() {
					errs = append(errs, os.Chmod(p, mode.Perm()))
				}
			case !existed && e.Type().IsRegular():
				if info, err := e.Info(); err == nil {
					errs = append(errs, os.Chmod(p, info.Mode().Perm()&^0o222))
				}
			}
		}
		errs = append(errs, os.Chmod(dir, dirInfo.Mode().Perm()))
		if rerr := errors.Join(errs...); rerr != nil {
			err = errors.Join(err, fmt.Errorf("restoring the gold image's read-only modes: %w", rerr))
		}
	}()
	if err := os.Chmod(dir, dirInfo.Mode().Perm()|0o700); err != nil {
		return fmt.Errorf("making the gold VM folder writable: %w", err)
	}
	for _, e := range ents {
		if !e.Type().IsRegular() || strings.EqualFold(filepath.Ext(e.Name()), ".vmdk") {
			continue
		}
		mode := before[e.Name()]
		if mode.Perm()&0o200 == 0 {
			if err := os.Chmod(filepath.Join(dir, e.Name()), mode.Perm()|0o200); err != nil {
				return fmt.Errorf("making %s writable: %w", e.Name(), err)
			}
		}
	}
	return fn()
}

// ensureSnapshot makes sure the gold VM has the driver's snapshot. It asks
// vmrun once per gold and driver (the answer is remembered) and creates the
// snapshot if missing; "already exists" (made meanwhile by someone else) is
// fine. The caller holds g's lock and the writable window.
func (d *Driver) ensureSnapshot(ctx context.Context, g *goldState, goldVMX string) error {
	if g.snapshot {
		return nil
	}
	out, err := d.run(ctx, false, "listSnapshots", goldVMX)
	if err != nil {
		return mapErr("listing the gold VM's snapshots", err)
	}
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "Total snapshots") && line == d.cfg.SnapshotName {
			g.snapshot = true
			return nil
		}
	}
	d.log.Info("creating gold snapshot", "vmx", goldVMX, "snapshot", d.cfg.SnapshotName)
	if _, err := d.run(ctx, false, "snapshot", goldVMX, d.cfg.SnapshotName); err != nil && !isExists(err) {
		return mapErr("snapshotting the gold VM", err)
	}
	g.snapshot = true
	return nil
}
