// Package fakedriver is an in-memory implementation of the hypervisor
// driver contract, for fast tests of what drives a driver (vm.Manager). It
// passes the same conformance suite as the real drivers
// (internal/hypervisor/drivertest).
//
// A Host plays the machine the hypervisor runs on: its "processes" (the
// running machines) outlive any one Driver, as QEMU and VMware processes
// outlive the daemon, so a new Driver of the same Host reattaches. Per-VM
// state lives on disk in Spec.Dir, as the contract requires: Clone writes
// <id>.clone (naming the gold file it is a clone of), Start writes
// console.log. The gold image is only read.
//
// Host.Hook lets a test fail or hold any call, at the moment it is made.
package fakedriver

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/hypervisor"
)

// Operations, as Hook and Calls name them.
const (
	OpClone    = "clone"
	OpStart    = "start"
	OpDiscover = "discover"
	OpState    = "state"
	OpDestroy  = "destroy"
	OpWatch    = "watch"
)

// consoleName is the file in Spec.Dir that holds the serial console.
const consoleName = "console.log"

// Host is the in-memory hypervisor host shared by Driver instances. Its
// zero value is not usable; call NewHost.
type Host struct {
	// Hook, when set, is called at the start of every Clone, Start,
	// Discover, State, Destroy and Watch with the operation's name (the
	// Op constants); a non-nil error is that call's result. It may block,
	// and should then end with ctx. Set it before the Host is used.
	Hook func(ctx context.Context, op string, spec hypervisor.Spec) error
	// Refuse maps network types to the error SupportsNetwork gives them.
	// Set it before the Host is used.
	Refuse map[string]error

	mu       sync.Mutex
	machines map[string]*machine // running machines, by VM id
	reasons  map[string]string   // why the last machine of a VM id stopped
	calls    map[string]int      // "op id" -> count
}

// machine is one running VM: its "process".
type machine struct {
	stopped chan struct{} // closed when it stops
	reason  string        // why it stopped
}

// NewHost returns an empty host.
func NewHost() *Host {
	return &Host{machines: map[string]*machine{}, reasons: map[string]string{}, calls: map[string]int{}}
}

// New returns a driver instance on h (a daemon start).
func (h *Host) New() *Driver { return &Driver{host: h} }

// Running lists the ids of the running machines, sorted.
func (h *Host) Running() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var ids []string
	for id := range h.machines {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// Calls returns how many times op was called for the VM id.
func (h *Host) Calls(op, id string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.calls[op+" "+id]
}

// Kill stops the machine of id behind the driver's back (the guest shut
// down, the process died), with reason. It reports whether it was running.
func (h *Host) Kill(id, reason string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.stopLocked(id, reason)
}

// Boot marks the VM id running, as a machine some earlier daemon started
// (for recovery tests).
func (h *Host) Boot(id string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.machines[id] == nil {
		h.machines[id] = &machine{stopped: make(chan struct{})}
		delete(h.reasons, id)
	}
}

func (h *Host) stopLocked(id, reason string) bool {
	m := h.machines[id]
	if m == nil {
		return false
	}
	m.reason = reason
	h.reasons[id] = reason
	close(m.stopped)
	delete(h.machines, id)
	return true
}

func (h *Host) machine(id string) *machine {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.machines[id]
}

// enter counts the call and runs the hook.
func (h *Host) enter(ctx context.Context, op string, spec hypervisor.Spec) error {
	h.mu.Lock()
	h.calls[op+" "+spec.ID]++
	hook := h.Hook
	h.mu.Unlock()
	if hook != nil {
		return hook(ctx, op, spec)
	}
	return nil
}

// Driver is one driver instance on a Host. It implements hypervisor.Driver
// and every optional capability.
type Driver struct {
	host *Host
}

var (
	_ hypervisor.Driver         = (*Driver)(nil)
	_ hypervisor.Watcher        = (*Driver)(nil)
	_ hypervisor.ConsoleReader  = (*Driver)(nil)
	_ hypervisor.Screenshotter  = (*Driver)(nil)
	_ hypervisor.Reaper         = (*Driver)(nil)
	_ hypervisor.NetworkChecker = (*Driver)(nil)
)

// Name returns "fake".
func (d *Driver) Name() string { return "fake" }

// clone is what Clone records in <id>.clone.
type clone struct {
	Gold      string `json:"gold"` // the gold file, absolute
	CPUs      int    `json:"cpus"`
	MemoryMiB int64  `json:"memory_mib"`
	Network   string `json:"network"`
}

func clonePath(spec hypervisor.Spec) string { return filepath.Join(spec.Dir, spec.ID+".clone") }

func checkSpec(spec hypervisor.Spec) error {
	if spec.ID == "" || !filepath.IsAbs(spec.Dir) {
		return errdefs.Newf(errdefs.ErrInvalid, "invalid-vm-dir", "spec needs an id and an absolute directory (got %q, %q)", spec.ID, spec.Dir)
	}
	return nil
}

// goldFile returns the first regular file of the gold image, in name order.
func goldFile(root string) (string, error) {
	var found string
	err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if found == "" && e.Type().IsRegular() {
			found = p
		}
		return nil
	})
	if err != nil {
		return "", errdefs.New(errdefs.ErrInvalid, "image-bad-disk", "cannot read the gold image", err)
	}
	if found == "" {
		return "", errdefs.Newf(errdefs.ErrInvalid, "image-no-disk", "the gold image %s has no file", root)
	}
	return found, nil
}

