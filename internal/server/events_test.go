package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/client"
	"github.com/goldvm/goldvm/internal/events"
	"github.com/goldvm/goldvm/internal/hypervisor/qemu"
	"github.com/goldvm/goldvm/internal/image"
	"github.com/goldvm/goldvm/internal/metrics"
	"github.com/goldvm/goldvm/internal/vm"
)

// testDaemon is the daemon as `goldvm serve` wires it (record store, image
// store, QEMU driver, event bus, metrics), serving on loopback.
type testDaemon struct {
	srv     *Server
	http    *httptest.Server
	bus     *events.Bus
	metrics *metrics.Metrics
	client  *client.Client
	images  *httptest.Server // serves any path; no checksum matches
}

type daemonOptions struct {
	bus events.Options
	// smallSendBuffers gives every accepted connection a small kernel
	// send buffer, so a client that stops reading blocks its stream
	// after a few KiB rather than a few MiB.
	smallSendBuffers bool
}

func newTestDaemon(t *testing.T, o daemonOptions) *testDaemon {
	t.Helper()
	dir := t.TempDir()
	log := slog.New(slog.DiscardHandler)
	bus := events.New(o.bus)
	mets := metrics.New()
	bus.Observe(mets.Observe)
	mets.CollectEventDrops(bus.Dropped)
	db, images, _ := openStores(t, dir, image.Options{RetryBackoff: time.Millisecond, Events: bus, Counters: mets, Logger: log})
	drv, err := qemu.New(qemu.Config{Accel: "tcg", UserNet: true, RunDir: filepath.Join(dir, "run"), VMRoot: filepath.Join(dir, "vms"), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { drv.Close() })
	mgr := vm.New(vm.Config{VMDir: filepath.Join(dir, "vms"), Store: db, Images: images, Driver: drv, Logger: log, Events: bus})
	t.Cleanup(mgr.Close)
	mets.CollectVMs(func() ([]api.VM, error) { return mgr.List(context.Background()) })
	s := New(Config{VMs: mgr, Images: images, Logger: log, Events: bus, Metrics: mets})
	hs := httptest.NewUnstartedServer(s)
	if o.smallSendBuffers {
		hs.Config.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
			if tc, ok := c.(*net.TCPConn); ok {
				tc.SetWriteBuffer(4096)
			}
			return ctx
		}
	}
	hs.Config.RegisterOnShutdown(s.StopStreams)
	hs.Start()
	t.Cleanup(func() { s.StopStreams(); hs.Close() })
	imgs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("not the image anyone asked for: " + r.URL.Path))
	}))
	t.Cleanup(imgs.Close)
	return &testDaemon{srv: s, http: hs, bus: bus, metrics: mets, client: client.New(hs.URL, ""), images: imgs}
}

