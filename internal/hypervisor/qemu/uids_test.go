package qemu

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/hypervisor"
)

// code returns err's stable code.
func code(err error) string {
	c, _ := errdefs.CodeOf(err)
	return c
}

func TestParseUIDRange(t *testing.T) {
	for in, want := range map[string]uidRange{
		"600000-600999": {600000, 600999},
		" 7 - 7 ":       {7, 7},
	} {
		if got, err := parseUIDRange(in); err != nil || got != want {
			t.Errorf("parseUIDRange(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "600000", "0-10", "10-5", "a-b", "-5", "1-4294967295", "1-2000000"} {
		if got, err := parseUIDRange(in); err == nil {
			t.Errorf("parseUIDRange(%q) = %v, want an error", in, got)
		}
	}
	if _, err := New(Config{UserNet: true, RunAs: "nobody", RunAsRange: "600000-600001"}); code(err) != "invalid-qemu-user" {
		t.Errorf("RunAs and RunAsRange together: %v, want invalid-qemu-user", err)
	}
}

// TestCredForPerVMUsers: each VM directory gets the lowest free id of the
// range, keeps it, and frees it when it is gone; a full range is refused.
func TestCredForPerVMUsers(t *testing.T) {
	if os.Geteuid() != 0 {
		unavailable(t, "giving directories to other users needs root")
	}
	d, err := New(Config{UserNet: true, RunAsRange: "600100-600102", Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	vms := t.TempDir()
	spec := func(id string) hypervisor.Spec {
		dir := filepath.Join(vms, id)
		os.MkdirAll(dir, 0o755)
		return hypervisor.Spec{ID: id, Dir: dir}
	}
	uidOf := func(id string) uint32 {
		t.Helper()
		c, err := d.credFor(spec(id))
		if err != nil {
			t.Fatalf("credFor(%s): %v", id, err)
		}
		fi, err := os.Stat(filepath.Join(vms, id))
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if st.Uid != c.Uid || st.Gid != c.Gid || c.Gid != c.Uid || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: QEMU as %d:%d, directory %d:%d %v; want the same ids, mode 0700", id, c.Uid, c.Gid, st.Uid, st.Gid, fi.Mode().Perm())
		}
		return c.Uid
	}
	os.Mkdir(filepath.Join(vms, "not-a-vm"), 0o755) // root's: ignored
	if a, b := uidOf("a"), uidOf("b"); a != 600100 || b != 600101 {
		t.Errorf("first two VMs got %d and %d, want 600100 and 600101", a, b)
	}
	if a := uidOf("a"); a != 600100 {
		t.Errorf("VM a asked again: %d, want its own 600100", a)
	}
	os.RemoveAll(filepath.Join(vms, "a"))
	if c := uidOf("c"); c != 600100 {
		t.Errorf("after a is gone, c got %d, want a's 600100 back", c)
	}
	if e := uidOf("e"); e != 600102 {
		t.Errorf("e got %d, want 600102", e)
	}
	if _, err := d.credFor(spec("f")); code(err) != "qemu-uids-exhausted" {
		t.Errorf("a fourth VM in a range of three: %v, want qemu-uids-exhausted", err)
	}
}
