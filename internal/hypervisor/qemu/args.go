package qemu

import (
	"encoding/json"
	"strconv"
	"strings"
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
	machine := lp.Machine
	if machine == "" {
		machine = "q35"
	}
	display := lp.Display
	if display == "" {
		display = "none"
	}
	cpus := lp.CPUs
	if cpus < 1 {
		cpus = 1
	}
	a := []string{
		"-name", qemuName(lp.ID),
		"-machine", machine,
	}
	a = append(a, lp.Accel...)
	a = append(a,
		"-smp", strconv.Itoa(cpus),
		"-m", strconv.FormatInt(lp.MemoryMiB, 10),
		"-nodefaults",
		"-no-user-config",
		"-display", display,
		"-vga", "std",
		"-serial", "file:"+optEscape(p(dir, fileConsole)),
	)
	a = append(a, diskArgs(lp.GoldPath, lp.GoldFormat, p(dir, fileDisk))...)
	if lp.Seed != "" {
		a = append(a, seedArgs(lp.Seed)...)
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
		"-device", "virtio-net-pci,netdev=n0,mac="+lp.MAC,
		"-device", "virtio-serial-pci,id=vser0",
		"-chardev", "socket,id=qga0,path="+optEscape(sockArg(dir, fileQGA))+",server=on,wait=off",
		"-device", "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0",
		"-device", "virtio-rng-pci",
		"-qmp", "unix:"+optEscape(sockArg(dir, fileQMP))+",server=on,wait=off",
		"-qmp", "unix:"+optEscape(sockArg(dir, fileQMPWatch))+",server=on,wait=off",
		"-pidfile", p(dir, filePID),
	)
	if lp.Sandbox {
		if display == "none" {
			a = append(a, "-sandbox", sandboxArg)
		} else {
			a = append(a, "-sandbox", guiSandboxArg)
		}
	}
	return a
}

// diskArgs opens the VM's disk as libvirt does: a -blockdev node per layer
// (in QEMU's JSON syntax), each with its driver given and its backing set
// explicitly (the gold disk below the overlay, null below the gold disk),
// so that QEMU follows no file name written inside either image and
// probes no format.
func diskArgs(goldPath, goldFormat, overlay string) []string {
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
	return []string{"-blockdev", mustJSON(gold), "-blockdev", mustJSON(disk), "-device", "virtio-blk-pci,drive=disk"}
}

// seedArgs attaches the cloud-init seed as a read-only SCSI CD-ROM on a
// virtio-scsi controller: stock cloud kernels (Debian's cloud kernel) have
// virtio_scsi and sr_mod but no AHCI, so an IDE CD-ROM on q35 would be
// invisible to them. The format is given (raw), never probed.
func seedArgs(path string) []string {
	seed := map[string]any{
		"driver": "raw", "node-name": "seed", "read-only": true,
		"file": map[string]any{"driver": "file", "filename": path, "read-only": true},
	}
	return []string{
		"-device", "virtio-scsi-pci,id=scsi0",
		"-blockdev", mustJSON(seed),
		"-device", "scsi-cd,bus=scsi0.0,drive=seed",
	}
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // maps of strings and bools always encode
	}
	return string(b)
}