// failingVM asks for a VM whose image the loopback server answers with
// bytes that do not match the checksum: its creation fails fast, with a
// real download, verification and undo.
func (d *testDaemon) failingVM(t *testing.T, n int) *api.VM {
	t.Helper()
	sum := sha256.Sum256([]byte(fmt.Sprint("no such image ", n, " ", t.Name())))
	v, err := d.client.CreateVM(context.Background(), api.CreateVMRequest{
		CPUs: 1, Memory: api.Memory(128),
		Image: api.Image{URL: fmt.Sprintf("%s/image-%d.img", d.images.URL, n), Checksum: hex.EncodeToString(sum[:]), ChecksumType: "sha256"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// nextEvent reads one event, failing the test on an error.
func nextEvent(t *testing.T, st *client.EventStream) api.Event {
	t.Helper()
	e, err := st.Next()
	if err != nil {
		t.Fatalf("event stream: %v", err)
	}
	return e
}

// TestEventsOfACreation: one client sees a VM's creation (accepted, its
// phases, error with the code) and its image's fetch (fetching, error),
// then its delete, with increasing ids; a client of another VM's events
// sees none of them; a client that resumes gets what it missed.
func TestEventsOfACreation(t *testing.T) {
	d := newTestDaemon(t, daemonOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	all, err := d.client.Events(ctx, client.EventOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer all.Close()
	imagesOnly, err := d.client.Events(ctx, client.EventOptions{Types: []string{api.EventImage}})
	if err != nil {
		t.Fatal(err)
	}
	defer imagesOnly.Close()

	v := d.failingVM(t, 1)
	var got []api.Event
	for {
		e := nextEvent(t, all)
		got = append(got, e)
		if e.Type == api.EventVM && e.Action == api.ActionError {
			break
		}
	}
	var seq []string
	for i, e := range got {
		if i > 0 && e.ID <= got[i-1].ID {
			t.Errorf("event %d has id %d after %d", i, e.ID, got[i-1].ID)
		}
		switch e.Type {
		case api.EventVM:
			if e.VMID != v.ID || e.VM == nil || e.VM.ID != v.ID {
				t.Errorf("vm event %+v is not about %s", e, v.ID)
			}
			seq = append(seq, "vm."+e.Action)
		case api.EventImage:
			if e.ImageKey == "" || e.Image == nil {
				t.Errorf("image event without its image: %+v", e)
			}
			seq = append(seq, "image."+e.Action)
		}
	}
	t.Logf("events: %v", seq)
	for _, want := range []string{"vm.accepted", "vm.phase", "image.fetching", "image.error", "vm.error"} {
		if !slices.Contains(seq, want) {
			t.Errorf("no %s event in %v", want, seq)
		}
	}
	last := got[len(got)-1]
	if last.VM.Status != api.StatusError || last.VM.Error == nil || last.VM.Error.Code != api.CodeChecksumMismatch {
		t.Errorf("final event's VM: %+v (error %+v), want error checksum-mismatch", last.VM, last.VM.Error)
	}
	for {
		e := nextEvent(t, imagesOnly)
		if e.Type != api.EventImage {
			t.Fatalf("?type=image stream got a %s event", e.Type)
		}
		if e.Action == api.ActionError {
			if e.Image.Error == nil || e.Image.Error.Code != api.CodeChecksumMismatch || e.Image.State != "error" {
				t.Errorf("image error event: %+v", e.Image)
			}
			break
		}
	}

	// A client that resumes from the first event gets the rest again.
	resumed, err := d.client.Events(ctx, client.EventOptions{VM: v.ID, Resume: true, LastEventID: got[0].ID})
	if err != nil {
		t.Fatal(err)
	}
	defer resumed.Close()
	var vmEvents []api.Event
	for _, e := range got[1:] {
		if e.Type == api.EventVM {
			vmEvents = append(vmEvents, e)
		}
	}
	for _, want := range vmEvents {
		if e := nextEvent(t, resumed); e.ID != want.ID || e.Action != want.Action {
			t.Fatalf("replayed %d %s, want %d %s", e.ID, e.Action, want.ID, want.Action)
		}
	}
	// The delete comes live to both.
	if err := d.client.DeleteVM(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	for _, st := range []*client.EventStream{all, resumed} {
		var actions []string
		for len(actions) < 2 {
			actions = append(actions, nextEvent(t, st).Action)
		}
		if !slices.Equal(actions, []string{api.ActionDeleting, api.ActionDeleted}) {
			t.Errorf("after DELETE: %v, want deleting, deleted", actions)
		}
	}
	// A VM filter passes no other VM's events: the next event the
	// resumed stream gets is the reset-free keepalive-free end below.
	other := d.failingVM(t, 2)
	for {
		e := nextEvent(t, all)
		if e.VMID == other.ID && e.Action == api.ActionError {
			break
		}
	}
	d.srv.StopStreams()
	if e, err := resumed.Next(); !errors.Is(err, io.EOF) {
		t.Fatalf("?vm=%s stream after another VM's creation: %+v, %v; want its end", v.ID, e, err)
	}
}

// TestEventsResetAndBadInput: a Last-Event-ID the ring no longer holds (or
// of another run) gets a reset event whose id is a good place to resume;
// a malformed one 400 invalid-event-id; bad filters 400 invalid-query.
func TestEventsResetAndBadInput(t *testing.T) {
	d := newTestDaemon(t, daemonOptions{bus: events.Options{FirstID: 1000, RingSize: 4}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := 0; i < 10; i++ { // ids 1000..1009; the ring keeps 1006..1009
		d.bus.Publish(api.Event{Type: api.EventImage, Action: api.ActionDeleted, ImageKey: fmt.Sprint(i)})
	}
	for _, last := range []uint64{1, 1004, 5000} {
		st, err := d.client.Events(ctx, client.EventOptions{Resume: true, LastEventID: last})
		if err != nil {
			t.Fatal(err)
		}
		e := nextEvent(t, st)
		st.Close()
		if e.Type != api.EventReset || e.ID != 1009 || e.Message == "" {
			t.Errorf("Last-Event-ID %d: first event %+v, want a reset with id 1009", last, e)
		}
	}
	st, err := d.client.Events(ctx, client.EventOptions{Resume: true, LastEventID: 1005})
	if err != nil {
		t.Fatal(err)
	}
	if e := nextEvent(t, st); e.ID != 1006 || e.Type != api.EventImage {
		t.Errorf("Last-Event-ID 1005: first event %+v, want image event 1006", e)
	}
	st.Close()

	for _, tc := range []struct{ target, lastID, code string }{
		{"/events", "abc", api.CodeInvalidEventID},
		{"/events", "-1", api.CodeInvalidEventID},
		{"/events", "18446744073709551616", api.CodeInvalidEventID},
		{"/events?type=vm,bogus", "", api.CodeInvalidQuery},
		{"/events?vm=../etc", "", api.CodeInvalidQuery},
	} {
		req, _ := http.NewRequest(http.MethodGet, d.http.URL+tc.target, nil)
		if tc.lastID != "" {
			req.Header.Set("Last-Event-ID", tc.lastID)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if e := apiError(t, string(body)); resp.StatusCode != http.StatusBadRequest || e.Code != tc.code {
			t.Errorf("%s Last-Event-ID %q: %d %s, want 400 %s", tc.target, tc.lastID, resp.StatusCode, e.Code, tc.code)
		}
	}
}

// TestEventsStalledClient is the slow-consumer measurement: 100 clients
// follow the events while 50 VMs are created (each a real download that
// fails verification, then the undo) and deleted. 99 read; one sends its
// request and never reads (a 4 KiB receive buffer, the server's send
// buffers 4 KiB). Every creation must finish, every reading client must
// see every event exactly once and in order (resuming with Last-Event-ID
// if it was dropped itself), and the stalled client must be dropped.
func TestEventsStalledClient(t *testing.T) {
	const readers, vms = 99, 50
	d := newTestDaemon(t, daemonOptions{bus: events.Options{ClientBuffer: 32}, smallSendBuffers: true})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	// The stalled client.
	var dialer net.Dialer
	raw, err := dialer.DialContext(ctx, "tcp", d.http.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.(*net.TCPConn).SetReadBuffer(4096)
	fmt.Fprintf(raw, "GET /events HTTP/1.1\r\nHost: goldvm\r\n\r\n")

	type result struct {
		ids        []uint64
		reconnects int
		resets     int
		err        error
	}
	results := make([]result, readers)
	var stopID atomic.Uint64 // readers stop at this event; 0 until known
	var started, done sync.WaitGroup
	started.Add(readers)
	done.Add(readers)
	for i := range readers {
		go func() {
			defer done.Done()
			r := &results[i]
			opts := client.EventOptions{}
			for first := true; ; first = false {
				st, err := d.client.Events(ctx, opts)
				if first {
					started.Done()
				}
				if err != nil {
					r.err = err
					return
				}
				for {
					e, err := st.Next()
					if err != nil {
						break // dropped: resume below
					}
					if e.Type == api.EventReset {
						r.resets++
						continue
					}
					r.ids = append(r.ids, e.ID)
					if s := stopID.Load(); s != 0 && e.ID >= s {
						st.Close()
						return
					}
				}
				st.Close()
				if ctx.Err() != nil {
					r.err = ctx.Err()
					return
				}
				r.reconnects++
				opts = client.EventOptions{Resume: true, LastEventID: st.LastID}
			}
		}()
	}
	started.Wait()
	begin := d.bus.LastID()

	t0 := time.Now()
	var ids []string
	for i := range vms {
		ids = append(ids, d.failingVM(t, i).ID)
	}
	for _, id := range ids {
		v, err := d.client.WaitVM(ctx, id, nil)
		if err != nil || v.Status != api.StatusError {
			t.Fatalf("VM %s: %+v, %v", id, v, err)
		}
	}
	created := time.Since(t0)
	for _, id := range ids {
		if err := d.client.DeleteVM(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	// Nothing else publishes now: a last event tells the readers to stop.
	stopID.Store(d.bus.LastID() + 1)
	last := d.bus.Publish(api.Event{Type: api.EventImage, Action: api.ActionDeleted, ImageKey: "end-of-test"}).ID
	if last != stopID.Load() {
		t.Fatalf("the last event has id %d, want %d", last, stopID.Load())
	}
	done.Wait()
	total := int(last - begin)
	t.Logf("%d VMs created (failed at verification) and deleted in %v with %d event clients, one stalled; %d events",
		vms, created.Round(time.Millisecond), readers+1, total)

	reconnects := 0
	for i, r := range results {
		if r.err != nil {
			t.Fatalf("reader %d: %v", i, r.err)
		}
		if r.resets > 0 {
			t.Errorf("reader %d got %d resets (the ring should cover a short drop)", i, r.resets)
		}
		for j, id := range r.ids {
			if id != begin+1+uint64(j) {
				t.Fatalf("reader %d: event %d has id %d, want %d (gap or repeat)", i, j, id, begin+1+uint64(j))
			}
		}
		if len(r.ids) != total {
			t.Fatalf("reader %d got %d of %d events", i, len(r.ids), total)
		}
		reconnects += r.reconnects
	}
	t.Logf("readers: all %d saw all %d events in order; %d reconnects after drops", readers, total, reconnects)

	// The stalled client was dropped: once it reads, its stream ends with
	// the drop notice.
	raw.SetReadDeadline(time.Now().Add(time.Minute))
	var got []byte
	buf := make([]byte, 64<<10)
	for !strings.Contains(string(got), ": dropped") {
		n, err := raw.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			t.Fatalf("stalled client's stream (%d bytes) has no drop notice: %v; bus dropped %d clients", len(got), err, d.bus.Dropped())
		}
	}
	t.Logf("stalled client: dropped; it had %d bytes waiting; bus dropped %d clients in all", len(got), d.bus.Dropped())
}
