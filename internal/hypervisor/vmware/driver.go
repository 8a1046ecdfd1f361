package vmware

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/hypervisor"
	"github.com/goldvm/goldvm/internal/hypervisor/vmware/vmx"
)

// idPattern is what a VM id may look like: it becomes a file name and
// vmrun's -cloneName.
var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// checkSpec validates the parts of spec every method relies on.
func checkSpec(spec hypervisor.Spec) error {
	if !idPattern.MatchString(spec.ID) {
		return errdefs.Newf(errdefs.ErrInvalid, "invalid-vm-id", "VM id %q is not usable as a VMware VM name", spec.ID)
	}
	if !filepath.IsAbs(spec.Dir) {
		return errdefs.Newf(errdefs.ErrInvalid, "invalid-vm-dir", "VM directory %q is not absolute", spec.Dir)
	}
	return nil
}

// vmxPath is the clone's .vmx: <spec.Dir>/<id>.vmx.
func vmxPath(spec hypervisor.Spec) string {
	return filepath.Join(spec.Dir, spec.ID+".vmx")
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// Clone makes a linked clone of the gold VM in spec.Dir as <id>.vmx: it
// makes sure the driver's base VM of the image exists and has the driver's
// snapshot (see ensureBase; the gold folder itself is only read), runs
// `vmrun clone <base.vmx> <dir>/<id>.vmx linked -snapshot=<name> -cloneName=<id>`
// and then edits the clone's .vmx for spec (see configure). All vmrun work on
// one base VM is serialized, since VMware locks it while it works.
func (d *Driver) Clone(ctx context.Context, spec hypervisor.Spec) error {
	if err := checkSpec(spec); err != nil {
		return err
	}
	if err := checkNetwork(spec.Network); err != nil {
		return err
	}
	goldVMX, err := findGoldVMX(spec.GoldDir)
	if err != nil {
		return err
	}
	dir, err := d.baseDir(spec)
	if err != nil {
		return err
	}
	dst := vmxPath(spec)
	if exists(dst) {
		return errdefs.Newf(errdefs.ErrConflict, "vm-exists", "the VM directory already holds a clone (%s)", filepath.Base(dst))
	}
	g := d.gold(dir)
	if err := g.lock(ctx); err != nil {
		return err
	}
	err = func() error {
		base, err := d.ensureBase(spec, goldVMX)
		if err != nil {
			return err
		}
		if err := d.ensureSnapshot(ctx, g, base); err != nil {
			return err
		}
		_, err = d.run(ctx, false, "clone", base, dst, "linked",
			"-snapshot="+d.cfg.SnapshotName, "-cloneName="+spec.ID)
		if err != nil && !keepsSnapshot(err) {
			// The snapshot may have been deleted behind our back: check
			// again next time.
			g.snapshot = false
		}
		return mapErr("cloning the base VM", err)
	}()
	g.unlock()
	if err != nil {
		return err
	}
	if err := d.configure(dst, spec); err != nil {
		return errdefs.New(errdefs.ErrConflict, "vmx-edit-failed", "cannot edit the clone's .vmx", err)
	}
	d.log.Info("cloned", "id", spec.ID, "gold", goldVMX, "vmx", dst)
	return nil
}

// keepsSnapshot reports whether a clone failure leaves the snapshot's
// existence beyond doubt (a lock conflict says nothing about snapshots).
func keepsSnapshot(err error) bool {
	return isLocked(err) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// checkNetwork validates the network type.
func checkNetwork(n string) error {
	switch n {
	case api.NetworkNAT, api.NetworkBridged, api.NetworkHostOnly:
		return nil
	}
	return errdefs.Newf(errdefs.ErrInvalid, "invalid-network-type", "network type %q: use nat, bridged or hostonly", n)
}

// configure edits the clone's .vmx for spec and writes it atomically:
// CPUs, memory (MiB, rounded up to a multiple of 4 as VMware requires), the
// display name, the first NIC's network type, fresh MAC addresses and BIOS
// UUID so clones do not collide, msg.autoAnswer so that no dialog
// blocks a headless start, and the cloud-init seed CD-ROM (addSeed).
func (d *Driver) configure(path string, spec hypervisor.Spec) error {
	f, err := vmx.ReadFile(path)
	if err != nil {
		return err
	}
	cpus := max(spec.CPUs, 1)
	mem := max((spec.MemoryMiB+3)/4*4, 4)
	set := func(k, v string) {
		if err == nil {
			err = f.Set(k, v)
		}
	}
	set("numvcpus", strconv.Itoa(cpus))
	if c, ok := f.Get("cpuid.coresPerSocket"); ok {
		if n, perr := strconv.Atoi(c); perr != nil || n < 1 || cpus%n != 0 {
			// An unchanged cores-per-socket that does not divide the new
			// CPU count makes the VM refuse to power on.
			f.Delete("cpuid.coresPerSocket")
		}
	}
	set("memsize", strconv.FormatInt(mem, 10))
	set("displayName", "goldvm-"+spec.ID)
	if !f.Has("ethernet0.present") {
		set("ethernet0.present", "TRUE")
	}
	set("ethernet0.connectionType", spec.Network)
	set("ethernet0.addressType", "generated")
	for i := 0; i < 10; i++ {
		nic := fmt.Sprintf("ethernet%d.", i)
		f.Delete(nic + "generatedAddress")
		f.Delete(nic + "generatedAddressOffset")
	}
	f.Delete("ethernet0.address")
	f.Delete("uuid.bios")
	f.Delete("uuid.location")
	f.Delete("vc.uuid")
	set("uuid.action", "create")
	set("msg.autoAnswer", "TRUE")
	if m := spec.Machine; m != nil {
		// The parts of a machine definition that map onto a .vmx:
		// cores per socket (VMware has no threads: a core's threads
		// count as cores), an e1000 NIC and UEFI firmware. The rest
		// (and BIOS, the host default) leave the image's .vmx as it is.
		if per := max(m.Threads, 1) * max(m.Cores, 1); per > 1 && cpus%per == 0 {
			set("cpuid.coresPerSocket", strconv.Itoa(per))
		}
		if m.Network == "e1000" {
			set("ethernet0.virtualDev", "e1000")
		}
		if m.Firmware == "uefi" {
			set("firmware", "efi")
		}
	}
	if err != nil {
		return err
	}
	if err := addSeed(f, spec); err != nil {
		return err
	}
	return f.WriteFile(path, 0o600)
}

// Start powers the clone on with `vmrun start <vmx> nogui` (gui when the
// caller asked for a window). vmrun returns once the VM is powered on; the
// VMware process is not a child of goldvm and outlives it.
func (d *Driver) Start(ctx context.Context, spec hypervisor.Spec) error {
	if err := checkSpec(spec); err != nil {
		return err
	}
	path := vmxPath(spec)
	if !exists(path) {
		return errdefs.Newf(errdefs.ErrConflict, "vm-not-cloned", "the VM has no .vmx (Clone it first)")
	}
	mode := "nogui"
	if !spec.Headless {
		mode = "gui"
	}
	if _, err := d.run(ctx, false, "start", path, mode); err != nil {
		return mapErr("starting the VM", err)
	}
	d.log.Info("started", "id", spec.ID, "mode", mode)
	return nil
}

// Discover waits, until ctx ends, for VMware Tools in the guest to report
// an IP address (`vmrun getGuestIPAddress <vmx> -wait`, which can wait
// forever, so it runs under ctx and is killed with its process group), and
// reads the guest OS from the .vmx. When ctx ends first the error has code
// "discovery-timeout".
func (d *Driver) Discover(ctx context.Context, spec hypervisor.Spec) (hypervisor.GuestInfo, error) {
	var info hypervisor.GuestInfo
	if err := checkSpec(spec); err != nil {
		return info, err
	}
	path := vmxPath(spec)
	if !exists(path) {
		return info, errdefs.Newf(errdefs.ErrConflict, "vm-not-cloned", "the VM has no .vmx (Clone it first)")
	}
	attempts := 0
	var lastErr error
	for {
		attempts++
		out, err := d.run(ctx, true, "getGuestIPAddress", path, "-wait")
		if err == nil {
			if ip := parseIP(out); ip != "" {
				info.IPAddress, info.IPSource = ip, api.SourceGuestAgent
				break
			}
			lastErr = fmt.Errorf("vmrun getGuestIPAddress printed %q", truncate(out, 100))
		} else {
			if ctx.Err() != nil {
				break
			}
			if isNotRunning(err) || isLocked(err) || isNotFound(err) {
				return info, mapErr("waiting for the guest's IP address", err)
			}
			// Tools not up yet (vmrun gives up early on some hosts even
			// with -wait) or a transient error: try again.
			lastErr = err
		}
		select {
		case <-ctx.Done():
		case <-time.After(d.pollInterval):
		}
		if ctx.Err() != nil {
			break
		}
	}
	if info.IPAddress == "" {
		msg := fmt.Sprintf("VMware Tools in the guest did not report an IP address in time (%d attempts)", attempts)
		if lastErr != nil {
			msg += fmt.Sprintf("; last: %v", lastErr)
		}
		return info, errdefs.New(errdefs.ErrUnavailable, "discovery-timeout", msg, ctx.Err())
	}
	if out, err := d.run(ctx, false, "checkToolsState", path); err == nil {
		d.log.Debug("tools state", "id", spec.ID, "state", out)
	}
	if f, err := vmx.ReadFile(path); err == nil {
		info.GuestOS, info.GuestOSName = guestOS(f)
		if info.GuestOS != "" {
			info.GuestOSSource = api.SourceVMX
		}
	}
	d.log.Info("discovered", "id", spec.ID, "ip", info.IPAddress, "guest_os", info.GuestOS, "guest_os_name", info.GuestOSName)
	return info, nil
}

// parseIP returns the IP address vmrun printed, or "" (vmrun prints
// "unknown" on some versions before the tools report one).
func parseIP(out string) string {
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if ip := net.ParseIP(line); ip != nil && !ip.IsUnspecified() {
			return ip.String()
		}
	}
	return ""
}

// State reports StateRunning when `vmrun list` lists the clone's .vmx and
// StateStopped otherwise (also when the VM was never cloned).
func (d *Driver) State(ctx context.Context, spec hypervisor.Spec) (hypervisor.State, error) {
	if err := checkSpec(spec); err != nil {
		return "", err
	}
	path := vmxPath(spec)
	if !exists(path) {
		return hypervisor.StateStopped, nil
	}
	running, err := d.running(ctx, path)
	if err != nil {
		return "", err
	}
	if running {
		return hypervisor.StateRunning, nil
	}
	return hypervisor.StateStopped, nil
}

// running reports whether `vmrun list` lists path. Paths are compared
// absolute and cleaned, case-insensitively on macOS and Windows.
func (d *Driver) running(ctx context.Context, path string) (bool, error) {
	out, err := d.run(ctx, false, "list")
	if err != nil {
		return false, mapErr("listing running VMs", err)
	}
	want := comparablePath(path)
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "Total running VMs") {
			continue
		}
		if comparablePath(line) == want {
			return true, nil
		}
	}
	return false, nil
}

