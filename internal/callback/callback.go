// Package callback delivers a VM's completion record to the caller's
// callback_url: an HTTP POST of JSON with a per-attempt timeout and retries
// with exponential backoff. Delivery runs off the request path; the API never
// waits for it.
package callback

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/netpolicy"
)

// Sender posts callbacks. The zero value is not usable; use New.
type Sender struct {
	client      *http.Client
	maxAttempts int
	backoff     time.Duration
	maxBackoff  time.Duration
}

// Options tune a Sender. Zero fields take the defaults shown.
type Options struct {
	// Timeout bounds one attempt (default 10s).
	Timeout time.Duration
	// MaxAttempts is how many times a delivery is tried (default 8).
	MaxAttempts int
	// Backoff is the wait after the first failure, doubled each time
	// (default 1s; negative: no wait).
	Backoff time.Duration
	// MaxBackoff caps the wait between attempts (default 1m).
	MaxBackoff time.Duration
	// Transport makes the connections (default http.DefaultTransport);
	// a connection it refuses with an error wrapping
	// netpolicy.ErrNotAllowed fails the delivery at once.
	Transport http.RoundTripper
}

// New returns a Sender.
func New(o Options) *Sender {
	if o.Timeout == 0 {
		o.Timeout = 10 * time.Second
	}
	if o.MaxAttempts == 0 {
		o.MaxAttempts = 8
	}
	switch {
	case o.Backoff == 0:
		o.Backoff = time.Second
	case o.Backoff < 0:
		o.Backoff = 0
	}
	if o.MaxBackoff == 0 {
		o.MaxBackoff = time.Minute
	}
	return &Sender{
		client: &http.Client{
			Transport: o.Transport,
			Timeout:   o.Timeout,
			// A callback receiver has no business redirecting us elsewhere.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		maxAttempts: o.MaxAttempts,
		backoff:     o.Backoff,
		maxBackoff:  o.MaxBackoff,
	}
}

// Deliver POSTs body to url until it is accepted (any 2xx), the receiver
// refuses it for good (a 4xx other than 408 and 429), the attempts run out or
// ctx ends. After every attempt it calls record with the delivery state so
// far, so the caller can persist it; the last call has a final State unless
// ctx ended first (then State stays pending and the delivery can resume later).
// prior carries attempts already made before a daemon restart.
func (s *Sender) Deliver(ctx context.Context, url string, body []byte, prior api.CallbackDelivery, record func(api.CallbackDelivery)) api.CallbackDelivery {
	d := prior
	d.State = api.CallbackPending
	wait := s.backoff
	for i := 1; i < d.Attempts && wait < s.maxBackoff; i++ {
		wait *= 2
	}
	for d.Attempts < s.maxAttempts {
		if d.Attempts > 0 {
			t := time.NewTimer(min(wait, s.maxBackoff))
			select {
			case <-ctx.Done():
				t.Stop()
				return d
			case <-t.C:
			}
			wait *= 2
		}
		status, err := s.post(ctx, url, body)
		if ctx.Err() != nil {
			return d // shutting down: not an attempt that counts
		}
		d.Attempts++
		d.LastAttempt = time.Now().UTC()
		d.StatusCode = status
		switch {
		case err == nil && status >= 200 && status < 300:
			d.State = api.CallbackDelivered
			d.DeliveredAt = d.LastAttempt
			d.LastError = ""
			record(d)
			return d
		case err != nil:
			d.LastError = err.Error()
			if errors.Is(err, netpolicy.ErrNotAllowed) {
				d.State = api.CallbackFailed // retrying cannot help
				record(d)
				return d
			}
		default:
			d.LastError = fmt.Sprintf("receiver answered %d %s", status, http.StatusText(status))
			if status >= 400 && status < 500 && status != http.StatusRequestTimeout && status != http.StatusTooManyRequests {
				d.State = api.CallbackFailed
				record(d)
				return d
			}
		}
		if d.Attempts >= s.maxAttempts {
			d.State = api.CallbackFailed
		}
		record(d)
	}
	d.State = api.CallbackFailed
	return d
}

func (s *Sender) post(ctx context.Context, url string, body []byte) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, fmt.Errorf("build callback request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "goldvm")
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, fmt.Errorf("post callback: %w", err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, nil
}
