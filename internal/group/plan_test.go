package group

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
)

// vms builds members from "id:status:template" triples, oldest first.
func vms(specs ...string) []*member {
	var out []*member
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i, s := range specs {
		parts := strings.Split(s, ":")
		out = append(out, &member{ID: parts[0], Status: api.Status(parts[1]), Template: parts[2], CreatedAt: t0.Add(time.Duration(i) * time.Second)})
	}
	return out
}

func TestPlanGroup(t *testing.T) {
	tests := []struct {
		desc       string
		want       want
		members    []*member
		wantCreate int
		wantDelete []string
		wantFailed int
	}{
		{desc: "empty group of 3, surge 1", want: want{Size: 3, MaxSurge: 1, Template: "a"},
			wantCreate: 1},
		{desc: "empty group of 3, surge 3", want: want{Size: 3, MaxSurge: 3, Template: "a"},
			wantCreate: 3},
		{desc: "one in flight uses the surge", want: want{Size: 3, MaxSurge: 1, Template: "a"},
			members: vms("v1:running:a", "v2:creating:a"), wantCreate: 0},
		{desc: "at size", want: want{Size: 2, MaxSurge: 1, Template: "a"},
			members: vms("v1:running:a", "v2:running:a")},
		{desc: "suspended counts as present", want: want{Size: 2, MaxSurge: 1, Template: "a"},
			members: vms("v1:suspended:a", "v2:running:a")},
		{desc: "stopped is gone: destroyed and replaced", want: want{Size: 2, MaxSurge: 1, Template: "a"},
			members: vms("v1:stopped:a", "v2:running:a"), wantCreate: 1, wantDelete: []string{"v1"}},
		{desc: "failed is counted, destroyed and replaced", want: want{Size: 2, MaxSurge: 1, Template: "a"},
			members: vms("v1:error:a", "v2:running:a"), wantCreate: 1, wantDelete: []string{"v1"}, wantFailed: 1},
		{desc: "hold: failed destroyed, nothing created", want: want{Size: 2, MaxSurge: 1, Template: "a", Hold: true},
			members: vms("v1:error:a"), wantDelete: []string{"v1"}, wantFailed: 1},
		{desc: "scale 3 to 1 removes the oldest", want: want{Size: 1, MaxSurge: 1, Template: "a"},
			members: vms("v1:running:a", "v2:running:a", "v3:running:a"), wantDelete: []string{"v1", "v2"}},
		{desc: "scale down removes failed first", want: want{Size: 1, MaxSurge: 1, Template: "a"},
			members: vms("v1:running:a", "v2:running:a", "v3:error:a"), wantDelete: []string{"v3", "v1"}, wantFailed: 1},
		{desc: "scale to 0", want: want{Size: 0, MaxSurge: 1, Template: "a"},
			members: vms("v1:running:a", "v2:creating:a"), wantDelete: []string{"v1", "v2"}},
		{desc: "roll: new first, no old removed yet", want: want{Size: 2, MaxSurge: 1, Template: "b"},
			members: vms("v1:running:a", "v2:running:a"), wantCreate: 1},
		{desc: "roll: replacement creating, old kept", want: want{Size: 2, MaxSurge: 1, Template: "b"},
			members: vms("v1:running:a", "v2:running:a", "v3:creating:b")},
		{desc: "roll: replacement runs, one old goes, next created", want: want{Size: 2, MaxSurge: 1, Template: "b"},
			members: vms("v1:running:a", "v2:running:a", "v3:running:b"), wantCreate: 1, wantDelete: []string{"v1"}},
		{desc: "roll: max_unavailable 1 lets an old go at once", want: want{Size: 2, MaxSurge: 1, MaxUnavailable: 1, Template: "b"},
			members: vms("v1:running:a", "v2:running:a"), wantCreate: 1, wantDelete: []string{"v1"}},
		{desc: "roll: old VM not running goes at once", want: want{Size: 2, MaxSurge: 1, Template: "b"},
			members: vms("v1:suspended:a", "v2:running:a", "v3:running:b", "v4:running:b"), wantDelete: []string{"v1", "v2"}},
		{desc: "roll done", want: want{Size: 2, MaxSurge: 1, Template: "b"},
			members: vms("v1:running:a", "v3:running:b", "v4:running:b"), wantDelete: []string{"v1"}},
		{desc: "old failed VM is not counted", want: want{Size: 1, MaxSurge: 1, Template: "b"},
			members: vms("v1:error:a", "v2:running:b"), wantDelete: []string{"v1"}},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			p := planGroup(tt.want, tt.members)
			if p.Create != tt.wantCreate {
				t.Errorf("Create = %d, want %d", p.Create, tt.wantCreate)
			}
			if !slices.Equal(p.Delete, tt.wantDelete) {
				t.Errorf("Delete = %v, want %v", p.Delete, tt.wantDelete)
			}
			if len(p.Failed) != tt.wantFailed {
				t.Errorf("Failed = %d, want %d", len(p.Failed), tt.wantFailed)
			}
		})
	}
}

// TestPlanRollover plays a template change through to its end, the
// planner's answers applied at once (creations run at the next pass), and
// checks that the group never has fewer than size-max_unavailable
// running VMs and ends with size VMs of the new template.
func TestPlanRollover(t *testing.T) {
	for _, unavail := range []int{0, 1} {
		t.Run(fmt.Sprintf("max_unavailable=%d", unavail), func(t *testing.T) {
			w := want{Size: 3, MaxSurge: 1, MaxUnavailable: unavail, Template: "b"}
			members := vms("v1:running:a", "v2:running:a", "v3:running:a")
			next := 4
			for pass := 0; pass < 50; pass++ {
				if pass%2 == 1 {
					// Between passes, VMs in flight boot (every other
					// pass, so that passes see them in flight too).
					for _, m := range members {
						if m.Status == api.StatusCreating {
							m.Status = api.StatusRunning
						}
					}
				}
				p := planGroup(w, members)
				t.Logf("pass %d: %v -> create %d delete %v", pass, show(members), p.Create, p.Delete)
				var kept []*member
				creating := false
				for _, m := range members {
					if !slices.Contains(p.Delete, m.ID) {
						kept = append(kept, m)
						creating = creating || m.Status == api.StatusCreating
					}
				}
				members = kept
				running := 0
				for _, m := range members {
					if m.Status == api.StatusRunning {
						running++
					}
				}
				if running < w.Size-w.MaxUnavailable {
					t.Fatalf("pass %d: %d running, want at least %d", pass, running, w.Size-w.MaxUnavailable)
				}
				for i := 0; i < p.Create; i++ {
					members = append(members, &member{ID: fmt.Sprintf("v%d", next), Status: api.StatusCreating, Template: "b", CreatedAt: time.Unix(int64(next), 0)})
					next++
				}
				if p.Create == 0 && len(p.Delete) == 0 && !creating {
					break
				}
			}
			if len(members) != 3 {
				t.Fatalf("ended with %d VMs, want 3", len(members))
			}
			for _, m := range members {
				if m.Template != "b" || m.Status != api.StatusRunning {
					t.Errorf("VM %s: template %s, %s; want b, running", m.ID, m.Template, m.Status)
				}
			}
		})
	}
}

func show(ms []*member) string {
	var b strings.Builder
	for _, m := range ms {
		fmt.Fprintf(&b, "%s:%s:%s ", m.ID, m.Status, m.Template)
	}
	return b.String()
}
