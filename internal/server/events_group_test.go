package server

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/goldvm/goldvm/api"
)

// wantMetrics scrapes GET /metrics and checks the samples named (name
// with labels, as the text format writes them).
func (d *openAPIDaemon) wantMetrics(t *testing.T, when string, want map[string]string) {
	t.Helper()
	code, body := d.call(t, false, "GET", "/metrics", "", "")
	if code != 200 {
		t.Fatalf("GET /metrics: %d", code)
	}
	got := map[string]string{}
	for _, line := range strings.Split(string(body), "\n") {
		if name, value, ok := strings.Cut(line, " "); ok && !strings.HasPrefix(line, "#") {
			got[name] = value
		}
	}
	for name, v := range want {
		if got[name] != v {
			t.Errorf("%s: %s = %q, want %s", when, name, got[name], v)
		}
	}
}

// waitStatus polls GET /vms/{id} until the VM has the status.
func (d *openAPIDaemon) waitStatus(t *testing.T, id string, status api.Status) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		code, body := d.call(t, false, "GET", "/vms/"+id, "", "")
		var v api.VM
		json.Unmarshal(body, &v)
		if v.Status == status {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("VM %s never %s: %d %s", id, status, code, body)
		}
	}
}

// sseEvents reads the events of a GET /events answer, each checked
// against the Event schema, onto a channel.
func sseEvents(t *testing.T, resp *http.Response, schema *openapi3.Schema) <-chan api.Event {
	out := make(chan api.Event, 256)
	go func() {
		defer close(out)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			data, ok := strings.CutPrefix(sc.Text(), "data: ")
			if !ok {
				continue
			}
			var raw any
			var e api.Event
			if err := json.Unmarshal([]byte(data), &raw); err != nil {
				t.Errorf("event data %q: %v", data, err)
				return
			}
			if err := schema.VisitJSON(raw); err != nil {
				t.Errorf("event %s breaks the Event schema: %v", data, err)
			}
			json.Unmarshal([]byte(data), &e)
			out <- e
		}
	}()
	return out
}