// Destroy stops the VM (`vmrun stop soft`, bounded by Config.StopTimeout,
// then `stop hard`), deletes it (`vmrun deleteVM`) and removes the files
// VMware and the driver left in spec.Dir. A VM that is not running, or that
// was never cloned, is fine: Destroy is safe on half-made VMs and twice.
func (d *Driver) Destroy(ctx context.Context, spec hypervisor.Spec) error {
	if err := checkSpec(spec); err != nil {
		return err
	}
	path := vmxPath(spec)
	if exists(path) {
		if err := d.stop(ctx, spec, path); err != nil {
			return err
		}
		if err := d.deleteVM(ctx, spec, path); err != nil {
			return err
		}
	}
	if err := removeLeftovers(spec); err != nil {
		return errdefs.New(errdefs.ErrConflict, "vm-cleanup-failed", "cannot remove the VM's files", err)
	}
	d.log.Info("destroyed", "id", spec.ID)
	return nil
}

// stop powers the VM off: softly first, then hard; a VM that is not
// powered on is fine.
func (d *Driver) stop(ctx context.Context, spec hypervisor.Spec, path string) error {
	err := d.softThenHard(ctx, spec, "stop", path)
	if errors.Is(err, hypervisor.ErrNotRunning) {
		return nil
	}
	return err
}

