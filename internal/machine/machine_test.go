package machine

import (
	"strings"
	"testing"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
)

func TestParse(t *testing.T) {
	m, err := Parse([]byte(`{"version": 2, "threads": 2, "cores": 2, "network": "e1000", "mac": "52:54:00:00:00:01", "firmware": "uefi"}`))
	if err != nil || m.CPUs() != 0 || m.Threads != 2 || m.Network != "e1000" || m.Firmware != "uefi" || m.Version != api.MachineVersion {
		t.Fatalf("v2: %+v %v", m, err)
	}
	// Version 1, as taskcluster-worker wrote it, is migrated.
	m, err = Parse([]byte(`{"version": 1, "uuid": "0f8fad5b-d9cb-469f-a165-70867728950e", "chipset": "pc-i440fx-2.8",
		"cpu": "host", "threads": 1, "cores": 2, "sockets": 1, "memory": 512, "usb": "piix3-usb-uhci", "network": "rtl8139",
		"mac": "02:00:00:00:00:01", "storage": "virtio-blk-pci", "graphics": "VGA", "sound": "hda-duplex/intel-hda",
		"keyboard": "usb-kbd", "keyboardLayout": "en-us", "mouse": "PS/2", "tablet": "usb-tablet"}`))
	want := api.Machine{Version: 2, UUID: "0f8fad5b-d9cb-469f-a165-70867728950e", Chipset: "pc-i440fx-2.8", CPU: "host",
		Threads: 1, Cores: 2, Sockets: 1, MemoryMiB: 512, USB: "piix3-uhci", Network: "rtl8139", MAC: "02:00:00:00:00:01",
		Storage: "virtio-blk", Graphics: "std", Sound: "hda", Keyboard: "usb", KeyboardLayout: "en-us", Mouse: "ps2", Tablet: "usb"}
	if err != nil || m != want {
		t.Fatalf("v1 migrated to\n%+v, %v; want\n%+v", m, err, want)
	}
	for _, tc := range []struct{ in, want string }{
		{`not json`, "not a JSON object"},
		{`[1]`, "not a JSON object"},
		{`{}`, "version is required"},
		{`{"version": 3}`, "version 3 is not supported"},
		{`{"version": 2, "mac": "01:00:00:00:00:01"}`, "not a local unicast"},
		{`{"version": 2, "mac": "00:16:3e:00:00:01"}`, "not a local unicast"},
		{`{"version": 2, "mac": "52-54-00-00-00-01"}`, "mac"},
		{`{"version": 2, "cores": 300}`, "cores 300"},
		{`{"version": 2, "memory": -1}`, "memory -1"},
		{`{"version": 2, "storage": "scsi"}`, `storage "scsi" is not one of`},
		{`{"version": 2, "chipset": "isapc"}`, "chipset"},
		{`{"version": 2, "uuid": "ABC"}`, "uuid"},
		{`{"version": 2, "cpu": "pentium; rm"}`, "cpu"},
		{`{"version": 2, "keyboard_layout": "xx"}`, "keyboard_layout"},
		{`{"version": 2, "extra": 1}`, `unknown field "extra"`},
		{`{"version": 2} {}`, "after top-level value"},
		{`{"version": 1, "flags": ["x"]}`, "flags"},
		{`{"version": 1, "graphics": "std"}`, `graphics "std"`},
		{`{"version": 1, "keyboard_layout": "de"}`, `unknown field`},
	} {
		_, err := Parse([]byte(tc.in))
		if code, _ := errdefs.CodeOf(err); err == nil || code != api.CodeImageBadMachine || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v (code %s), want image-bad-machine with %q", tc.in, err, code, tc.want)
		}
	}
	if _, err := Parse([]byte(`{"version": 2, "x": "` + strings.Repeat("a", MaxFileSize) + `"}`)); err == nil {
		t.Error("a huge machine.json was read")
	}
}

func TestResolve(t *testing.T) {
	lim := Limits{MaxCPUs: 4, MaxMemoryMiB: 2048, DefaultThreads: 2, DefaultMemoryMiB: 512}
	// Request over image over host defaults.
	req := api.Machine{Network: "rtl8139", Cores: 2}
	img := api.Machine{Network: "e1000", Threads: 2, Cores: 1, Sockets: 1, MemoryMiB: 1024, Storage: "ide", Tablet: "usb"}
	m, err := lim.Resolve(Merge(req, img))
	if err != nil {
		t.Fatal(err)
	}
	if m.Network != "rtl8139" || m.Storage != "ide" || m.MemoryMiB != 1024 || m.Chipset != "q35" || m.Graphics != "std" {
		t.Errorf("merged %+v", m)
	}
	// A topology is one value: the request's cores (threads and sockets 1), not mixed with the image's threads.
	if m.Threads != 1 || m.Cores != 2 || m.Sockets != 1 {
		t.Errorf("topology %d×%d×%d", m.Threads, m.Cores, m.Sockets)
	}
	if m.USB != "qemu-xhci" {
		t.Errorf("a USB tablet without a controller got usb %q", m.USB)
	}
	// Nothing said: the limits' defaults.
	m, err = lim.Resolve(api.Machine{})
	if err != nil || m.CPUs() != 2 || m.Threads != 2 || m.MemoryMiB != 512 || m.Version != api.MachineVersion {
		t.Errorf("defaults: %+v %v", m, err)
	}
	if th, co, so := lim.Topology(3); th != 1 || co != 3 || so != 1 {
		t.Errorf("3 vCPUs with 2 threads per core: %d×%d×%d", th, co, so)
	}
	for _, tc := range []struct {
		m    api.Machine
		want string
	}{
		{api.Machine{Sockets: 2, Cores: 2, Threads: 2}, "--max-cpus 4"},
		{api.Machine{MemoryMiB: 4096}, "--max-memory 2048 MiB"},
	} {
		if _, err := lim.Resolve(tc.m); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.m, err, tc.want)
		} else if code, _ := errdefs.CodeOf(ImageError(err)); code != api.CodeImageBadMachine {
			t.Errorf("ImageError code %s", code)
		}
	}
}
