package metrics

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
)

// exercise feeds m one of everything it counts: a creation through its
// phases to running, a callback, a machine exit, an image fetch and an
// eviction, a request.
func exercise(m *Metrics) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	vm := func(action string, st api.Status, ph api.Phase, at time.Duration) api.Event {
		return api.Event{Type: api.EventVM, Action: action, VMID: "vm-1", Time: t0.Add(at),
			VM: &api.VM{ID: "vm-1", Backend: "qemu", Status: st, Phase: ph, CreatedAt: t0}}
	}
	m.Observe(vm(api.ActionAccepted, api.StatusCreating, api.PhasePending, 0))
	m.Observe(vm(api.ActionPhase, api.StatusCreating, api.PhaseDownloading, time.Second))
	m.Observe(vm(api.ActionProgress, api.StatusCreating, api.PhaseDownloading, 2*time.Second))
	m.Observe(vm(api.ActionPhase, api.StatusCreating, api.PhaseBooting, 4*time.Second))
	m.Observe(vm(api.ActionRunning, api.StatusRunning, "", 10*time.Second))
	cb := vm(api.ActionCallback, api.StatusRunning, "", 11*time.Second)
	cb.VM.Callback = &api.CallbackDelivery{State: api.CallbackDelivered, Attempts: 1}
	m.Observe(cb)
	m.Observe(vm(api.ActionStopped, api.StatusStopped, "", time.Minute))
	m.Observe(api.Event{Type: api.EventImage, Action: api.ActionReady, ImageKey: "k"})
	m.Observe(api.Event{Type: api.EventImage, Action: api.ActionEvicted, ImageKey: "k"})
	m.Lookup("miss")
	m.Downloaded(1234)
	m.Request("GET /vms", "GET", 200, time.Millisecond)
	m.CollectVMs(func() ([]api.VM, error) { return []api.VM{{Status: api.StatusRunning, Backend: "qemu"}}, nil })
	m.CollectImages(func() (ImageStats, error) { return ImageStats{Images: 1, DiskBytes: 4096}, nil })
	m.CollectEventDrops(func() uint64 { return 0 })
	m.Observe(api.Event{Type: api.EventCapacity, Action: api.ActionAdmitted, VMID: "vm-1"})
	m.Observe(api.Event{Type: api.EventCapacity, Action: api.ActionQueued, VMID: "vm-2", Position: 1})
	m.Observe(api.Event{Type: api.EventGroup, Action: api.ActionHandedOut, GroupName: "web", VMID: "vm-3"})
	m.Observe(api.Event{Type: api.EventGroup, Action: api.ActionDegraded, GroupName: "web"})
	m.CollectCapacity(func() api.Capacity {
		return api.Capacity{Total: api.Resources{CPUs: 4, MemoryMiB: 4096}, Used: api.Resources{CPUs: 1, MemoryMiB: 512},
			Reserved: api.Resources{CPUs: 2, MemoryMiB: 1024}, Free: api.Resources{CPUs: 1, MemoryMiB: 2560},
			Queued: api.Resources{CPUs: 2, MemoryMiB: 256}, Waiting: 1}
	})
	m.CollectGroups(func() ([]api.Group, error) {
		return []api.Group{{Name: "web", Spec: api.GroupSpec{Size: 3, Warm: 2}, State: api.GroupDegraded, Running: 2, WarmReady: 1, Failures: 4,
			VMs: make([]api.GroupVM, 4)}}, nil
	})
}