// TestEventsOfGroupsAndCapacity: GET /events?type=group,capacity streams
// the group and capacity events of a daemon on the fake driver with a
// budget of one vCPU, and no VM events: a VM admitted; a second one
// queued (position 1) until the first is deleted (released, then the
// second admitted); a group created, its pass creating a VM (reconciled,
// that VM admitted), deleted (its VM released). Every event matches the
// Event schema of api/openapi.yaml, and every request and answer the
// document.
func TestEventsOfGroupsAndCapacity(t *testing.T) {
	doc := loadOpenAPI(t)
	d := newOpenAPIDaemon(t, api.Resources{CPUs: 1})
	const js = "application/json"
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	loop := make(chan struct{})
	go func() { defer close(loop); d.groups.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-loop })
	sreq, _ := http.NewRequestWithContext(ctx, "GET", d.url+"/events?type=group,capacity", nil)
	resp, err := d.client.Do(sreq)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /events?type=group,capacity: %d", resp.StatusCode)
	}
	evs := sseEvents(t, resp, doc.Components.Schemas["Event"].Value)

	tpl := fmt.Sprintf(`{"cpus": 1, "memory": 256, "image": {"url": %q, "checksum": %q, "checksum_type": "sha256"}}`, d.image.URL, d.image.Checksum)
	create := func() string {
		t.Helper()
		code, body := d.call(t, false, "POST", "/vms", js, tpl)
		if code != 202 {
			t.Fatalf("POST /vms: %d %s", code, body)
		}
		var v api.VM
		json.Unmarshal(body, &v)
		return v.ID
	}
	var seen []api.Event
	// expect reads events until one of type.action about subject (a VM
	// id or group name) comes.
	expect := func(typ, action, subject string) api.Event {
		t.Helper()
		for {
			select {
			case e, ok := <-evs:
				if !ok {
					t.Fatalf("the stream ended waiting for %s.%s %s", typ, action, subject)
				}
				seen = append(seen, e)
				if e.Type == typ && e.Action == action && (e.VMID == subject || e.GroupName == subject) {
					return e
				}
			case <-ctx.Done():
				t.Fatalf("no %s.%s %s; saw %d events", typ, action, subject, len(seen))
			}
		}
	}

	a := create()
	if e := expect(api.EventCapacity, api.ActionAdmitted, a); e.Capacity == nil || e.Capacity.Total.CPUs != 1 || e.Capacity.Reserved.CPUs != 1 {
		t.Errorf("admitted %s: capacity %+v", a, e.Capacity)
	}
	d.waitStatus(t, a, api.StatusRunning)
	b := create()
	if e := expect(api.EventCapacity, api.ActionQueued, b); e.Position != 1 || e.Capacity.Waiting != 1 || e.Capacity.Used.CPUs != 1 {
		t.Errorf("queued %s: position %d, capacity %+v", b, e.Position, e.Capacity)
	}
	d.wantMetrics(t, "with one VM running and one queued", map[string]string{
		"goldvm_capacity_queue_length":                  "1",
		`goldvm_capacity_cpus{state="total"}`:           "1",
		`goldvm_capacity_cpus{state="used"}`:            "1",
		`goldvm_capacity_cpus{state="reserved"}`:        "0",
		`goldvm_capacity_cpus{state="queued"}`:          "1",
		`goldvm_capacity_memory_bytes{state="used"}`:    "2.68435456e+08",
		`goldvm_capacity_events_total{action="queued"}`: "1",
	})
	if code, body := d.call(t, false, "DELETE", "/vms/"+a, "", ""); code != 204 {
		t.Fatalf("DELETE /vms/%s: %d %s", a, code, body)
	}
	expect(api.EventCapacity, api.ActionReleased, a)
	if e := expect(api.EventCapacity, api.ActionAdmitted, b); e.Capacity.Waiting != 0 {
		t.Errorf("admitted %s from the queue: capacity %+v", b, e.Capacity)
	}
	d.waitStatus(t, b, api.StatusRunning)
	if code, body := d.call(t, false, "DELETE", "/vms/"+b, "", ""); code != 204 {
		t.Fatalf("DELETE /vms/%s: %d %s", b, code, body)
	}
	expect(api.EventCapacity, api.ActionReleased, b)

	if code, body := d.call(t, false, "PUT", "/groups/evg", js, `{"size": 1, "template": `+tpl+`}`); code != 200 {
		t.Fatalf("PUT /groups/evg: %d %s", code, body)
	}
	if e := expect(api.EventGroup, api.ActionCreated, "evg"); e.Group == nil || e.Group.Spec.Size != 1 {
		t.Errorf("group created: %+v", e.Group)
	}
	rec := expect(api.EventGroup, api.ActionReconciled, "evg")
	if rec.Reconcile == nil || len(rec.Reconcile.Created) != 1 {
		t.Fatalf("reconciled: %+v", rec.Reconcile)
	}
	member := rec.Reconcile.Created[0]
	expect(api.EventCapacity, api.ActionAdmitted, member)
	d.waitStatus(t, member, api.StatusRunning)
	d.wantMetrics(t, "with the group's VM running", map[string]string{
		`goldvm_group_vms_desired{group="evg"}`: "1",
		`goldvm_group_vms_running{group="evg"}`: "1",
		`goldvm_group_degraded{group="evg"}`:    "0",
		"goldvm_capacity_queue_length":          "0",
		`goldvm_capacity_cpus{state="used"}`:    "1",
	})
	if code, body := d.call(t, false, "DELETE", "/groups/evg", "", ""); code != 204 {
		t.Fatalf("DELETE /groups/evg: %d %s", code, body)
	}
	expect(api.EventCapacity, api.ActionReleased, member)
	if e := expect(api.EventGroup, api.ActionDeleted, "evg"); e.Group == nil || len(e.Group.VMs) != 1 || e.Group.VMs[0].ID != member {
		t.Errorf("group deleted: %+v", e.Group)
	}
	for _, e := range seen {
		if e.Type != api.EventGroup && e.Type != api.EventCapacity {
			t.Errorf("?type=group,capacity streamed a %s event", e.Type)
		}
	}
}
