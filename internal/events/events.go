// Package events is the daemon's event bus: every VM and image state change
// is published here once, kept in a bounded in-memory ring for clients that
// reconnect, and fanned out to subscribers (GET /events) and observers
// (metrics). Publishing never blocks on a subscriber: each has a bounded
// buffer, and one that lets it fill is dropped and told to start over.
package events

import (
	"sync"
	"time"

	"github.com/goldvm/goldvm/api"
)

// Defaults of Options.
const (
	DefaultRingSize     = 4096
	DefaultClientBuffer = 256
)

// Options configures a Bus; zero values take the defaults.
type Options struct {
	// RingSize is how many recent events are kept for replay.
	RingSize int
	// ClientBuffer is how many events may wait for one subscriber before
	// it is dropped as too slow.
	ClientBuffer int
	// FirstID is the id of the first event. Default: the start time in
	// microseconds since 1970, so a daemon's ids are above those of every
	// earlier run and a client's old Last-Event-ID gets a reset.
	FirstID uint64
	// Now returns the current time. Default time.Now.
	Now func() time.Time
}

// Bus publishes events. A nil *Bus accepts and discards them, so components
// can publish whether or not the daemon wired one.
type Bus struct {
	opts Options

	mu        sync.Mutex
	next      uint64      // id of the next event
	ring      []api.Event // circular, len ≤ RingSize
	head      int         // index of the oldest event when the ring is full
	subs      map[*Sub]struct{}
	observers []func(api.Event)
	dropped   uint64 // subscribers dropped as too slow, ever
}

// New returns a Bus.
func New(opts Options) *Bus {
	if opts.RingSize <= 0 {
		opts.RingSize = DefaultRingSize
	}
	if opts.ClientBuffer <= 0 {
		opts.ClientBuffer = DefaultClientBuffer
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.FirstID == 0 {
		opts.FirstID = uint64(opts.Now().UnixMicro())
	}
	return &Bus{opts: opts, next: opts.FirstID, subs: map[*Sub]struct{}{}}
}

// Filter selects events; the zero Filter selects all.
type Filter struct {
	// VMID keeps only the events of this VM.
	VMID string
	// Types keeps only events of these types (api.EventVM, api.EventImage,
	// api.EventGroup, api.EventCapacity).
	Types []string
}

// Match reports whether f selects e. Reset events always match.
func (f Filter) Match(e api.Event) bool {
	if e.Type == api.EventReset {
		return true
	}
	if f.VMID != "" && e.VMID != f.VMID {
		return false
	}
	if len(f.Types) == 0 {
		return true
	}
	for _, t := range f.Types {
		if t == e.Type {
			return true
		}
	}
	return false
}

// Observe calls fn with every event published from now on, synchronously
// and in id order, under the bus's lock: fn must be quick and must not
// publish or subscribe.
func (b *Bus) Observe(fn func(api.Event)) {
	if b == nil {
		return
	}
	b.mu.Lock()
	b.observers = append(b.observers, fn)
	b.mu.Unlock()
}

// Publish gives e the next id (and the time, if unset), keeps it in the
// ring and hands it to the observers and matching subscribers. It never
// waits for a subscriber. It returns e as published.
func (b *Bus) Publish(e api.Event) api.Event {
	if b == nil {
		return e
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	e.ID = b.next
	b.next++
	if e.Time.IsZero() {
		e.Time = b.opts.Now().UTC()
	}
	if len(b.ring) < b.opts.RingSize {
		b.ring = append(b.ring, e)
	} else {
		b.ring[b.head] = e
		b.head = (b.head + 1) % len(b.ring)
	}
	for _, fn := range b.observers {
		fn(e)
	}
	for s := range b.subs {
		if !s.filter.Match(e) {
			continue
		}
		select {
		case s.c <- e:
		default:
			// Too slow: drop it rather than wait. Its channel closes
			// after the events it holds; Dropped tells it why.
			s.dropped = true
			close(s.c)
			delete(b.subs, s)
			b.dropped++
		}
	}
	return e
}

// Dropped returns how many subscribers were dropped as too slow.
func (b *Bus) Dropped() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.dropped
}

// LastID returns the id of the latest event, or FirstID-1 before any.
func (b *Bus) LastID() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.next - 1
}

// Sub is one subscriber's stream of events.
type Sub struct {
	// Start is the id of the latest event published before the
	// subscription began (live events have higher ids).
	Start   uint64
	b       *Bus
	filter  Filter
	c       chan api.Event
	dropped bool // set under b.mu before c is closed
}

// C delivers the events. It is closed when the subscriber is dropped as too
// slow (Dropped then reports true) or cancelled.
func (s *Sub) C() <-chan api.Event { return s.c }

// Dropped reports whether the bus dropped the subscriber because its
// buffer was full. Call it once C is closed.
func (s *Sub) Dropped() bool {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	return s.dropped
}

// Cancel ends the subscription; C is closed if it is not yet.
func (s *Sub) Cancel() {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	if _, ok := s.b.subs[s]; ok {
		delete(s.b.subs, s)
		close(s.c)
	}
}

// Subscribe starts a subscription of the events f selects. With resume, it
// first returns the events after lastID that are still in the ring (those
// f selects), and reset is true when some events after lastID are no
// longer there (or lastID is not one of this run's ids): the caller has
// missed events and must read the state again. Replay and subscription are
// atomic: no event is missed or repeated between them.
func (b *Bus) Subscribe(f Filter, resume bool, lastID uint64) (s *Sub, replay []api.Event, reset bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s = &Sub{Start: b.next - 1, b: b, filter: f, c: make(chan api.Event, b.opts.ClientBuffer)}
	b.subs[s] = struct{}{}
	if !resume {
		return s, nil, false
	}
	oldest := b.next // id of the oldest event in the ring
	if len(b.ring) > 0 {
		oldest = b.ring[b.head%len(b.ring)].ID
	}
	if lastID >= b.next || lastID+1 < oldest {
		// From the future (another run) or from before the ring: the
		// gap cannot be filled.
		return s, nil, true
	}
	for i := range b.ring {
		e := b.ring[(b.head+i)%len(b.ring)]
		if e.ID > lastID && f.Match(e) {
			replay = append(replay, e)
		}
	}
	return s, replay, false
}
