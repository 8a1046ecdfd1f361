package vmware

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/goldvm/goldvm/internal/hypervisor/drivertest"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/hypervisor"
)

// fakeVmrun is the stand-in vmrun built once for the package's tests.
var fakeVmrun string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "fakevmrun")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	exe := filepath.Join(dir, "vmrun")
	if os.PathSeparator == '\\' {
		exe += ".exe"
	}
	cmd := exec.Command("go", "build", "-o", exe, "./testdata/fakevmrun")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building the stand-in vmrun:", err)
		os.Exit(1)
	}
	fakeVmrun = exe
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// goldVMX is a gold VM's .vmx as a packaged Debian VM would have it.
const goldVMX = `.encoding = "UTF-8"
config.version = "8"
virtualHW.version = "19"
# Packaged by the CI image pipeline; keep this comment.
displayName = "Debian 12 gold"
guestOS = "debian12-64"
numvcpus = "2"
cpuid.coresPerSocket = "2"
memsize = "2048"
firmware = "efi"
scsi0.present = "TRUE"
scsi0.virtualDev = "pvscsi"
scsi0:0.present = "TRUE"
scsi0:0.fileName = "Debian 12.vmdk"
ethernet0.present = "TRUE"
ethernet0.connectionType = "bridged"
ethernet0.virtualDev = "vmxnet3"
ethernet0.addressType = "generated"
ethernet0.generatedAddress = "00:0c:29:aa:bb:cc"
ethernet0.generatedAddressOffset = "0"
uuid.bios = "56 4d 11 22 33 44 55 66-77 88 99 aa bb cc dd ee"
uuid.location = "56 4d 11 22 33 44 55 66-77 88 99 aa bb cc dd ee"
annotation = "gold image|0Abuilt 2026-11-01"
tools.syncTime = "TRUE"
`

const goldDisk = "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicSparse\"\n"

// gold is a gold image laid out as goldvm unpacks it.
type gold struct {
	root string // spec.GoldDir
	key  string // spec.ImageKey
	vmx  string
	vmdk string
	// tree is every entry under root as made: its mode and contents.
	tree map[string]string
}

// makeGold unpacks a gold VM under a fresh directory: root/<top>/Debian
// 12.vmwarevm/{Debian 12.vmx, Debian 12.vmdk}, plus the resource-fork junk a
// Mac-made archive carries, and makes it read-only (0555/0444) as goldvm
// does.
func makeGold(t *testing.T, top string) gold {
	t.Helper()
	root := filepath.Join(t.TempDir(), "gold images", "sha256-abc")
	vmdir := filepath.Join(root, top, "Debian 12.vmwarevm")
	if err := os.MkdirAll(vmdir, 0o755); err != nil {
		t.Fatal(err)
	}
	g := gold{root: root, vmx: filepath.Join(vmdir, "Debian 12.vmx"), vmdk: filepath.Join(vmdir, "Debian 12.vmdk")}
	must(t, os.WriteFile(g.vmx, []byte(goldVMX), 0o644))
	must(t, os.WriteFile(g.vmdk, []byte(goldDisk), 0o644))
	must(t, os.WriteFile(filepath.Join(vmdir, "._Debian 12.vmx"), []byte("\x00\x05\x16\x07AppleDouble"), 0o644))
	must(t, os.MkdirAll(filepath.Join(root, "__MACOSX", top), 0o755))
	must(t, os.WriteFile(filepath.Join(root, "__MACOSX", top, "._Debian 12.vmx"), []byte("junk"), 0o644))
	setReadOnly(t, root)
	t.Cleanup(func() { setWritable(root) })
	sum := sha256.Sum256([]byte(root))
	g.key = "sha256-" + hex.EncodeToString(sum[:])
	g.tree = treeOf(t, root)
	return g
}

// treeOf describes every entry under root: its mode and, for files, contents.
func treeOf(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	must(t, filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := e.Info()
		if err != nil {
			return err
		}
		desc := info.Mode().String()
		if info.Mode().IsRegular() {
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += " " + string(data)
		}
		out[p] = desc
		return nil
	}))
	return out
}

// checkGoldUntouched checks the gold image is exactly as published: the
// same entries, modes and contents (VMware's snapshot state lives in the
// driver's own directory).
func checkGoldUntouched(t *testing.T, g gold) {
	t.Helper()
	got := treeOf(t, g.root)
	for p, want := range g.tree {
		if got[p] != want {
			t.Errorf("gold entry %s changed: %q, want %q", p, got[p], want)
		}
	}
	for p := range got {
		if _, ok := g.tree[p]; !ok {
			t.Errorf("gold image gained %s", p)
		}
	}
}

func setReadOnly(t *testing.T, root string) {
	t.Helper()
	var dirs []string
	must(t, filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if e.IsDir() {
			dirs = append(dirs, p)
			return nil
		}
		return os.Chmod(p, 0o444)
	}))
	for i := len(dirs) - 1; i >= 0; i-- {
		must(t, os.Chmod(dirs[i], 0o555))
	}
}

func setWritable(root string) {
	filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err == nil {
			if e.IsDir() {
				os.Chmod(p, 0o755)
			} else {
				os.Chmod(p, 0o644)
			}
		}
		return nil
	})
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// env is a stand-in vmrun's world: its state directory, and the driver's
// own directory (kept across driver instances, as across daemon restarts).
type env struct {
	state    string
	stateDir string
}

func newEnv(t *testing.T) env {
	return env{state: t.TempDir(), stateDir: filepath.Join(t.TempDir(), "vmware")}
}

// base is the driver's base VM of g.
func (e env) base(g gold) string {
	return filepath.Join(e.stateDir, g.key, baseName)
}

// driver returns a Driver running the stand-in vmrun with the given knobs.
func (e env) driver(t *testing.T, knobs ...string) *Driver {
	t.Helper()
	d, err := New(Config{VmrunPath: fakeVmrun, HostType: "fusion", StateDir: e.stateDir, Logger: testLogger(t), StopTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	d.env = append([]string{"FAKEVMRUN_STATE=" + e.state}, knobs...)
	d.pollInterval = 20 * time.Millisecond
	d.waitDelay = 500 * time.Millisecond
	return d
}

// calls returns the stand-in's invocations, each as its argument list.
func (e env) calls(t *testing.T) [][]string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(e.state, "calls.log"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out [][]string
	for _, line := range strings.Split(strings.TrimRight(string(data), "\n"), "\n") {
		if line != "" {
			out = append(out, strings.Split(line, "\t"))
		}
	}
	return out
}

// count returns how many invocations ran command.
func (e env) count(t *testing.T, command string) int {
	n := 0
	for _, c := range e.calls(t) {
		if len(c) > 2 && c[2] == command {
			n++
		}
	}
	return n
}

// spec returns a Spec for a new VM whose directory (0700, with a file of
// someone else's in it) exists, as the manager prepares it.
func spec(t *testing.T, g gold, id string) hypervisor.Spec {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "vms dir", id)
	must(t, os.MkdirAll(dir, 0o700))
	must(t, os.WriteFile(filepath.Join(dir, "record.json"), []byte("{}"), 0o600))
	return hypervisor.Spec{
		ID: id, Dir: dir, GoldDir: g.root, ImageKey: g.key,
		CPUs: 3, MemoryMiB: 1025, Network: api.NetworkNAT, Headless: true,
	}
}

func testLogger(t *testing.T) *slog.Logger { return drivertest.Logger(t) }

// fileMode returns the permission bits of p.
func fileMode(t *testing.T, p string) os.FileMode {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

var _ = bytes.Equal
