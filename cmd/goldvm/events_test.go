package main

import (
	"strings"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
)

// TestFormatGroupAndCapacityEvents: goldvm events prints a line of each
// group and capacity event with what it is about and what it says.
func TestFormatGroupAndCapacityEvents(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	capNow := &api.Capacity{Total: api.Resources{CPUs: 2}, Used: api.Resources{CPUs: 2, MemoryMiB: 1024}, Waiting: 1}
	for _, tc := range []struct {
		e    api.Event
		want []string
	}{
		{api.Event{Type: api.EventGroup, Action: api.ActionReconciled, GroupName: "web", Time: at,
			Reconcile: &api.Reconcile{Created: []string{"vm-a", "vm-b"}, Failed: []string{"vm-c"}}},
			[]string{"group.reconciled web", "created vm-a,vm-b", "failed vm-c"}},
		{api.Event{Type: api.EventGroup, Action: api.ActionDegraded, GroupName: "web", Time: at, Message: "image-checksum-mismatch: bad"},
			[]string{"group.degraded web image-checksum-mismatch: bad"}},
		{api.Event{Type: api.EventGroup, Action: api.ActionHandedOut, GroupName: "web", VMID: "vm-d", Time: at},
			[]string{"group.handed_out web vm vm-d"}},
		{api.Event{Type: api.EventGroup, Action: api.ActionCreated, GroupName: "web", Time: at,
			Group: &api.Group{State: api.GroupOK, Spec: api.GroupSpec{Size: 3}, Running: 1}},
			[]string{"group.created web ok, 1/3 running"}},
		{api.Event{Type: api.EventCapacity, Action: api.ActionQueued, VMID: "vm-e", Position: 1, Time: at, Capacity: capNow},
			[]string{"capacity.queued vm-e position 1,", "2/2 vCPUs 1024/∞ MiB held, 1 waiting"}},
		{api.Event{Type: api.EventCapacity, Action: api.ActionDequeued, VMID: "vm-e", Time: at, Capacity: capNow, Message: "context canceled"},
			[]string{"capacity.dequeued vm-e", ": context canceled"}},
	} {
		line := formatEvent(tc.e)
		for _, w := range tc.want {
			if !strings.Contains(line, w) {
				t.Errorf("%s.%s: %q lacks %q", tc.e.Type, tc.e.Action, line, w)
			}
		}
	}
}
