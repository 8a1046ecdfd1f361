package image

import (
	"errors"
	"hash"
	"io"
	"sync"
	"sync/atomic"
)

// errAborted stops the producer when the consumer gave up.
var errAborted = errors.New("consumer stopped reading")

// chunkPipe connects the goroutine that downloads and hashes with the one
// that decompresses and writes, through a fixed set of reusable buffers, so
// both run at once without copying more than once.
type chunkPipe struct {
	full chan []byte
	free chan []byte
	done chan struct{}
	once sync.Once
	err  error // producer's final error; set before full is closed

	cur  []byte
	held []byte
	// onBlock, if set, is called by Read before it waits for the
	// producer (see flushHook).
	onBlock func()
}

func newChunkPipe(n, size int) *chunkPipe {
	p := &chunkPipe{full: make(chan []byte, n), free: make(chan []byte, n), done: make(chan struct{})}
	for range n {
		p.free <- make([]byte, size)
	}
	return p
}

// produce reads src to its end, hashing every byte if h is not nil, and
// queues the bytes. progress (may be nil) is called after each chunk, with
// final true at the end of src.
func (p *chunkPipe) produce(src io.Reader, h hash.Hash, progress func(final bool)) {
	var err error
	defer func() {
		p.err = err
		close(p.full)
	}()
	for {
		var buf []byte
		select {
		case buf = <-p.free:
		case <-p.done:
			err = errAborted
			return
		}
		// Pass on whatever one Read returns: waiting to fill the buffer
		// would hold back bytes the consumer may need to see now (say, to
		// reject an archive while the server stalls).
		buf = buf[:cap(buf)]
		n, rerr := src.Read(buf)
		for n == 0 && rerr == nil {
			n, rerr = src.Read(buf)
		}
		if n > 0 {
			if h != nil {
				h.Write(buf[:n])
			}
			if progress != nil {
				progress(rerr == io.EOF)
			}
			select {
			case p.full <- buf[:n]:
			case <-p.done:
				err = errAborted
				return
			}
		} else {
			p.free <- buf
			if rerr == io.EOF && progress != nil {
				progress(true)
			}
		}
		if rerr == io.EOF {
			return
		}
		if rerr != nil {
			err = rerr
			return
		}
	}
}

// readAhead reads r in a goroutine of its own, up to 1 MiB ahead of the
// returned reader, so that producing the bytes (decompressing) and
// consuming them (writing files) use two cores. stop aborts the goroutine
// and waits until it has returned and called closeSrc (may be nil); the
// caller must make sure a blocked r.Read will return (abort its source).
//
// The consumer is woken only when 256 KiB are ready, at the end, or when
// the producer may have to wait: hook (may be nil), fired by the stream r
// reads from at the bottom when it is about to block (see onBlock), makes
// the consumer take what there is. So the consumer sees every byte before
// the producer waits for the network (a bad archive is rejected at once),
// without a wake-up for each of the small pieces a decompressor returns.
func readAhead(r io.Reader, closeSrc func(), hook *flushHook) (io.Reader, func()) {
	a := newAheadRing(1<<20, 256<<10)
	if hook != nil {
		hook.ring.Store(a)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if closeSrc != nil {
			defer closeSrc()
		}
		a.produce(r)
	}()
	return a, func() {
		a.abort()
		<-done
	}
}

// flushHook connects the bottom of a decoding stack (a chunkPipe, whose
// onBlock is fire) with the readAhead above it, which may not exist yet
// when decoders start reading.
type flushHook struct{ ring atomic.Pointer[aheadRing] }

// onBlock sets up h to be fired when src, if it is a chunkPipe, is about
// to wait for its producer; it must be called before anything reads src.
func (h *flushHook) onBlock(src io.Reader) {
	if p, ok := src.(*chunkPipe); ok {
		p.onBlock = h.fire
	}
}

func (h *flushHook) fire() {
	if a := h.ring.Load(); a != nil {
		a.flushNow()
	}
}

// aheadRing is a ring buffer between one producer goroutine, which reads
// straight into it, and one consumer.
type aheadRing struct {
	mu       sync.Mutex
	canRead  sync.Cond
	canWrite sync.Cond
	buf      []byte
	batch    int64
	r, w     int64 // bytes consumed, produced
	err      error // producer's final error, io.EOF at the end
	flush    bool  // the producer may block: hand over what there is
	aborted  bool
}

func newAheadRing(size, batch int) *aheadRing {
	a := &aheadRing{buf: make([]byte, size), batch: int64(batch)}
	a.canRead.L, a.canWrite.L = &a.mu, &a.mu
	return a
}

func (a *aheadRing) produce(src io.Reader) {
	size := int64(len(a.buf))
	for {
		a.mu.Lock()
		for a.w-a.r == size && !a.aborted {
			a.canWrite.Wait()
		}
		if a.aborted {
			a.mu.Unlock()
			return
		}
		start := a.w % size
		free := min(size-start, size-(a.w-a.r))
		a.mu.Unlock()

		n, err := src.Read(a.buf[start : start+free])
		if n == 0 && err == nil {
			continue
		}
		a.mu.Lock()
		a.w += int64(n)
		if err != nil {
			a.err = err
		}
		if err != nil || a.flush || a.w-a.r >= a.batch {
			a.canRead.Signal()
		}
		a.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// flushNow hands what is buffered to the consumer now.
func (a *aheadRing) flushNow() {
	a.mu.Lock()
	a.flush = true
	a.canRead.Signal()
	a.mu.Unlock()
}

func (a *aheadRing) abort() {
	a.mu.Lock()
	a.aborted = true
	a.canRead.Broadcast()
	a.canWrite.Broadcast()
	a.mu.Unlock()
}

// Read implements io.Reader for the consumer.
func (a *aheadRing) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	size := int64(len(a.buf))
	a.mu.Lock()
	for {
		if a.aborted {
			a.mu.Unlock()
			return 0, errAborted
		}
		avail := a.w - a.r
		if avail > 0 && (avail >= a.batch || a.flush || a.err != nil) {
			break
		}
		if avail == 0 && a.err != nil {
			err := a.err
			a.mu.Unlock()
			return 0, err
		}
		a.canRead.Wait()
	}
	start := a.r % size
	n := min(int64(len(p)), a.w-a.r, size-start)
	a.mu.Unlock()
	// The producer never writes into [r, w).
	copy(p, a.buf[start:start+n])
	a.mu.Lock()
	a.r += n
	if a.r == a.w {
		a.flush = false
	}
	a.canWrite.Signal()
	a.mu.Unlock()
	return int(n), nil
}

// Read implements io.Reader for the consumer.
func (p *chunkPipe) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	if len(p.cur) == 0 {
		if p.held != nil {
			p.free <- p.held
			p.held = nil
		}
		var buf []byte
		var ok bool
		select {
		case buf, ok = <-p.full:
		default:
			if p.onBlock != nil {
				p.onBlock() // about to wait for the producer
			}
			select {
			case buf, ok = <-p.full:
			case <-p.done:
				return 0, errAborted
			}
		}
		if !ok {
			if p.err != nil {
				return 0, p.err
			}
			return 0, io.EOF
		}
		p.held, p.cur = buf, buf
	}
	n := copy(b, p.cur)
	p.cur = p.cur[n:]
	return n, nil
}

// abort tells the producer to stop.
func (p *chunkPipe) abort() { p.once.Do(func() { close(p.done) }) }