// deleteVM runs `vmrun deleteVM`. VMware updates the base VM's record of
// its linked clones while doing so, so it runs under the image's lock when
// spec names the image (the manager always does; a stray directory found
// without a record does not).
func (d *Driver) deleteVM(ctx context.Context, spec hypervisor.Spec, path string) error {
	if dir, derr := d.baseDir(spec); derr == nil {
		g := d.gold(dir)
		if err := g.lock(ctx); err != nil {
			return err
		}
		defer g.unlock()
	}
	_, err := d.run(ctx, false, "deleteVM", path)
	if err == nil || isNotFound(err) {
		return nil
	}
	var ve *vmrunError
	if !errors.As(err, &ve) {
		return mapErr("deleting the VM", err)
	}
	// vmrun could not delete it (a damaged .vmx, say). If it is not
	// running, removing its files is all deleting means.
	if running, rerr := d.running(ctx, path); rerr == nil && !running && !isLocked(err) {
		d.log.Warn("vmrun deleteVM failed; removing the files directly", "id", spec.ID, "err", err)
		return nil
	}
	return mapErr("deleting the VM", err)
}

// vmwareExts are the extensions of files VMware makes for a VM.
var vmwareExts = map[string]bool{
	".vmx": true, ".vmdk": true, ".vmsd": true, ".vmxf": true, ".nvram": true,
	".vmem": true, ".vmss": true, ".vmsn": true, ".vmtx": true, ".scoreboard": true,
	".lck": true, ".log": true, ".vmx~": true,
}

