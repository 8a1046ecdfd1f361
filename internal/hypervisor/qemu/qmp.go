package qemu

// A small QMP client of our own.
//
// Why not github.com/digitalocean/go-qemu/qmp: its SocketMonitor has no
// context support (Connect and Run block without a deadline of the caller's
// choosing, so a wedged QEMU would hang a request), it matches replies to
// commands by order rather than by "id", and its Events channel can be taken
// only once per monitor. goldvm needs every call bounded by the request's
// context and a watcher that reads events while commands are issued, and the
// protocol is small: a greeting, qmp_capabilities, then newline-free JSON
// objects that are either replies ({"return"|"error", "id"}) or events
// ({"event", "data"}). This file implements exactly that.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// qmpError is the "error" member of a QMP reply.
type qmpError struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *qmpError) Error() string { return "qmp: " + e.Class + ": " + e.Desc }

// qmpEvent is an asynchronous QMP event.
type qmpEvent struct {
	Event string          `json:"event"`
	Data  json.RawMessage `json:"data"`
}

// qmpMessage is any message QEMU sends on a QMP connection.
type qmpMessage struct {
	QMP    json.RawMessage `json:"QMP"`
	Return json.RawMessage `json:"return"`
	Error  *qmpError       `json:"error"`
	Event  string          `json:"event"`
	Data   json.RawMessage `json:"data"`
	ID     json.RawMessage `json:"id"`
}

type qmpReply struct {
	ret json.RawMessage
	err error
}

// qmpSeq numbers the commands of all QMP connections of this process: a
// reply that QEMU sends to a later connection than the one that asked
// (see dialQMP) never matches a command of that connection.
var qmpSeq atomic.Uint64

// qmpConn is one QMP connection in command mode.
type qmpConn struct {
	conn net.Conn
	wmu  sync.Mutex

	mu      sync.Mutex
	pending map[string]chan qmpReply

	events chan qmpEvent
	done   chan struct{}
	err    error // set before done is closed
}

// dialUnix connects to a unix socket, also when its path is longer than
// sun_path allows (108 bytes): then it goes through /proc/self/fd/<dirfd>/.
func dialUnix(ctx context.Context, path string) (net.Conn, error) {
	var d net.Dialer
	if len(path) < 100 {
		return d.DialContext(ctx, "unix", path)
	}
	fd, err := syscall.Open(filepath.Dir(path), oPath|syscall.O_CLOEXEC|syscall.O_DIRECTORY, 0)
	if err != nil {
		return nil, fmt.Errorf("open socket dir: %w", err)
	}
	defer syscall.Close(fd)
	short := "/proc/self/fd/" + strconv.Itoa(fd) + "/" + filepath.Base(path)
	if len(short) >= 100 {
		return nil, fmt.Errorf("socket name too long: %s", path)
	}
	return d.DialContext(ctx, "unix", short)
}

// bindDeadline makes blocking I/O on c end when ctx ends. The returned func
// undoes it.
func bindDeadline(ctx context.Context, c net.Conn) func() {
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	return func() {
		stop()
		c.SetDeadline(time.Time{})
	}
}

// dialQMP connects to a QMP socket, reads the greeting and enters command
// mode. ctx bounds the handshake only.
func dialQMP(ctx context.Context, path string) (*qmpConn, error) {
	c, err := dialUnix(ctx, path)
	if err != nil {
		return nil, err
	}
	unbind := bindDeadline(ctx, c)
	br := bufio.NewReaderSize(c, 64<<10)
	dec := json.NewDecoder(br)
	// The greeting comes first, except that QEMU may still send an event,
	// or the reply to a command the previous client left running (a
	// screendump is a coroutine that can outlive its connection), to the
	// next connection: those are skipped.
	for skipped := 0; ; skipped++ {
		var greet qmpMessage
		if err := dec.Decode(&greet); err != nil {
			c.Close()
			return nil, fmt.Errorf("qmp greeting: %w", err)
		}
		if greet.QMP != nil {
			break
		}
		if (greet.Event == "" && greet.Return == nil && greet.Error == nil) || skipped == 16 {
			c.Close()
			return nil, errors.New("qmp greeting: not a QMP server")
		}
	}
	capsID := "caps" + strconv.FormatUint(qmpSeq.Add(1), 10)
	if _, err := fmt.Fprintf(c, `{"execute":"qmp_capabilities","id":%q}`+"\n", capsID); err != nil {
		c.Close()
		return nil, fmt.Errorf("qmp_capabilities: %w", err)
	}
	for {
		var m qmpMessage
		if err := dec.Decode(&m); err != nil {
			c.Close()
			return nil, fmt.Errorf("qmp_capabilities: %w", err)
		}
		var id string
		if m.Event != "" || json.Unmarshal(m.ID, &id) != nil || id != capsID {
			continue // an event, or a stale reply (see the greeting)
		}
		if m.Error != nil {
			c.Close()
			return nil, fmt.Errorf("qmp_capabilities: %w", m.Error)
		}
		break
	}
	unbind()
	q := &qmpConn{
		conn:    c,
		pending: map[string]chan qmpReply{},
		events:  make(chan qmpEvent, 32),
		done:    make(chan struct{}),
	}
	go q.readLoop(dec)
	return q, nil
}

