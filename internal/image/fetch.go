package image

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
)

// flight is one fetch shared by every Ensure of the same key.
type flight struct {
	key    string
	done   chan struct{}
	gold   *Gold
	err    error
	cancel context.CancelFunc

	mu      sync.Mutex
	waiters map[int]func(Progress)
	nextID  int
	last    *Progress
}

func (f *flight) join(progress func(Progress)) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	id := f.nextID
	f.nextID++
	f.waiters[id] = progress
	if f.last != nil && progress != nil {
		progress(*f.last)
	}
	return id
}

func (f *flight) report(p Progress) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.last = &p
	for _, w := range f.waiters {
		if w != nil {
			w(p)
		}
	}
}

// Ensure returns the image spec names, fetching it if the store does not
// have it yet. A stored image is returned at once (and touched).
//
// Concurrent Ensure calls for the same key share one fetch, and each
// caller's progress (may be nil) receives every report; progress is called
// from the fetch goroutine and must not block or call into the Store. A
// caller whose ctx ends stops waiting and gets ctx's error; the fetch goes
// on while at least one caller still waits and is cancelled (its temp dir
// removed, its partial download kept) when the last one leaves. A later
// Ensure starts a new fetch, which resumes the partial download.
//
// Errors are *errdefs.Error with the codes of this package (invalid-checksum,
// invalid-image-url, checksum-mismatch, image-download-failed, image-corrupt,
// image-unsafe-archive, image-too-large, disk-full, image-unsupported,
// image-damaged), a
// context error, or an internal error. On any failure no image is stored;
// only a cancelled fetch, or one whose server kept failing transiently,
// leaves its partial download for the next Ensure.
func (s *Store) Ensure(ctx context.Context, spec Spec, progress func(Progress)) (*Gold, error) {
	key, err := Key(spec)
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(spec.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, errdefs400URL(err)
	}
	g, err := s.Get(key)
	if err == nil {
		s.count(LookupHit)
		s.Touch(key)
		g.Spec = spec
		return g, nil
	}
	if s.damagedReason(key) != "" {
		return nil, err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, errors.New("image store is closed")
	}
	f := s.flights[key]
	var start func()
	if f == nil {
		// A fetch may have published between the check above and the lock.
		if g, err := s.Get(key); err == nil {
			s.mu.Unlock()
			s.count(LookupHit)
			s.Touch(key)
			g.Spec = spec
			return g, nil
		}
		fctx, cancel := context.WithCancel(s.ctx)
		f = &flight{key: key, done: make(chan struct{}), cancel: cancel, waiters: map[int]func(Progress){}}
		s.flights[key] = f
		start = func() { go s.run(fctx, f, spec) }
		s.wg.Add(1)
		s.count(LookupMiss)
	} else {
		s.count(LookupJoined)
	}
	// Join before the fetch starts, so that its first caller sees every
	// report (a later caller gets the latest one at once).
	id := f.join(progress)
	if start != nil {
		start()
	}
	s.mu.Unlock()

	select {
	case <-f.done:
		if f.err != nil {
			return nil, f.err
		}
		g := *f.gold
		g.Spec = spec
		s.Touch(key)
		return &g, nil
	case <-ctx.Done():
		s.mu.Lock()
		f.mu.Lock()
		delete(f.waiters, id)
		last := len(f.waiters) == 0
		f.mu.Unlock()
		if last && s.flights[key] == f {
			delete(s.flights, key)
			f.cancel()
			s.log.Info("image fetch cancelled: no caller waits for it", "key", key)
		}
		s.mu.Unlock()
		return nil, fmt.Errorf("waiting for image %s: %w", key, ctx.Err())
	}
}

func (s *Store) run(ctx context.Context, f *flight, spec Spec) {
	defer s.wg.Done()
	defer f.cancel()
	log := s.log.With("key", f.key, "url", displayURL(spec.URL))
	log.Info("fetching image")
	s.announce(api.ActionFetching, f.key, spec, nil, nil)
	g, err := s.fetch(ctx, spec, f.key, f.report, log)
	if err != nil {
		log.Warn("image fetch failed", "err", err)
		s.announce(api.ActionError, f.key, spec, nil, err)
	} else {
		log.Info("image published", "size", g.Size, "format", g.Format)
		s.announce(api.ActionReady, f.key, spec, g, nil)
	}
	f.gold, f.err = g, err
	s.mu.Lock()
	if s.flights[f.key] == f {
		delete(s.flights, f.key)
	}
	s.mu.Unlock()
	close(f.done)
}

// fetch runs fetchOnce, starting over when the server cannot resume.
func (s *Store) fetch(ctx context.Context, spec Spec, key string, report func(Progress), log *slog.Logger) (*Gold, error) {
	if err := s.plocks.lock(ctx, key); err != nil {
		return nil, err
	}
	defer s.plocks.unlock(key)
	for restarts := 0; ; restarts++ {
		g, err := s.fetchOnce(ctx, spec, key, report, log)
		if !errors.Is(err, errRestart) {
			return g, err
		}
		if restarts >= s.opts.Retries {
			return nil, errDownload("the server cannot resume the download and it keeps failing", err)
		}
		log.Warn("restarting image download from the beginning", "restart", restarts+1)
	}
}