// removeLeftovers removes what VMware and the driver made in spec.Dir: files
// named after the VM (<id>.*, <id>-*), VMware's own (vmware*.log, *.lck,
// disks, snapshots) and the .vmx editor's temporary files. Anything else in
// the directory is left alone.
func removeLeftovers(spec hypervisor.Spec) error {
	ents, err := os.ReadDir(spec.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		name := e.Name()
		lower := strings.ToLower(name)
		ext := filepath.Ext(lower)
		mine := strings.HasPrefix(name, spec.ID+".") || strings.HasPrefix(name, spec.ID+"-") ||
			strings.HasPrefix(name, "."+spec.ID+".vmx.tmp") ||
			(strings.HasPrefix(lower, "vmware") && (ext == ".log" || ext == ".scoreboard")) ||
			(ext != ".log" && vmwareExts[ext]) || lower == "caches"
		if !mine {
			continue
		}
		if err := os.RemoveAll(filepath.Join(spec.Dir, name)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// guestOS reads the guest's OS from the .vmx: id is its guestOS identifier
// (e.g. "other26xlinux-64"), which VMware's own tools and the original OS X
// Builder service answer as guest_os; name is readable: the pretty name
// VMware Tools records (guestInfo.detailed.data) when present, else a name
// for the identifier.
func guestOS(f *vmx.File) (id, name string) {
	id, _ = f.Get("guestOS")
	id = strings.TrimSpace(id)
	if data, ok := f.Get("guestInfo.detailed.data"); ok {
		if m := prettyName.FindStringSubmatch(data); m != nil && m[1] != "" {
			return id, m[1]
		}
	}
	return id, GuestOSName(id)
}

var prettyName = regexp.MustCompile(`prettyName='([^']*)'`)

// GuestOSName maps a .vmx guestOS identifier (e.g. "darwin23-64",
// "windows11-64", "ubuntu-64", "debian12-64") to a readable name. Unknown
// identifiers are returned as they are; "" gives "unknown".
func GuestOSName(id string) string {
	id = strings.ToLower(strings.TrimSpace(id))
	if id == "" {
		return "unknown"
	}
	base, bits, _ := strings.Cut(id, "-")
	suffix := ""
	if bits == "64" {
		suffix = " (64-bit)"
	}
	// ver returns the version digits after prefix, with a leading space.
	ver := func(prefix string) string {
		rest := strings.TrimPrefix(base, prefix)
		i := 0
		for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
			i++
		}
		if i == 0 {
			return ""
		}
		return " " + rest[:i]
	}
	has := func(prefix string) bool { return strings.HasPrefix(base, prefix) }
	switch {
	case has("darwin"):
		if v := macOSVersion(strings.TrimSpace(ver("darwin"))); v != "" {
			return v
		}
		return "macOS"
	case has("windows"):
		v := strings.TrimSpace(ver("windows"))
		if strings.Contains(base, "srv") || strings.Contains(base, "server") {
			if len(v) == 4 {
				return "Microsoft Windows Server " + v
			}
			return "Microsoft Windows Server" + suffix
		}
		switch v {
		case "11", "12":
			return "Microsoft Windows 11"
		case "9", "10":
			return "Microsoft Windows 10" + suffix
		case "8", "7":
			return "Microsoft Windows " + v + suffix
		}
		return "Microsoft Windows" + suffix
	case has("winnet"):
		return "Microsoft Windows Server 2003" + suffix
	case has("winxp"):
		return "Microsoft Windows XP" + suffix
	case has("ubuntu"):
		return "Ubuntu Linux" + suffix
	case has("debian"):
		return "Debian GNU/Linux" + ver("debian") + suffix
	case has("centos"):
		return "CentOS Linux" + ver("centos") + suffix
	case has("rhel"):
		return "Red Hat Enterprise Linux" + ver("rhel") + suffix
	case has("fedora"):
		return "Fedora Linux" + suffix
	case has("freebsd"):
		return "FreeBSD" + ver("freebsd") + suffix
	case strings.Contains(base, "linux"):
		return "Linux" + suffix
	case has("other"):
		return "Other" + suffix
	}
	return id
}

// macOSVersion maps the Darwin major version of guestOS "darwinNN" to macOS.
func macOSVersion(num string) string {
	n, err := strconv.Atoi(num)
	if err != nil {
		return ""
	}
	switch {
	case n >= 20:
		return "macOS " + strconv.Itoa(n-9) // darwin20 = macOS 11 … darwin24 = macOS 15
	case n >= 10 && n <= 19:
		return "macOS 10." + strconv.Itoa(n-4) // darwin19 = 10.15, darwin17 = 10.13
	}
	return ""
}
