package qemu

import (
	"errors"
	"github.com/goldvm/goldvm/internal/diskfmt/diskfmttest"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/hypervisor"
)

func TestChooseAccel(t *testing.T) {
	withVMX := "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr vmx sse2\n"
	withSVM := "flags\t\t: fpu svm lm\n"
	noVirt := "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr sse2 hypervisor\nbugs\t\t: vmx_foo\n"
	noKVM := errors.New("open /dev/kvm: no such file or directory")
	cases := []struct {
		mode    string
		kvmErr  error
		cpuinfo string
		want    string
		wantErr bool
	}{
		{"auto", nil, withVMX, "kvm", false},
		{"", nil, withSVM, "kvm", false},
		{"auto", nil, noVirt, "tcg", false}, // /dev/kvm exists, no flags: nested host where guests freeze
		{"auto", noKVM, withVMX, "tcg", false},
		{"tcg", nil, withVMX, "tcg", false},
		{"kvm", nil, noVirt, "kvm", false}, // explicit request is honoured
		{"kvm", noKVM, withVMX, "", true},
		{"xen", nil, withVMX, "", true},
	}
	for _, c := range cases {
		got, err := chooseAccel(c.mode, c.kvmErr, c.cpuinfo)
		if (err != nil) != c.wantErr {
			t.Errorf("chooseAccel(%q, %v): err = %v", c.mode, c.kvmErr, err)
			continue
		}
		if got.Name != c.want {
			t.Errorf("chooseAccel(%q, %v, …) = %q, want %q", c.mode, c.kvmErr, got.Name, c.want)
		}
		if c.want == "tcg" && !slices.Equal(got.Args, []string{"-accel", "tcg,tb-size=32"}) {
			t.Errorf("tcg args = %q", got.Args)
		}
	}
}

func TestMACAndTap(t *testing.T) {
	re := regexp.MustCompile(`^52:54:00:[0-9a-f]{2}:[0-9a-f]{2}:[0-9a-f]{2}$`)
	seen := map[string]bool{}
	for _, id := range []string{"01HZX0000000000000000000A", "01HZX0000000000000000000B", "x"} {
		m := macFor(id)
		if !re.MatchString(m) {
			t.Errorf("macFor(%q) = %q", id, m)
		}
		if macFor(id) != m {
			t.Errorf("macFor not stable")
		}
		tap := tapFor(id)
		if len(tap) > 15 || !strings.HasPrefix(tap, "gv") {
			t.Errorf("tapFor(%q) = %q", id, tap)
		}
		if seen[m] || seen[tap] {
			t.Errorf("collision for %q", id)
		}
		seen[m], seen[tap] = true, true
	}
}

func TestBuildArgs(t *testing.T) {
	lp := launchParams{
		ID: "vm1", Dir: "/data/vms/a,b", CPUs: 2, MemoryMiB: 128, Machine: "q35",
		Accel: accelTCG, Display: "none", Sandbox: true, MAC: "52:54:00:01:02:03",
		Net: netPlan{Kind: api.NetworkNAT, Tap: "gv0123456789ab", Bridge: "goldvm0"},
	}
	a := buildArgs(lp)
	joined := strings.Join(a, " ")
	want := []string{
		"-name goldvm-vm1", "-machine q35", "-accel tcg,tb-size=32", "-cpu qemu64", "-smp cpus=2,sockets=1,cores=2,threads=1", "-m 128",
		"-nodefaults", "-no-user-config", "-display none", "-vga std", "-vnc unix:/data/vms/a,,b/vnc.sock",
		"-serial file:/data/vms/a,,b/console.log",
		`"filename":"/data/vms/a,b/disk.qcow2"`,
		"-device virtio-blk-pci,drive=disk",
		"-netdev tap,id=n0,ifname=gv0123456789ab,script=no,downscript=no",
		"-device virtio-net-pci,netdev=n0,mac=52:54:00:01:02:03",
		"-chardev socket,id=qga0,path=/data/vms/a,,b/qga.sock,server=on,wait=off",
		"name=org.qemu.guest_agent.0",
		"-qmp unix:/data/vms/a,,b/qmp.sock,server=on,wait=off",
		"-qmp unix:/data/vms/a,,b/qmp-watch.sock,server=on,wait=off",
		"-pidfile /data/vms/a,b/qemu.pid",
		"-sandbox " + sandboxArg,
	}
	for _, w := range want {
		if !strings.Contains(joined, w) {
			t.Errorf("args lack %q:\n%s", w, joined)
		}
	}
	for _, bad := range []string{"-daemonize", "-no-reboot", "-enable-kvm"} {
		if slices.Contains(a, bad) {
			t.Errorf("args contain %s", bad)
		}
	}
	if got := qemuVMID(append([]string{"/usr/bin/qemu-system-x86_64"}, a...)); got != "vm1" {
		t.Errorf("qemuVMID = %q", got)
	}

	// A window: the sandbox lets QEMU spawn, which gtk and sdl need.
	lp.Display = "gtk"
	joined = strings.Join(buildArgs(lp), " ")
	if !strings.Contains(joined, "-display gtk") || !strings.Contains(joined, "-sandbox "+guiSandboxArg) || strings.Contains(joined, "spawn=deny") {
		t.Errorf("gtk args: %s", joined)
	}
	lp.Display = "none"

	// An unprivileged QEMU gets the tap as an open file.
	lp.TapFD = 3
	joined = strings.Join(buildArgs(lp), " ")
	if !strings.Contains(joined, "-netdev tap,id=n0,fd=3 ") || strings.Contains(joined, "ifname=") {
		t.Errorf("tap fd args: %s", joined)
	}
	lp.TapFD = 0

	lp.Net = netPlan{Kind: api.NetworkNAT, User: true}
	lp.Sandbox = false
	lp.Dir = "/" + strings.Repeat("d", 120)
	a = buildArgs(lp)
	joined = strings.Join(a, " ")
	if !strings.Contains(joined, "-netdev user,id=n0,hostfwd=tcp:127.0.0.1:0-:22") {
		t.Errorf("user net args: %s", joined)
	}
	if strings.Contains(joined, "-sandbox") {
		t.Errorf("sandbox when disabled")
	}
	// Sockets too long for sun_path are given relative to QEMU's cwd.
	if !strings.Contains(joined, "-qmp unix:qmp.sock,") || !strings.Contains(joined, "path=qga.sock,") {
		t.Errorf("long dir: sockets not relative: %s", joined)
	}
}

