package vmware

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/hypervisor"
	"github.com/goldvm/goldvm/internal/hypervisor/vmware/vmx"
)

// boots returns the boot time the stand-in keeps for each powered-on VM.
func (e env) boots(t *testing.T) map[string]int64 {
	t.Helper()
	ents, _ := os.ReadDir(filepath.Join(e.state, "running"))
	out := map[string]int64{}
	for _, ent := range ents {
		data, err := os.ReadFile(filepath.Join(e.state, "running", ent.Name()))
		must(t, err)
		path, ts, _ := strings.Cut(strings.TrimSpace(string(data)), "\n")
		n, err := strconv.ParseInt(ts, 10, 64)
		must(t, err)
		out[path] = n
	}
	return out
}

// used reports whether the stand-in ran exactly args (after -T <type>).
func (e env) used(t *testing.T, args ...string) bool {
	for _, c := range e.calls(t) {
		if len(c) > 2 && slices.Equal(c[2:], args) {
			return true
		}
	}
	return false
}

func wantNotRunning(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, hypervisor.ErrNotRunning) || code(err) != api.CodeVMNotRunning {
		t.Errorf("%s: %v (code %q), want vm-not-running wrapping ErrNotRunning", what, err, code(err))
	}
}

// TestPowerActions drives suspend, resume, restart (reset), stop and start
// through the stand-in vmrun: a suspended VM is off with its state in
// <name>.vmss named by checkpoint.vmState, resumes the same boot, a reset
// is a new boot, actions on a VM that is off fail with vm-not-running, and
// a suspended VM can be stopped and destroyed.
func TestPowerActions(t *testing.T) {
	e := newEnv(t)
	d := e.driver(t)
	g := makeGold(t, "img")
	s := spec(t, g, "vm-1")
	ctx := context.Background()
	path := filepath.Join(s.Dir, "vm-1.vmx")
	vmss := filepath.Join(s.Dir, "vm-1.vmss")
	discover := func(what string) {
		t.Helper()
		dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if info, err := d.Discover(dctx, s); err != nil || info.IPAddress == "" {
			t.Fatalf("Discover after %s: %+v, %v", what, info, err)
		}
	}
	state := func(what string, want hypervisor.State) {
		t.Helper()
		if st, err := d.State(ctx, s); err != nil || st != want {
			t.Fatalf("State after %s = %v, %v; want %v", what, st, err, want)
		}
	}

	must(t, d.Clone(ctx, s))
	must(t, d.Start(ctx, s))
	discover("start")
	boot := e.boots(t)[path]

	// Suspend: off, its state saved and named in the .vmx.
	must(t, d.Suspend(ctx, s))
	state("suspend", hypervisor.StateStopped)
	if !e.used(t, "suspend", path, "soft") {
		t.Errorf("no `vmrun suspend <vmx> soft` in %v", e.calls(t))
	}
	f, err := vmx.ReadFile(path)
	must(t, err)
	if v, _ := f.Get("checkpoint.vmState"); v != "vm-1.vmss" {
		t.Errorf("checkpoint.vmState = %q after suspend", v)
	}
	if _, err := os.Stat(vmss); err != nil {
		t.Errorf("no saved state: %v", err)
	}
	wantNotRunning(t, "suspend of a suspended VM", d.Suspend(ctx, s))
	wantNotRunning(t, "restart of a suspended VM", d.Restart(ctx, s))

	// Resume: the same boot goes on.
	must(t, d.Resume(ctx, s))
	state("resume", hypervisor.StateRunning)
	discover("resume")
	if got := e.boots(t)[path]; got != boot {
		t.Errorf("boot after resume = %d, want the same boot %d", got, boot)
	}
	if _, err := os.Stat(vmss); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("saved state still there after resume: %v", err)
	}
	must(t, d.Resume(ctx, s)) // running: nothing to do

	// Restart: vmrun reset, a new boot.
	must(t, d.Restart(ctx, s))
	state("restart", hypervisor.StateRunning)
	if !e.used(t, "reset", path, "soft") {
		t.Errorf("no `vmrun reset <vmx> soft` in %v", e.calls(t))
	}
	if got := e.boots(t)[path]; got <= boot {
		t.Errorf("boot after reset = %d, want a later boot than %d", got, boot)
	}

	// Stop, and the actions that need a VM powered on.
	must(t, d.Stop(ctx, s))
	state("stop", hypervisor.StateStopped)
	must(t, d.Stop(ctx, s)) // off: fine
	wantNotRunning(t, "suspend of a stopped VM", d.Suspend(ctx, s))
	wantNotRunning(t, "resume of a stopped VM", d.Resume(ctx, s))
	wantNotRunning(t, "restart of a stopped VM", d.Restart(ctx, s))

	// A suspended VM is stopped (resumed, then powered off hard) and
	// destroyed like any other.
	must(t, d.Start(ctx, s))
	must(t, d.Suspend(ctx, s))
	must(t, d.Stop(ctx, s))
	state("stop of a suspended VM", hypervisor.StateStopped)
	if suspended(path) {
		t.Error("a stopped VM still has a suspended state")
	}
	must(t, d.Start(ctx, s))
	must(t, d.Suspend(ctx, s))
	must(t, d.Destroy(ctx, s))
	if got := listDir(t, s.Dir); !slices.Equal(got, []string{"record.json"}) {
		t.Errorf("VM dir after Destroy of a suspended VM holds %v", got)
	}
}

// TestFakeVmrunPowerContract pins the stand-in's suspend and reset to
// vmrun's contract: soft|hard only, "not powered on" with status 255 for a
// VM that is off.
func TestFakeVmrunPowerContract(t *testing.T) {
	e := newEnv(t)
	d := e.driver(t)
	g := makeGold(t, "img")
	s := spec(t, g, "vm-1")
	must(t, d.Clone(context.Background(), s))
	path := filepath.Join(s.Dir, "vm-1.vmx")
	for _, cmd := range []string{"suspend", "reset"} {
		if out, code := runFake(t, e.state, "-T", "ws", cmd, path, "hard"); code != 255 || out != "Error: The virtual machine is not powered on: "+path+"\n" {
			t.Errorf("%s of a stopped VM: %d %q", cmd, code, out)
		}
	}
	if out, code := runFake(t, e.state, "-T", "ws", "start", path, "nogui"); code != 0 {
		t.Fatalf("start: %d %q", code, out)
	}
	for _, cmd := range []string{"suspend", "reset", "stop"} {
		if out, code := runFake(t, e.state, "-T", "ws", cmd, path, "gently"); code != 255 || !strings.Contains(out, "Invalid argument") {
			t.Errorf("%s with a bad mode: %d %q", cmd, code, out)
		}
	}
	if out, code := runFake(t, e.state, "-T", "ws", "suspend", path); code != 0 || out != "" {
		t.Errorf("suspend (soft by default): %d %q", code, out)
	}
	if out, _ := runFake(t, e.state, "-T", "ws", "list"); out != "Total running VMs: 0\n" {
		t.Errorf("list after suspend: %q", out)
	}
}