func (q *qmpConn) readLoop(dec *json.Decoder) {
	var err error
	for {
		var m qmpMessage
		if err = dec.Decode(&m); err != nil {
			break
		}
		if m.Event != "" {
			select {
			case q.events <- qmpEvent{Event: m.Event, Data: m.Data}:
			default: // nobody listens; drop rather than stall replies
			}
			continue
		}
		var id string
		if json.Unmarshal(m.ID, &id) != nil {
			continue
		}
		q.mu.Lock()
		ch := q.pending[id]
		delete(q.pending, id)
		q.mu.Unlock()
		if ch == nil {
			continue
		}
		if m.Error != nil {
			ch <- qmpReply{err: m.Error}
		} else {
			ch <- qmpReply{ret: m.Return}
		}
	}
	if errors.Is(err, io.EOF) {
		err = io.EOF
	}
	q.mu.Lock()
	q.err = err
	for id, ch := range q.pending {
		ch <- qmpReply{err: fmt.Errorf("qmp connection closed: %w", err)}
		delete(q.pending, id)
	}
	q.mu.Unlock()
	close(q.done)
}

// Execute runs one command and returns its "return" value.
func (q *qmpConn) Execute(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
	return q.ExecuteFD(ctx, cmd, args, nil)
}

// ExecuteFD is Execute that also passes the file f to QEMU (SCM_RIGHTS,
// in the same message as the command, as getfd and add-fd expect); f nil:
// none.
func (q *qmpConn) ExecuteFD(ctx context.Context, cmd string, args any, f *os.File) (json.RawMessage, error) {
	id := "g" + strconv.FormatUint(qmpSeq.Add(1), 10)
	req := map[string]any{"execute": cmd, "id": id}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	ch := make(chan qmpReply, 1)
	q.mu.Lock()
	select {
	case <-q.done:
		q.mu.Unlock()
		return nil, fmt.Errorf("qmp %s: connection closed: %w", cmd, q.err)
	default:
	}
	q.pending[id] = ch
	q.mu.Unlock()
	q.wmu.Lock()
	if dl, ok := ctx.Deadline(); ok {
		q.conn.SetWriteDeadline(dl)
	}
	if f != nil {
		uc, ok := q.conn.(*net.UnixConn)
		if !ok {
			err = errors.New("passing a file needs a unix socket")
		} else {
			_, _, err = uc.WriteMsgUnix(append(b, '\n'), syscall.UnixRights(int(f.Fd())), nil)
		}
	} else {
		_, err = q.conn.Write(append(b, '\n'))
	}
	q.conn.SetWriteDeadline(time.Time{})
	q.wmu.Unlock()
	if err != nil {
		q.mu.Lock()
		delete(q.pending, id)
		q.mu.Unlock()
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, fmt.Errorf("qmp %s: %w", cmd, r.err)
		}
		return r.ret, nil
	case <-ctx.Done():
		q.mu.Lock()
		delete(q.pending, id)
		q.mu.Unlock()
		return nil, fmt.Errorf("qmp %s: %w", cmd, ctx.Err())
	}
}

// Events returns the channel of asynchronous events. Events that arrive
// while the channel is full are dropped.
func (q *qmpConn) Events() <-chan qmpEvent { return q.events }

// Done is closed when the connection ends (QEMU exited or Close was called).
func (q *qmpConn) Done() <-chan struct{} { return q.done }

// Close closes the connection.
func (q *qmpConn) Close() error { return q.conn.Close() }

// qmpStatus is the return value of query-status.
type qmpStatus struct {
	Status  string `json:"status"`
	Running bool   `json:"running"`
}

// oPath is Linux's O_PATH (the same value on amd64 and arm64), which the
// syscall package does not export.
const oPath = 0x200000
