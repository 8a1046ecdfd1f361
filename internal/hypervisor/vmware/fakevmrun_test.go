package vmware

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// runFake runs the stand-in vmrun directly and returns its output and exit
// status.
func runFake(t *testing.T, state string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(fakeVmrun, args...)
	cmd.Env = append(os.Environ(), "FAKEVMRUN_STATE="+state)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(out), 0
}

// TestFakeVmrunContract pins the stand-in to vmrun's command-line contract,
// so the driver's tests mean something: authentication flags before the
// command, output formats, "Error: …" with status 255, and refusals.
func TestFakeVmrunContract(t *testing.T) {
	state := t.TempDir()
	g := makeGold(t, "img")
	dst := filepath.Join(t.TempDir(), "c.vmx")

	if out, code := runFake(t, state); code != 255 || !strings.Contains(out, "Usage: vmrun") {
		t.Errorf("no command: %d %q", code, out)
	}
	if out, code := runFake(t, state, "-T", "fusion", "-gu", "user", "-gp", "secret", "list"); code != 0 || out != "Total running VMs: 0\n" {
		t.Errorf("list: %d %q", code, out)
	}
	if out, code := runFake(t, state, "-T", "fusion", "start", "/no/such.vmx", "nogui"); code != 255 ||
		out != "Error: Cannot open VM: /no/such.vmx, The virtual machine cannot be found\n" {
		t.Errorf("start missing: %d %q", code, out)
	}
	if out, code := runFake(t, state, "-T", "fusion", "listSnapshots", g.vmx); code != 0 || out != "Total snapshots: 0\n" {
		t.Errorf("listSnapshots: %d %q", code, out)
	}
	// The gold folder is read-only: VMware cannot snapshot it.
	if out, code := runFake(t, state, "-T", "fusion", "snapshot", g.vmx, "s1"); code != 255 || !strings.Contains(out, "Insufficient permissions") {
		t.Errorf("snapshot of a read-only VM: %d %q", code, out)
	}
	setWritable(g.root)
	if out, code := runFake(t, state, "-T", "fusion", "snapshot", g.vmx, "s1"); code != 0 {
		t.Errorf("snapshot: %d %q", code, out)
	}
	if out, code := runFake(t, state, "-T", "fusion", "snapshot", g.vmx, "s1"); code != 255 || out != "Error: A snapshot with the name already exists\n" {
		t.Errorf("snapshot again: %d %q", code, out)
	}
	if out, _ := runFake(t, state, "-T", "fusion", "listSnapshots", g.vmx); out != "Total snapshots: 1\ns1\n" {
		t.Errorf("listSnapshots: %q", out)
	}
	if out, code := runFake(t, state, "-T", "fusion", "clone", g.vmx, dst, "linked", "-snapshot=nope", "-cloneName=c"); code != 255 || !strings.Contains(out, "Invalid snapshot name") {
		t.Errorf("clone from a missing snapshot: %d %q", code, out)
	}
	if _, err := os.Stat(dst); err == nil {
		t.Error("refused clone wrote its .vmx")
	}
	if out, code := runFake(t, state, "-T", "fusion", "clone", g.vmx, dst, "linked", "-snapshot=s1", "-cloneName=c"); code != 0 {
		t.Fatalf("clone: %d %q", code, out)
	}
	if out, code := runFake(t, state, "-T", "fusion", "getGuestIPAddress", dst); code != 255 || !strings.Contains(out, "Error: The virtual machine is not powered on") {
		t.Errorf("IP of a stopped VM: %d %q", code, out)
	}
	if out, code := runFake(t, state, "-T", "fusion", "stop", dst, "soft"); code != 255 || !strings.Contains(out, "not powered on") {
		t.Errorf("stop of a stopped VM: %d %q", code, out)
	}
	if out, code := runFake(t, state, "-T", "fusion", "start", dst, "nogui"); code != 0 || out != "" {
		t.Errorf("start: %d %q", code, out)
	}
	if out, _ := runFake(t, state, "-T", "fusion", "list"); out != "Total running VMs: 1\n"+dst+"\n" {
		t.Errorf("list: %q", out)
	}
	if out, code := runFake(t, state, "-T", "fusion", "checkToolsState", dst); code != 0 || out != "running\n" {
		t.Errorf("checkToolsState: %d %q", code, out)
	}
	if out, code := runFake(t, state, "-T", "fusion", "deleteVM", dst); code != 255 {
		t.Errorf("deleteVM of a running VM: %d %q", code, out)
	}
	runFake(t, state, "-T", "fusion", "stop", dst, "hard")
	if out, code := runFake(t, state, "-T", "fusion", "deleteVM", dst); code != 0 {
		t.Errorf("deleteVM: %d %q", code, out)
	}
	if _, err := os.Stat(dst); err == nil {
		t.Error("deleteVM left the .vmx")
	}
	if out, code := runFake(t, state, "-T", "esx", "list"); code != 255 {
		t.Errorf("bad host type: %d %q", code, out)
	}
}

// TestSnapshotDeletedBehindDriver proves a driver that remembers the gold
// snapshot recovers when it was deleted meanwhile: the clone fails with
// vmrun's message, and the next clone makes the snapshot again.
func TestSnapshotDeletedBehindDriver(t *testing.T) {
	e := newEnv(t)
	g := makeGold(t, "img")
	d := e.driver(t)
	ctx := context.Background()
	must(t, d.Clone(ctx, spec(t, g, "a")))
	must(t, os.Remove(strings.TrimSuffix(e.base(g), ".vmx")+".vmsd"))
	err := d.Clone(ctx, spec(t, g, "b"))
	if code(err) != "vmrun-failed" || !strings.Contains(err.Error(), "Invalid snapshot name") {
		t.Fatalf("clone without the snapshot: %v", err)
	}
	must(t, d.Clone(ctx, spec(t, g, "c")))
	if n := e.count(t, "snapshot"); n != 2 {
		t.Errorf("snapshot ran %d times, want 2", n)
	}
	checkGoldUntouched(t, g)
}
