package image

import (
	"os"
	"sync"
)

// Files are written by a fileWriter: a goroutine of its own takes filled
// buffers from the unpacker, finds the all-zero blocks (left as holes) and
// writes the rest, so that decompressing the next buffer and writing this
// one use two cores. It starts writeback every writebackChunk bytes, and a
// second goroutine makes the file durable (fdatasync) every syncEvery
// bytes while the writes go on: spread over the unpacking, the flushes
// leave the fsync before publishing almost nothing to do, where it would
// otherwise wait for the whole file at once (measured: 0.4-0.5 s for 650
// MB on the test machines, a third of the fetch).
//
// O_DIRECT writes were measured too and left out: with the pipeline's
// queue depth they made the fetch slower, not faster.

const (
	// writerBuffers is the number of buffers per file: one being filled,
	// the others queued or being written.
	writerBuffers = 4
	// writerBufferSize is the size of each buffer (and of most writes).
	writerBufferSize = 2 << 20
	// writebackChunk: start disk writeback every this many bytes.
	writebackChunk = 32 << 20
	// syncEvery: make the file durable every this many bytes.
	syncEvery = 128 << 20
)

// bufferPool recycles the buffers of finished fileWriters.
var bufferPool = sync.Pool{New: func() any { return make([]byte, writerBufferSize) }}

// writeJob is one filled buffer and the file offset of its first byte.
type writeJob struct {
	buf []byte
	off int64
}

// fileWriter writes one file in the background.
type fileWriter struct {
	f      *os.File
	jobs   chan writeJob
	free   chan []byte
	stop   chan struct{} // closed when a write failed
	done   chan struct{} // closed when run has returned
	err    error         // first write error; set before stop is closed
	end    int64         // end of the last byte written
	kicked int64         // writeback started up to here
	synced int64         // a sync was asked for up to here
	syncs  chan struct{} // asks the syncer goroutine for an fdatasync
	syncer chan struct{} // closed when the syncer has returned
}

// newFileWriter starts a writer for f.
func newFileWriter(f *os.File) *fileWriter {
	w := &fileWriter{f: f, jobs: make(chan writeJob, writerBuffers), free: make(chan []byte, writerBuffers),
		stop: make(chan struct{}), done: make(chan struct{}),
		syncs: make(chan struct{}, 1), syncer: make(chan struct{})}
	for range writerBuffers {
		w.free <- bufferPool.Get().([]byte)
	}
	go w.syncLoop()
	go w.run()
	return w
}

// buffer returns an empty buffer to fill, or the error that stopped the
// writer.
func (w *fileWriter) buffer() ([]byte, error) {
	select {
	case <-w.stop:
		return nil, w.err
	default:
	}
	select {
	case b := <-w.free:
		return b[:cap(b)], nil
	case <-w.stop:
		return nil, w.err
	}
}

// submit queues buf, filled with the file's bytes from off on.
func (w *fileWriter) submit(buf []byte, off int64) { w.jobs <- writeJob{buf: buf, off: off} }

// release gives back a buffer that was not submitted.
func (w *fileWriter) release(buf []byte) { w.free <- buf }

// finish waits until everything submitted is written and returns the
// first error and the end of the last byte written (short of the file's
// length when it ends in zeros: the caller extends it).
func (w *fileWriter) finish() (int64, error) {
	close(w.jobs)
	<-w.done
	close(w.syncs)
	<-w.syncer
	for range writerBuffers {
		bufferPool.Put(<-w.free)
	}
	return w.end, w.err
}

// run writes the queued buffers until finish; after a failure it only
// hands the buffers back.
func (w *fileWriter) run() {
	defer close(w.done)
	for j := range w.jobs {
		if w.err == nil {
			if err := w.write(j.buf, j.off); err != nil {
				w.err = err
				close(w.stop)
			}
		}
		w.free <- j.buf
	}
}

// syncLoop runs an fdatasync whenever asked.
func (w *fileWriter) syncLoop() {
	defer close(w.syncer)
	for range w.syncs {
		_ = w.f.Sync() // a failure shows again in the fsync before publishing
	}
}

// write writes the non-zero blocks of b at off.
func (w *fileWriter) write(b []byte, off int64) error {
	n := len(b)
	for i := 0; i < n; {
		j := i
		for j < n && !isZero(b[j:min(j+blockSize, n)]) {
			j += blockSize
		}
		j = min(j, n)
		if j > i {
			if _, err := w.f.WriteAt(b[i:j], off+int64(i)); err != nil {
				return ioErr("writing "+w.f.Name(), err)
			}
			w.end = off + int64(j)
		}
		for j < n && isZero(b[j:min(j+blockSize, n)]) {
			j += blockSize
		}
		i = min(j, n)
	}
	if w.end-w.kicked >= writebackChunk {
		startWriteback(w.f, w.kicked, w.end-w.kicked)
		w.kicked = w.end
	}
	if w.end-w.synced >= syncEvery {
		select {
		case w.syncs <- struct{}{}:
			w.synced = w.end
		default: // the last sync is still running
		}
	}
	return nil
}
