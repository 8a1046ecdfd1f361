package server

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/events"
	"github.com/goldvm/goldvm/internal/records"
)

// Timing of an event stream.
const (
	// eventKeepalive is how often an idle stream sends a comment, so that
	// proxies and clients see the connection alive.
	eventKeepalive = 15 * time.Second
	// eventWriteTimeout bounds one write to a stream: a client that takes
	// longer to accept bytes is dropped.
	eventWriteTimeout = 30 * time.Second
	// eventRetryMillis is the reconnection delay the stream asks of
	// EventSource clients.
	eventRetryMillis = 2000
)

// streamEvents answers GET /events: server-sent events of every VM, image,
// group and capacity state change (see api.Event). Query parameters,
// optional: vm (a VM id: only its events) and type (comma-separated: vm,
// image, group, capacity). A client
// that sends Last-Event-ID gets what it missed from the ring first, or a
// "reset" event when that is no longer there. A client too slow to keep up
// is dropped (a ": dropped" comment, then the stream ends); it reconnects
// with its Last-Event-ID like any other.
func (s *Server) streamEvents(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var f events.Filter
	if id := q.Get("vm"); id != "" {
		if !records.ValidID(id) {
			s.writeError(w, errdefs.Newf(errdefs.ErrInvalid, api.CodeInvalidQuery, "vm %s is not a VM id", quote(id)))
			return
		}
		f.VMID = id
	}
	for _, t := range strings.Split(q.Get("type"), ",") {
		switch t = strings.TrimSpace(t); t {
		case "":
		case api.EventVM, api.EventImage, api.EventGroup, api.EventCapacity:
			f.Types = append(f.Types, t)
		default:
			s.writeError(w, errdefs.Newf(errdefs.ErrInvalid, api.CodeInvalidQuery, "type %s: use vm, image, group or capacity", quote(t)))
			return
		}
	}
	var resume bool
	var last uint64
	if h := r.Header.Get("Last-Event-ID"); h != "" {
		n, err := strconv.ParseUint(strings.TrimSpace(h), 10, 64)
		if err != nil {
			s.writeError(w, errdefs.Newf(errdefs.ErrInvalid, api.CodeInvalidEventID, "Last-Event-ID %s is not an event id (a decimal number)", quote(h)))
			return
		}
		resume, last = true, n
	}

	sub, replay, reset := s.bus.Subscribe(f, resume, last)
	defer sub.Cancel()
	rc := http.NewResponseController(w)
	// The server's ReadTimeout would end the stream; nothing more is read.
	rc.SetReadDeadline(time.Time{})
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)

	bw := bufio.NewWriterSize(w, 16<<10)
	flush := func() bool {
		rc.SetWriteDeadline(time.Now().Add(eventWriteTimeout))
		return bw.Flush() == nil && rc.Flush() == nil
	}
	fmt.Fprintf(bw, ": goldvm events\nretry: %d\n\n", eventRetryMillis)
	if reset {
		// Its id is the last event before the subscription: resuming from
		// it misses nothing more.
		s.writeEvent(bw, api.Event{ID: sub.Start, Type: api.EventReset, Time: time.Now().UTC(),
			Message: fmt.Sprintf("events after %d are no longer kept (or are of another run of the daemon): read the VMs and images again", last)})
	}
	for _, e := range replay {
		s.writeEvent(bw, e)
	}
	if !flush() {
		return
	}
	keepalive := time.NewTicker(eventKeepalive)
	defer keepalive.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-s.streamsDone:
			return
		case <-keepalive.C:
			bw.WriteString(": keepalive\n\n")
		case e, ok := <-sub.C():
			if !ok {
				if sub.Dropped() {
					bw.WriteString(": dropped: this client fell too far behind; reconnect with Last-Event-ID\n\n")
					flush()
				}
				return
			}
			s.writeEvent(bw, e)
			// Send what else is waiting in the same write.
			for more := true; more; {
				select {
				case e, ok := <-sub.C():
					if ok {
						s.writeEvent(bw, e)
					} else {
						more = false
					}
				default:
					more = false
				}
			}
		}
		if !flush() {
			return
		}
	}
}

// writeEvent writes e in the SSE format, its messages redacted.
func (s *Server) writeEvent(w *bufio.Writer, e api.Event) {
	e.Message = s.redact.Redact(e.Message)
	if e.Image != nil && e.Image.Error != nil {
		img, ierr := *e.Image, *e.Image.Error
		ierr.Message = s.redact.Redact(ierr.Message)
		img.Error = &ierr
		e.Image = &img
	}
	data, err := json.Marshal(e)
	if err != nil {
		s.log.Error("encode event", "err", err)
		return
	}
	fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", e.ID, e.Type, data)
}

// StopStreams ends the event streams, as a shutdown must: they would
// otherwise keep http.Server.Shutdown waiting. Further ones end at once.
func (s *Server) StopStreams() {
	s.stopOnce.Do(func() { close(s.streamsDone) })
}
