package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/client"
)

// TestGroupAndCapacityEvents: with real guests and a capacity of one VM,
// GET /events?type=group,capacity streams a group's life (created; a pass
// that created its VM; deleted) and the capacity's (the group's VM
// admitted; a second VM queued at position 1 while it runs; released when
// the group goes, the queued VM admitted), and nothing else.
func TestGroupAndCapacityEvents(t *testing.T) {
	requireEnv(t)
	srv := newImageServer(t)
	d := startDaemon(t, t.TempDir(), "--qemu-uid-range", ownUIDs(t), "--capacity-cpus", "1", "--capacity-memory", "1gib")
	img := publish(t, srv, "qcow2")
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	st, err := d.client.Events(ctx, client.EventOptions{Types: []string{api.EventGroup, api.EventCapacity}})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var seen []api.Event
	// expect reads events until one of type.action about subject (a VM
	// id or a group name) comes.
	expect := func(typ, action, subject string) api.Event {
		t.Helper()
		for {
			e, err := st.Next()
			if err != nil {
				t.Fatalf("waiting for %s.%s %s: %v (saw %d events)", typ, action, subject, err, len(seen))
			}
			seen = append(seen, e)
			if e.Type != api.EventGroup && e.Type != api.EventCapacity {
				t.Errorf("?type=group,capacity streamed a %s event", e.Type)
			}
			if e.Type == typ && e.Action == action && (e.VMID == subject || e.GroupName == subject) {
				return e
			}
		}
	}

	if _, err := d.client.PutGroup(ctx, "evt", api.GroupSpec{Size: 1, Template: createReq(img, "")}); err != nil {
		t.Fatal(err)
	}
	expect(api.EventGroup, api.ActionCreated, "evt")
	rec := expect(api.EventGroup, api.ActionReconciled, "evt")
	if rec.Reconcile == nil || len(rec.Reconcile.Created) != 1 {
		t.Fatalf("reconciled: %+v", rec.Reconcile)
	}
	member := rec.Reconcile.Created[0]
	if e := expect(api.EventCapacity, api.ActionAdmitted, member); e.Capacity == nil || e.Capacity.Reserved.CPUs != 1 || e.Capacity.Total.CPUs != 1 {
		t.Errorf("group VM admitted: capacity %+v", e.Capacity)
	}
	if v := waitVM(t, d, member, 4*time.Minute); v.Status != api.StatusRunning {
		t.Fatalf("group VM: %s", fmtVM(v))
	}

	other := mustCreate(t, d, createReq(img, ""))
	if e := expect(api.EventCapacity, api.ActionQueued, other.ID); e.Position != 1 || e.Capacity == nil || e.Capacity.Used.CPUs != 1 || e.Capacity.Waiting != 1 {
		t.Errorf("queued: position %d, capacity %+v", e.Position, e.Capacity)
	}
	if err := d.client.DeleteGroup(ctx, "evt", false); err != nil {
		t.Fatal(err)
	}
	expect(api.EventCapacity, api.ActionReleased, member)
	if e := expect(api.EventCapacity, api.ActionAdmitted, other.ID); e.Capacity == nil || e.Capacity.Waiting != 0 {
		t.Errorf("admitted from the queue: capacity %+v", e.Capacity)
	}
	if e := expect(api.EventGroup, api.ActionDeleted, "evt"); e.Group == nil || len(e.Group.VMs) != 1 || e.Group.VMs[0].ID != member {
		t.Errorf("group deleted: %+v", e.Group)
	}
	if v := waitVM(t, d, other.ID, 4*time.Minute); v.Status != api.StatusRunning {
		t.Fatalf("queued VM: %s", fmtVM(v))
	}
	if err := d.client.DeleteVM(ctx, other.ID); err != nil {
		t.Fatal(err)
	}
	expect(api.EventCapacity, api.ActionReleased, other.ID)
}