func TestQemuVMID(t *testing.T) {
	cases := map[string][]string{
		"abc": {"qemu-system-x86_64", "-name", "goldvm-abc"},
		"d":   {"/usr/bin/qemu-system-x86_64", "-name", "guest=goldvm-d,debug-threads=on"},
		"":    {"/bin/sleep", "-name", "goldvm-x"},
	}
	for want, args := range cases {
		if got := qemuVMID(args); got != want {
			t.Errorf("qemuVMID(%q) = %q, want %q", args, got, want)
		}
	}
	if qemuVMID([]string{"qemu-system-x86_64", "-name", "other"}) != "" || qemuVMID(nil) != "" {
		t.Error("non-goldvm qemu recognised")
	}
}

func TestLeases(t *testing.T) {
	text := `1700000000 52:54:00:aa:bb:cc 10.213.0.57 guest 01:52:54:00:aa:bb:cc
garbage line
1700000100 52:54:00:11:22:33 10.213.0.60 * *
1700000200 52:54:00:AA:BB:CC 10.213.0.58 guest *
1700000300 52:54:00:aa:bb:dd fe80::1 guest *
`
	ls := parseLeases(strings.NewReader(text))
	if len(ls) != 3 {
		t.Fatalf("parsed %d leases: %+v", len(ls), ls)
	}
	if got := leaseIP(ls, "52:54:00:aa:bb:cc"); got != "10.213.0.58" {
		t.Errorf("leaseIP = %q, want the newest", got)
	}
	if got := leaseIP(ls, "52:54:00:11:22:33"); got != "10.213.0.60" {
		t.Errorf("leaseIP = %q", got)
	}
	if got := leaseIP(ls, "52:54:00:00:00:00"); got != "" {
		t.Errorf("leaseIP unknown = %q", got)
	}
}

