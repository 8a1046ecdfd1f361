package qemu

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/machine"
)

// netPlan is how a VM's NIC is connected.
type netPlan struct {
	Kind       string // api network type: nat, hostonly, bridged
	User       bool   // user-mode networking (slirp) instead of a tap
	Tap        string // tap device, when !User
	Bridge     string // bridge the tap joins
	Subnet     string // host address/prefix on the bridge (nat, hostonly)
	DHCP       bool   // goldvm runs dnsmasq on Bridge
	Masquerade bool   // NAT to the outside
}

// launchParams is everything buildArgs needs.
type launchParams struct {
	ID        string
	Dir       string
	CPUs      int
	MemoryMiB int64
	Machine   string
	Accel     []string
	Display   string // "none", "gtk", "sdl"
	Sandbox   bool
	MAC       string
	Net       netPlan
	TapFD     int // > 0: QEMU's fd of the already opened tap
	// GoldPath and GoldFormat are the gold disk below the VM's overlay.
	GoldPath   string
	GoldFormat string
	// Seed, when set, is the cloud-init seed volume attached as a
	// read-only CD-ROM.
	Seed string
	// HW is the VM's hardware; its zero fields mean machine.HostDefaults
	// (Machine above is the chipset when HW.Chipset is empty).
	HW api.Machine
	// FirmwareCode and FirmwareVars are the UEFI firmware (read-only) and
	// the VM's own copy of its variable store, when HW.Firmware is uefi.
	FirmwareCode, FirmwareVars string
	// Kernel, Initrd and Append boot a Linux kernel directly; CDROMs are
	// CD-ROM image files (see hypervisor.Spec).
	Kernel, Initrd, Append string
	CDROMs                 []string
	// Frozen, when set, is a template's frozen disk layer (qcow2) between
	// the gold disk and the VM's overlay.
	Frozen string
	// MemPath, when set, backs the guest's RAM with this file (a
	// template's RAM file), shared with the file when MemShare (making a
	// template) and a private copy-on-write mapping otherwise.
	MemPath  string
	MemShare bool
	// MemRAM backs the guest's RAM with anonymous memory under the same
	// backend id as MemPath's (mem0), for a template's full state stream
	// (RAM included) to restore into.
	MemRAM bool
	// Incoming starts QEMU waiting for a migration stream (-incoming
	// defer), to restore a template's state.
	Incoming bool
}

// optEscape escapes a value for QEMU's comma-separated option syntax.
func optEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// sockArg is the path QEMU is given for a unix socket in dir. QEMU runs with
// dir as its working directory, so a relative name works where the absolute
// path would be longer than sun_path allows.
func sockArg(dir, name string) string {
	if abs := p(dir, name); len(abs) < 100 {
		return abs
	}
	return name
}

// sandboxArg is QEMU's seccomp policy. spawn=deny forbids fork/exec, which is
// why goldvm does not use -daemonize (QEMU's daemonize forks after the filter
// is installed and dies of SIGSYS).
const sandboxArg = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

// guiSandboxArg is the policy for a VM with a window: the gtk and sdl
// displays fork or exec as they start (QEMU 7.2 with spawn=deny dies of
// SIGSYS at once), so spawning is allowed; the rest stays denied.
const guiSandboxArg = "on,obsolete=deny,elevateprivileges=deny,resourcecontrol=deny"

