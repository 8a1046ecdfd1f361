package qemu

import (
	"bufio"
	"context"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/hypervisor"
	"github.com/goldvm/goldvm/internal/machine"
)

// Each machine definition's hardware is QEMU's: the arguments name it.
func TestBuildArgsMachine(t *testing.T) {
	lp := launchParams{
		ID: "vm1", Dir: "/d", MemoryMiB: 256, MAC: "52:54:00:01:02:03", Net: netPlan{User: true},
		HW: api.Machine{
			Chipset: "pc", CPU: "max", Threads: 2, Cores: 3, Sockets: 2, Network: "e1000", Storage: "virtio-scsi",
			Graphics: "qxl", Sound: "hda", USB: "nec-xhci", Keyboard: "usb", Tablet: "usb", KeyboardLayout: "de",
			UUID: "0f8fad5b-d9cb-469f-a165-70867728950e", Firmware: "uefi",
		},
		FirmwareCode: "/fw/code.fd", FirmwareVars: "/d/efivars.fd",
	}
	joined := strings.Join(buildArgs(lp), " ")
	for _, w := range []string{
		"-machine pc,pflash0=fw-code,pflash1=fw-vars", "-cpu max", "-smp cpus=12,sockets=2,cores=3,threads=2",
		"-device e1000,netdev=n0,mac=52:54:00:01:02:03", "-device virtio-scsi-pci,id=scsi0", "-device scsi-hd,bus=scsi0.0,drive=disk",
		"-vga qxl", "-device intel-hda,id=hda0", "-device hda-duplex,bus=hda0.0,audiodev=snd0", "-device nec-usb-xhci,id=usb",
		"-device usb-kbd", "-device usb-tablet", "-k de", "-uuid 0f8fad5b-d9cb-469f-a165-70867728950e",
		`"filename":"/fw/code.fd","node-name":"fw-code","read-only":true`, `"filename":"/d/efivars.fd","node-name":"fw-vars"`,
	} {
		if !strings.Contains(joined, w) {
			t.Errorf("args lack %q:\n%s", w, joined)
		}
	}
	for _, bad := range []string{"virtio-net-pci", "virtio-blk-pci", "usb-mouse"} {
		if strings.Contains(joined, bad) {
			t.Errorf("args hold %q:\n%s", bad, joined)
		}
	}
	// Each storage bus keeps the disk's -blockdev nodes; only the device differs.
	for storage, dev := range map[string]string{"virtio-blk": "virtio-blk-pci,drive=disk", "ide": "ide-hd,bus=ide.0,drive=disk", "sata": "ide-hd,bus=sata0.0,drive=disk"} {
		a := diskArgs("/g.qcow2", "qcow2", "/d/disk.qcow2", storage)
		if a[0] != "-blockdev" || a[2] != "-blockdev" || a[len(a)-1] != dev {
			t.Errorf("%s: %q", storage, a)
		}
	}
}