func TestDHCPRange(t *testing.T) {
	cases := map[string]string{
		"10.213.0.1/24":   "10.213.0.2,10.213.0.254,255.255.255.0,1h",
		"10.214.0.254/24": "10.214.0.1,10.214.0.253,255.255.255.0,1h",
		"192.168.8.9/29":  "192.168.8.10,192.168.8.14,255.255.255.248,1h",
	}
	for in, want := range cases {
		got, err := dhcpRange(in)
		if err != nil || got != want {
			t.Errorf("dhcpRange(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"10.213.0.0/24", "10.213.0.255/24", "fd00::1/64", "nonsense", "10.0.0.1/30"} {
		if _, err := dhcpRange(bad); err == nil {
			t.Errorf("dhcpRange(%q) accepted", bad)
		}
	}
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestFindGoldDisk(t *testing.T) {
	qcow := diskfmttest.Qcow2(3, "", "", false)
	code := func(err error) string { c, _ := errdefs.CodeOf(err); return c }

	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "README.txt"), []byte("hello"))
	writeFile(t, filepath.Join(dir, "sub", "disk.bin"), qcow) // found by content, not name
	os.Symlink("/etc/passwd", filepath.Join(dir, "link.img"))
	g, err := findGoldDisk(dir)
	if err != nil || g.Format != "qcow2" || g.Path != filepath.Join(dir, "sub", "disk.bin") {
		t.Errorf("qcow2: %+v %v", g, err)
	}

	// A VMDK descriptor with its extents is one disk.
	dir = t.TempDir()
	writeFile(t, filepath.Join(dir, "box.vmdk"), []byte("# Disk DescriptorFile\nversion=1\nRW 4192256 SPARSE \"box-s001.vmdk\"\nRW 4192256 SPARSE \"box-s002.vmdk\"\n"))
	writeFile(t, filepath.Join(dir, "box-s001.vmdk"), append([]byte("KDMV"), make([]byte, 60)...))
	writeFile(t, filepath.Join(dir, "box-s002.vmdk"), append([]byte("KDMV"), make([]byte, 60)...))
	writeFile(t, filepath.Join(dir, "box.vmx"), []byte(".encoding = \"UTF-8\"\n"))
	g, err = findGoldDisk(dir)
	if err != nil || g.Format != "vmdk" || filepath.Base(g.Path) != "box.vmdk" {
		t.Errorf("vmdk: %+v %v", g, err)
	}

	dir = t.TempDir()
	writeFile(t, filepath.Join(dir, "disk.raw"), make([]byte, 1024))
	if g, err = findGoldDisk(dir); err != nil || g.Format != "raw" {
		t.Errorf("raw: %+v %v", g, err)
	}

	dir = t.TempDir()
	writeFile(t, filepath.Join(dir, "notes.txt"), []byte("x"))
	writeFile(t, filepath.Join(dir, "empty.img"), nil)
	if _, err = findGoldDisk(dir); code(err) != "image-no-disk" || !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("no disk: %v", err)
	}

	dir = t.TempDir()
	writeFile(t, filepath.Join(dir, "a.qcow2"), qcow)
	writeFile(t, filepath.Join(dir, "b.img"), make([]byte, 512))
	if _, err = findGoldDisk(dir); code(err) != "image-many-disks" || !strings.Contains(err.Error(), "a.qcow2, b.img") {
		t.Errorf("many disks: %v", err)
	}
}

func TestPickIPv4(t *testing.T) {
	ifs := []qgaInterface{
		{Name: "lo", HardwareAddress: "00:00:00:00:00:00"},
		{Name: "eth1", HardwareAddress: "52:54:00:00:00:01"},
		{Name: "eth0", HardwareAddress: "52:54:00:aa:bb:cc"},
	}
	ifs[0].IPAddresses = append(ifs[0].IPAddresses, struct {
		Type    string `json:"ip-address-type"`
		Address string `json:"ip-address"`
		Prefix  int    `json:"prefix"`
	}{"ipv4", "127.0.0.1", 8})
	ifs[1].IPAddresses = append(ifs[1].IPAddresses, struct {
		Type    string `json:"ip-address-type"`
		Address string `json:"ip-address"`
		Prefix  int    `json:"prefix"`
	}{"ipv4", "192.168.1.5", 24})
	ifs[2].IPAddresses = append(ifs[2].IPAddresses, struct {
		Type    string `json:"ip-address-type"`
		Address string `json:"ip-address"`
		Prefix  int    `json:"prefix"`
	}{"ipv6", "fe80::1", 64}, struct {
		Type    string `json:"ip-address-type"`
		Address string `json:"ip-address"`
		Prefix  int    `json:"prefix"`
	}{"ipv4", "10.0.2.15", 24})
	if got := pickIPv4(ifs, "52:54:00:AA:BB:CC"); got != "10.0.2.15" {
		t.Errorf("own MAC: %q", got)
	}
	if got := pickIPv4(ifs, "52:54:00:99:99:99"); got != "192.168.1.5" {
		t.Errorf("fallback: %q", got)
	}
	if got := pickIPv4(ifs[:1], ""); got != "" {
		t.Errorf("loopback only: %q", got)
	}
}

