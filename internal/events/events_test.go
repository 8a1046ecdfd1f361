package events

import (
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
)

func vmEvent(id string) api.Event {
	return api.Event{Type: api.EventVM, Action: api.ActionPhase, VMID: id}
}

// TestIDsIncrease: ids increase by one from FirstID; observers see every
// event in order.
func TestIDsIncrease(t *testing.T) {
	b := New(Options{FirstID: 100})
	var seen []uint64
	b.Observe(func(e api.Event) { seen = append(seen, e.ID) })
	for i := 0; i < 5; i++ {
		e := b.Publish(vmEvent("a"))
		if e.ID != uint64(100+i) || e.Time.IsZero() {
			t.Fatalf("event %d: id %d time %v", i, e.ID, e.Time)
		}
	}
	if len(seen) != 5 || seen[4] != 104 || b.LastID() != 104 {
		t.Fatalf("observed %v, last %d", seen, b.LastID())
	}
}

// TestDefaultFirstIDAboveEarlierRuns: without FirstID, a bus started a
// second later numbers above every id of an earlier run that published
// fewer than a million events a second.
func TestDefaultFirstIDAboveEarlierRuns(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	a := New(Options{Now: func() time.Time { return t0 }})
	for i := 0; i < 999_999; i++ {
		a.Publish(vmEvent("a"))
	}
	b := New(Options{Now: func() time.Time { return t0.Add(time.Second) }})
	if got := b.Publish(vmEvent("a")).ID; got <= a.LastID() {
		t.Fatalf("second run's first id %d <= first run's last %d", got, a.LastID())
	}
}

// TestReplay: a subscriber resuming after id N gets the ring's events
// after N that its filter selects, then live ones; one whose N fell out of
// the ring, or is not of this run, gets reset.
func TestReplay(t *testing.T) {
	b := New(Options{FirstID: 1, RingSize: 10})
	for i := 0; i < 8; i++ { // ids 1..8, alternating VMs
		b.Publish(vmEvent([]string{"a", "b"}[i%2]))
	}
	s, replay, reset := b.Subscribe(Filter{VMID: "a"}, true, 3)
	defer s.Cancel()
	if reset {
		t.Fatal("reset within the ring")
	}
	var ids []uint64
	for _, e := range replay {
		ids = append(ids, e.ID)
	}
	if len(ids) != 2 || ids[0] != 5 || ids[1] != 7 {
		t.Fatalf("replay ids %v, want [5 7] (VM a after 3)", ids)
	}
	b.Publish(vmEvent("b"))
	b.Publish(vmEvent("a"))
	if e := <-s.C(); e.ID != 10 || e.VMID != "a" {
		t.Fatalf("live event %+v, want id 10 of a", e)
	}

	for i := 0; i < 20; i++ { // the ring now holds 21..30
		b.Publish(vmEvent("a"))
	}
	for _, tc := range []struct {
		last  uint64
		reset bool
		n     int
	}{
		{last: 30, n: 0},             // up to date
		{last: 20, n: 10},            // just within the ring
		{last: 19, reset: true},      // event 20 is gone
		{last: 0, reset: true},       // before this run
		{last: 31, reset: true},      // from the future (another run)
		{last: 1 << 63, reset: true}, // far future
	} {
		s, replay, reset := b.Subscribe(Filter{}, true, tc.last)
		s.Cancel()
		if reset != tc.reset || len(replay) != tc.n {
			t.Errorf("Last-Event-ID %d: reset %v, %d replayed; want %v, %d", tc.last, reset, len(replay), tc.reset, tc.n)
		}
	}
}

// TestFilter: by VM and by type; resets always pass.
func TestFilter(t *testing.T) {
	img := api.Event{Type: api.EventImage, ImageKey: "k"}
	for _, tc := range []struct {
		f    Filter
		e    api.Event
		want bool
	}{
		{Filter{}, img, true},
		{Filter{Types: []string{api.EventVM}}, img, false},
		{Filter{Types: []string{api.EventVM, api.EventImage}}, img, true},
		{Filter{VMID: "a"}, vmEvent("a"), true},
		{Filter{VMID: "a"}, vmEvent("b"), false},
		{Filter{VMID: "a"}, img, false},
		{Filter{VMID: "a", Types: []string{api.EventImage}}, api.Event{Type: api.EventReset}, true},
	} {
		if got := tc.f.Match(tc.e); got != tc.want {
			t.Errorf("%+v matches %+v: %v, want %v", tc.f, tc.e, got, tc.want)
		}
	}
}

// TestSlowSubscriberDropped: a subscriber that reads nothing is dropped
// when its buffer is full; Publish never waits for it, and a subscriber
// that reads keeps every event.
func TestSlowSubscriberDropped(t *testing.T) {
	b := New(Options{FirstID: 1, ClientBuffer: 4})
	stalled, _, _ := b.Subscribe(Filter{}, false, 0)
	live, _, _ := b.Subscribe(Filter{}, false, 0)
	got := make(chan int)
	go func() {
		n := 0
		for range live.C() {
			n++
		}
		got <- n
	}()
	const total = 1000
	for i := 0; i < total; i++ {
		b.Publish(vmEvent("a")) // would deadlock here if it waited for the stalled one
	}
	live.Cancel()
	if n := <-got; n != total {
		// The reader may fall 4 behind and be dropped too on a busy
		// machine; then it must say so.
		if !live.Dropped() {
			t.Fatalf("reading subscriber got %d of %d events and was not dropped", n, total)
		}
		t.Logf("reading subscriber fell behind too, after %d events", n)
	}
	n := 0
	for range stalled.C() {
		n++
	}
	if n != 4 || !stalled.Dropped() {
		t.Fatalf("stalled subscriber: %d buffered events, dropped %v; want 4, true", n, stalled.Dropped())
	}
	if b.Dropped() < 1 {
		t.Fatal("bus counts no dropped subscriber")
	}
	stalled.Cancel() // harmless after the drop
}

// TestNilBus: components publish to a nil bus without effect.
func TestNilBus(t *testing.T) {
	var b *Bus
	b.Observe(func(api.Event) {})
	if e := b.Publish(vmEvent("a")); e.ID != 0 {
		t.Fatalf("nil bus gave id %d", e.ID)
	}
}