// QEMU accepts every value of every enumerated field: a VM with each
// starts (QMP answers) and is destroyed.
func TestE2EMachineVariantsStart(t *testing.T) {
	guest := testGuest(t)
	gold := goldDir(t, guest)
	d, err := New(Config{Accel: "auto", UserNet: true, Sandbox: true, RunDir: t.TempDir(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	var variants []api.Machine
	for _, v := range machine.Graphics {
		variants = append(variants, api.Machine{Graphics: v})
	}
	for _, v := range machine.Storages {
		variants = append(variants, api.Machine{Storage: v})
	}
	for _, v := range machine.Sounds {
		variants = append(variants, api.Machine{Sound: v})
	}
	for _, v := range machine.USBs {
		variants = append(variants, api.Machine{USB: v, Keyboard: "usb", Mouse: "usb", Tablet: "usb"})
	}
	for _, v := range machine.Networks {
		variants = append(variants, api.Machine{Network: v})
	}
	variants = append(variants, api.Machine{Chipset: "pc", Storage: "ide", Sound: "hda"}, api.Machine{Firmware: "uefi"},
		api.Machine{Chipset: "pc", Firmware: "uefi"}, api.Machine{KeyboardLayout: "fr", UUID: "0f8fad5b-d9cb-469f-a165-70867728950e"})
	lim := machine.Limits{MaxCPUs: 4, MaxMemoryMiB: 512, DefaultThreads: 1, DefaultMemoryMiB: 128}
	for i, v := range variants {
		hw, err := lim.Resolve(v)
		if err != nil {
			t.Fatal(err)
		}
		spec := newSpec(t, "hw"+strconv.Itoa(i), gold, api.NetworkNAT)
		spec.Machine = &hw
		func() {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			destroyOnCleanup(t, d, spec)
			if err := d.Clone(ctx, spec); err != nil {
				t.Fatalf("%+v: clone: %v", v, err)
			}
			if err := d.Start(ctx, spec); err != nil {
				t.Errorf("%+v: start: %v", v, err)
				return
			}
			if v.Firmware == "uefi" {
				if _, err := os.Stat(filepath.Join(spec.Dir, fileEFIVars)); err != nil {
					t.Errorf("uefi: no variable store: %v", err)
				}
			}
			if err := d.Destroy(ctx, spec); err != nil {
				t.Errorf("%+v: destroy: %v", v, err)
			}
		}()
	}
}

var hwLineRe = regexp.MustCompile(`goldvm-guest: hw cpus=(\d+) siblings=(\S+) cores=(\S+) nic=(\S*) eth0=(\S+)`)

// waitHWLine boots spec's VM and returns what the guest reports of its
// hardware on its console.
func waitHWLine(t *testing.T, d *Driver, spec hypervisor.Spec) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	destroyOnCleanup(t, d, spec)
	if err := d.Clone(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	for ctx.Err() == nil {
		f, err := os.Open(filepath.Join(spec.Dir, fileConsole))
		if err == nil {
			sc := bufio.NewScanner(io.LimitReader(f, 1<<20))
			for sc.Scan() {
				if m := hwLineRe.FindStringSubmatch(sc.Text()); m != nil {
					f.Close()
					t.Logf("%s: %s", spec.ID, m[0])
					return m[1:]
				}
			}
			f.Close()
		}
		time.Sleep(200 * time.Millisecond)
	}
	console, _ := os.ReadFile(filepath.Join(spec.Dir, fileConsole))
	t.Fatalf("no hardware report on the console:\n%s", tail(string(console), 3000))
	return nil
}

// A guest booted with a machine definition that changes the NIC model
// and the CPU topology sees them: /proc/cpuinfo counts the vCPUs, PCI
// shows an Intel e1000 (8086:100e) and no virtio NIC (the test guest's
// cloud kernel has no e1000 driver, so eth0 is missing); the same guest
// with the host defaults sees one vCPU and a virtio NIC driven by
// virtio_net.
func TestE2EMachineGuestSees(t *testing.T) {
	guest := testGuest(t)
	gold := goldDir(t, guest)
	d, err := New(Config{Accel: "auto", UserNet: true, Sandbox: true, RunDir: t.TempDir(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	lim := machine.Limits{MaxCPUs: 2, MaxMemoryMiB: 512, DefaultThreads: 1, DefaultMemoryMiB: 128}
	// The image's definition (version 1, as taskcluster-worker wrote it) …
	img, err := machine.Parse([]byte(`{"version": 1, "network": "e1000", "threads": 2, "cores": 1, "sockets": 1, "memory": 160}`))
	if err != nil {
		t.Fatal(err)
	}
	// … under a request that changes the storage bus.
	hw, err := lim.Resolve(machine.Merge(api.Machine{Storage: "virtio-scsi"}, img))
	if err != nil {
		t.Fatal(err)
	}
	spec := newSpec(t, "hw-e1000", gold, api.NetworkNAT)
	spec.Machine, spec.CPUs, spec.MemoryMiB = &hw, hw.CPUs(), hw.MemoryMiB
	got := waitHWLine(t, d, spec)
	if got[0] != "2" || got[1] != "2" || got[3] != "0x8086:0x100e" || got[4] != "none" {
		t.Errorf("e1000, 2 threads: guest saw cpus=%s siblings=%s cores=%s nic=%s eth0=%s", got[0], got[1], got[2], got[3], got[4])
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := d.Destroy(ctx, spec); err != nil {
		t.Fatal(err)
	}

	def, err := lim.Resolve(api.Machine{})
	if err != nil {
		t.Fatal(err)
	}
	spec = newSpec(t, "hw-default", gold, api.NetworkNAT)
	spec.Machine = &def
	got = waitHWLine(t, d, spec)
	if got[0] != "1" || got[3] != "0x1af4:0x1000" || got[4] != "virtio_net" {
		t.Errorf("defaults: guest saw cpus=%s nic=%s eth0=%s", got[0], got[3], got[4])
	}
}

// Boot media: -kernel/-initrd/-append, and CD-ROMs as read-only raw nodes
// on the bus the storage model suggests.
func TestBuildArgsBootMedia(t *testing.T) {
	lp := launchParams{ID: "vm1", Dir: "/d", MemoryMiB: 256, MAC: "52:54:00:01:02:03", Net: netPlan{User: true},
		Kernel: "/m/k/media", Initrd: "/m/i/media", Append: "console=ttyS0 a=b,c", CDROMs: []string{"/m/c1/media", "/m/c2/media"}}
	joined := strings.Join(buildArgs(lp), " ")
	for _, w := range []string{"-kernel /m/k/media", "-initrd /m/i/media", "-append console=ttyS0 a=b,c",
		"-device virtio-scsi-pci,id=cdscsi", "-device scsi-cd,bus=cdscsi.0,drive=cd0", "-device scsi-cd,bus=cdscsi.0,drive=cd1",
		`"driver":"raw","file":{"driver":"file","filename":"/m/c1/media","read-only":true},"node-name":"cd0","read-only":true`} {
		if !strings.Contains(joined, w) {
			t.Errorf("args lack %q:\n%s", w, joined)
		}
	}
	for hw, want := range map[api.Machine][]string{
		{Storage: "sata"}:                {"ide-cd,bus=sata0.1,drive=cd0", "ide-cd,bus=sata0.2,drive=cd1"},
		{Storage: "ide", Chipset: "pc"}:  {"ide-cd,bus=ide.1,unit=0,drive=cd0", "ide-cd,bus=ide.1,unit=1,drive=cd1"},
		{Storage: "ide", Chipset: "q35"}: {"ide-cd,bus=ide.1,drive=cd0", "ide-cd,bus=ide.2,drive=cd1"},
		{Storage: "virtio-scsi"}:         {"scsi-cd,bus=scsi0.0,drive=cd0", "scsi-cd,bus=scsi0.0,drive=cd1"},
	} {
		a := strings.Join(cdromArgs(lp.CDROMs, hw), " ")
		for _, w := range want {
			if !strings.Contains(a, w) {
				t.Errorf("%+v: %s lacks %s", hw, a, w)
			}
		}
		if strings.Contains(a, "cdscsi") {
			t.Errorf("%+v: an extra virtio-scsi controller: %s", hw, a)
		}
	}
}

// An empty disk (no gold image) is one qcow2 node without a backing; with
// a gold disk, the overlay's backing is the gold node.
func TestDiskLayerArgsEmptyDisk(t *testing.T) {
	empty := strings.Join(diskLayerArgs("", "", "", "/d/disk.qcow2", "virtio-scsi"), " ")
	if strings.Contains(empty, `"gold"`) || !strings.Contains(empty, `"backing":null`) ||
		strings.Count(empty, "-blockdev") != 1 || !strings.Contains(empty, "scsi-hd,bus=scsi0.0,drive=disk") {
		t.Errorf("empty disk args: %s", empty)
	}
	gold := strings.Join(diskLayerArgs("/g/disk.qcow2", "qcow2", "", "/d/disk.qcow2", ""), " ")
	if !strings.Contains(gold, `"backing":"gold"`) || strings.Count(gold, "-blockdev") != 2 || !strings.HasSuffix(gold, "virtio-blk-pci,drive=disk") {
		t.Errorf("gold disk args: %s", gold)
	}
}
