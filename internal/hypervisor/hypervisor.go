// Package hypervisor defines the Driver contract that every backend (QEMU,
// VMware) implements, and the types the VM manager passes to it.
//
// Lifecycle, as the VM manager drives it:
//
//	Clone -> Start -> Discover            (creation)
//	State / Watch                         (while it lives, and after a daemon restart)
//	Destroy                               (delete, or undo of a failed creation)
//
// Every method takes the same Spec, filled from the VM's record on every call
// (GoldDir and ImageKey included, also on Destroy, State and after a
// restart). A driver keeps all of its per-VM state (overlay, pidfile,
// sockets, logs) inside Spec.Dir, so that after a restart the daemon can
// reattach from the record alone. Destroy must be safe on a half-made VM and
// safe to call twice.
//
// A driver never writes into Spec.GoldDir: the image store seals a gold
// tree when it publishes it and checks it on every start. State a driver
// keeps per gold image (VMware's snapshotted base VM, say) lives in a
// directory the driver owns, keyed by Spec.ImageKey (see
// docs/architecture.md for who writes where).
//
// Optional capabilities are the small interfaces below (ConsoleReader,
// Screenshotter, Watcher, Reaper, NetworkChecker); every driver states the
// ones it has with compile-time checks, and the package
// internal/hypervisor/drivertest is the conformance suite every driver
// passes.
package hypervisor

import (
	"context"
	"errors"
	"net"

	"github.com/goldvm/goldvm/api"
)

// Spec describes one VM to a driver.
type Spec struct {
	// ID is the VM's id, used for names (QEMU -name, vmrun cloneName, tap names).
	ID string
	// Dir is the VM's own directory (mode 0700). It exists before Clone is called.
	// Everything the driver creates for this VM lives here.
	Dir string
	// GoldDir is the root of the unpacked, read-only gold image. Drivers
	// read it and never write into it.
	GoldDir string
	// GoldDisk is the gold image's disk as the driver's PrepareGold
	// decided it (zero for drivers without one).
	GoldDisk GoldDisk
	// ImageKey is the gold image's store key ("sha256-…"), the name under
	// which a driver keeps state of its own about that image.
	ImageKey string
	// CPUs is the number of virtual CPUs.
	CPUs int
	// MemoryMiB is the guest RAM in MiB.
	MemoryMiB int64
	// Network is one of api.NetworkNAT, api.NetworkBridged, api.NetworkHostOnly.
	Network string
	// Peers names the set of VMs this VM may reach on its bridge (VMs
	// with the same Peers); "" for none: the VM is isolated from the
	// other VMs. Drivers without isolation ignore it.
	Peers string
	// Headless is false when the caller asked for a GUI window.
	Headless bool
	// CloudInit is what the guest's cloud-init is given (a NoCloud seed
	// CD-ROM, the metadata service); nil: no seed.
	CloudInit *CloudInit
	// Machine is the VM's hardware, merged and limited by the manager
	// (see internal/machine); nil: the driver's defaults. CPUs and
	// MemoryMiB agree with it.
	Machine *api.Machine
	// Kernel, Initrd and Append boot a Linux kernel directly (Kernel ""
	// boots from the disk); CDROMs are CD-ROM image files. All are
	// read-only files the hypervisor opens by path.
	Kernel, Initrd, Append string
	CDROMs                 []string
	// EmptyDisk, when not 0, is the size in bytes of a fresh, empty disk
	// that Clone makes instead of a linked clone: the VM has no gold
	// image (GoldDir and GoldDisk are zero) and installs from its CDROMs.
	EmptyDisk int64
	// Placement pins the VM to a cluster member or group (drivers that
	// are a Placer); nil: the backend places it.
	Placement *api.Placement
}

// CloudInit is the configuration a stock cloud image reads at boot.
type CloudInit struct {
	// InstanceID is cloud-init's instance-id (the VM's id).
	InstanceID string
	// Hostname is the guest's local-hostname.
	Hostname string
	// UserData is the user-data given at creation ("" for none).
	UserData string
	// SSHAuthorizedKeys are public keys for the image's default user.
	SSHAuthorizedKeys []string
}

