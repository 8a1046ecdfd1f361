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
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/hypervisor"
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
	// TemplateDir holds the warm-start templates (see template.go), e.g.
	// <data-dir>/templates; this driver owns it. Empty: no templates.
	TemplateDir string
	// CrashPoint, when set, is called at CrashRestoring in every warm
	// start. Crash tests set it to kill the daemon there; nil in normal
	// operation.
	CrashPoint func(point string)
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

	netMu sync.Mutex
	// netReady is, per bridge goldvm keeps, what setupNetwork last
	// found in place (under netMu): a VM start then skips what is still
	// so, sparing it a handful of ip and iptables processes.
	netReady map[string]bridgeState
	// warmInfo is what Discover answers for VMs just started from a
	// template with a reserved address, until it is asked once.
	warmMu   sync.Mutex
	warmInfo map[string]hypervisor.GuestInfo
	// warmStarting counts the warm starts in progress: the clock's
	// refinement after one waits until none is (see newIdentity).
	warmStarting atomic.Int32
	// sealed holds, per template directory, the sealed memfd copy of its
	// RAM that QEMUs under a user id of their own map (see memfd.go).
	sealedMu sync.Mutex
	sealed   map[string]*os.File
	locksMu  sync.Mutex
	locks    map[string]*vmLocks
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
