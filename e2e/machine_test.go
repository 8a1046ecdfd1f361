package e2e

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
)

// machinePackage serves a tar of the test guest's disk with machineJSON at
// the package's root (none when nil), built in Go.
func machinePackage(t *testing.T, srv *imageServer, name string, machineJSON []byte) api.Image {
	t.Helper()
	disk, err := os.ReadFile(guestDisk)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(name string, data []byte) {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	if machineJSON != nil {
		add("machine.json", machineJSON)
	}
	add("disk.qcow2", disk)
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(srv.dir, name), buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(buf.Bytes())
	return api.Image{URL: srv.URL + "/" + name, Checksum: hex.EncodeToString(sum[:]), ChecksumType: "sha256"}
}

// ownUIDs is a range of QEMU user ids of the test's own: a daemon refuses
// to start while any QEMU (another test's, or another test run's on this
// host, still exiting) uses an id of its range, and the default range is
// shared.
func ownUIDs(t *testing.T) string {
	h := fnv.New32a()
	fmt.Fprintf(h, "%s %d", t.Name(), os.Getpid())
	first := 1995000000 + int(h.Sum32()%40000)*100
	return strconv.Itoa(first) + "-" + strconv.Itoa(first+99)
}

var hwLineRe = regexp.MustCompile(`goldvm-guest: hw cpus=(\d+) \S+ \S+ nic=(\S*) eth0=(\S+)`)

// guestHW waits for the guest's hardware report on its console.
func guestHW(t *testing.T, d *daemon, id string) []string {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		out, err := d.client.Console(context.Background(), id, 0)
		if err == nil {
			if m := hwLineRe.FindStringSubmatch(string(out)); m != nil {
				return m[1:]
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no hardware report on %s's console (err %v):\n%s", id, err, out)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// A VM from an image whose machine.json sets a CPU topology, memory, MAC
// and storage bus, under a request whose machine object changes the
// storage bus and graphics: GET shows the merged definition, the guest
// sees two vCPUs, and its console is reachable over VNC (the WebSocket
// relay and `goldvm vnc`) and as a screenshot (`goldvm screenshot`).
func TestMachineDefinition(t *testing.T) {
	requireEnv(t)
	srv := newImageServer(t)
	d := startDaemon(t, t.TempDir(), "--qemu-uid-range", ownUIDs(t), "--max-cpus", "2", "--max-memory", "1gib", "--default-memory", "144mib")
	img := machinePackage(t, srv, "hw.tar", []byte(`{"version": 2, "threads": 2, "cores": 1, "sockets": 1, "memory": 192,
		"network": "virtio-net", "mac": "02:54:00:aa:bb:cc", "storage": "virtio-scsi", "usb": "qemu-xhci", "tablet": "usb"}`))
	req := api.CreateVMRequest{NetworkType: "nat", Image: img, ToolsInitTimeout: api.Duration(3 * time.Minute),
		Machine: &api.Machine{Storage: "sata", Graphics: "virtio"}}
	v := mustCreate(t, d, req)
	v = waitVM(t, d, v.ID, 4*time.Minute)
	if v.Status != api.StatusRunning {
		t.Fatalf("VM: %s", fmtVM(v))
	}
	m := v.Machine
	if m == nil || v.CPUs != 2 || v.MemoryMiB != 192 || m.Threads != 2 || m.Storage != "sata" || m.Graphics != "virtio" ||
		m.MAC != "02:54:00:aa:bb:cc" || m.Tablet != "usb" || m.Chipset != "q35" || m.Firmware != "bios" || m.Version != api.MachineVersion {
		t.Errorf("merged machine: cpus %d, memory %d, %+v", v.CPUs, v.MemoryMiB, m)
	}
	if hw := guestHW(t, d, v.ID); hw[0] != "2" || hw[1] != "0x1af4:0x1000" || hw[2] != "virtio_net" {
		t.Errorf("guest saw cpus=%s nic=%s eth0=%s, want 2 vCPUs and a virtio NIC", hw[0], hw[1], hw[2])
	}

	t.Run("vnc websocket", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		ws, err := d.client.VNC(ctx, v.ID)
		if err != nil {
			t.Fatal(err)
		}
		defer ws.Close()
		greeting := make([]byte, 12)
		if _, err := io.ReadFull(ws, greeting); err != nil || string(greeting) != "RFB 003.008\n" {
			t.Fatalf("RFB greeting %q, %v", greeting, err)
		}
		// The client's version, and the server's list of security types.
		if _, err := ws.Write([]byte("RFB 003.008\n")); err != nil {
			t.Fatal(err)
		}
		n := make([]byte, 1)
		if _, err := io.ReadFull(ws, n); err != nil || n[0] == 0 {
			t.Fatalf("security types: %v %v", n, err)
		}
	})
	t.Run("goldvm vnc", func(t *testing.T) {
		cmd := exec.Command(goldvmBin, "vnc", "--addr", d.addr, v.ID)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { cmd.Process.Kill(); cmd.Wait() }()
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err != nil {
			t.Fatalf("goldvm vnc: %v\n%s", err, stderr.String())
		}
		c, err := net.DialTimeout("tcp", strings.TrimSpace(line), 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		greeting := make([]byte, 12)
		if _, err := io.ReadFull(c, greeting); err != nil || string(greeting) != "RFB 003.008\n" {
			t.Fatalf("RFB greeting over goldvm vnc %q, %v", greeting, err)
		}
	})
	t.Run("goldvm screenshot", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "shot.png")
		if b, err := exec.Command(goldvmBin, "screenshot", "--addr", d.addr, v.ID, "-o", out).CombinedOutput(); err != nil {
			t.Fatalf("goldvm screenshot: %v\n%s", err, b)
		}
		b, err := os.ReadFile(out)
		if err != nil || !bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")) {
			t.Fatalf("screenshot is not a PNG (%d bytes, %v)", len(b), err)
		}
	})

	// Over a limit: refused at once, naming the limit.
	bad := req
	bad.CPUs = 3
	bad.Machine = nil
	if _, err := d.client.CreateVM(context.Background(), bad); !isAPIError(err, 400, api.CodeInvalidRequest) || !strings.Contains(err.Error(), "--max-cpus 2") {
		t.Errorf("3 vCPUs with --max-cpus 2: %v", err)
	}
	// An image that asks for more than the limits fails its VM.
	big := machinePackage(t, srv, "big.tar", []byte(`{"version": 2, "memory": 4096}`))
	bv := mustCreate(t, d, api.CreateVMRequest{Image: big})
	bv = waitVM(t, d, bv.ID, 2*time.Minute)
	if bv.Status != api.StatusError || bv.Error.Code != api.CodeImageBadMachine || !strings.Contains(bv.Error.Message, "--max-memory 1024 MiB") {
		t.Errorf("image over the memory limit: %s", fmtVM(bv))
	}
	if err := d.client.DeleteVM(context.Background(), v.ID); err != nil {
		t.Fatal(err)
	}
}

// A bad machine.json fails the VM with image-bad-machine naming the
// field, and the image is not kept.
func TestMachineBadImage(t *testing.T) {
	requireEnv(t)
	srv := newImageServer(t)
	dataDir := t.TempDir()
	d := startDaemon(t, dataDir, "--qemu-uid-range", ownUIDs(t))
	for _, tc := range []struct{ name, json, want string }{
		{"notjson", `{"version": 2, "cores": `, "not a JSON object"},
		{"version", `{"version": 7}`, "version 7 is not supported"},
		{"mac", `{"version": 2, "mac": "01:00:5e:00:00:01"}`, `mac "01:00:5e:00:00:01" is not a local unicast address`},
		{"field", `{"version": 2, "network": "ne2000"}`, `network "ne2000" is not one of`},
		{"unknown", `{"version": 2, "turbo": true}`, `unknown field "turbo"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := machinePackage(t, srv, tc.name+".tar", []byte(tc.json))
			v := mustCreate(t, d, api.CreateVMRequest{Image: img, CPUs: 1, Memory: 128})
			v = waitVM(t, d, v.ID, 2*time.Minute)
			if v.Status != api.StatusError || v.Error == nil || v.Error.Code != api.CodeImageBadMachine || !strings.Contains(v.Error.Message, tc.want) {
				t.Fatalf("got %s, want image-bad-machine with %q", fmtVM(v), tc.want)
			}
			imgs, err := d.client.ListImages(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			for _, i := range imgs {
				if i.Checksum == img.Checksum && i.State == "ready" {
					t.Errorf("image with a bad machine.json was kept: %+v", i)
				}
			}
			entries, _ := os.ReadDir(filepath.Join(dataDir, "images"))
			for _, e := range entries {
				if strings.Contains(e.Name(), img.Checksum) && !strings.HasSuffix(e.Name(), ".partial") {
					t.Errorf("left behind: %s", e.Name())
				}
			}
			if err := d.client.DeleteVM(context.Background(), v.ID); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// The capacity queue: with room for one vCPU, a second VM waits (phase
// queued, its position shown) until the first is deleted, then runs; a
// third waits behind it and fails after --queue-timeout. A VM bigger than
// the whole capacity fails at once. After a restart the capacity is
// counted again from the running VMs.
func TestCapacityQueue(t *testing.T) {
	requireEnv(t)
	srv := newImageServer(t)
	d := startDaemon(t, t.TempDir(), "--qemu-uid-range", ownUIDs(t), "--capacity-cpus", "1", "--capacity-memory", "1gib", "--queue-timeout", "15s")
	img := publish(t, srv, "qcow2")
	ctx := context.Background()
	a := mustCreate(t, d, createReq(img, ""))
	if a = waitVM(t, d, a.ID, 3*time.Minute); a.Status != api.StatusRunning {
		t.Fatalf("A: %s", fmtVM(a))
	}
	b := mustCreate(t, d, createReq(img, ""))
	waitPhase := func(id string, pos int) {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for {
			v, err := d.client.GetVM(ctx, id)
			if err == nil && v.Phase == api.PhaseQueued && v.QueuePosition == pos {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not queued at %d: %+v %v", id, pos, v, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitPhase(b.ID, 1)
	c, err := d.client.Capacity(ctx)
	if err != nil || c.Total.CPUs != 1 || c.Used.CPUs != 1 || c.Waiting != 1 || c.Queued.CPUs != 1 || c.Free.CPUs != 0 {
		t.Errorf("capacity with A running and B queued: %+v %v", c, err)
	}
	// More than the whole capacity: no point waiting.
	huge := createReq(img, "")
	huge.CPUs = 2
	hv := waitVM(t, d, mustCreate(t, d, huge).ID, time.Minute)
	if hv.Status != api.StatusError || hv.Error.Code != api.CodeInsufficientCapacity {
		t.Errorf("2 vCPUs on a capacity of 1: %s", fmtVM(hv))
	}
	if err := d.client.DeleteVM(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	if b = waitVM(t, d, b.ID, 3*time.Minute); b.Status != api.StatusRunning {
		t.Fatalf("B after A's delete: %s", fmtVM(b))
	}
	cv := mustCreate(t, d, createReq(img, ""))
	waitPhase(cv.ID, 1)
	if cv = waitVM(t, d, cv.ID, 2*time.Minute); cv.Status != api.StatusError || cv.Error.Code != api.CodeInsufficientCapacity ||
		!strings.Contains(cv.Error.Message, "--queue-timeout") {
		t.Errorf("C after its timeout: %s", fmtVM(cv))
	}
	d.stop()
	d.start("--qemu-uid-range", ownUIDs(t), "--capacity-cpus", "1", "--capacity-memory", "1gib", "--queue-timeout", "15s")
	if c, err = d.client.Capacity(ctx); err != nil || c.Used.CPUs != 1 || c.Used.MemoryMiB != 128 || c.Waiting != 0 {
		t.Errorf("capacity after a restart with B running: %+v %v", c, err)
	}
	for _, id := range []string{b.ID, cv.ID, hv.ID} {
		if err := d.client.DeleteVM(ctx, id); err != nil {
			t.Error(err)
		}
	}
	if c, err = d.client.Capacity(ctx); err != nil || c.Used.CPUs != 0 || c.Reserved.CPUs != 0 {
		t.Errorf("capacity with no VMs: %+v %v", c, err)
	}
}

// Boot media: a VM boots the test guest's kernel and initrd directly with
// a command line of the request's (the syslinux on its disk would boot
// another), with a CD-ROM attached; all three are fetched by URL and
// checksum. A CD-ROM without a checksum, or three of them, are refused.
func TestBootMedia(t *testing.T) {
	requireEnv(t)
	srv := newImageServer(t)
	file := guestBootFiles(t, srv)
	cd := bytes.Repeat([]byte("goldvm-cdrom "), 80000)
	if err := os.WriteFile(filepath.Join(srv.dir, "cd.iso"), cd, 0o644); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, t.TempDir(), "--qemu-uid-range", ownUIDs(t))
	req := createReq(publish(t, srv, "qcow2"), "")
	initrd := file("initrd.gz")
	req.Boot = &api.Boot{Kernel: file("vmlinuz"), Initrd: &initrd, Append: "console=ttyS0,115200 panic=-1 8250.nr_uarts=1 goldvm.direct-boot=1"}
	req.CDROMs = []api.Image{file("cd.iso")}

	bad := req
	bad.CDROMs = []api.Image{{URL: srv.URL + "/cd.iso", ChecksumType: "sha256"}}
	if _, err := d.client.CreateVM(context.Background(), bad); !isAPIError(err, 400, api.CodeInvalidRequest) || !strings.Contains(err.Error(), "cdroms[0]: checksum must be 64 hex digits") {
		t.Errorf("cdrom without a checksum: %v", err)
	}
	bad.CDROMs = []api.Image{req.CDROMs[0], req.CDROMs[0], req.CDROMs[0]}
	if _, err := d.client.CreateVM(context.Background(), bad); !isAPIError(err, 400, api.CodeInvalidRequest) || !strings.Contains(err.Error(), "at most 2") {
		t.Errorf("three cdroms: %v", err)
	}

	v := mustCreate(t, d, req)
	if v = waitVM(t, d, v.ID, 4*time.Minute); v.Status != api.StatusRunning {
		t.Fatalf("VM: %s", fmtVM(v))
	}
	if v.Boot == nil || len(v.CDROMs) != 1 {
		t.Errorf("record lacks its boot media: %+v %+v", v.Boot, v.CDROMs)
	}
	console, err := d.client.Console(context.Background(), v.ID, 0)
	if err != nil || !regexp.MustCompile(`Kernel command line: .*goldvm\.direct-boot=1`).Match(console) {
		t.Errorf("the kernel did not get the request's command line (%v):\n%s", err, lastLines(string(console), 30))
	}
	pids := processesMatching("goldvm-" + v.ID)
	if len(pids) != 1 {
		t.Fatalf("QEMU processes of %s: %v", v.ID, pids)
	}
	cmdline, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pids[0]), "cmdline"))
	if err != nil {
		t.Fatal(err)
	}
	args := strings.Split(string(cmdline), "\x00")
	var cdrom bool
	for i, a := range args {
		if strings.HasPrefix(a, "scsi-cd,") && i > 2 && strings.Contains(args[i-2], filepath.Join(d.dataDir, "media")) {
			cdrom = true
		}
	}
	if !cdrom {
		t.Errorf("QEMU has no CD-ROM from the media store: %q", args)
	}
	if err := d.client.DeleteVM(context.Background(), v.ID); err != nil {
		t.Fatal(err)
	}
}