func TestSupportsNetwork(t *testing.T) {
	code := func(err error) string { c, _ := errdefs.CodeOf(err); return c }
	d := &Driver{root: true, cfg: Config{}}
	if err := d.SupportsNetwork(api.NetworkBridged); code(err) != "bridged-not-configured" || !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("bridged unconfigured: %v", err)
	}
	d.cfg.BridgedBridge = "br0"
	if err := d.SupportsNetwork(api.NetworkBridged); err != nil {
		t.Errorf("bridged: %v", err)
	}
	if err := d.SupportsNetwork("wifi"); code(err) != "invalid-network-type" {
		t.Errorf("unknown: %v", err)
	}
	d = &Driver{root: false, cfg: Config{BridgedBridge: "br0"}}
	if err := d.SupportsNetwork(api.NetworkNAT); err != nil {
		t.Errorf("nat unprivileged: %v", err)
	}
	for _, nt := range []string{api.NetworkHostOnly, api.NetworkBridged} {
		if err := d.SupportsNetwork(nt); code(err) != "network-needs-root" {
			t.Errorf("%s unprivileged: %v", nt, err)
		}
	}
	np, err := d.plan(hypervisor.Spec{ID: "x", Network: api.NetworkNAT})
	if err != nil || !np.User {
		t.Errorf("unprivileged nat plan: %+v %v", np, err)
	}
	d = &Driver{root: true, cfg: Config{NATBridge: "goldvm0", NATSubnet: "10.213.0.1/24"}}
	np, err = d.plan(hypervisor.Spec{ID: "x", Network: api.NetworkNAT})
	if err != nil || np.User || np.Bridge != "goldvm0" || !np.DHCP || !np.Masquerade || np.Tap != tapFor("x") {
		t.Errorf("root nat plan: %+v %v", np, err)
	}
}

func mkdirAll(p string) error { return os.MkdirAll(p, 0o700) }

func TestNewMissingBinary(t *testing.T) {
	_, err := New(Config{QemuBinary: "/nonexistent/qemu-system-x86_64", UserNet: true})
	if code, _ := errdefs.CodeOf(err); code != "hypervisor-not-installed" || !strings.Contains(err.Error(), "apt-get install -y --no-install-recommends qemu-system-x86") {
		t.Errorf("missing qemu: %v", err)
	}
}

func TestDestroyNothing(t *testing.T) {
	if _, err := lookPath("qemu-system-x86_64"); err != nil {
		unavailable(t, "no qemu: %v", err)
	}
	d, err := New(Config{UserNet: true})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	spec := hypervisor.Spec{ID: "never-made", Dir: dir, Network: api.NetworkNAT, CPUs: 1, MemoryMiB: 128}
	for i := 0; i < 2; i++ {
		if err := d.Destroy(t.Context(), spec); err != nil {
			t.Fatalf("destroy #%d: %v", i, err)
		}
	}
	if st, err := d.State(t.Context(), spec); err != nil || st != hypervisor.StateStopped {
		t.Errorf("state = %q, %v", st, err)
	}
	if err := d.Start(t.Context(), spec); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("start without clone: %v", err)
	}
	spec.ID = "bad,id"
	if err := d.Destroy(t.Context(), spec); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("bad id: %v", err)
	}
}

func TestHostNameservers(t *testing.T) {
	p := filepath.Join(t.TempDir(), "resolv.conf")
	writeFile(t, p, []byte("# x\nnameserver 127.0.0.53\nnameserver 192.0.2.53\nnameserver 2001:db8::1\nsearch example\nnameserver 198.51.100.1 \n"))
	if got := hostNameservers(p); !slices.Equal(got, []string{"192.0.2.53", "198.51.100.1"}) {
		t.Errorf("got %q", got)
	}
	if got := hostNameservers(filepath.Join(t.TempDir(), "none")); got != nil {
		t.Errorf("missing file: %q", got)
	}
}

func TestDisplayFallback(t *testing.T) {
	d := &Driver{log: slog.New(slog.NewTextHandler(io.Discard, nil)), displays: map[string]bool{"none": true, "curses": true}}
	d.displayOnce.Do(func() {})
	t.Setenv("DISPLAY", ":0")
	t.Setenv("WAYLAND_DISPLAY", "")
	if got := d.display(hypervisor.Spec{Headless: false}); got != "none" {
		t.Errorf("no gtk/sdl: %q", got)
	}
	d.displays["gtk"] = true
	if got := d.display(hypervisor.Spec{Headless: false}); got != "gtk" {
		t.Errorf("gtk available: %q", got)
	}
	if got := d.display(hypervisor.Spec{Headless: true}); got != "none" {
		t.Errorf("headless: %q", got)
	}
	t.Setenv("DISPLAY", "")
	if got := d.display(hypervisor.Spec{Headless: false}); got != "none" {
		t.Errorf("no DISPLAY: %q", got)
	}
}
