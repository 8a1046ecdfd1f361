package qemu

import (
	"fmt"
	"os"
	"os/user"
	"strconv"
	"syscall"
)

// lookupCredential resolves a user name (or numeric id) to its uid and
// gid, with the kvm group added when /dev/kvm exists.
func lookupCredential(name string) (*syscall.Credential, error) {
	u, err := user.Lookup(name)
	if err != nil {
		if u, err = user.LookupId(name); err != nil {
			return nil, err
		}
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("uid of %s: %w", name, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("gid of %s: %w", name, err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: kvmGroups()}, nil
}

// kvmGroups returns the kvm group, which an unprivileged QEMU needs for
// /dev/kvm, when /dev/kvm exists.
func kvmGroups() []uint32 {
	if _, err := os.Stat("/dev/kvm"); err != nil {
		return nil
	}
	g, err := user.LookupGroup("kvm")
	if err != nil {
		return nil
	}
	kvm, err := strconv.ParseUint(g.Gid, 10, 32)
	if err != nil {
		return nil
	}
	return []uint32{uint32(kvm)}
}

// giveTo makes path owned by cred's user (nothing when cred is nil: QEMU
// runs as the daemon's user).
func giveTo(cred *syscall.Credential, path string) error {
	if cred == nil {
		return nil
	}
	if err := os.Lchown(path, int(cred.Uid), int(cred.Gid)); err != nil {
		return fmt.Errorf("giving %s to QEMU's user %d: %w", path, cred.Uid, err)
	}
	return nil
}

// RunsQEMUUnprivileged reports whether QEMU runs as another user than the
// daemon (RunAs or RunAsRange, as root).
func (d *Driver) RunsQEMUUnprivileged() bool { return d.runAs != nil || d.uidRange.first != 0 }
