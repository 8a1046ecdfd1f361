package vm

import (
	"context"
	"slices"
	"testing"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/records"
)

// TestPageSeesUnsavedChanges: a change the store could not write yet is
// kept in memory (records.go); a filtered page shows the VM by its changed
// status, not by the stored one the indexes know.
func TestPageSeesUnsavedChanges(t *testing.T) {
	e := newEnv(t)
	a := e.record(api.StatusRunning, "", false)
	b := e.record(api.StatusRunning, "", false)
	c := e.record(api.StatusStopped, "", false)
	running := records.Query{Statuses: []api.Status{api.StatusRunning}}
	ids := func(q records.Query) ([]string, string) {
		t.Helper()
		vms, next, err := e.m.Page(context.Background(), q)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, v := range vms {
			out = append(out, v.ID)
		}
		return out, next
	}
	// Newest first: ids made in one millisecond sort at random, so the
	// order wanted is that of the ids.
	newest := func(ids ...string) []string {
		slices.Sort(ids)
		slices.Reverse(ids)
		return ids
	}
	if got, want := first(ids(running)), newest(a.ID, b.ID); !slices.Equal(got, want) {
		t.Fatalf("running VMs from the indexes: %v, want %v", got, want)
	}
	// b stopped and c running, in memory only.
	for _, r := range []*records.Record{b, c} {
		changed := *r
		changed.Status = map[api.Status]api.Status{api.StatusRunning: api.StatusStopped, api.StatusStopped: api.StatusRunning}[r.Status]
		e.m.mu.Lock()
		e.m.unsaved[r.ID] = &changed
		e.m.mu.Unlock()
	}
	want := newest(a.ID, c.ID)
	if got := first(ids(running)); !slices.Equal(got, want) {
		t.Fatalf("running VMs with unsaved changes: %v, want %v", got, want)
	}
	if got, next := ids(records.Query{Statuses: running.Statuses, Limit: 1}); !slices.Equal(got, want[:1]) || next != want[0] {
		t.Fatalf("first page of 1: %v next %q, want %s next %s", got, next, want[0], want[0])
	}
	if got, next := ids(records.Query{Statuses: running.Statuses, Limit: 1, After: want[0]}); !slices.Equal(got, want[1:]) || next != "" {
		t.Fatalf("second page of 1: %v next %q, want %s and no next", got, next, want[1])
	}
}

// first returns its first argument.
func first[A, B any](a A, _ B) A { return a }