// Clone records a clone of the gold image's first file in spec.Dir.
func (d *Driver) Clone(ctx context.Context, spec hypervisor.Spec) error {
	if err := checkSpec(spec); err != nil {
		return err
	}
	if err := d.host.enter(ctx, OpClone, spec); err != nil {
		return err
	}
	if nc := d.SupportsNetwork(spec.Network); nc != nil {
		return nc
	}
	gold, err := goldFile(spec.GoldDir)
	if err != nil {
		return err
	}
	if _, err := os.Stat(clonePath(spec)); err == nil {
		return errdefs.Newf(errdefs.ErrConflict, "vm-exists", "the VM directory already holds a clone")
	}
	b, err := json.Marshal(clone{Gold: gold, CPUs: spec.CPUs, MemoryMiB: spec.MemoryMiB, Network: spec.Network})
	if err != nil {
		return err
	}
	return os.WriteFile(clonePath(spec), b, 0o600)
}

// Start "boots" the clone: the machine runs on the Host, and its console
// says so.
func (d *Driver) Start(ctx context.Context, spec hypervisor.Spec) error {
	if err := checkSpec(spec); err != nil {
		return err
	}
	if err := d.host.enter(ctx, OpStart, spec); err != nil {
		return err
	}
	b, err := os.ReadFile(clonePath(spec))
	if err != nil {
		return errdefs.New(errdefs.ErrConflict, "vm-not-cloned", "the VM has no clone (Clone it first)", err)
	}
	var c clone
	if err := json.Unmarshal(b, &c); err != nil {
		return fmt.Errorf("reading the clone: %w", err)
	}
	if _, err := os.Stat(c.Gold); err != nil {
		return errdefs.New(errdefs.ErrConflict, "image-damaged", "the clone's gold file is gone", err)
	}
	line := fmt.Sprintf("fake guest %s: %d CPUs, %d MiB, booted\n", spec.ID, c.CPUs, c.MemoryMiB)
	if err := os.WriteFile(filepath.Join(spec.Dir, consoleName), []byte(line), 0o600); err != nil {
		return err
	}
	d.host.Boot(spec.ID)
	return nil
}

// Discover answers at once for a running machine: an address in
// 192.0.2.0/24 (TEST-NET-1) derived from the id, and "fake guest".
func (d *Driver) Discover(ctx context.Context, spec hypervisor.Spec) (hypervisor.GuestInfo, error) {
	if err := checkSpec(spec); err != nil {
		return hypervisor.GuestInfo{}, err
	}
	if err := d.host.enter(ctx, OpDiscover, spec); err != nil {
		return hypervisor.GuestInfo{}, err
	}
	if d.host.machine(spec.ID) == nil {
		return hypervisor.GuestInfo{}, errdefs.New(errdefs.ErrConflict, "vm-not-running", "the machine is not running", hypervisor.ErrNotRunning)
	}
	sum := sha256.Sum256([]byte(spec.ID))
	return hypervisor.GuestInfo{IPAddress: fmt.Sprintf("192.0.2.%d", 1+sum[0]%254), GuestOS: "fake guest"}, nil
}

// State reports whether the machine runs on the Host.
func (d *Driver) State(ctx context.Context, spec hypervisor.Spec) (hypervisor.State, error) {
	if err := checkSpec(spec); err != nil {
		return "", err
	}
	if err := d.host.enter(ctx, OpState, spec); err != nil {
		return "", err
	}
	if d.host.machine(spec.ID) != nil {
		return hypervisor.StateRunning, nil
	}
	return hypervisor.StateStopped, nil
}

// Destroy stops the machine and removes the clone; the console of the last
// run stays until the manager removes the directory.
func (d *Driver) Destroy(ctx context.Context, spec hypervisor.Spec) error {
	if err := checkSpec(spec); err != nil {
		return err
	}
	if err := d.host.enter(ctx, OpDestroy, spec); err != nil {
		return err
	}
	d.host.Kill(spec.ID, "destroyed")
	if err := os.Remove(clonePath(spec)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// Watch waits until the machine stops or ctx ends. A machine that already
// stopped answers at once, with the reason it stopped for.
func (d *Driver) Watch(ctx context.Context, spec hypervisor.Spec) (string, error) {
	if err := d.host.enter(ctx, OpWatch, spec); err != nil {
		return "", err
	}
	d.host.mu.Lock()
	m, reason := d.host.machines[spec.ID], d.host.reasons[spec.ID]
	d.host.mu.Unlock()
	if m == nil {
		if reason == "" {
			reason = "machine is not running"
		}
		return reason, nil
	}
	select {
	case <-m.stopped:
		return m.reason, nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// Console returns the end of console.log.
func (d *Driver) Console(ctx context.Context, spec hypervisor.Spec, limit int64) ([]byte, error) {
	b, err := os.ReadFile(filepath.Join(spec.Dir, consoleName))
	if errors.Is(err, fs.ErrNotExist) {
		return []byte{}, nil
	}
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		b = b[int64(len(b))-limit:]
	}
	return b, nil
}

// Screenshot returns a 4x3 PNG of the running machine's "display".
func (d *Driver) Screenshot(ctx context.Context, spec hypervisor.Spec) ([]byte, error) {
	if d.host.machine(spec.ID) == nil {
		return nil, errdefs.New(errdefs.ErrConflict, "vm-not-running", "the machine is not running", hypervisor.ErrNotRunning)
	}
	img := image.NewGray(image.Rect(0, 0, 4, 3))
	img.SetGray(0, 0, color.Gray{Y: 255})
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Reap stops the machines no record owns.
func (d *Driver) Reap(ctx context.Context, known func(id string) bool) error {
	for _, id := range d.host.Running() {
		if !known(id) {
			d.host.Kill(id, "reaped")
		}
	}
	return nil
}

// SupportsNetwork refuses the network types in Host.Refuse.
func (d *Driver) SupportsNetwork(networkType string) error {
	return d.host.Refuse[networkType]
}
