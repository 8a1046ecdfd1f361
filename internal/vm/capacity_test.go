package vm

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/events"
)

func res(cpus int, mem int64) api.Resources { return api.Resources{CPUs: cpus, MemoryMiB: mem} }

// admitAsync runs admit in a goroutine; its result arrives on the channel.
// queued is closed when it starts to wait.
func admitAsync(c *capacity, ctx context.Context, id string, r api.Resources) (<-chan error, <-chan struct{}) {
	done := make(chan error, 1)
	queued := make(chan struct{})
	go func() { done <- c.admit(ctx, id, r, func() { close(queued) }) }()
	return done, queued
}

// TestCapacityFIFO also checks the "capacity" events: one per admission,
// wait, release and departure from the queue, in the order of the changes,
// each with the capacity right after it.
func TestCapacityFIFO(t *testing.T) {
	bus := events.New(events.Options{})
	sub, _, _ := bus.Subscribe(events.Filter{Types: []string{api.EventCapacity}}, false, 0)
	defer sub.Cancel()
	c := newCapacity(res(4, 4096), time.Hour, bus)
	ctx := context.Background()
	if err := c.admit(ctx, "a", res(3, 1024), nil); err != nil {
		t.Fatal(err)
	}
	// b needs 2 vCPUs: waits. c needs 1 and would fit, but waits behind b.
	bDone, bQueued := admitAsync(c, ctx, "b", res(2, 1024))
	<-bQueued
	cDone, cQueued := admitAsync(c, ctx, "c", res(1, 1024))
	<-cQueued
	if c.position("b") != 1 || c.position("c") != 2 || c.position("a") != 0 {
		t.Fatalf("positions b=%d c=%d a=%d", c.position("b"), c.position("c"), c.position("a"))
	}
	s := c.snapshot()
	if s.Reserved != res(3, 1024) || s.Queued != res(3, 2048) || s.Waiting != 2 || s.Free != res(1, 3072) {
		t.Fatalf("snapshot %+v", s)
	}
	c.setRunning("a")
	if s := c.snapshot(); s.Used != res(3, 1024) || s.Reserved != res(0, 0) {
		t.Fatalf("a running: %+v", s)
	}
	c.release("a")
	for _, ch := range []<-chan error{bDone, cDone} {
		if err := <-ch; err != nil {
			t.Fatal(err)
		}
	}
	if s := c.snapshot(); s.Reserved != res(3, 2048) || s.Waiting != 0 {
		t.Fatalf("after a left: %+v", s)
	}
	// More than the whole budget fails at once.
	if err := c.admit(ctx, "huge", res(5, 1), nil); !isCode(err, api.CodeInsufficientCapacity) {
		t.Fatalf("huge: %v", err)
	}
	// A cancelled wait leaves the queue and holds nothing.
	cctx, cancel := context.WithCancel(ctx)
	dDone, dQueued := admitAsync(c, cctx, "d", res(2, 1))
	<-dQueued
	cancel()
	if err := <-dDone; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
	if c.position("d") != 0 || c.snapshot().Waiting != 0 {
		t.Fatal("a cancelled waiter stayed queued")
	}
	c.release("b")
	c.release("c")
	c.release("c") // twice: nothing
	if s := c.snapshot(); s.Reserved != res(0, 0) || s.Free != res(4, 4096) {
		t.Fatalf("all released: %+v", s)
	}

	type ev struct {
		action, id string
		position   int
		held       api.Resources // used + reserved after the change
		waiting    int
	}
	want := []ev{
		{api.ActionAdmitted, "a", 0, res(3, 1024), 0},
		{api.ActionQueued, "b", 1, res(3, 1024), 1},
		{api.ActionQueued, "c", 2, res(3, 1024), 2},
		{api.ActionReleased, "a", 0, res(0, 0), 2},
		{api.ActionAdmitted, "b", 0, res(2, 1024), 1},
		{api.ActionAdmitted, "c", 0, res(3, 2048), 0},
		{api.ActionQueued, "d", 1, res(3, 2048), 1},
		{api.ActionDequeued, "d", 0, res(3, 2048), 0},
		{api.ActionReleased, "b", 0, res(1, 1024), 0},
		{api.ActionReleased, "c", 0, res(0, 0), 0},
	}
	for i, w := range want {
		var e api.Event
		select {
		case e = <-sub.C():
		default:
			t.Fatalf("event %d: none, want %+v", i, w)
		}
		cp := e.Capacity
		if cp == nil {
			t.Fatalf("event %d %s %s: no capacity", i, e.Action, e.VMID)
		}
		got := ev{e.Action, e.VMID, e.Position, res(cp.Used.CPUs+cp.Reserved.CPUs, cp.Used.MemoryMiB+cp.Reserved.MemoryMiB), cp.Waiting}
		if e.Type != api.EventCapacity || got != w || cp.Total != res(4, 4096) {
			t.Errorf("event %d: %s %+v, want %+v", i, e.Type, got, w)
		}
		if e.Action == api.ActionDequeued && e.Message != context.Canceled.Error() {
			t.Errorf("dequeued: message %q", e.Message)
		}
	}
	select {
	case e := <-sub.C():
		t.Errorf("one event too many: %+v", e)
	default:
	}
}

func TestCapacityTimeout(t *testing.T) {
	c := newCapacity(res(1, 0), time.Millisecond, nil)
	c.hold("a", res(1, 128), true)
	if err := c.admit(context.Background(), "b", res(1, 128), nil); !isCode(err, api.CodeInsufficientCapacity) {
		t.Fatalf("timeout: %v", err)
	}
	if s := c.snapshot(); s.Waiting != 0 || s.Used != res(1, 128) {
		t.Fatalf("after the timeout: %+v", s)
	}
	// A zero memory budget is no limit on memory.
	c.release("a")
	if err := c.admit(context.Background(), "b", res(1, 1<<20), nil); err != nil {
		t.Fatal(err)
	}
}

func isCode(err error, code string) bool {
	c, _ := errdefs.CodeOf(err)
	return err != nil && c == code
}
