// Package vmware is goldvm's VMware Fusion / Workstation backend. It drives
// VMware through the vmrun command-line tool: a gold image is a VM folder
// (a .vmx and its .vmdk disks), each VM is a linked clone of a snapshot of
// it (`vmrun clone … linked`), and the clone's .vmx is edited with package
// vmx before it is started.
//
// The backend is tested against vmrun's command-line contract with a
// stand-in vmrun (testdata/fakevmrun), not against a live VMware host; see
// README.md for how to check it on a Mac with Fusion.
package vmware

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/hypervisor"
)

// Config configures the VMware driver. The zero value works on a host with
// VMware installed in its standard place.
type Config struct {
	// VmrunPath is the vmrun executable. Empty: $VMRUN_PATH, then vmrun on
	// $PATH, then the standard install locations (see StandardVmrunPaths).
	VmrunPath string
	// HostType is vmrun's -T argument: "fusion", "ws" or "player". Empty:
	// "fusion" on macOS, "ws" elsewhere.
	HostType string
	// StateDir is the driver's own directory (goldvm serve:
	// <data-dir>/vmware). It holds one directory per gold image, named by
	// the image key, with the base VM that is snapshotted and cloned from
	// (see Driver.Clone); the gold image itself is never written. Required
	// for Clone.
	StateDir string
	// SnapshotName is the snapshot made once in each base VM and cloned
	// from. Empty: "goldvm-base".
	SnapshotName string
	// StopTimeout bounds the graceful `vmrun stop … soft` in Destroy before
	// the VM is powered off hard. Zero: 30 seconds.
	StopTimeout time.Duration
	// Logger receives the driver's logs. Nil: slog.Default().
	Logger *slog.Logger
}

// DefaultSnapshotName is the gold VM snapshot used when Config.SnapshotName
// is empty.
const DefaultSnapshotName = "goldvm-base"

// StandardVmrunPaths are the places vmrun is looked for when it is neither
// configured nor on $PATH, in order.
var StandardVmrunPaths = []string{
	"/Applications/VMware Fusion.app/Contents/Library/vmrun",
	`C:\Program Files (x86)\VMware\VMware Workstation\vmrun.exe`,
	`C:\Program Files\VMware\VMware Workstation\vmrun.exe`,
	"/usr/bin/vmrun",
	"/usr/lib/vmware/bin/vmrun",
}

// Driver is the VMware backend. It implements hypervisor.Driver. A Driver
// is safe for concurrent use.
type Driver struct {
	cfg   Config
	vmrun string
	log   *slog.Logger

	// env is added to vmrun's environment (tests use it to steer the
	// stand-in vmrun).
	env []string
	// pollInterval is the pause between two discovery attempts.
	pollInterval time.Duration
	// cmdTimeout bounds a single vmrun call other than the waiting
	// getGuestIPAddress.
	cmdTimeout time.Duration
	// waitDelay is how long a killed vmrun's output pipes are waited for.
	waitDelay time.Duration

	mu    sync.Mutex
	golds map[string]*goldState // by comparable base VM directory
}

// goldState serializes the operations on one gold image's base VM and
// remembers that its snapshot exists.
type goldState struct {
	sem      chan struct{} // holds one token while an operation runs
	snapshot bool          // guarded by sem
}

// lock waits for the gold VM to be free, or for ctx to end.
func (g *goldState) lock(ctx context.Context) error {
	select {
	case g.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for another operation on the gold VM: %w", ctx.Err())
	}
}

// unlock frees the gold VM.
func (g *goldState) unlock() { <-g.sem }

// The contract and the optional capabilities the driver has.
var (
	_ hypervisor.Driver = (*Driver)(nil)
	_ hypervisor.Reaper = (*Driver)(nil)
)

