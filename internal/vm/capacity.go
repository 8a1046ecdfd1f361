package vm

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/events"
)

// DefaultQueueTimeout is how long a VM waits for capacity when
// Config.QueueTimeout is zero.
const DefaultQueueTimeout = 10 * time.Minute

// capacity is the host's budget of vCPUs and memory for VMs, and the FIFO
// queue of the creations waiting for it. A VM holds its share from its
// admission (before its clone is made) until it stops, fails or is
// deleted. A zero total (of CPUs or memory) is no limit on it.
type capacity struct {
	total   api.Resources
	timeout time.Duration
	// bus receives a "capacity" event for every admission, wait and
	// release, published under mu so that the events come in the order
	// of the changes and each carries the capacity right after its own.
	bus *events.Bus

	mu    sync.Mutex
	held  map[string]holding
	queue []*waiter
}

type holding struct {
	res     api.Resources
	running bool // a running VM's (used), not a creation's (reserved)
}

type waiter struct {
	id    string
	res   api.Resources
	ready chan struct{} // closed at admission
}

func newCapacity(total api.Resources, timeout time.Duration, bus *events.Bus) *capacity {
	if timeout <= 0 {
		timeout = DefaultQueueTimeout
	}
	return &capacity{total: total, timeout: timeout, bus: bus, held: map[string]holding{}}
}

// publish sends a capacity event about id; mu held.
func (c *capacity) publish(action, id string, position int, msg string) {
	if c.bus == nil {
		return
	}
	snap := c.snapshotLocked()
	c.bus.Publish(api.Event{Type: api.EventCapacity, Action: action, VMID: id, Capacity: &snap, Position: position, Message: msg})
}

// fits reports whether res fits in what is free; mu held.
func (c *capacity) fits(res api.Resources) bool {
	var used api.Resources
	for _, h := range c.held {
		used.CPUs += h.res.CPUs
		used.MemoryMiB += h.res.MemoryMiB
	}
	return (c.total.CPUs == 0 || used.CPUs+res.CPUs <= c.total.CPUs) &&
		(c.total.MemoryMiB == 0 || used.MemoryMiB+res.MemoryMiB <= c.total.MemoryMiB)
}

// dispatch admits the waiters at the head of the queue that fit, in
// order: one that does not fit holds back those behind it; mu held.
func (c *capacity) dispatch() {
	for len(c.queue) > 0 && c.fits(c.queue[0].res) {
		w := c.queue[0]
		c.queue = c.queue[1:]
		c.held[w.id] = holding{res: w.res}
		close(w.ready)
		c.publish(api.ActionAdmitted, w.id, 0, "")
	}
}

// admit waits, in FIFO order, until res fits, then holds it for id.
// queued is called (once) when id has to wait. It fails with code
// insufficient-capacity when res is more than the whole budget or the
// wait is longer than the queue timeout, and with ctx's error when ctx
// ends first.
func (c *capacity) admit(ctx context.Context, id string, res api.Resources, queued func()) error {
	c.mu.Lock()
	if _, ok := c.held[id]; ok {
		c.mu.Unlock()
		return nil
	}
	if (c.total.CPUs > 0 && res.CPUs > c.total.CPUs) || (c.total.MemoryMiB > 0 && res.MemoryMiB > c.total.MemoryMiB) {
		c.mu.Unlock()
		return errdefs.Newf(errdefs.ErrUnavailable, api.CodeInsufficientCapacity,
			"the VM needs %d vCPUs and %d MiB, more than this host's whole capacity (--capacity-cpus %d, --capacity-memory %d MiB)",
			res.CPUs, res.MemoryMiB, c.total.CPUs, c.total.MemoryMiB)
	}
	if len(c.queue) == 0 && c.fits(res) {
		c.held[id] = holding{res: res}
		c.publish(api.ActionAdmitted, id, 0, "")
		c.mu.Unlock()
		return nil
	}
	w := &waiter{id: id, res: res, ready: make(chan struct{})}
	c.queue = append(c.queue, w)
	c.publish(api.ActionQueued, id, len(c.queue), "")
	c.mu.Unlock()
	if queued != nil {
		queued()
	}
	timer := time.NewTimer(c.timeout)
	defer timer.Stop()
	var err error
	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
		err = ctx.Err()
	case <-timer.C:
		err = errdefs.Newf(errdefs.ErrUnavailable, api.CodeInsufficientCapacity,
			"no capacity for %d vCPUs and %d MiB became free within --queue-timeout %s", res.CPUs, res.MemoryMiB, c.timeout)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if i := slices.Index(c.queue, w); i >= 0 {
		c.queue = slices.Delete(c.queue, i, i+1)
		c.publish(api.ActionDequeued, id, 0, err.Error())
		c.dispatch() // those behind it may fit now
		return err
	}
	// Admitted just as it gave up: give it back.
	delete(c.held, id)
	c.publish(api.ActionReleased, id, 0, err.Error())
	c.dispatch()
	return err
}

// hold records id's share without waiting (a VM found running after a
// restart).
func (c *capacity) hold(id string, res api.Resources, running bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.held[id] = holding{res: res, running: running}
	c.publish(api.ActionAdmitted, id, 0, "")
}

// setRunning moves id's share from reserved to used.
func (c *capacity) setRunning(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if h, ok := c.held[id]; ok {
		h.running = true
		c.held[id] = h
	}
}

// release gives id's share back and admits whom it lets in. Releasing
// what is not held does nothing.
func (c *capacity) release(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.held[id]; !ok {
		return
	}
	delete(c.held, id)
	c.publish(api.ActionReleased, id, 0, "")
	c.dispatch()
}

// position is id's place in the queue (1 first), 0 when it does not wait.
func (c *capacity) position(id string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, w := range c.queue {
		if w.id == id {
			return i + 1
		}
	}
	return 0
}

// snapshot is GET /capacity's answer.
func (c *capacity) snapshot() api.Capacity {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.snapshotLocked()
}

// snapshotLocked is snapshot with mu held.
func (c *capacity) snapshotLocked() api.Capacity {
	out := api.Capacity{Total: c.total, Waiting: len(c.queue), QueueTimeout: api.Duration(c.timeout)}
	for _, h := range c.held {
		dst := &out.Reserved
		if h.running {
			dst = &out.Used
		}
		dst.CPUs += h.res.CPUs
		dst.MemoryMiB += h.res.MemoryMiB
	}
	for _, w := range c.queue {
		out.Queued.CPUs += w.res.CPUs
		out.Queued.MemoryMiB += w.res.MemoryMiB
	}
	// A zero total is no limit: nothing to show as free.
	if c.total.CPUs > 0 {
		out.Free.CPUs = c.total.CPUs - out.Used.CPUs - out.Reserved.CPUs
	}
	if c.total.MemoryMiB > 0 {
		out.Free.MemoryMiB = c.total.MemoryMiB - out.Used.MemoryMiB - out.Reserved.MemoryMiB
	}
	return out
}

// String is for logs.
func (c *capacity) String() string {
	s := c.snapshot()
	return fmt.Sprintf("%d/%d vCPUs, %d/%d MiB held, %d waiting", s.Used.CPUs+s.Reserved.CPUs, s.Total.CPUs,
		s.Used.MemoryMiB+s.Reserved.MemoryMiB, s.Total.MemoryMiB, s.Waiting)
}
