package hypervisor

import "context"

// Stopper is implemented by drivers that can power a machine off and keep
// it: its disk and configuration stay in Spec.Dir, and Driver.Start boots
// it again (POST /vms/{id}/stop, /start, /restart).
type Stopper interface {
	// Stop shuts the machine down: the ACPI power button first, then,
	// after the driver's power-down timeout, by force. It returns once no
	// hypervisor process runs for the VM; a stopped machine is no error.
	Stop(ctx context.Context, spec Spec) error
}

// Suspender is implemented by drivers that can suspend a machine and
// resume it where it was (POST /vms/{id}/suspend, /resume). The guest's
// clock and uptime carry on from where they were; its memory is kept.
type Suspender interface {
	// Suspend stops the guest's CPUs (QEMU) or saves its state to disk
	// (VMware). It fails, wrapping ErrNotRunning, when the machine does
	// not run.
	Suspend(ctx context.Context, spec Spec) error
	// Resume lets a suspended guest run again. It fails, wrapping
	// ErrNotRunning, when there is no suspended machine to resume.
	Resume(ctx context.Context, spec Spec) error
	// SuspendEndsProcess reports whether a suspended machine has no
	// hypervisor process (VMware writes it to disk and exits), so State
	// answers StateStopped for it.
	SuspendEndsProcess() bool
}

// Restarter is implemented by drivers that can reboot a running machine in
// place (VMware: vmrun reset); POST /vms/{id}/restart of a running VM uses
// it, and otherwise stops and starts the machine.
type Restarter interface {
	// Restart reboots the machine: the guest's own restart first, then,
	// after the driver's timeout, by force. It fails, wrapping
	// ErrNotRunning, when the machine does not run.
	Restart(ctx context.Context, spec Spec) error
}

// Capturer is implemented by drivers that can write a stopped VM's disk
// as a standalone disk of a new gold image (POST /vms/{id}/capture).
type Capturer interface {
	// Capture writes the disk of the stopped VM spec, flattened onto its
	// gold disk (no backing file), into the directory dst, and returns its
	// file name there. A running machine is refused (vm-locked).
	Capture(ctx context.Context, spec Spec, dst string) (string, error)
}
