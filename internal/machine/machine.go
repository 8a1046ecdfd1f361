// Package machine reads, checks, merges and limits VM hardware definitions
// (api.Machine): an image package's machine.json, a create request's
// "machine" object and the host's defaults and limits.
//
// The format follows taskcluster-worker's QEMU engine. Its version 1
// (camelCase keys, QEMU device names such as "virtio-blk-pci" and "VGA")
// is migrated to goldvm's version 2 on reading; an unknown version is
// refused.
package machine

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
)

// FileName is the machine definition's name at an image package's root.
const FileName = "machine.json"

// MaxFileSize bounds a machine.json.
const MaxFileSize = 64 << 10

// Allowed values of the enumerated fields, in the order messages list them.
var (
	Networks  = []string{"virtio-net", "e1000", "rtl8139"}
	Storages  = []string{"virtio-blk", "virtio-scsi", "ide", "sata"}
	Graphics  = []string{"std", "virtio", "qxl", "vmware-svga", "cirrus", "none"}
	Sounds    = []string{"none", "ac97", "es1370", "hda"}
	USBs      = []string{"none", "piix3-uhci", "piix4-uhci", "nec-xhci", "qemu-xhci"}
	Inputs    = []string{"ps2", "usb"}
	Tablets   = []string{"none", "usb"}
	Firmwares = []string{"bios", "uefi"}
	// CPUModels are the CPU models goldvm passes to QEMU's -cpu.
	CPUModels = []string{"qemu64", "qemu32", "kvm64", "max", "host", "Nehalem", "Westmere", "SandyBridge",
		"IvyBridge", "Haswell", "Broadwell", "Skylake-Client", "Skylake-Server", "Cascadelake-Server",
		"Icelake-Server", "EPYC", "EPYC-Rome", "EPYC-Milan"}
	// KeyboardLayouts are QEMU's keymaps.
	KeyboardLayouts = []string{"ar", "da", "de", "de-ch", "en-gb", "en-us", "es", "et", "fi", "fo",
		"fr", "fr-be", "fr-ca", "fr-ch", "hr", "hu", "is", "it", "ja", "lt", "lv", "mk", "nl", "nl-be",
		"no", "pl", "pt", "pt-br", "ru", "sl", "sv", "th", "tr"}
)

