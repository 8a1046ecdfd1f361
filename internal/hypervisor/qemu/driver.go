// Package qemu is goldvm's QEMU backend: linked clones as qcow2 overlays on a
// gold disk, one qemu-system-x86_64 process per VM (KVM where the host really
// has it, TCG otherwise), QMP for control and the guest agent for discovery.
//
// All per-VM state lives in the VM's directory (spec.Dir):
//
//	disk.qcow2        the overlay (backing file: the gold disk, never copied)
//	qemu.pid          QEMU's pid (written by QEMU)
//	qmp.sock          QMP for short commands (state, powerdown, screendump)
//	qmp-watch.sock    a second QMP monitor, held open by Watch for events
//	qga.sock          host end of the guest agent's virtio-serial port
//	console.log       the guest's serial console
//	qemu-stderr.log   QEMU's own messages
//	ssh-port          with user-mode networking: the host port forwarded to guest port 22
//
// so a restarted daemon reattaches to a running VM from its record alone.
// Host-level network state (dnsmasq pid and lease files) lives in
// Config.RunDir; see network.go for how each network type is built.
package qemu

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/hypervisor"
	"golang.org/x/sys/unix"
)

var (
	_ hypervisor.Driver        = (*Driver)(nil)
	_ hypervisor.Watcher       = (*Driver)(nil)
	_ hypervisor.Screenshotter = (*Driver)(nil)
	_ hypervisor.VNCer         = (*Driver)(nil)
)

// Config configures the QEMU driver. The zero value works.
type Config struct {
	// QemuBinary is the emulator, default "qemu-system-x86_64" from PATH.
	QemuBinary string
	// QemuImg is the image tool, default "qemu-img" from PATH.
	QemuImg string
	// Accel is "auto" (default), "kvm" or "tcg". auto picks KVM only if
	// /dev/kvm is usable and /proc/cpuinfo shows vmx or svm.
	Accel string
	// Machine is QEMU's machine type, default "q35".
	Machine string
	// RunDir holds host-level network state (dnsmasq pid, lease and log
	// files), e.g. <data-dir>/run. Default: <tmp>/goldvm-run.
	RunDir string
	// NATBridge and NATSubnet are the bridge for network_type nat and its
	// host address with prefix; default "goldvm0", "10.213.0.1/24".
	NATBridge, NATSubnet string
	// HostOnlyBridge and HostOnlySubnet are the same for hostonly; default
	// "goldvm1", "10.214.0.1/24".
	HostOnlyBridge, HostOnlySubnet string
	// BridgedBridge is an existing host bridge for network_type bridged.
	// Empty: bridged is refused with code "bridged-not-configured".
	BridgedBridge string
	// UserNet makes nat use QEMU user-mode networking even as root (no
	// bridge, no dnsmasq; the host reaches the guest only via hostfwd).
	UserNet bool
	// VMRoot is the directory that holds the VMs' directories, e.g.
	// <data-dir>/vms. When set, Reap only touches QEMU processes whose VM
	// directory (that of their -pidfile) lies under it, so that two goldvm
	// instances, or test runs, on one host leave each other's VMs alone.
	// Empty: Reap considers every goldvm QEMU on the host.
	VMRoot string
	// Sandbox runs QEMU under its seccomp sandbox (-sandbox on,…).
	Sandbox bool
	// RunAs is the user QEMU runs as when the driver runs as root ("":
	// root). That user owns each VM's directory, disk and tap, and needs
	// to traverse the directories above the VMs and gold images; it gets
	// the kvm group when /dev/kvm exists. Ignored when not root (QEMU runs
	// as the daemon's user).
	RunAs string
	// RunAsRange, as "FIRST-LAST", gives each VM's QEMU a user id of its
	// own from this range when the driver runs as root (group id: the same
	// number): the VM's directory, disk and console belong to it and its
	// directory is 0700, so a guest that escapes into its QEMU cannot read
	// or change another VM's disk. The ids need no passwd entries and must
	// not be used by anything else, other goldvm daemons included. A VM
	// keeps its id for its life (its directory's owner records it). Set
	// at most one of RunAs and RunAsRange.
	RunAsRange string
	// AgentWait is how long Discover waits for the guest agent's answer
	// (the OS name) once the guest's address is known from elsewhere
	// (a DHCP lease, a neighbour entry, the forwarded port); default
	// DefaultAgentWait. A guest whose agent answers in time is reported
	// as soon as it does; one without an agent is reported running this
	// long after its address is known, without a guest_os, and its
	// record is updated if the agent answers later.
	AgentWait time.Duration
	// Metadata, when set, serves each VM on the nat and hostonly bridges
	// at http://169.254.169.254/ (see metadata.go; needs nft, from the
	// nftables package). Nil: no metadata service.
	Metadata MetadataServer
	// PowerdownTimeout is how long Destroy waits for the guest to power off
	// after an ACPI powerdown before it quits QEMU; default 3s.
	PowerdownTimeout time.Duration
	// Logger receives the driver's log; default slog.Default().
	Logger *slog.Logger
}