// buildArgs returns QEMU's argument list (without the binary).
func buildArgs(lp launchParams) []string {
	dir := lp.Dir
	hw := lp.HW
	if hw.Chipset == "" && lp.Machine != "" {
		hw.Chipset = lp.Machine
	}
	if hw.Threads == 0 && hw.Cores == 0 && hw.Sockets == 0 {
		hw.Threads, hw.Cores, hw.Sockets = 1, max(lp.CPUs, 1), 1
	}
	hw = machine.Merge(hw, machine.HostDefaults)
	display := lp.Display
	if display == "" {
		display = "none"
	}
	machineArg := hw.Chipset
	if hw.Firmware == "uefi" {
		machineArg += ",pflash0=fw-code,pflash1=fw-vars"
	}
	a := []string{
		"-name", qemuName(lp.ID),
		"-machine", machineArg,
	}
	switch {
	case lp.MemPath != "":
		a[len(a)-1] += ",memory-backend=mem0"
		a = append(a, "-object", fmt.Sprintf("memory-backend-file,id=mem0,size=%dM,mem-path=%s,share=%s",
			lp.MemoryMiB, optEscape(lp.MemPath), map[bool]string{true: "on", false: "off"}[lp.MemShare]))
	case lp.MemRAM:
		a[len(a)-1] += ",memory-backend=mem0"
		a = append(a, "-object", fmt.Sprintf("memory-backend-ram,id=mem0,size=%dM", lp.MemoryMiB))
	}
	a = append(a, lp.Accel...)
	a = append(a,
		"-cpu", hw.CPU,
		"-smp", fmt.Sprintf("cpus=%d,sockets=%d,cores=%d,threads=%d", max(hw.Threads, 1)*max(hw.Cores, 1)*max(hw.Sockets, 1),
			max(hw.Sockets, 1), max(hw.Cores, 1), max(hw.Threads, 1)),
		"-m", strconv.FormatInt(lp.MemoryMiB, 10),
		"-nodefaults",
		"-no-user-config",
		"-display", display,
		"-vga", vgaArg[hw.Graphics],
		"-vnc", "unix:"+optEscape(sockArg(dir, fileVNC)),
		"-serial", "file:"+optEscape(p(dir, fileConsole)),
	)
	if hw.UUID != "" {
		a = append(a, "-uuid", hw.UUID)
	}
	if hw.KeyboardLayout != "" {
		a = append(a, "-k", hw.KeyboardLayout)
	}
	if hw.Firmware == "uefi" {
		a = append(a,
			"-blockdev", mustJSON(map[string]any{"driver": "file", "node-name": "fw-code", "filename": lp.FirmwareCode, "read-only": true}),
			"-blockdev", mustJSON(map[string]any{"driver": "file", "node-name": "fw-vars", "filename": lp.FirmwareVars}),
		)
	}
	a = append(a, diskLayerArgs(lp.GoldPath, lp.GoldFormat, lp.Frozen, p(dir, fileDisk), hw.Storage)...)
	cdroms := lp.CDROMs
	if lp.Seed != "" {
		// The cloud-init seed is the last CD-ROM.
		cdroms = append(append([]string(nil), cdroms...), lp.Seed)
	}
	a = append(a, cdromArgs(cdroms, hw)...)
	if lp.Kernel != "" {
		a = append(a, "-kernel", lp.Kernel)
		if lp.Initrd != "" {
			a = append(a, "-initrd", lp.Initrd)
		}
		if lp.Append != "" {
			a = append(a, "-append", lp.Append)
		}
	}
	switch {
	case lp.Net.User:
		// The guest gets 10.0.2.15 behind QEMU's own NAT; the host reaches
		// it only through hostfwd, here SSH on a free loopback port.
		a = append(a, "-netdev", "user,id=n0,hostfwd=tcp:127.0.0.1:0-:22")
	case lp.TapFD > 0:
		// The tap, opened by the daemon, is QEMU's file descriptor TapFD
		// (QEMU running as an unprivileged user cannot open it itself).
		a = append(a, "-netdev", "tap,id=n0,fd="+strconv.Itoa(lp.TapFD))
	default:
		a = append(a, "-netdev", "tap,id=n0,ifname="+optEscape(lp.Net.Tap)+",script=no,downscript=no")
	}
	a = append(a,
		"-device", nicDevice[hw.Network]+",netdev=n0,mac="+lp.MAC,
		"-device", "virtio-serial-pci,id=vser0",
		"-chardev", "socket,id=qga0,path="+optEscape(sockArg(dir, fileQGA))+",server=on,wait=off",
		"-device", "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0",
		"-device", "virtio-rng-pci",
	)
	a = append(a, peripheralArgs(hw)...)
	a = append(a,
		"-qmp", "unix:"+optEscape(sockArg(dir, fileQMP))+",server=on,wait=off",
		"-qmp", "unix:"+optEscape(sockArg(dir, fileQMPWatch))+",server=on,wait=off",
		"-pidfile", p(dir, filePID),
	)
	if lp.Incoming {
		a = append(a, "-incoming", "defer")
	}
	if lp.Sandbox {
		if display == "none" {
			a = append(a, "-sandbox", sandboxArg)
		} else {
			a = append(a, "-sandbox", guiSandboxArg)
		}
	}
	return a
}

// vgaArg is QEMU's -vga value of each api.Machine graphics.
var vgaArg = map[string]string{
	"std": "std", "virtio": "virtio", "qxl": "qxl", "vmware-svga": "vmware", "cirrus": "cirrus", "none": "none",
}

// nicDevice is QEMU's device of each api.Machine network.
var nicDevice = map[string]string{"virtio-net": "virtio-net-pci", "e1000": "e1000", "rtl8139": "rtl8139"}

// usbDevice is QEMU's device of each api.Machine usb controller.
var usbDevice = map[string]string{
	"piix3-uhci": "piix3-usb-uhci", "piix4-uhci": "piix4-usb-uhci", "nec-xhci": "nec-usb-xhci", "qemu-xhci": "qemu-xhci",
}