// TestPhaseDurations: each phase's time is observed once, when the next
// begins, and the whole creation when it runs.
func TestPhaseDurations(t *testing.T) {
	m := New()
	exercise(m)
	fams, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range fams {
		for _, mt := range f.Metric {
			name := f.GetName()
			for _, l := range mt.Label {
				name += "," + l.GetName() + "=" + l.GetValue()
			}
			switch {
			case mt.Histogram != nil:
				got[name] = mt.Histogram.GetSampleSum()
			case mt.Counter != nil:
				got[name] = mt.Counter.GetValue()
			case mt.Gauge != nil:
				got[name] = mt.Gauge.GetValue()
			}
		}
	}
	for name, want := range map[string]float64{
		"goldvm_vm_create_phase_duration_seconds,backend=qemu,phase=pending":     1,
		"goldvm_vm_create_phase_duration_seconds,backend=qemu,phase=downloading": 3,
		"goldvm_vm_create_phase_duration_seconds,backend=qemu,phase=booting":     6,
		"goldvm_vm_create_duration_seconds,backend=qemu,outcome=running":         10,
		"goldvm_callback_deliveries_total,outcome=delivered":                     1,
		"goldvm_vm_machine_exits_total,backend=qemu":                             1,
		"goldvm_image_evictions_total":                                           1,
		"goldvm_image_download_bytes_total":                                      1234,
		"goldvm_vms,backend=qemu,status=running":                                 1,
		"goldvm_image_disk_bytes":                                                4096,
		"goldvm_capacity_cpus,state=total":                                       4,
		"goldvm_capacity_cpus,state=used":                                        1,
		"goldvm_capacity_cpus,state=reserved":                                    2,
		"goldvm_capacity_cpus,state=queued":                                      2,
		"goldvm_capacity_memory_bytes,state=free":                                2560 << 20,
		"goldvm_capacity_queue_length":                                           1,
		"goldvm_capacity_events_total,action=queued":                             1,
		"goldvm_capacity_events_total,action=admitted":                           1,
		"goldvm_group_vms_desired,group=web":                                     3,
		"goldvm_group_vms_running,group=web":                                     2,
		"goldvm_group_vms,group=web":                                             4,
		"goldvm_group_warm_desired,group=web":                                    2,
		"goldvm_group_warm_ready,group=web":                                      1,
		"goldvm_group_degraded,group=web":                                        1,
		"goldvm_group_failures,group=web":                                        4,
		"goldvm_group_handouts_total,group=web":                                  1,
		"goldvm_group_transitions_total,action=degraded,group=web":               1,
	} {
		if got[name] != want {
			t.Errorf("%s = %v, want %v", name, got[name], want)
		}
	}
}

// TestDashboardUsesExposedMetrics: every goldvm_ metric the Grafana
// dashboard in contrib/ queries is one the daemon exposes.
func TestDashboardUsesExposedMetrics(t *testing.T) {
	m := New()
	exercise(m)
	fams, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	exposed := map[string]bool{}
	for _, f := range fams {
		exposed[f.GetName()] = true
	}
	data, err := os.ReadFile("../../contrib/grafana/goldvm-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`goldvm_[a-z_]+`)
	n := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, name := range re.FindAllString(tg.Expr, -1) {
				n++
				base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_count"), "_sum")
				if !exposed[base] {
					t.Errorf("panel %q queries %s, which the daemon does not expose", p.Title, name)
				}
			}
		}
	}
	if n == 0 {
		t.Fatal("the dashboard queries no goldvm metric")
	}
}

// TestDeletedGroupSeries: a deleted group's counters go with it; another
// group's stay.
func TestDeletedGroupSeries(t *testing.T) {
	m := New()
	for _, g := range []string{"web", "db"} {
		m.Observe(api.Event{Type: api.EventGroup, Action: api.ActionHandedOut, GroupName: g})
		m.Observe(api.Event{Type: api.EventGroup, Action: api.ActionDegraded, GroupName: g})
	}
	m.Observe(api.Event{Type: api.EventGroup, Action: api.ActionDeleted, GroupName: "web"})
	fams, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	left := map[string]int{}
	for _, f := range fams {
		if !strings.HasPrefix(f.GetName(), "goldvm_group_") {
			continue
		}
		for _, mt := range f.Metric {
			for _, l := range mt.Label {
				if l.GetName() == "group" {
					left[l.GetValue()]++
				}
			}
		}
	}
	if left["web"] != 0 || left["db"] != 2 {
		t.Errorf("group series after web's delete: %v, want db's 2 only", left)
	}
}