// fetchOnce downloads, verifies, unpacks and publishes the image in one
// pass. Three goroutines share the work, connected by small buffer queues:
// one reads the body (after the bytes of a partial download left by an
// earlier run), appends it to the partial download and hashes it; this one
// decompresses and reads the archive; a fileWriter's goroutine finds holes,
// writes and syncs the files.
func (s *Store) fetchOnce(ctx context.Context, spec Spec, key string, report func(Progress), log *slog.Logger) (g *Gold, err error) {
	tmp, undo, err := s.tempDir(key, log)
	if err != nil {
		return nil, err
	}
	defer func() { undo(err) }()
	// The files land in tmp/files, through an os.Root. A zip that must be
	// unpacked after the download gets a fresh, empty one.
	files := filepath.Join(tmp, filesDirName)
	var root *os.Root
	openFiles := func() error {
		if root != nil {
			root.Close()
			if err := removeTree(files); err != nil {
				return err
			}
		}
		if err := os.Mkdir(files, 0o755); err != nil {
			return ioErr("creating temp dir", err)
		}
		root, err = os.OpenRoot(files)
		return ioErr("opening temp dir", err)
	}
	if err := openFiles(); err != nil {
		return nil, err
	}
	defer func() { root.Close() }()

	kind, want, _ := parseKey(key)
	h := newHash(kind)
	rctx, rcancel := context.WithCancel(ctx)
	defer rcancel()
	rem := newRemote(rctx, spec.URL, &s.opts, log)
	defer rem.Close()

	// The raw bytes also go to the key's partial download, so that a later
	// run can resume after a crash; for a zip that cannot be unpacked as
	// it streams it is the spool too.
	part, err := s.openPartial(key, spec.URL, log)
	if err != nil {
		return nil, err
	}
	src := &source{rem: rem, part: part}
	if st := part.prev; st != nil {
		log.Info("resuming image download left by an earlier run", "offset", st.Bytes, "total", st.Total)
		rem.resumeFrom(st.Bytes, st.Validator, st.Total)
		src.replay = io.NewSectionReader(part.f, 0, st.Bytes)
	}
	part.startCheckpoints(s.checkpointEvery)
	defer func() {
		part.stopCheckpoints()
		if keepPartial(ctx, err) {
			part.keep()
		} else {
			part.discard()
		}
	}()

	pipe := newChunkPipe(8, 256<<10)
	var lastReport time.Time
	var lastBytes int64
	prodDone := make(chan struct{})
	go func() {
		defer close(prodDone)
		pipe.produce(src, h, func(final bool) {
			now := time.Now()
			if !final && src.n-lastBytes < 256<<10 && now.Sub(lastReport) < s.opts.ProgressInterval {
				return
			}
			lastReport, lastBytes = now, src.n
			report(Progress{Phase: PhaseDownloading, BytesDone: src.n, BytesTotal: max(rem.total, 0)})
		})
	}()

	x := newExtractor(ctx, root, limits{maxBytes: s.opts.MaxImageBytes, maxEntries: s.opts.MaxEntries, verbatim: s.opts.Verbatim})
	abort := func() {
		pipe.abort()
		rcancel()
	}
	urlPath := ""
	if u, perr := url.Parse(spec.URL); perr == nil {
		urlPath = u.Path
	}
	needsSpool, xerr := x.extractStream(pipe, urlPath)
	if xerr == nil {
		// The hash must cover every byte, including what follows the end
		// of the archive.
		if _, derr := io.Copy(io.Discard, pipe); derr != nil {
			xerr = derr
		}
	}
	abort()
	<-prodDone
	part.stopCheckpoints()
	if xerr != nil {
		return nil, xerr
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	report(Progress{Phase: PhaseVerifying, BytesDone: src.n, BytesTotal: max(rem.total, 0)})
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return nil, errdefs.New(errdefs.ErrInvalid, CodeChecksumMismatch,
			fmt.Sprintf("%s of %s is %s, expected %s", kind, displayURL(spec.URL), got, want), nil)
	}

	if needsSpool {
		// The partial download has every raw byte: unpack from it.
		log.Info("zip archive cannot be unpacked as it streams; unpacking it after the download", "reason", x.spoolReason)
		if err := openFiles(); err != nil {
			return nil, err
		}
		x = newExtractor(ctx, root, x.lim)
		x.format = "zip"
		lastZip := time.Time{}
		x.onWrite = func(done int64) {
			if now := time.Now(); now.Sub(lastZip) >= s.opts.ProgressInterval {
				lastZip = now
				report(Progress{Phase: PhaseUnpacking, BytesDone: done, BytesTotal: x.total})
			}
		}
		report(Progress{Phase: PhaseUnpacking})
		if err := x.extractZip(part.f, part.size()); err != nil {
			return nil, err
		}
		report(Progress{Phase: PhaseUnpacking, BytesDone: x.written, BytesTotal: x.written})
	}
	return s.publish(ctx, tmp, key, spec, x, report, log)
}
