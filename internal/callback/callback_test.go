package callback

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/netpolicy"
)

func fastSender() *Sender {
	return New(Options{Timeout: 2 * time.Second, MaxAttempts: 4, Backoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond})
}

func TestDeliver(t *testing.T) {
	tests := []struct {
		desc         string
		statuses     []int // answers in order; the last repeats
		wantState    string
		wantAttempts int
	}{
		{desc: "accepted at once", statuses: []int{200}, wantState: api.CallbackDelivered, wantAttempts: 1},
		{desc: "5xx then accepted", statuses: []int{503, 500, 204}, wantState: api.CallbackDelivered, wantAttempts: 3},
		{desc: "429 is retried", statuses: []int{429, 200}, wantState: api.CallbackDelivered, wantAttempts: 2},
		{desc: "4xx is final", statuses: []int{404}, wantState: api.CallbackFailed, wantAttempts: 1},
		{desc: "always 5xx gives up", statuses: []int{502}, wantState: api.CallbackFailed, wantAttempts: 4},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			var n atomic.Int32
			var mu sync.Mutex
			var bodies []string
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				i := int(n.Add(1)) - 1
				b, _ := io.ReadAll(r.Body)
				mu.Lock()
				bodies = append(bodies, string(b))
				mu.Unlock()
				if ct := r.Header.Get("Content-Type"); ct != "application/json" {
					t.Errorf("Content-Type = %q, want application/json", ct)
				}
				w.WriteHeader(tt.statuses[min(i, len(tt.statuses)-1)])
			}))
			defer srv.Close()
			var records int
			d := fastSender().Deliver(context.Background(), srv.URL, []byte(`{"id":"x"}`), api.CallbackDelivery{}, func(api.CallbackDelivery) { records++ })
			if d.State != tt.wantState || d.Attempts != tt.wantAttempts {
				t.Fatalf("got state %s after %d attempts, want %s after %d", d.State, d.Attempts, tt.wantState, tt.wantAttempts)
			}
			if records != tt.wantAttempts {
				t.Errorf("record called %d times, want %d", records, tt.wantAttempts)
			}
			if int(n.Load()) != tt.wantAttempts {
				t.Errorf("server saw %d requests, want %d", n.Load(), tt.wantAttempts)
			}
			for _, b := range bodies {
				if b != `{"id":"x"}` {
					t.Errorf("body = %q", b)
				}
			}
		})
	}
}

func TestDeliverReceiverDown(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close() // nothing listens there any more
	d := fastSender().Deliver(context.Background(), url, []byte(`{}`), api.CallbackDelivery{}, func(api.CallbackDelivery) {})
	if d.State != api.CallbackFailed || d.Attempts != 4 || d.LastError == "" {
		t.Fatalf("got %+v, want failed after 4 attempts with an error", d)
	}
}

func TestDeliverStopsWithContextAndResumes(t *testing.T) {
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			w.WriteHeader(500)
			return
		}
		w.WriteHeader(200)
	}))
	defer srv.Close()
	s := New(Options{MaxAttempts: 5, Backoff: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	recorded := make(chan api.CallbackDelivery, 10)
	done := make(chan api.CallbackDelivery)
	go func() {
		done <- s.Deliver(ctx, srv.URL, []byte(`{}`), api.CallbackDelivery{}, func(d api.CallbackDelivery) { recorded <- d })
	}()
	last := <-recorded // the first attempt failed and was recorded; now a long backoff
	cancel()
	d := <-done
	if d.State != api.CallbackPending || d.Attempts != 1 {
		t.Fatalf("after cancel got %+v, want pending after 1 attempt", d)
	}
	if last.Attempts != 1 {
		t.Fatalf("recorded attempts %d, want 1", last.Attempts)
	}
	// A restarted daemon resumes from what was recorded.
	s2 := New(Options{MaxAttempts: 5, Backoff: time.Millisecond})
	d = s2.Deliver(context.Background(), srv.URL, []byte(`{}`), last, func(api.CallbackDelivery) {})
	if d.State != api.CallbackDelivered || d.Attempts != 2 {
		t.Fatalf("resumed delivery got %+v, want delivered after 2 attempts in all", d)
	}
}

// TestDeliverRefusedByNetworkPolicy: a receiver whose address the policy
// denies is never contacted, and the delivery fails at once (retrying
// cannot help).
func TestDeliverRefusedByNetworkPolicy(t *testing.T) {
	hits := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits++ }))
	defer srv.Close()
	policy, err := netpolicy.Parse("", "127.0.0.0/8")
	if err != nil {
		t.Fatal(err)
	}
	s := New(Options{MaxAttempts: 4, Backoff: time.Millisecond, Transport: policy.Transport()})
	d := s.Deliver(context.Background(), srv.URL, []byte(`{}`), api.CallbackDelivery{}, func(api.CallbackDelivery) {})
	if d.State != api.CallbackFailed || d.Attempts != 1 || !strings.Contains(d.LastError, "denied network 127.0.0.0/8") {
		t.Fatalf("got %+v, want failed after 1 attempt naming the denied network", d)
	}
	if hits != 0 {
		t.Errorf("receiver saw %d requests", hits)
	}
}

// TestDeliverNegativeBackoffWaitsNot: Backoff -1 (what `--callback-backoff
// 0` passes) retries at once: three attempts against a receiver that keeps
// answering 503 end within the test's patience, with Backoff left at the
// default of 1s they could not (1s + 2s).
func TestDeliverNegativeBackoffWaitsNot(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	if s := New(Options{MaxAttempts: 3, Backoff: -1}); s.backoff != 0 {
		t.Fatalf("Backoff -1 gave a wait of %v", s.backoff)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	d := New(Options{MaxAttempts: 3, Backoff: -1}).Deliver(ctx, srv.URL, []byte("{}"), api.CallbackDelivery{}, func(api.CallbackDelivery) {})
	if d.State != api.CallbackFailed || d.Attempts != 3 || hits.Load() != 3 {
		t.Fatalf("delivery %+v after %d requests; want failed after 3", d, hits.Load())
	}
}
