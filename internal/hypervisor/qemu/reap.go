package qemu

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Reap kills goldvm QEMU processes (those named goldvm-<id>) whose VM id
// known reports false, limited to VMs under Config.VMRoot (none without it),
// and removes gv* tap devices that no live QEMU uses and whose owner
// (recorded in the tap's alias, with a tag of the VMRoot of the instance
// that made it) is unknown. Taps of another instance (another VMRoot) and
// taps not named yet are left alone: other goldvm daemons on the host may
// be between making a tap and starting its QEMU. It also deletes the
// nftables rules (metadata.go) of VMs that are unknown and whose tap is
// gone. Call it at daemon start,
// before creating VMs, to clean up after a crash.
func (d *Driver) Reap(ctx context.Context, known func(id string) bool) error {
	var errs []error
	inUse := map[string]bool{}
	for _, pid := range allPIDs() {
		args := procArgs(pid)
		id := qemuVMID(args)
		if id == "" || procZombie(pid) {
			continue
		}
		if known(id) || !d.inVMRoot(args) {
			// A VM's tap is named after its id, whether QEMU opens it by
			// name (ifname=) or is handed it (fd=, with --qemu-user).
			inUse[tapFor(id)] = true
			continue
		}
		d.log.Warn("killing stray QEMU", "vm", id, "pid", pid)
		if err := killPID(pid); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, err)
			continue
		}
		if !waitGone(ctx, pid, id, 10*time.Second) {
			errs = append(errs, fmt.Errorf("stray qemu %d (vm %s) did not exit", pid, id))
		}
	}
	if d.ip != "" {
		mine := rootTag(d.cfg.VMRoot)
		links, err := d.links(ctx)
		if err != nil {
			return errors.Join(append(errs, err)...)
		}
		for name, l := range links {
			if !strings.HasPrefix(name, "gv") || !l.isTap() {
				continue
			}
			owner, root := l.tapOwner()
			switch {
			case inUse[name] || (owner != "" && known(owner)):
				continue
			case owner == "":
				// Just made by some instance, which names it next; or
				// not goldvm's.
				continue
			case root != "" && mine != "" && root != mine:
				continue // another goldvm instance's VM
			}
			d.log.Warn("removing stray tap", "tap", name, "vm", owner)
			if err := d.removeTap(ctx, name); err != nil {
				errs = append(errs, err)
			}
		}
		if d.nft != "" {
			// nftables rules of VMs that no record owns and whose tap is
			// gone (a live tap may be another instance's VM).
			links, err := d.links(ctx) // again: stray taps went above
			if err != nil {
				return errors.Join(append(errs, err)...)
			}
			d.netMu.Lock()
			err = d.deleteMetadataRules(ctx, func(owner string) bool {
				_, tapLives := links[tapFor(owner)]
				return !known(owner) && !tapLives
			})
			d.netMu.Unlock()
			if err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// inVMRoot reports whether a QEMU argument vector belongs to a VM under
// Config.VMRoot. Without a VMRoot no QEMU is this driver's to kill: /proc
// shows every goldvm QEMU of the host (other daemons', other tests'), and
// only the directory they run in tells whose they are.
func (d *Driver) inVMRoot(args []string) bool {
	if d.cfg.VMRoot == "" {
		return false
	}
	root, err := filepath.Abs(d.cfg.VMRoot)
	if err != nil {
		return false
	}
	for i := 0; i+1 < len(args); i++ {
		if args[i] == "-pidfile" {
			rel, err := filepath.Rel(root, filepath.Dir(args[i+1]))
			return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
		}
	}
	return false
}
