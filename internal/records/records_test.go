package records

import (
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
)

func openTemp(t *testing.T) (*DB, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "goldvm.db")
	s, err := Open(path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s, path
}

func TestCreateGetUpdateDeleteSurvivesReopen(t *testing.T) {
	s, path := openTemp(t)
	id := NewID()
	r := &Record{VM: api.VM{ID: id, Status: api.StatusCreating, CPUs: 2, MemoryMiB: 512}, Dir: "/x/" + id}
	if err := s.Create(r); err != nil {
		t.Fatalf("Create: %v", err)
	}
	if err := s.Create(r); err == nil {
		t.Fatalf("second Create of %s succeeded, want an error", id)
	}
	if _, err := s.Update(id, func(r *Record) error { r.Status = api.StatusRunning; r.IPAddress = "10.0.0.5"; return nil }); err != nil {
		t.Fatalf("Update: %v", err)
	}
	boom := errors.New("boom")
	if _, err := s.Update(id, func(r *Record) error { r.Status = api.StatusError; return boom }); !errors.Is(err, boom) {
		t.Fatalf("Update with failing fn: got %v, want boom", err)
	}
	s.Close()

	s, err := Open(path)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer s.Close()
	got, err := s.Get(id)
	if err != nil {
		t.Fatalf("Get after reopen: %v", err)
	}
	if got.Status != api.StatusRunning || got.IPAddress != "10.0.0.5" || got.Dir != "/x/"+id || got.CPUs != 2 {
		t.Fatalf("got %+v, want running 10.0.0.5 with dir and cpus kept", got)
	}
	if err := s.Delete(id); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	_, err = s.Get(id)
	if !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Get after Delete: got %v, want ErrNotFound", err)
	}
	if code, _ := errdefs.CodeOf(err); code != "vm-not-found" {
		t.Fatalf("code: got %q, want vm-not-found", code)
	}
	if err := s.Delete(id); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("second Delete: got %v, want ErrNotFound", err)
	}
}

func TestListNewestFirst(t *testing.T) {
	s, _ := openTemp(t)
	defer s.Close()
	var ids []string
	for range 5 {
		id := NewID()
		ids = append(ids, id)
		if err := s.Create(&Record{VM: api.VM{ID: id}}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Millisecond) // ids carry millisecond time
	}
	list, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != len(ids) {
		t.Fatalf("got %d records, want %d", len(list), len(ids))
	}
	for i, r := range list {
		if want := ids[len(ids)-1-i]; r.ID != want {
			t.Errorf("list[%d] = %s, want %s", i, r.ID, want)
		}
	}
}

func TestSecondOpenIsRefused(t *testing.T) {
	s, path := openTemp(t)
	defer s.Close()
	if _, err := Open(path); err == nil {
		t.Fatal("second Open of a held database succeeded, want an error")
	}
}

func TestNewIDShape(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		id := NewID()
		if !ValidID(id) {
			t.Fatalf("NewID() = %q is not ValidID", id)
		}
		if seen[id] {
			t.Fatalf("duplicate id %s", id)
		}
		seen[id] = true
	}
	for _, bad := range []string{"", "vm-", "../etc/passwd", "vm-0123456789abcdefghi/", "vm-0123456789ABCDEFGHIJ"} {
		if ValidID(bad) {
			t.Errorf("ValidID(%q) = true, want false", bad)
		}
	}
}