var (
	uuidRe    = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[1-5][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	macRe     = regexp.MustCompile(`^[0-9a-f]{2}(:[0-9a-f]{2}){5}$`)
	chipsetRe = regexp.MustCompile(`^(q35|pc|pc-q35-[0-9]+\.[0-9]+|pc-i440fx-[0-9]+\.[0-9]+)$`)
)

// MaxTopology bounds threads, cores and sockets each.
const MaxTopology = 255

// badMachine is the error of an image's machine.json.
func badMachine(format string, args ...any) error {
	return errdefs.Newf(errdefs.ErrInvalid, api.CodeImageBadMachine, "machine.json: "+format, args...)
}

// Parse reads an image's machine.json: it must be one JSON object with a
// known version and known fields only; version 1 is migrated. The result
// is validated and has Version MachineVersion. Errors have code
// image-bad-machine and name the field.
func Parse(data []byte) (api.Machine, error) {
	var m api.Machine
	if len(data) > MaxFileSize {
		return m, badMachine("%d bytes is more than the %d allowed", len(data), MaxFileSize)
	}
	var head struct {
		Version *int `json:"version"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return m, badMachine("not a JSON object: %v", err)
	}
	if head.Version == nil {
		return m, badMachine("version is required (%d)", api.MachineVersion)
	}
	switch *head.Version {
	case 1:
		var err error
		if m, err = migrateV1(data); err != nil {
			return m, err
		}
	case api.MachineVersion:
		if err := decodeStrict(data, &m); err != nil {
			return m, badMachine("%v", err)
		}
	default:
		return m, badMachine("version %d is not supported (1 or %d)", *head.Version, api.MachineVersion)
	}
	m.Version = api.MachineVersion
	if err := Validate(m, ""); err != nil {
		return m, ImageError(err)
	}
	return m, nil
}

// ImageError turns an error of Validate or Resolve about an image's
// definition into one with code image-bad-machine.
func ImageError(err error) error {
	return errdefs.New(errdefs.ErrInvalid, api.CodeImageBadMachine, "machine.json: "+errMessage(err), nil)
}

func errMessage(err error) string {
	if _, msg := errdefs.CodeOf(err); msg != "" {
		return msg
	}
	return err.Error()
}

// decodeStrict decodes one JSON object into v, refusing unknown fields
// and trailing data.
func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("data after the JSON object")
	}
	return nil
}

// v1 is taskcluster-worker's machine.json (format version 1).
type v1 struct {
	Version        int      `json:"version"`
	UUID           string   `json:"uuid"`
	Chipset        string   `json:"chipset"`
	CPU            string   `json:"cpu"`
	Flags          []string `json:"flags"`
	Threads        int      `json:"threads"`
	Cores          int      `json:"cores"`
	Sockets        int      `json:"sockets"`
	Memory         int64    `json:"memory"`
	USB            string   `json:"usb"`
	Network        string   `json:"network"`
	MAC            string   `json:"mac"`
	Storage        string   `json:"storage"`
	Graphics       string   `json:"graphics"`
	Sound          string   `json:"sound"`
	Keyboard       string   `json:"keyboard"`
	KeyboardLayout string   `json:"keyboardLayout"`
	Mouse          string   `json:"mouse"`
	Tablet         string   `json:"tablet"`
}

// v1Names maps version 1's QEMU device names to version 2's.
var v1Names = map[string]map[string]string{
	"usb":      {"piix3-usb-uhci": "piix3-uhci", "piix4-usb-uhci": "piix4-uhci", "nec-usb-xhci": "nec-xhci"},
	"storage":  {"virtio-blk-pci": "virtio-blk"},
	"graphics": {"VGA": "std", "vmware-svga": "vmware-svga", "qxl-vga": "qxl", "virtio-vga": "virtio"},
	"keyboard": {"usb-kbd": "usb", "PS/2": "ps2"},
	"mouse":    {"usb-mouse": "usb", "PS/2": "ps2"},
	"tablet":   {"usb-tablet": "usb", "none": "none"},
}

// migrateV1 converts a version 1 definition.
func migrateV1(data []byte) (api.Machine, error) {
	var o v1
	if err := decodeStrict(data, &o); err != nil {
		return api.Machine{}, badMachine("version 1: %v", err)
	}
	conv := func(field, v string) (string, error) {
		if v == "" {
			return "", nil
		}
		n, ok := v1Names[field][v]
		if !ok {
			return "", badMachine("version 1: %s %q is not one of its values", field, v)
		}
		return n, nil
	}
	m := api.Machine{
		UUID: o.UUID, Chipset: o.Chipset, CPU: o.CPU, Threads: o.Threads, Cores: o.Cores, Sockets: o.Sockets,
		MemoryMiB: o.Memory, Network: o.Network, MAC: o.MAC, KeyboardLayout: o.KeyboardLayout,
	}
	if len(o.Flags) > 0 {
		return m, badMachine("version 1: flags are not supported")
	}
	var err error
	for _, f := range []struct {
		name string
		in   string
		out  *string
	}{{"usb", o.USB, &m.USB}, {"storage", o.Storage, &m.Storage}, {"graphics", o.Graphics, &m.Graphics},
		{"keyboard", o.Keyboard, &m.Keyboard}, {"mouse", o.Mouse, &m.Mouse}, {"tablet", o.Tablet, &m.Tablet}} {
		if *f.out, err = conv(f.name, f.in); err != nil {
			return m, err
		}
	}
	if o.Sound != "" {
		// "AC97", "ES1370" or "hda-duplex/intel-hda" and the like.
		switch s := strings.ToLower(o.Sound); {
		case s == "ac97" || s == "es1370":
			m.Sound = s
		case strings.HasPrefix(s, "hda-"):
			m.Sound = "hda"
		default:
			return m, badMachine("version 1: sound %q is not one of its values", o.Sound)
		}
	}
	return m, nil
}

// invalid is the error of a request's machine object.
func invalid(format string, args ...any) error {
	return errdefs.Newf(errdefs.ErrInvalid, api.CodeInvalidRequest, format, args...)
}

// Validate checks every field that is set. prefix is put before the field
// names in messages ("machine." for a request's object). Errors have code
// invalid-request.
func Validate(m api.Machine, prefix string) error {
	if m.Version != 0 && m.Version != api.MachineVersion {
		return invalid("%sversion %d is not %d", prefix, m.Version, api.MachineVersion)
	}
	if m.UUID != "" && !uuidRe.MatchString(m.UUID) {
		return invalid("%suuid %q is not a lower-case RFC 4122 UUID", prefix, m.UUID)
	}
	if m.Chipset != "" && !chipsetRe.MatchString(m.Chipset) {
		return invalid("%schipset %q is not q35, pc, pc-q35-X.Y or pc-i440fx-X.Y", prefix, m.Chipset)
	}
	for _, t := range []struct {
		name string
		n    int
	}{{"threads", m.Threads}, {"cores", m.Cores}, {"sockets", m.Sockets}} {
		if t.n < 0 || t.n > MaxTopology {
			return invalid("%s%s %d is not between 1 and %d", prefix, t.name, t.n, MaxTopology)
		}
	}
	if m.MemoryMiB < 0 {
		return invalid("%smemory %d is negative", prefix, m.MemoryMiB)
	}
	if m.MAC != "" {
		if !macRe.MatchString(m.MAC) {
			return invalid("%smac %q is not a MAC address in lower-case hex (52:54:00:12:34:56)", prefix, m.MAC)
		}
		var first byte
		fmt.Sscanf(m.MAC[:2], "%x", &first)
		if first&1 != 0 || first&2 == 0 {
			return invalid("%smac %q is not a local unicast address (its first byte must have bit 1 set and bit 0 clear, e.g. 52:…)", prefix, m.MAC)
		}
	}
	for _, e := range []struct {
		name, v string
		allowed []string
	}{
		{"cpu", m.CPU, CPUModels}, {"network", m.Network, Networks}, {"storage", m.Storage, Storages},
		{"graphics", m.Graphics, Graphics}, {"sound", m.Sound, Sounds}, {"usb", m.USB, USBs},
		{"keyboard", m.Keyboard, Inputs}, {"keyboard_layout", m.KeyboardLayout, KeyboardLayouts},
		{"mouse", m.Mouse, Inputs}, {"tablet", m.Tablet, Tablets}, {"firmware", m.Firmware, Firmwares},
	} {
		if e.v != "" && !slices.Contains(e.allowed, e.v) {
			return invalid("%s%s %q is not one of %s", prefix, e.name, e.v, strings.Join(e.allowed, ", "))
		}
	}
	return nil
}

// DerivedMACPrefix is the block of the MACs goldvm derives from VM ids
// (QEMU's own 52:54:00): a VM without a MAC in its machine definition gets
// one there. A definition's MAC in that block could be another VM's
// derived one, and is refused (see CheckMAC).
const DerivedMACPrefix = "52:54:00:"

// CheckMAC refuses a machine definition's MAC in the block goldvm derives
// MACs from (DerivedMACPrefix); field names it ("machine.mac", "mac").
// Moving the derived block instead would change the MAC of every VM
// created before, under its guest and its DHCP lease.
func CheckMAC(mac, field string) error {
	if strings.HasPrefix(strings.ToLower(mac), DerivedMACPrefix) {
		return invalid("%s %q is in %s00:00:00/24, the block goldvm derives VMs' MACs from, so it could be another VM's: give a local unicast MAC outside it (e.g. 02:%s)",
			field, mac, DerivedMACPrefix, mac[3:])
	}
	return nil
}

// Merge returns over with its empty fields taken from under.
func Merge(over, under api.Machine) api.Machine {
	m := over
	str := func(dst *string, v string) {
		if *dst == "" {
			*dst = v
		}
	}
	str(&m.UUID, under.UUID)
	str(&m.Chipset, under.Chipset)
	str(&m.CPU, under.CPU)
	str(&m.Network, under.Network)
	str(&m.MAC, under.MAC)
	str(&m.Storage, under.Storage)
	str(&m.Graphics, under.Graphics)
	str(&m.Sound, under.Sound)
	str(&m.USB, under.USB)
	str(&m.Keyboard, under.Keyboard)
	str(&m.KeyboardLayout, under.KeyboardLayout)
	str(&m.Mouse, under.Mouse)
	str(&m.Tablet, under.Tablet)
	str(&m.Firmware, under.Firmware)
	// The topology is one value: a definition that gives any of it gives
	// all of it (missing parts are 1).
	if m.Threads == 0 && m.Cores == 0 && m.Sockets == 0 {
		m.Threads, m.Cores, m.Sockets = under.Threads, under.Cores, under.Sockets
	}
	if m.MemoryMiB == 0 {
		m.MemoryMiB = under.MemoryMiB
	}
	return m
}

// HostDefaults is the hardware of a VM whose request and image say
// nothing: what goldvm gave every VM before machine definitions.
var HostDefaults = api.Machine{
	Chipset: "q35", CPU: "qemu64", Network: "virtio-net", Storage: "virtio-blk", Graphics: "std",
	Sound: "none", USB: "none", Keyboard: "ps2", Mouse: "ps2", Tablet: "none", Firmware: "bios",
}

// Limits are the host's machine limits (the seed's MachineLimits) and the
// defaults derived from them.
type Limits struct {
	// MaxCPUs bounds threads*cores*sockets (--max-cpus).
	MaxCPUs int
	// MaxMemoryMiB bounds memory (--max-memory).
	MaxMemoryMiB int64
	// DefaultThreads is the threads per core of a topology goldvm makes up
	// (--default-threads).
	DefaultThreads int
	// DefaultMemoryMiB is the memory of a VM whose request and image do
	// not say (--default-memory).
	DefaultMemoryMiB int64
}

// Topology returns the topology goldvm gives n vCPUs: one socket of
// n/threads cores of DefaultThreads threads, or of single-thread cores
// when n is not a multiple of DefaultThreads.
func (l Limits) Topology(n int) (threads, cores, sockets int) {
	t := max(l.DefaultThreads, 1)
	if n%t != 0 {
		t = 1
	}
	return t, n / t, 1
}

// Resolve fills what m leaves open from the limits (memory from
// DefaultMemoryMiB; a topology of DefaultThreads threads) and the host
// defaults, then checks the result against the limits. An error names
// the limit (as its flag) and has code invalid-request (see ImageError).
func (l Limits) Resolve(m api.Machine) (api.Machine, error) {
	m = Merge(m, HostDefaults)
	m.Version = api.MachineVersion
	if m.Threads == 0 && m.Cores == 0 && m.Sockets == 0 {
		m.Threads, m.Cores, m.Sockets = l.Topology(max(l.DefaultThreads, 1))
	}
	m.Threads, m.Cores, m.Sockets = max(m.Threads, 1), max(m.Cores, 1), max(m.Sockets, 1)
	if m.MemoryMiB == 0 {
		m.MemoryMiB = l.DefaultMemoryMiB
		if l.MaxMemoryMiB > 0 && (m.MemoryMiB == 0 || m.MemoryMiB > l.MaxMemoryMiB) {
			m.MemoryMiB = min(l.MaxMemoryMiB, 1024)
		}
	}
	if l.MaxCPUs > 0 && m.CPUs() > l.MaxCPUs {
		return m, errdefs.Newf(errdefs.ErrInvalid, api.CodeInvalidRequest, "%d vCPUs (threads %d × cores %d × sockets %d) is more than --max-cpus %d",
			m.CPUs(), m.Threads, m.Cores, m.Sockets, l.MaxCPUs)
	}
	if l.MaxMemoryMiB > 0 && m.MemoryMiB > l.MaxMemoryMiB {
		return m, errdefs.Newf(errdefs.ErrInvalid, api.CodeInvalidRequest, "memory %d MiB is more than --max-memory %d MiB", m.MemoryMiB, l.MaxMemoryMiB)
	}
	// USB input devices need a controller.
	if m.USB == "none" && (m.Keyboard == "usb" || m.Mouse == "usb" || m.Tablet == "usb") {
		m.USB = "qemu-xhci"
	}
	return m, nil
}