// Driver is the QEMU backend. It is safe for concurrent use.
type Driver struct {
	cfg      Config
	log      *slog.Logger
	accel    accelChoice
	root     bool
	ip       string // path of ip(8), "" when absent
	dnsmasq  string
	iptables string
	nft      string // path of nft(8) when the metadata service is on, else ""

	runAs    *syscall.Credential // QEMU's user, nil: the daemon's (or per VM)
	uidRange uidRange            // per-VM user ids; zero: none
	uidMu    sync.Mutex          // serialises picking a VM's user id

	displayOnce sync.Once
	displays    map[string]bool

	netMu   sync.Mutex
	locksMu sync.Mutex
	locks   map[string]*vmLocks
}

type vmLocks struct {
	life sync.Mutex // Start, Destroy, Clone
	qmp  sync.Mutex // one short-lived connection to qmp.sock at a time
}

// New checks the host and returns a driver. It fails with an
// errdefs.ErrUnavailable error naming the Debian package when a required
// program is missing.
func New(cfg Config) (*Driver, error) {
	if cfg.QemuBinary == "" {
		cfg.QemuBinary = "qemu-system-x86_64"
	}
	if cfg.QemuImg == "" {
		cfg.QemuImg = "qemu-img"
	}
	if cfg.NATBridge == "" {
		cfg.NATBridge = "goldvm0"
	}
	if cfg.NATSubnet == "" {
		cfg.NATSubnet = "10.213.0.1/24"
	}
	if cfg.HostOnlyBridge == "" {
		cfg.HostOnlyBridge = "goldvm1"
	}
	if cfg.HostOnlySubnet == "" {
		cfg.HostOnlySubnet = "10.214.0.1/24"
	}
	if cfg.Machine == "" {
		cfg.Machine = "q35"
	}
	if cfg.AgentWait <= 0 {
		cfg.AgentWait = DefaultAgentWait
	}
	if cfg.PowerdownTimeout <= 0 {
		cfg.PowerdownTimeout = 3 * time.Second
	}
	if cfg.RunDir == "" {
		cfg.RunDir = filepath.Join(os.TempDir(), "goldvm-run")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	d := &Driver{cfg: cfg, log: cfg.Logger.With("backend", "qemu"), root: os.Geteuid() == 0, locks: map[string]*vmLocks{}}

	missing := func(prog, pkg string) error {
		return errdefs.Newf(errdefs.ErrUnavailable, "hypervisor-not-installed",
			"%s not found: install it with `apt-get install -y --no-install-recommends %s`", prog, pkg)
	}
	var err error
	if d.cfg.QemuBinary, err = lookPath(cfg.QemuBinary); err != nil {
		return nil, missing(cfg.QemuBinary, "qemu-system-x86")
	}
	if d.cfg.QemuImg, err = lookPath(cfg.QemuImg); err != nil {
		return nil, missing(cfg.QemuImg, "qemu-utils")
	}
	if d.bridging() {
		if d.ip, err = lookPath("ip"); err != nil {
			return nil, missing("ip", "iproute2")
		}
		if d.dnsmasq, err = lookPath("dnsmasq"); err != nil {
			return nil, missing("dnsmasq", "dnsmasq-base")
		}
		if d.iptables, err = lookPath("iptables"); err != nil {
			d.iptables = ""
			d.log.Warn("iptables not found (apt-get install iptables): nat guests will not reach beyond the host")
		}
		if err := os.MkdirAll(cfg.RunDir, 0o700); err != nil {
			return nil, fmt.Errorf("run dir: %w", err)
		}
		if d.nft, err = lookPath("nft"); err != nil {
			d.nft = ""
			d.log.Warn("nft not found (apt-get install nftables): VMs on the nat and hostonly bridges can reach each other, and there is no metadata service at " + MetadataAddr)
		}
	} else if !d.root {
		d.log.Info("not running as root: nat uses QEMU user-mode networking (guest 10.0.2.15, reachable from the host only through the forwarded SSH port); hostonly and bridged are unavailable")
	}

	if cfg.RunAs != "" && cfg.RunAsRange != "" {
		return nil, errdefs.Newf(errdefs.ErrInvalid, "invalid-qemu-user", "give QEMU one user (%s) or a range of user ids (%s), not both", cfg.RunAs, cfg.RunAsRange)
	}
	if cfg.RunAs != "" {
		if !d.root {
			d.log.Info("not running as root: QEMU runs as the daemon's user", "run_as", cfg.RunAs)
		} else if d.runAs, err = lookupCredential(cfg.RunAs); err != nil {
			return nil, errdefs.New(errdefs.ErrInvalid, "invalid-qemu-user", "cannot run QEMU as "+cfg.RunAs, err)
		}
	}
	if cfg.RunAsRange != "" {
		r, err := parseUIDRange(cfg.RunAsRange)
		if err != nil {
			return nil, errdefs.New(errdefs.ErrInvalid, "invalid-qemu-user", "cannot give each VM a user id", err)
		}
		if !d.root {
			d.log.Info("not running as root: QEMU runs as the daemon's user", "run_as_range", cfg.RunAsRange)
		} else {
			d.uidRange = r
		}
	}

	cpuinfo, _ := os.ReadFile("/proc/cpuinfo")
	d.accel, err = chooseAccel(cfg.Accel, kvmUsable("/dev/kvm"), string(cpuinfo))
	if err != nil {
		return nil, errdefs.New(errdefs.ErrInvalid, "invalid-accel", "cannot use the requested accelerator", err)
	}
	d.log.Info("accelerator", "accel", d.accel.Name, "why", d.accel.Why)

	if cfg.Sandbox {
		out, _ := exec.Command(d.cfg.QemuBinary, "-help").CombinedOutput()
		if !bytes.Contains(out, []byte("\n-sandbox ")) {
			return nil, errdefs.Newf(errdefs.ErrUnavailable, "sandbox-unsupported",
				"%s was built without -sandbox (seccomp) support", d.cfg.QemuBinary)
		}
	}
	return d, nil
}

// Name returns "qemu".
func (d *Driver) Name() string { return "qemu" }

// Accel returns the accelerator in use, "kvm" or "tcg".
func (d *Driver) Accel() string { return d.accel.Name }

// Close releases the driver. Running VMs, their taps, bridges and dnsmasq
// keep running; a new driver reattaches to them. The driver holds no
// long-lived resources between calls, so there is nothing else to stop.
func (d *Driver) Close() {}

func (d *Driver) vmLock(id string) *vmLocks {
	d.locksMu.Lock()
	defer d.locksMu.Unlock()
	l := d.locks[id]
	if l == nil {
		l = &vmLocks{}
		d.locks[id] = l
	}
	return l
}

var idRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

func checkSpec(spec hypervisor.Spec) error {
	if !idRe.MatchString(spec.ID) {
		return errdefs.Newf(errdefs.ErrInvalid, "invalid-vm-id", "VM id %q is not usable as a QEMU name", spec.ID)
	}
	if !filepath.IsAbs(spec.Dir) {
		return errdefs.Newf(errdefs.ErrInvalid, "invalid-vm-dir", "VM directory %q is not absolute", spec.Dir)
	}
	return nil
}

// run runs a program and returns its stdout; the error carries stderr.
func (d *Driver) run(ctx context.Context, bin string, args ...string) ([]byte, error) {
	return d.runEnv(ctx, nil, bin, args...)
}

// runEnv is run with the environment env (nil: the daemon's).
func (d *Driver) runEnv(ctx context.Context, env []string, bin string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(stdout.String())
		}
		return stdout.Bytes(), fmt.Errorf("%s %s: %w: %s", filepath.Base(bin), strings.Join(args, " "), err, tail(msg, 1000))
	}
	return stdout.Bytes(), nil
}