// peripheralArgs are the USB controller, input devices and sound card.
func peripheralArgs(hw api.Machine) []string {
	var a []string
	if d, ok := usbDevice[hw.USB]; ok {
		a = append(a, "-device", d+",id=usb")
		for _, in := range []struct{ kind, dev string }{{hw.Keyboard, "usb-kbd"}, {hw.Mouse, "usb-mouse"}, {hw.Tablet, "usb-tablet"}} {
			if in.kind == "usb" {
				a = append(a, "-device", in.dev)
			}
		}
	}
	hda := "intel-hda"
	if strings.HasPrefix(hw.Chipset, "pc-q35") || hw.Chipset == "q35" {
		hda = "ich9-intel-hda"
	}
	switch hw.Sound {
	case "ac97":
		a = append(a, "-audiodev", "none,id=snd0", "-device", "AC97,audiodev=snd0")
	case "es1370":
		a = append(a, "-audiodev", "none,id=snd0", "-device", "ES1370,audiodev=snd0")
	case "hda":
		a = append(a, "-audiodev", "none,id=snd0", "-device", hda+",id=hda0", "-device", "hda-duplex,bus=hda0.0,audiodev=snd0")
	}
	return a
}

// diskArgs opens the VM's disk as libvirt does: a -blockdev node per layer
// (in QEMU's JSON syntax), each with its driver given and its backing set
// explicitly (the gold disk below the overlay, null below the gold disk),
// so that QEMU follows no file name written inside either image and
// probes no format.
//
// frozen, when not empty, is a template's frozen qcow2 layer between the
// two (node "frozen").
//
// storage is the bus the guest sees the disk on (api.Machine's storage):
// only the -device changes with it.
func diskArgs(goldPath, goldFormat, overlay, storage string) []string {
	return diskLayerArgs(goldPath, goldFormat, "", overlay, storage)
}

// diskLayerArgs is diskArgs with a template's frozen layer (see diskArgs).
func diskLayerArgs(goldPath, goldFormat, frozen, overlay, storage string) []string {
	type file struct {
		Driver   string `json:"driver"`
		Filename string `json:"filename"`
	}
	gold := map[string]any{
		"driver": goldFormat, "node-name": "gold", "read-only": true,
		"file": file{"file", goldPath},
	}
	if goldFormat == "qcow2" {
		gold["backing"] = nil
	}
	disk := map[string]any{
		"driver": "qcow2", "node-name": "disk", "backing": "gold", "discard": "unmap",
		"cache": map[string]bool{"direct": false},
		"file":  file{"file", overlay},
	}
	if goldPath == "" {
		// An empty disk of its own (hypervisor.Spec.EmptyDisk).
		disk["backing"] = nil
		return append([]string{"-blockdev", mustJSON(disk)}, diskDeviceArgs(storage)...)
	}
	a := []string{"-blockdev", mustJSON(gold)}
	if frozen != "" {
		a = append(a, "-blockdev", mustJSON(map[string]any{
			"driver": "qcow2", "node-name": "frozen", "backing": "gold", "read-only": true,
			"file": file{"file", frozen},
		}))
		disk["backing"] = "frozen"
	}
	a = append(a, "-blockdev", mustJSON(disk))
	return append(a, diskDeviceArgs(storage)...)
}

// diskDeviceArgs attach the node "disk" on the storage bus.
func diskDeviceArgs(storage string) []string {
	switch storage {
	case "virtio-scsi":
		return []string{"-device", "virtio-scsi-pci,id=scsi0", "-device", "scsi-hd,bus=scsi0.0,drive=disk"}
	case "ide":
		// The chipset's own controller: PIIX IDE on pc, AHCI on q35.
		return []string{"-device", "ide-hd,bus=ide.0,drive=disk"}
	case "sata":
		return []string{"-device", "ahci,id=sata0", "-device", "ide-hd,bus=sata0.0,drive=disk"}
	}
	return []string{"-device", "virtio-blk-pci,drive=disk"}
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // maps of strings and bools always encode
	}
	return string(b)
}

// cdromArgs attaches CD-ROM image files read-only, as raw -blockdev nodes,
// on the bus the disk's storage model suggests: IDE/AHCI for old guests
// (storage ide or sata), virtio-scsi otherwise (Debian's cloud kernels,
// for one, have no AHCI driver).
func cdromArgs(paths []string, hw api.Machine) []string {
	var a []string
	bus := func(i int) string {
		switch hw.Storage {
		case "sata":
			return "ide-cd,bus=sata0." + strconv.Itoa(i+1)
		case "ide":
			if hw.Chipset == "q35" || strings.HasPrefix(hw.Chipset, "pc-q35") {
				return "ide-cd,bus=ide." + strconv.Itoa(i+1)
			}
			return "ide-cd,bus=ide.1,unit=" + strconv.Itoa(i)
		case "virtio-scsi":
			return "scsi-cd,bus=scsi0.0"
		}
		return "scsi-cd,bus=cdscsi.0"
	}
	for i, path := range paths {
		if i == 0 && hw.Storage != "sata" && hw.Storage != "ide" && hw.Storage != "virtio-scsi" {
			a = append(a, "-device", "virtio-scsi-pci,id=cdscsi")
		}
		node := "cd" + strconv.Itoa(i)
		a = append(a,
			"-blockdev", mustJSON(map[string]any{"driver": "raw", "node-name": node, "read-only": true,
				"file": map[string]any{"driver": "file", "filename": path, "read-only": true}}),
			"-device", bus(i)+",drive="+node)
	}
	return a
}
