package image

import (
	"errors"
	"hash"
	"io"
	"sync"
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
		case <-p.done:
			return 0, errAborted
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