// tail returns the last n bytes of s.
func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

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
	if err := checkGold(spec.GoldDisk); err != nil {
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
	if _, err := d.run(ctx, d.cfg.QemuImg, "create", "-q", "-u", "-f", "qcow2", "-b", gold.Path, "-F", gold.Format,
		tmp, strconv.FormatInt(gold.VirtualSize, 10)); err != nil {
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

func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// livePID returns the pid of VM spec's QEMU if it runs.
func (d *Driver) livePID(spec hypervisor.Spec) (int, bool) {
	pid, ok := readPID(p(spec.Dir, filePID))
	if !ok || !isVMProcess(pid, spec.ID) {
		return 0, false
	}
	return pid, true
}

// availableDisplays lists QEMU's -display backends.
func (d *Driver) availableDisplays() map[string]bool {
	d.displayOnce.Do(func() {
		d.displays = map[string]bool{}
		out, _ := exec.Command(d.cfg.QemuBinary, "-display", "help").Output()
		for _, l := range strings.Split(string(out), "\n") {
			if f := strings.Fields(l); len(f) == 1 {
				d.displays[f[0]] = true
			}
		}
	})
	return d.displays
}

// display picks the -display backend for a VM.
func (d *Driver) display(spec hypervisor.Spec) string {
	if spec.Headless {
		return "none"
	}
	if os.Getenv("DISPLAY") == "" && os.Getenv("WAYLAND_DISPLAY") == "" {
		d.log.Info("GUI requested but there is no DISPLAY; running headless", "vm", spec.ID)
		return "none"
	}
	ds := d.availableDisplays()
	for _, c := range []string{"gtk", "sdl"} {
		if ds[c] {
			return c
		}
	}
	d.log.Info("GUI requested but QEMU has no gtk/sdl display (apt-get install qemu-system-gui); running headless", "vm", spec.ID)
	return "none"
}

// Start boots the clone. QEMU is started in its own session (setsid) with
// no pipe to the daemon, so it outlives the daemon; a restarted daemon finds
// it again through qemu.pid. goldvm does not use -daemonize because QEMU's
// seccomp sandbox (spawn=deny) forbids the fork that -daemonize does; Start
// instead waits until QMP answers query-status, and reports QEMU's stderr if
// the process exits first. Start on a running VM just checks QMP.
func (d *Driver) Start(ctx context.Context, spec hypervisor.Spec) error {
	if err := checkSpec(spec); err != nil {
		return err
	}
	if spec.MemoryMiB <= 0 || spec.CPUs < 0 {
		return errdefs.Newf(errdefs.ErrInvalid, "invalid-size", "invalid VM size: %d CPUs, %d MiB", spec.CPUs, spec.MemoryMiB)
	}
	np, err := d.plan(spec)
	if err != nil {
		return err
	}
	l := d.vmLock(spec.ID)
	l.life.Lock()
	defer l.life.Unlock()

	if pid, ok := d.livePID(spec); ok {
		d.log.Debug("already running", "vm", spec.ID, "pid", pid)
		return d.waitQMP(ctx, spec, pid, nil)
	}
	if _, err := os.Stat(p(spec.Dir, fileDisk)); err != nil {
		return errdefs.New(errdefs.ErrConflict, "vm-disk-missing", "the VM has no disk (Clone it first)", err)
	}
	if err := checkGold(spec.GoldDisk); err != nil {
		return err
	}
	for _, f := range []string{fileQMP, fileQMPWatch, fileQGA, filePID, fileSSHPort, fileVNC} {
		os.Remove(p(spec.Dir, f))
	}
	if err := d.setupNetwork(ctx, spec.ID, np); err != nil {
		return err
	}
	if err := d.guardVM(ctx, spec, np); err != nil {
		return netErr(err)
	}
	for _, f := range []string{fileConsole} {
		if fh, err := os.OpenFile(p(spec.Dir, f), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600); err == nil {
			fh.Close()
		}
	}
	// An unprivileged QEMU creates its sockets and pid file in the VM's
	// directory and opens the disk and console log there.
	cred, err := d.credFor(spec)
	if err != nil {
		return err
	}
	files := []string{spec.Dir, p(spec.Dir, fileDisk), p(spec.Dir, fileConsole)}
	seed, err := d.writeSeed(spec)
	if err != nil {
		return err
	}
	if seed != "" {
		files = append(files, seed)
	}
	for _, f := range files {
		if err := giveTo(cred, f); err != nil {
			return err
		}
	}
	var hw api.Machine
	if spec.Machine != nil {
		hw = *spec.Machine
	}
	fwCode, fwVars, err := d.firmware(spec, hw, cred)
	if err != nil {
		return err
	}
	errf, err := os.OpenFile(p(spec.Dir, fileStderr), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	lp := launchParams{
		ID: spec.ID, Dir: spec.Dir, CPUs: spec.CPUs, MemoryMiB: spec.MemoryMiB,
		Machine: d.cfg.Machine, Accel: d.accel.Args, Display: d.display(spec),
		Sandbox: d.cfg.Sandbox, MAC: macOf(spec), Net: np,
		GoldPath: spec.GoldDisk.Path, GoldFormat: spec.GoldDisk.Format, Seed: seed,
		HW: hw, FirmwareCode: fwCode, FirmwareVars: fwVars,
		Kernel: spec.Kernel, Initrd: spec.Initrd, Append: spec.Append, CDROMs: spec.CDROMs,
	}
	var extra []*os.File
	if cred != nil && !np.User {
		// An unprivileged QEMU cannot open a tap: hand it one, as
		// libvirt does.
		tap, err := openTap(np.Tap)
		if err != nil {
			errf.Close()
			return netErr(err)
		}
		defer tap.Close()
		extra, lp.TapFD = []*os.File{tap}, 3
	}
	args := buildArgs(lp)
	// Not CommandContext: the VM must outlive the request that started it.
	cmd := exec.Command(d.cfg.QemuBinary, args...)
	cmd.ExtraFiles = extra
	cmd.Dir = spec.Dir
	cmd.Stdout, cmd.Stderr = errf, errf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Credential: cred}
	d.log.Debug("starting qemu", "vm", spec.ID, "args", args)
	err = cmd.Start()
	errf.Close()
	if err != nil {
		return errdefs.New(errdefs.ErrUnavailable, "qemu-start-failed", "cannot run QEMU", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // reaps it while this daemon lives
	if err := d.waitQMP(ctx, spec, cmd.Process.Pid, exited); err != nil {
		cmd.Process.Kill()
		return err
	}
	for _, f := range []string{fileQMP, fileQMPWatch, fileQGA, filePID, fileVNC} {
		os.Chmod(p(spec.Dir, f), 0o600)
	}
	if np.User {
		if port, err := d.userNetSSHPort(ctx, spec); err != nil {
			d.log.Warn("cannot learn the forwarded SSH port", "vm", spec.ID, "err", err)
		} else {
			writeFileAtomic(p(spec.Dir, fileSSHPort), []byte(strconv.Itoa(port)+"\n"))
		}
	}
	d.log.Info("started", "vm", spec.ID, "pid", cmd.Process.Pid, "accel", d.accel.Name, "network", np.Kind, "tap", np.Tap, "usernet", np.User)
	return nil
}

// startErr turns QEMU's stderr into an error.
func startErr(dir string, waitErr error) error {
	b, _ := os.ReadFile(p(dir, fileStderr))
	msg := strings.TrimSpace(tail(string(b), 2000))
	cause := fmt.Errorf("qemu exited (%v): %s", waitErr, msg)
	if isLockError(msg) {
		return lockedErr(cause)
	}
	return errdefs.New(errdefs.ErrUnavailable, "qemu-start-failed", "QEMU exited while starting", cause)
}

// waitQMP waits until QMP on qmp.sock answers query-status. exited, if not
// nil, reports the process's exit.
func (d *Driver) waitQMP(ctx context.Context, spec hypervisor.Spec, pid int, exited <-chan error) error {
	var last error
	for {
		if exited != nil {
			select {
			case err := <-exited:
				return startErr(spec.Dir, err)
			default:
			}
		} else if !isVMProcess(pid, spec.ID) {
			return errdefs.New(errdefs.ErrUnavailable, "qemu-start-failed", "QEMU exited", hypervisor.ErrNotRunning)
		}
		_, err := d.queryStatus(ctx, spec)
		if err == nil {
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			return errdefs.New(errdefs.ErrUnavailable, "qemu-start-timeout",
				"QEMU did not answer on QMP in time", fmt.Errorf("%w (last: %v)", ctx.Err(), last))
		case err := <-exitedOrNil(exited):
			return startErr(spec.Dir, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func exitedOrNil(c <-chan error) <-chan error {
	if c == nil {
		return nil
	}
	return c
}

// withQMP runs fn on a fresh connection to qmp.sock, one at a time per VM
// (the socket serves one client at a time).
func (d *Driver) withQMP(ctx context.Context, spec hypervisor.Spec, fn func(q *qmpConn) error) error {
	l := d.vmLock(spec.ID)
	l.qmp.Lock()
	defer l.qmp.Unlock()
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	q, err := dialQMP(dctx, p(spec.Dir, fileQMP))
	cancel()
	if err != nil {
		return err
	}
	defer q.Close()
	return fn(q)
}

func (d *Driver) queryStatus(ctx context.Context, spec hypervisor.Spec) (qmpStatus, error) {
	var st qmpStatus
	err := d.withQMP(ctx, spec, func(q *qmpConn) error {
		ret, err := q.Execute(ctx, "query-status", nil)
		if err != nil {
			return err
		}
		return json.Unmarshal(ret, &st)
	})
	return st, err
}

var usernetFwdRe = regexp.MustCompile(`HOST_FORWARD\]\s+\d+\s+\S+\s+(\d+)\s+\S+\s+22\b`)

// userNetSSHPort asks QEMU which host port hostfwd picked.
func (d *Driver) userNetSSHPort(ctx context.Context, spec hypervisor.Spec) (int, error) {
	var out string
	err := d.withQMP(ctx, spec, func(q *qmpConn) error {
		ret, err := q.Execute(ctx, "human-monitor-command", map[string]any{"command-line": "info usernet"})
		if err != nil {
			return err
		}
		return json.Unmarshal(ret, &out)
	})
	if err != nil {
		return 0, err
	}
	m := usernetFwdRe.FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("no SSH forward in %q", out)
	}
	return strconv.Atoi(m[1])
}

// SSHForwardPort returns the loopback port forwarded to the guest's port 22
// for a VM on user-mode networking (recorded at Start in spec.Dir/ssh-port).
func SSHForwardPort(dir string) (int, error) {
	b, err := os.ReadFile(p(dir, fileSSHPort))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// State reports running, paused or stopped.
func (d *Driver) State(ctx context.Context, spec hypervisor.Spec) (hypervisor.State, error) {
	if err := checkSpec(spec); err != nil {
		return "", err
	}
	if _, ok := d.livePID(spec); !ok {
		return hypervisor.StateStopped, nil
	}
	st, err := d.queryStatus(ctx, spec)
	if err != nil {
		if _, ok := d.livePID(spec); !ok {
			return hypervisor.StateStopped, nil
		}
		return "", errdefs.New(errdefs.ErrUnavailable, "qmp-unavailable", "QEMU runs but does not answer on QMP", err)
	}
	switch st.Status {
	case "running":
		return hypervisor.StateRunning, nil
	case "shutdown":
		return hypervisor.StateStopped, nil
	}
	return hypervisor.StatePaused, nil
}

// Watch blocks until the VM's QEMU process ends. It holds a connection to the
// second QMP monitor (qmp-watch.sock) for the SHUTDOWN event's reason and
// polls the pid every second as a backstop.
func (d *Driver) Watch(ctx context.Context, spec hypervisor.Spec) (string, error) {
	if err := checkSpec(spec); err != nil {
		return "", err
	}
	pid, ok := d.livePID(spec)
	if !ok {
		return "not running", nil
	}
	// After a daemon restart, this is where a running VM's metadata
	// service comes back.
	if np, err := d.plan(spec); err == nil && d.metadataEnabled(np) && !d.cfg.Metadata.Serving(spec.ID) {
		if err := d.guardVM(ctx, spec, np); err != nil {
			d.log.Warn("no metadata service for the VM", "vm", spec.ID, "err", err)
		}
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var mu sync.Mutex
	reason := ""
	note := func(ev qmpEvent) {
		if ev.Event != "SHUTDOWN" {
			return
		}
		var data struct {
			Reason string `json:"reason"`
		}
		json.Unmarshal(ev.Data, &data)
		mu.Lock()
		reason = data.Reason
		mu.Unlock()
	}
	eof := make(chan struct{})
	go func() {
		// Connect (retrying while QEMU lives) and read events until EOF.
		for wctx.Err() == nil {
			dctx, dcancel := context.WithTimeout(wctx, 5*time.Second)
			q, err := dialQMP(dctx, p(spec.Dir, fileQMPWatch))
			dcancel()
			if err != nil {
				select {
				case <-wctx.Done():
					return
				case <-time.After(time.Second):
					continue
				}
			}
			stop := context.AfterFunc(wctx, func() { q.Close() })
		read:
			for {
				select {
				case ev := <-q.Events():
					note(ev)
				case <-q.Done():
					break read
				}
			}
			stop()
			// The reader queues every event before it ends: drain them.
		drain:
			for {
				select {
				case ev := <-q.Events():
					note(ev)
				default:
					break drain
				}
			}
			if wctx.Err() == nil {
				close(eof)
			}
			return
		}
	}()
	result := func() string {
		mu.Lock()
		defer mu.Unlock()
		if reason != "" {
			return reason
		}
		return "process exited"
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-eof:
			// QEMU closes QMP only as it exits; wait for the process to go.
			if waitGone(ctx, pid, spec.ID, 30*time.Second) {
				return result(), nil
			}
			eof = nil
		case <-tick.C:
			if !isVMProcess(pid, spec.ID) {
				// Give the event reader a moment to record the SHUTDOWN
				// reason that may still be in flight.
				select {
				case <-eof:
				case <-time.After(time.Second):
				case <-ctx.Done():
				}
				return result(), nil
			}
		}
	}
}

// consoleKept is how much of the console's end Destroy keeps.
const consoleKept = 64 << 10

// Console returns the last limit bytes of the serial console: console.log
// while the VM has one, else the tail Destroy kept.
func (d *Driver) Console(ctx context.Context, spec hypervisor.Spec, limit int64) ([]byte, error) {
	if err := checkSpec(spec); err != nil {
		return nil, err
	}
	for _, f := range []string{fileConsole, fileConsoleEnd} {
		b, err := readTail(p(spec.Dir, f), limit)
		if err == nil {
			return b, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("reading the console: %w", err)
		}
	}
	return []byte{}, nil
}

// readTail returns the last limit bytes of the file at path.
func readTail(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	off := max(0, fi.Size()-limit)
	b := make([]byte, fi.Size()-off)
	n, err := f.ReadAt(b, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return b[:n], nil
}

// Screenshot returns a PNG of the VM's display (QMP screendump).
func (d *Driver) Screenshot(ctx context.Context, spec hypervisor.Spec) ([]byte, error) {
	if err := checkSpec(spec); err != nil {
		return nil, err
	}
	if _, ok := d.livePID(spec); !ok {
		return nil, errdefs.New(errdefs.ErrConflict, "vm-not-running", "the VM is not running", hypervisor.ErrNotRunning)
	}
	var rnd [8]byte
	rand.Read(rnd[:])
	file := p(spec.Dir, "screendump-"+hex.EncodeToString(rnd[:])+".png")
	defer os.Remove(file)
	err := d.withQMP(ctx, spec, func(q *qmpConn) error {
		_, err := q.Execute(ctx, "screendump", map[string]any{"filename": file, "format": "png"})
		return err
	})
	if err != nil {
		return nil, errdefs.New(errdefs.ErrUnavailable, "screenshot-failed", "QEMU could not take a screenshot", err)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("screenshot: %w", err)
	}
	return b, nil
}

// Destroy powers the VM off (ACPI powerdown, then QMP quit, then SIGKILL),
// removes its tap and every file it made in spec.Dir. It is idempotent and
// safe on a half-made VM. If another process holds the overlay locked it
// fails with code "vm-locked" and removes nothing.
func (d *Driver) Destroy(ctx context.Context, spec hypervisor.Spec) error {
	if err := checkSpec(spec); err != nil {
		return err
	}
	l := d.vmLock(spec.ID)
	l.life.Lock()
	defer l.life.Unlock()

	if pid, ok := d.livePID(spec); ok {
		if err := d.stop(ctx, spec, pid); err != nil {
			return err
		}
	}
	// A QEMU that has just died (killed or crashed) is no longer "live" once
	// its memory is gone, but holds the disk's lock until its files are
	// closed too: wait for that, rather than report the disk locked.
	if pid, ok := readPID(p(spec.Dir, filePID)); ok {
		waitExited(ctx, pid, 10*time.Second)
	}
	if err := d.stopMetadata(context.WithoutCancel(ctx), spec); err != nil {
		return errdefs.New(errdefs.ErrUnavailable, "network-cleanup-failed", "cannot remove the VM's metadata rules", err)
	}
	if d.bridging() {
		if err := d.removeTap(context.WithoutCancel(ctx), tapFor(spec.ID)); err != nil {
			return errdefs.New(errdefs.ErrUnavailable, "network-cleanup-failed", "cannot remove the VM's tap device", err)
		}
	}
	disk := p(spec.Dir, fileDisk)
	if _, err := os.Stat(disk); err == nil {
		if _, err := d.qemuImgInfo(ctx, disk, "qcow2", false); err != nil && isLockError(err.Error()) {
			return lockedErr(err)
		}
	}
	// What the guest last printed says why a creation failed (a kernel
	// panic, a guest that never got an address): keep its tail next to
	// the record, which goes with the VM's directory.
	if tail, err := readTail(p(spec.Dir, fileConsole), consoleKept); err == nil {
		if err := writeFileAtomic(p(spec.Dir, fileConsoleEnd), tail); err != nil {
			d.log.Warn("cannot keep the console's tail", "vm", spec.ID, "err", err)
		}
	}
	var errs []error
	files := []string{fileDisk, fileDiskTmp, fileQMP, fileQMPWatch, fileQGA, filePID, fileConsole, fileStderr, fileSSHPort, fileSSHPort + ".tmp", fileSeed, fileSeed + ".tmp", fileMetadataPort, fileMetadataPort + ".tmp", fileVNC, fileEFIVars, fileEFIVars + ".tmp"}
	shots, _ := filepath.Glob(p(spec.Dir, screendumpGlob))
	for _, f := range files {
		shots = append(shots, p(spec.Dir, f))
	}
	for _, f := range shots {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("destroy %s: %w", spec.ID, err)
	}
	return nil
}

// stop ends a running QEMU: powerdown, quit, SIGKILL.
func (d *Driver) stop(ctx context.Context, spec hypervisor.Spec, pid int) error {
	try := func(cmd string) {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		err := d.withQMP(cctx, spec, func(q *qmpConn) error {
			_, err := q.Execute(cctx, cmd, nil)
			return err
		})
		if err != nil {
			d.log.Debug("qmp during destroy", "vm", spec.ID, "cmd", cmd, "err", err)
		}
	}
	try("system_powerdown")
	if waitGone(ctx, pid, spec.ID, d.cfg.PowerdownTimeout) {
		d.log.Info("guest powered off", "vm", spec.ID)
		return nil
	}
	try("quit")
	if waitGone(ctx, pid, spec.ID, 3*time.Second) {
		return nil
	}
	d.log.Warn("QEMU ignored quit; killing it", "vm", spec.ID, "pid", pid)
	if err := killPID(pid); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill qemu %d: %w", pid, err)
	}
	if waitGone(context.WithoutCancel(ctx), pid, spec.ID, 10*time.Second) {
		return nil
	}
	return errdefs.Newf(errdefs.ErrUnavailable, "vm-stop-failed", "QEMU process %d did not exit after SIGKILL", pid)
}

// Reap kills goldvm QEMU processes (those named goldvm-<id>) whose VM id
// known reports false, limited to VMs under Config.VMRoot when that is set,
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
// Config.VMRoot (always true when VMRoot is empty).
func (d *Driver) inVMRoot(args []string) bool {
	if d.cfg.VMRoot == "" {
		return true
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

// openTap attaches to the persistent tap device name and returns its file
// (IFF_TAP, no packet information, with virtio-net headers).
func openTap(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("attaching to tap %s: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun:"+name), nil
}