// New returns a Driver, after finding vmrun. It fails with a clear error,
// naming every place it looked, when vmrun is not installed, so that the
// daemon fails at start-up rather than at the first request.
func New(cfg Config) (*Driver, error) {
	if cfg.HostType == "" {
		if runtime.GOOS == "darwin" {
			cfg.HostType = "fusion"
		} else {
			cfg.HostType = "ws"
		}
	}
	switch cfg.HostType {
	case "fusion", "ws", "player":
	default:
		return nil, errdefs.Newf(errdefs.ErrInvalid, "invalid-host-type",
			"VMware host type %q: use fusion, ws or player", cfg.HostType)
	}
	if cfg.SnapshotName == "" {
		cfg.SnapshotName = DefaultSnapshotName
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	path, err := findVmrun(cfg.VmrunPath, os.Getenv("VMRUN_PATH"), StandardVmrunPaths)
	if err != nil {
		return nil, err
	}
	d := &Driver{
		cfg:          cfg,
		vmrun:        path,
		log:          cfg.Logger.With("backend", "vmware"),
		pollInterval: 2 * time.Second,
		cmdTimeout:   10 * time.Minute,
		waitDelay:    2 * time.Second,
		golds:        map[string]*goldState{},
	}
	d.log.Info("using vmrun", "path", path, "host_type", cfg.HostType)
	return d, nil
}

// Name returns "vmware".
func (d *Driver) Name() string { return "vmware" }

// VmrunPath returns the vmrun executable the driver runs.
func (d *Driver) VmrunPath() string { return d.vmrun }

// findVmrun locates vmrun: configured, then env, then PATH, then the
// standard paths.
func findVmrun(configured, env string, standard []string) (string, error) {
	usable := func(p string) error {
		st, err := os.Stat(p)
		if err != nil {
			return err
		}
		if st.IsDir() {
			return errors.New("is a directory")
		}
		if runtime.GOOS != "windows" && st.Mode().Perm()&0o111 == 0 {
			return errors.New("is not executable")
		}
		return nil
	}
	if configured != "" {
		if err := usable(configured); err != nil {
			return "", errdefs.New(errdefs.ErrUnavailable, "hypervisor-not-installed",
				fmt.Sprintf("vmrun not usable at the configured path %q", configured), err)
		}
		return configured, nil
	}
	if env != "" {
		if err := usable(env); err != nil {
			return "", errdefs.New(errdefs.ErrUnavailable, "hypervisor-not-installed",
				fmt.Sprintf("vmrun not usable at $VMRUN_PATH %q", env), err)
		}
		return env, nil
	}
	if p, err := exec.LookPath("vmrun"); err == nil {
		if abs, err := filepath.Abs(p); err == nil {
			p = abs
		}
		return p, nil
	}
	for _, p := range standard {
		if usable(p) == nil {
			return p, nil
		}
	}
	return "", errdefs.Newf(errdefs.ErrUnavailable, "hypervisor-not-installed",
		"vmrun not found: VMware Fusion or Workstation is not installed, or vmrun is elsewhere. "+
			"Looked at the configured path (empty), $VMRUN_PATH (empty), vmrun on $PATH, and %s. "+
			"Install VMware Fusion/Workstation or pass its vmrun path (--vmrun or VMRUN_PATH)",
		strings.Join(quoteAll(standard), ", "))
}

func quoteAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = fmt.Sprintf("%q", s)
	}
	return out
}

// gold returns the state of the base VM in dir.
func (d *Driver) gold(dir string) *goldState {
	k := comparablePath(dir)
	d.mu.Lock()
	defer d.mu.Unlock()
	g := d.golds[k]
	if g == nil {
		g = &goldState{sem: make(chan struct{}, 1)}
		d.golds[k] = g
	}
	return g
}

// comparablePath returns a form of p for equality tests: absolute, cleaned
// and, on the case-insensitive file systems of macOS and Windows, folded.
func comparablePath(p string) string {
	if abs, err := filepath.Abs(p); err == nil {
		p = abs
	}
	p = filepath.Clean(p)
	if runtime.GOOS == "darwin" || runtime.GOOS == "windows" {
		p = strings.ToLower(p)
	}
	return p
}
