package qemu

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/hypervisor"
)

// uidRange is a range of user ids handed out to VMs, first to last
// inclusive; the zero value is no range.
type uidRange struct{ first, last uint32 }

// maxUIDRange bounds a range, which credFor scans.
const maxUIDRange = 1 << 20

// parseUIDRange parses "FIRST-LAST".
func parseUIDRange(s string) (uidRange, error) {
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		return uidRange{}, fmt.Errorf("user id range %q: want FIRST-LAST, e.g. 600000-600999", s)
	}
	first, err1 := strconv.ParseUint(strings.TrimSpace(a), 10, 32)
	last, err2 := strconv.ParseUint(strings.TrimSpace(b), 10, 32)
	switch {
	case err1 != nil || err2 != nil:
		return uidRange{}, fmt.Errorf("user id range %q: want two numbers, FIRST-LAST", s)
	case first == 0:
		return uidRange{}, fmt.Errorf("user id range %q: 0 is root", s)
	case last < first:
		return uidRange{}, fmt.Errorf("user id range %q: the last id is below the first", s)
	case last-first >= maxUIDRange:
		return uidRange{}, fmt.Errorf("user id range %q: more than %d ids", s, maxUIDRange)
	case last >= 1<<32-1:
		return uidRange{}, fmt.Errorf("user id range %q: %d is not a usable id", s, last)
	}
	return uidRange{uint32(first), uint32(last)}, nil
}

func (r uidRange) contains(uid uint32) bool { return r.first != 0 && uid >= r.first && uid <= r.last }

// credFor returns the user VM spec's QEMU runs as: nil for the daemon's
// own, RunAs's, or with RunAsRange the VM's own id. The VM's directory
// records that id as its owner, so a VM keeps it across restarts of QEMU
// and of the daemon; a VM without one takes the lowest id of the range
// that no directory next to its own owns, and its directory is given to
// it at once.
func (d *Driver) credFor(spec hypervisor.Spec) (*syscall.Credential, error) {
	if d.uidRange.first == 0 {
		return d.runAs, nil
	}
	d.uidMu.Lock()
	defer d.uidMu.Unlock()
	owner := func(path string) (uint32, bool) {
		fi, err := os.Lstat(path)
		if err != nil || !fi.IsDir() {
			return 0, false
		}
		return fi.Sys().(*syscall.Stat_t).Uid, true
	}
	cred := func(uid uint32) *syscall.Credential {
		return &syscall.Credential{Uid: uid, Gid: uid, Groups: kvmGroups()}
	}
	own, ok := owner(spec.Dir)
	if !ok {
		return nil, fmt.Errorf("VM directory %s: not found", spec.Dir)
	}
	if d.uidRange.contains(own) {
		return cred(own), nil
	}
	entries, err := os.ReadDir(filepath.Dir(spec.Dir))
	if err != nil {
		return nil, fmt.Errorf("listing VM directories: %w", err)
	}
	taken := map[uint32]bool{}
	for _, e := range entries {
		if uid, ok := owner(filepath.Join(filepath.Dir(spec.Dir), e.Name())); ok && d.uidRange.contains(uid) {
			taken[uid] = true
		}
	}
	for uid := d.uidRange.first; ; uid++ {
		if !taken[uid] {
			c := cred(uid)
			if err := giveTo(c, spec.Dir); err != nil {
				return nil, err
			}
			if err := os.Chmod(spec.Dir, 0o700); err != nil {
				return nil, fmt.Errorf("VM directory: %w", err)
			}
			d.log.Debug("VM gets a user id of its own", "vm", spec.ID, "uid", uid)
			return c, nil
		}
		if uid == d.uidRange.last {
			break
		}
	}
	return nil, errdefs.Newf(errdefs.ErrUnavailable, "qemu-uids-exhausted",
		"every user id from %d to %d belongs to a VM: delete VMs or widen the daemon's --qemu-uid-range", d.uidRange.first, d.uidRange.last)
}

// DefaultUIDRange is the range of user ids that `goldvm serve` gives each
// VM's QEMU from when it runs as root and is told nothing else: in the
// block systemd leaves unused (1879048192-2147483647), so that no account
// or container of the host has them (CheckUIDRangeFree checks).
const DefaultUIDRange = "1990000000-1990000999"

// CheckUIDRangeFree reports an error when an id of the range s belongs to
// an account or group of the host (/etc/passwd, /etc/group) or to a
// running process other than a goldvm QEMU: handing such an id to a VM's
// QEMU would let it reach that user's files.
func CheckUIDRangeFree(s string) error {
	r, err := parseUIDRange(s)
	if err != nil {
		return err
	}
	for _, db := range []string{"/etc/passwd", "/etc/group"} {
		b, err := os.ReadFile(db)
		if err != nil && !os.IsNotExist(err) {
			return err
		}
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Split(line, ":")
			if len(f) < 3 {
				continue
			}
			if id, err := strconv.ParseUint(f[2], 10, 32); err == nil && r.contains(uint32(id)) {
				return fmt.Errorf("id %d of the range %s is %s's in %s", id, s, f[0], db)
			}
		}
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return err
	}
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		fi, err := os.Stat(filepath.Join("/proc", p.Name()))
		if err != nil {
			continue // gone
		}
		uid := fi.Sys().(*syscall.Stat_t).Uid
		if !r.contains(uid) {
			continue
		}
		args := procArgs(pid)
		switch {
		case args == nil || procZombie(pid):
			continue // gone, or dead and not yet reaped
		case qemuVMID(args) != "":
			continue // a VM's QEMU, of this daemon or another
		case filepath.Base(args[0]) == "goldvm":
			continue // a daemon's child between fork and exec of its QEMU
		}
		return fmt.Errorf("id %d of the range %s runs process %d", uid, s, pid)
	}
	return nil
}
