package api

// MachineVersion is the current version of the machine definition format
// (an image's machine.json). Version 1 is taskcluster-worker's format
// (camelCase keys, QEMU device names); it is migrated on reading.
const MachineVersion = 2

// Machine is a VM's hardware: in an image package's machine.json, in a
// create request's "machine" object (every field optional) and, merged
// (request over image over host defaults, capped by the host's limits), in
// GET /vms/{id}. Empty fields mean "not said".
type Machine struct {
	// Version is the format version, MachineVersion when written by goldvm.
	Version int `json:"version,omitempty"`
	// UUID is the system UUID (SMBIOS), lower-case 8-4-4-4-12 hex.
	UUID string `json:"uuid,omitempty"`
	// Chipset is QEMU's machine type: "q35", "pc" or a versioned
	// "pc-q35-7.2", "pc-i440fx-2.8".
	Chipset string `json:"chipset,omitempty"`
	// CPU is the CPU model: "qemu64", "max", "host" (KVM only) or a named
	// model such as "Haswell".
	CPU string `json:"cpu,omitempty"`
	// Threads, Cores and Sockets are the CPU topology; their product is the
	// number of vCPUs.
	Threads int `json:"threads,omitempty"`
	Cores   int `json:"cores,omitempty"`
	Sockets int `json:"sockets,omitempty"`
	// MemoryMiB is the guest RAM in MiB.
	MemoryMiB int64 `json:"memory,omitempty"`
	// Network is the NIC model: "virtio-net", "e1000" or "rtl8139".
	Network string `json:"network,omitempty"`
	// MAC is the NIC's address, a local unicast MAC in lower case
	// ("02:54:00:12:34:56"), outside 52:54:00:xx:xx:xx where goldvm
	// derives the MACs of VMs without one; empty: one derived from the VM's id.
	MAC string `json:"mac,omitempty"`
	// Storage is the boot disk's bus: "virtio-blk", "virtio-scsi", "ide"
	// or "sata".
	Storage string `json:"storage,omitempty"`
	// Graphics is the display adapter: "std", "virtio", "qxl",
	// "vmware-svga", "cirrus" or "none".
	Graphics string `json:"graphics,omitempty"`
	// Sound is the sound card: "none", "ac97", "es1370" or "hda".
	Sound string `json:"sound,omitempty"`
	// USB is the USB controller: "none", "piix3-uhci", "piix4-uhci",
	// "nec-xhci" or "qemu-xhci".
	USB string `json:"usb,omitempty"`
	// Keyboard is "ps2" or "usb".
	Keyboard string `json:"keyboard,omitempty"`
	// KeyboardLayout is the VNC server's keymap ("en-us", "de", …).
	KeyboardLayout string `json:"keyboard_layout,omitempty"`
	// Mouse is "ps2" or "usb".
	Mouse string `json:"mouse,omitempty"`
	// Tablet is "usb" (an absolute pointer, what VNC clients want) or "none".
	Tablet string `json:"tablet,omitempty"`
	// Firmware is "bios" (SeaBIOS) or "uefi" (OVMF).
	Firmware string `json:"firmware,omitempty"`
}

// CPUs is the number of vCPUs of the topology, 0 when it is incomplete.
func (m Machine) CPUs() int {
	if m.Threads == 0 || m.Cores == 0 || m.Sockets == 0 {
		return 0
	}
	return m.Threads * m.Cores * m.Sockets
}

// MaxCDROMs is how many CD-ROMs a VM may have.
const MaxCDROMs = 2

// Boot boots a Linux kernel directly instead of from the disk (QEMU's
// -kernel, -initrd, -append), as taskcluster-worker's LinuxBootOptions:
// for building images, not for everyday VMs.
type Boot struct {
	// Kernel is the kernel (bzImage) by URL and checksum.
	Kernel Image `json:"kernel"`
	// Initrd is the initial ramdisk, optional.
	Initrd *Image `json:"initrd,omitempty"`
	// Append is the kernel command line.
	Append string `json:"append,omitempty"`
}

// Capacity is the reply of GET /capacity: the host's budget for running
// VMs and how much of it is taken.
type Capacity struct {
	// Total is the budget (--capacity-cpus, --capacity-memory).
	Total Resources `json:"total"`
	// Used is what running VMs hold.
	Used Resources `json:"used"`
	// Reserved is what admitted VMs still being created hold.
	Reserved Resources `json:"reserved"`
	// Free is Total less Used and Reserved.
	Free Resources `json:"free"`
	// Queued is what the requests waiting for capacity ask for, and
	// Waiting how many they are.
	Queued  Resources `json:"queued"`
	Waiting int       `json:"waiting"`
	// QueueTimeout is how long a request waits before it fails with
	// insufficient-capacity, in seconds.
	QueueTimeout Duration `json:"queue_timeout"`
	// Backend is what the backend's hosts have, for backends that report
	// it (lxd: the sum of its cluster's members).
	Backend *BackendCapacity `json:"backend,omitempty"`
}

// Resources counts vCPUs and memory.
type Resources struct {
	CPUs      int   `json:"cpus"`
	MemoryMiB int64 `json:"memory"` // MiB
}