// GuestInfo is what discovery learns from a booted guest.
type GuestInfo struct {
	// IPAddress is the guest's address, reachable from the host where the
	// network type allows it.
	IPAddress string
	// GuestOS names the guest's OS as the API's guest_os gives it: the
	// .vmx guestOS identifier with VMware ("other26xlinux-64"), the guest
	// agent's OS name with QEMU ("Debian GNU/Linux 12 (bookworm)").
	GuestOS string
	// GuestOSName is a readable OS name when GuestOS is an identifier
	// ("Linux (64-bit)"); empty when GuestOS is already readable.
	GuestOSName string
	// SSHAddress is a host:port on the host forwarded to the guest's SSH
	// port, set when IPAddress is not reachable from the host (QEMU
	// user-mode networking).
	SSHAddress string
	// IPSource and GuestOSSource say where IPAddress and GuestOS came from
	// (api.Source* constants; "" when the value is empty).
	IPSource, GuestOSSource string
	// Location is the cluster member the VM runs on (a Placer's; "" on a
	// single host).
	Location string
}

// State is the machine state a driver reports.
type State string

// Machine states.
const (
	StateRunning State = "running"
	StatePaused  State = "paused"
	// StateStopped means no hypervisor process runs for this VM.
	StateStopped State = "stopped"
)

// ErrNotRunning is returned (wrapped) by operations that need a running machine.
var ErrNotRunning = errors.New("machine is not running")

// Driver is a hypervisor backend.
type Driver interface {
	// Name is the backend's name as shown in the API ("qemu", "vmware").
	Name() string
	// Clone makes a linked clone of the gold image in spec.Dir. It never copies
	// the gold disk: its cost does not depend on the image size.
	Clone(ctx context.Context, spec Spec) error
	// Start boots the clone. It returns once the hypervisor process is up and
	// its control channel answers, not when the guest has booted. The process
	// must outlive the daemon (a restart reattaches to it).
	Start(ctx context.Context, spec Spec) error
	// Discover waits until the guest reports its IP address and OS, or ctx ends
	// (the caller bounds ctx with the VM's tools_init_timeout).
	Discover(ctx context.Context, spec Spec) (GuestInfo, error)
	// State reports the machine's state, StateStopped when no process runs.
	State(ctx context.Context, spec Spec) (State, error)
	// Destroy stops the machine, gracefully and then by force, and removes
	// everything it created for the VM. It is safe on a half-made VM and
	// when called twice. It does not remove spec.Dir itself.
	Destroy(ctx context.Context, spec Spec) error
}

// Watcher is implemented by drivers that can tell at once when a machine stops
// (QEMU: the QMP connection closes). The manager uses it to move a record to
// "stopped" within seconds of the process dying.
type Watcher interface {
	// Watch blocks until the machine stops or ctx ends. It returns a short
	// reason such as "guest-shutdown" or "process exited", or ctx.Err().
	Watch(ctx context.Context, spec Spec) (reason string, err error)
}

// GuestOSProber is implemented by drivers whose Discover can return before
// the guest's agent has told the OS (a guest without an agent, or whose
// agent starts late). The manager keeps asking in the background and
// updates the record when it answers.
type GuestOSProber interface {
	// ProbeGuestOS waits until the guest's agent reports the OS, and
	// returns its name, or returns ctx's error.
	ProbeGuestOS(ctx context.Context, spec Spec) (string, error)
}

// ConsoleReader is implemented by drivers that keep the VM's serial console
// output.
type ConsoleReader interface {
	// Console returns at most the last limit bytes the guest wrote to its
	// serial console: of the running machine, or, once it is destroyed,
	// of its last run (kept until its directory is removed). Nothing
	// written yet is an empty answer.
	Console(ctx context.Context, spec Spec, limit int64) ([]byte, error)
}

// VNCer is implemented by drivers that give each VM a VNC server on a
// unix socket.
type VNCer interface {
	// VNCSocket is the path of the VM's VNC socket (while it runs).
	VNCSocket(spec Spec) string
	// DialVNC connects to the running VM's VNC server, or fails with an
	// error wrapping ErrNotRunning.
	DialVNC(ctx context.Context, spec Spec) (net.Conn, error)
}

// Screenshotter is implemented by drivers that can capture the VM's console.
type Screenshotter interface {
	// Screenshot returns a PNG image of the VM's display.
	Screenshot(ctx context.Context, spec Spec) ([]byte, error)
}

// Reaper is implemented by drivers that can find and remove hypervisor
// processes, host devices and per-image state that no record owns (strays
// after a crash). The manager calls it once, at the end of its recovery.
type Reaper interface {
	// Reap removes what belongs to no VM for which known returns true.
	Reap(ctx context.Context, known func(id string) bool) error
}

// NetworkChecker is implemented by drivers that support only some network
// types on this host (bridged needs a configured bridge, say). The manager
// asks it before it accepts a create request.
type NetworkChecker interface {
	// SupportsNetwork returns an error with a stable code when VMs of
	// networkType cannot be made here, nil when they can.
	SupportsNetwork(networkType string) error
}
