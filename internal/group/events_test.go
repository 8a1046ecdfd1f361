package group

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/events"
)

// eventReader reads one subscription's events in order.
type eventReader struct {
	t    *testing.T
	sub  *events.Sub
	seen []api.Event
}

// next returns the next event with the action, failing the test when none
// comes; the events before it are kept in seen.
func (r *eventReader) next(action string) api.Event {
	r.t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case e, ok := <-r.sub.C():
			if !ok {
				r.t.Fatalf("the subscription ended waiting for %q", action)
			}
			r.seen = append(r.seen, e)
			if e.Action == action {
				return e
			}
		case <-timeout:
			r.t.Fatalf("no %q event; saw %s", action, actions(r.seen))
		}
	}
}

func actions(es []api.Event) string {
	var out []string
	for _, e := range es {
		out = append(out, e.Type+"."+e.Action)
	}
	return strings.Join(out, " ")
}

// TestGroupEvents: a group's life on the event bus, with real components
// (a VM manager on the fake driver, a real image store and database):
// created; reconciled with the VMs each pass created and the failed ones
// it counted; degraded with the error when creations keep failing;
// recovered when one runs again; updated; a warm VM handed out; deleted
// with the group as it was.
func TestGroupEvents(t *testing.T) {
	e := newWarmEnv(t)
	ctx := context.Background()
	sub, _, _ := e.bus.Subscribe(events.Filter{Types: []string{api.EventGroup}}, false, 0)
	defer sub.Cancel()
	r := &eventReader{t: t, sub: sub}

	e.broken.Store(true)
	tpl := e.template()
	e.put("evt", api.GroupSpec{Size: 1, Template: tpl})
	created := r.next(api.ActionCreated)
	if created.GroupName != "evt" || created.Group == nil || created.Group.Spec.Size != 1 {
		t.Fatalf("created: %+v", created)
	}
	first := r.next(api.ActionReconciled)
	if first.Reconcile == nil || len(first.Reconcile.Created) != 1 {
		t.Fatalf("first pass: %+v", first.Reconcile)
	}
	// The image server answers 404: the VM fails, the next pass counts it.
	var failed []string
	for len(failed) == 0 {
		ev := r.next(api.ActionReconciled)
		failed = ev.Reconcile.Failed
	}
	if failed[0] != first.Reconcile.Created[0] {
		t.Errorf("failed %v, want the VM the first pass created, %s", failed, first.Reconcile.Created[0])
	}
	deg := r.next(api.ActionDegraded)
	if deg.Group == nil || deg.Group.State != api.GroupDegraded || deg.Group.Error == nil || !strings.Contains(deg.Message, deg.Group.Error.Code) {
		t.Fatalf("degraded: message %q, group %+v", deg.Message, deg.Group)
	}

	// The image comes back: a VM runs, the group recovers.
	e.broken.Store(false)
	rec := r.next(api.ActionRecovered)
	if rec.Group == nil || rec.Group.State != api.GroupOK || rec.Group.Failures != 0 {
		t.Fatalf("recovered: %+v", rec.Group)
	}

	e.put("evt", api.GroupSpec{Size: 1, Warm: 1, MaxSurge: 2, Template: tpl})
	if up := r.next(api.ActionUpdated); up.Group == nil || up.Group.Spec.Warm != 1 {
		t.Fatalf("updated: %+v", up.Group)
	}
	e.waitGroup("evt", "ready", ready(1, 1))
	v, err := e.g.CreateVM(ctx, api.CreateVMRequest{FromGroup: "evt"})
	if err != nil {
		t.Fatal(err)
	}
	if h := r.next(api.ActionHandedOut); h.VMID != v.ID || h.GroupName != "evt" {
		t.Fatalf("handed_out: vm %s group %s, want %s evt", h.VMID, h.GroupName, v.ID)
	}

	if err := e.g.Delete(ctx, "evt", false); err != nil {
		t.Fatal(err)
	}
	del := r.next(api.ActionDeleted)
	if del.Group == nil || del.Group.Name != "evt" || len(del.Group.VMs) == 0 {
		t.Fatalf("deleted: %+v", del.Group)
	}
	for _, ev := range r.seen {
		if ev.Type != api.EventGroup || ev.GroupName != "evt" || ev.Group == nil {
			t.Errorf("event %s.%s: group %q, view %v", ev.Type, ev.Action, ev.GroupName, ev.Group != nil)
		}
	}
	// Each degradation is told once, before the recovery.
	var states []string
	for _, ev := range r.seen {
		if ev.Action == api.ActionDegraded || ev.Action == api.ActionRecovered {
			states = append(states, ev.Action)
		}
	}
	if !slices.Equal(states, []string{api.ActionDegraded, api.ActionRecovered}) {
		t.Errorf("degraded/recovered events: %v", states)
	}
}
