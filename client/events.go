package client

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/goldvm/goldvm/api"
)

// EventOptions selects the events of Client.Events; the zero value
// streams every event from now on.
type EventOptions struct {
	// VM keeps only the events of this VM id.
	VM string
	// Types keeps only events of these types (api.EventVM, api.EventImage,
	// api.EventGroup, api.EventCapacity).
	Types []string
	// Resume asks for the events after LastEventID first (from the
	// daemon's ring; an api.EventReset event when they are gone).
	Resume      bool
	LastEventID uint64
}

// EventStream reads GET /events. Its methods are not safe for concurrent use.
type EventStream struct {
	body io.ReadCloser
	r    *bufio.Reader
	// LastID is the id of the last event read, for resuming.
	LastID uint64
}

// maxEventLine bounds one line of the stream.
const maxEventLine = 1 << 20

// Events opens the daemon's event stream. Close it when done; cancelling
// ctx ends it too.
func (c *Client) Events(ctx context.Context, opts EventOptions) (*EventStream, error) {
	q := url.Values{}
	if opts.VM != "" {
		q.Set("vm", opts.VM)
	}
	if len(opts.Types) > 0 {
		q.Set("type", strings.Join(opts.Types, ","))
	}
	path := "/events"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.BaseURL+path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/event-stream")
	if opts.Resume {
		req.Header.Set("Last-Event-ID", strconv.FormatUint(opts.LastEventID, 10))
	}
	resp, err := c.send(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return nil, apiError(resp.StatusCode, data)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		resp.Body.Close()
		return nil, fmt.Errorf("GET /events answered %q, not an event stream", ct)
	}
	return &EventStream{body: resp.Body, r: bufio.NewReaderSize(resp.Body, maxEventLine), LastID: opts.LastEventID}, nil
}

// Next returns the next event; io.EOF when the daemon ended the stream
// (it dropped a slow client, or is shutting down: reconnect with Resume
// and LastID to go on).
func (s *EventStream) Next() (api.Event, error) {
	var data strings.Builder
	for {
		line, err := s.r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			return api.Event{}, fmt.Errorf("event stream: a line of over %d bytes", maxEventLine)
		}
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return api.Event{}, io.EOF
			}
			return api.Event{}, err
		}
		text := strings.TrimRight(string(line), "\r\n")
		if text == "" {
			if data.Len() == 0 {
				continue // a comment block or retry: no event
			}
			var e api.Event
			if err := json.Unmarshal([]byte(data.String()), &e); err != nil {
				return api.Event{}, fmt.Errorf("event stream: %w", err)
			}
			if e.ID != 0 {
				s.LastID = e.ID
			}
			return e, nil
		}
		field, value, _ := strings.Cut(text, ":")
		value = strings.TrimPrefix(value, " ")
		if field == "data" {
			if data.Len() > 0 {
				data.WriteByte('\n')
			}
			data.WriteString(value)
		}
		// id and event repeat what data holds; comments ("") and retry
		// are not needed here.
	}
}

// Close ends the stream.
func (s *EventStream) Close() error { return s.body.Close() }

// waitVMEvents follows a VM's events until its creation ended. It reads
// the VM once the stream is open (and again after a reset), so no change
// is missed between the two. Any failure of the stream is returned for the
// caller to fall back on polling.
func (c *Client) waitVMEvents(ctx context.Context, id string, each func(*api.VM)) (*api.VM, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := c.Events(ctx, EventOptions{VM: id, Types: []string{api.EventVM}})
	if err != nil {
		return nil, err
	}
	defer st.Close()
	check := func(v *api.VM) bool {
		if each != nil {
			each(v)
		}
		return v.Status.IsFinal()
	}
	v, err := c.GetVM(ctx, id)
	if err != nil || check(v) {
		return v, err
	}
	for {
		e, err := st.Next()
		if err != nil {
			return v, err
		}
		switch {
		case e.Type == api.EventReset:
			if v, err = c.GetVM(ctx, id); err != nil {
				return v, err
			}
		case e.Action == api.ActionDeleting || e.Action == api.ActionDeleted:
			return e.VM, &APIError{Status: http.StatusNotFound, Code: api.CodeVMNotFound, Message: "the VM was deleted while it was being created"}
		case e.VM != nil:
			v = e.VM
		default:
			continue
		}
		if check(v) {
			return v, nil
		}
	}
}
