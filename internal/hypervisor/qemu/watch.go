package qemu

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sync"
	"time"

	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/hypervisor"
)

// State reports running, paused or stopped.
func (d *Driver) State(ctx context.Context, spec hypervisor.Spec) (hypervisor.State, error) {
	if err := checkSpec(spec); err != nil {
		return "", err
	}
	if _, ok := d.livePID(spec); !ok {
		return hypervisor.StateStopped, nil
	}
	st, err := d.queryStatus(ctx, spec)
	if err != nil {
		if _, ok := d.livePID(spec); !ok {
			return hypervisor.StateStopped, nil
		}
		return "", errdefs.New(errdefs.ErrUnavailable, "qmp-unavailable", "QEMU runs but does not answer on QMP", err)
	}
	switch st.Status {
	case "running":
		return hypervisor.StateRunning, nil
	case "shutdown":
		return hypervisor.StateStopped, nil
	}
	return hypervisor.StatePaused, nil
}

// Watch blocks until the VM's QEMU process ends. It holds a connection to the
// second QMP monitor (qmp-watch.sock) for the SHUTDOWN event's reason and
// polls the pid every second as a backstop.
func (d *Driver) Watch(ctx context.Context, spec hypervisor.Spec) (string, error) {
	if err := checkSpec(spec); err != nil {
		return "", err
	}
	pid, ok := d.livePID(spec)
	if !ok {
		return "not running", nil
	}
	// After a daemon restart, this is where a running VM's metadata
	// service comes back.
	if np, err := d.plan(spec); err == nil && d.metadataEnabled(np) && !d.cfg.Metadata.Serving(spec.ID) {
		if err := d.guardVM(ctx, spec, np); err != nil {
			d.log.Warn("no metadata service for the VM", "vm", spec.ID, "err", err)
		}
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var mu sync.Mutex
	reason := ""
	note := func(ev qmpEvent) {
		if ev.Event != "SHUTDOWN" {
			return
		}
		var data struct {
			Reason string `json:"reason"`
		}
		json.Unmarshal(ev.Data, &data)
		mu.Lock()
		reason = data.Reason
		mu.Unlock()
	}
	eof := make(chan struct{})
	go func() {
		// Connect (retrying while QEMU lives) and read events until EOF.
		for wctx.Err() == nil {
			dctx, dcancel := context.WithTimeout(wctx, 5*time.Second)
			q, err := dialQMP(dctx, p(spec.Dir, fileQMPWatch))
			dcancel()
			if err != nil {
				select {
				case <-wctx.Done():
					return
				case <-time.After(time.Second):
					continue
				}
			}
			stop := context.AfterFunc(wctx, func() { q.Close() })
		read:
			for {
				select {
				case ev := <-q.Events():
					note(ev)
				case <-q.Done():
					break read
				}
			}
			stop()
			// The reader queues every event before it ends: drain them.
		drain:
			for {
				select {
				case ev := <-q.Events():
					note(ev)
				default:
					break drain
				}
			}
			if wctx.Err() == nil {
				close(eof)
			}
			return
		}
	}()
	result := func() string {
		mu.Lock()
		defer mu.Unlock()
		if reason != "" {
			return reason
		}
		return "process exited"
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-eof:
			// QEMU closes QMP only as it exits; wait for the process to go.
			if waitGone(ctx, pid, spec.ID, 30*time.Second) {
				return result(), nil
			}
			eof = nil
		case <-tick.C:
			if !isVMProcess(pid, spec.ID) {
				// Give the event reader a moment to record the SHUTDOWN
				// reason that may still be in flight.
				select {
				case <-eof:
				case <-time.After(time.Second):
				case <-ctx.Done():
				}
				return result(), nil
			}
		}
	}
}

// consoleKept is how much of the console's end Destroy keeps.
const consoleKept = 64 << 10

// Console returns the last limit bytes of the serial console: console.log
// while the VM has one, else the tail Destroy kept.
func (d *Driver) Console(ctx context.Context, spec hypervisor.Spec, limit int64) ([]byte, error) {
	if err := checkSpec(spec); err != nil {
		return nil, err
	}
	for _, f := range []string{fileConsole, fileConsoleEnd} {
		b, err := readTail(p(spec.Dir, f), limit)
		if err == nil {
			return b, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("reading the console: %w", err)
		}
	}
	return []byte{}, nil
}

// readTail returns the last limit bytes of the file at path.
func readTail(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	off := max(0, fi.Size()-limit)
	b := make([]byte, fi.Size()-off)
	n, err := f.ReadAt(b, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return b[:n], nil
}

// Screenshot returns a PNG of the VM's display (QMP screendump).
func (d *Driver) Screenshot(ctx context.Context, spec hypervisor.Spec) ([]byte, error) {
	if err := checkSpec(spec); err != nil {
		return nil, err
	}
	if _, ok := d.livePID(spec); !ok {
		return nil, errdefs.New(errdefs.ErrConflict, "vm-not-running", "the VM is not running", hypervisor.ErrNotRunning)
	}
	var rnd [8]byte
	rand.Read(rnd[:])
	file := p(spec.Dir, "screendump-"+hex.EncodeToString(rnd[:])+".png")
	defer os.Remove(file)
	err := d.withQMP(ctx, spec, func(q *qmpConn) error {
		_, err := q.Execute(ctx, "screendump", map[string]any{"filename": file, "format": "png"})
		return err
	})
	if err != nil {
		return nil, errdefs.New(errdefs.ErrUnavailable, "screenshot-failed", "QEMU could not take a screenshot", err)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("screenshot: %w", err)
	}
	return b, nil
}
