package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/goldvm/goldvm/internal/errdefs"
)

// Partial downloads.
//
// While a package streams in, its raw bytes (still compressed, exactly as
// served) are also appended to <store>/.partial-<key>/data, and a small
// sidecar, state.json, records the URL, the validator (strong ETag or
// Last-Modified), the total length and how many bytes of data are known to
// be on disk. The sidecar is replaced atomically (temp file, fsync, rename)
// by a checkpoint every checkpointInterval (5s), always after an fsync of
// data, so after a crash data holds at least state.bytes good bytes (more
// are cut off); a cancelled fetch checkpoints once more as it stops. A
// checkpoint runs in a goroutine of its own and never holds up the
// download; a download shorter than the interval never syncs its partial.
//
// A later fetch of the same key and the same URL (compared in full, query
// included, through a hash: a re-signed URL starts over) first asks the
// server for the rest with "Range: bytes=<n>-" and If-Range. On a 206 it
// re-feeds the partial's bytes through the hash, decompressor and unpacker
// (into a fresh temp dir) and then continues with the server's bytes; on a
// 200 (Range ignored, or the validator changed) it empties the partial and
// uses that answer as a clean start from byte 0; a 416 for exactly the
// partial's length means the partial already holds every byte. Once bytes
// have been re-fed, an answer that does not continue the stream restarts
// the whole fetch. For a zip that cannot be unpacked as it streams, the
// partial file is also the spool it is unpacked from. There is one partial
// per key; a fetch holds the key's lock (Store.plocks) while it uses it.
//
// A partial is kept only when the fetch was cancelled (Close, or every
// caller left) or the server kept failing transiently (network errors,
// 5xx, stalls); and only if the server gave a validator. It is deleted on
// success and on every other failure (checksum mismatch, 4xx, a corrupt,
// unsafe or oversized package, a full disk), and when its sidecar is
// unreadable. Partials count towards EvictPolicy.MaxBytes, are removed by
// Evict when idle longer than EvictPolicy.MaxIdle, and NewStore and Evict
// remove any older than Options.MaxPartialAge.

const (
	partialPrefix    = ".partial-"
	partialDataName  = "data"
	partialStateName = "state.json"

	// checkpointInterval is the time between two checkpoints. A crash
	// loses at most this much download time; a download shorter than this
	// never makes its partial file touch the disk (it is deleted while its
	// pages are still dirty), which keeps the disk free for the image.
	checkpointInterval = 5 * time.Second
)

// partialState is the sidecar of a partial download.
type partialState struct {
	Version   int       `json:"version"`
	Key       string    `json:"key"`
	URL       string    `json:"url"`        // without credentials or query, for people
	URLSHA256 string    `json:"url_sha256"` // of the full URL, to match a later fetch
	Validator string    `json:"validator"`  // strong ETag or Last-Modified, sent as If-Range
	Total     int64     `json:"total"`      // full length; -1 when unknown
	Bytes     int64     `json:"bytes"`      // bytes of data known to be on disk
	Updated   time.Time `json:"updated"`
}

func urlHash(raw string) string {
	s := sha256.Sum256([]byte(raw))
	return hex.EncodeToString(s[:])
}

// readPartialState reads and checks the sidecar in dir.
func readPartialState(dir, key string) (*partialState, error) {
	b, err := os.ReadFile(filepath.Join(dir, partialStateName))
	if err != nil {
		return nil, err
	}
	var st partialState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("parsing %s: %w", partialStateName, err)
	}
	switch {
	case st.Version != 1:
		return nil, fmt.Errorf("%s has version %d", partialStateName, st.Version)
	case st.Key != key:
		return nil, fmt.Errorf("%s names key %q", partialStateName, st.Key)
	case st.Bytes <= 0 || (st.Total >= 0 && st.Bytes > st.Total):
		return nil, fmt.Errorf("%s records %d of %d bytes", partialStateName, st.Bytes, st.Total)
	case st.Validator == "" || st.URLSHA256 == "":
		return nil, fmt.Errorf("%s lacks a validator or URL", partialStateName)
	}
	return &st, nil
}

// partial is the partial-download file of one fetch. write and reset are
// called by the goroutine that downloads; checkpoints run in their own
// goroutine between startCheckpoints and stopCheckpoints.
type partial struct {
	dir  string
	key  string
	url  string
	f    *os.File
	log  *slog.Logger
	now  func() time.Time
	prev *partialState // what an earlier run left, or nil

	mu        sync.Mutex
	written   int64 // length of data
	validator string
	total     int64

	cpMu   sync.Mutex // serialises checkpoints and reset
	synced int64      // bytes the sidecar on disk vouches for

	stopOnce sync.Once
	stop     chan struct{}
	stopped  chan struct{}
}

func (s *Store) partialDir(key string) string { return filepath.Join(s.dir, partialPrefix+key) }

// openPartial opens the partial download of key for a fetch from rawURL:
// the one an earlier run left, if its sidecar is good and names the same
// URL (prev is set and data is cut to the bytes it vouches for), else a new,
// empty one. The caller must hold the key's partial lock.
func (s *Store) openPartial(key, rawURL string, log *slog.Logger) (*partial, error) {
	dir := s.partialDir(key)
	p := &partial{dir: dir, key: key, url: rawURL, log: log, now: s.opts.Now, total: -1,
		stop: make(chan struct{}), stopped: make(chan struct{})}
	st, err := readPartialState(dir, key)
	switch {
	case err == nil && st.URLSHA256 == urlHash(rawURL):
		f, ferr := os.OpenFile(filepath.Join(dir, partialDataName), os.O_RDWR, 0)
		if ferr == nil {
			fi, serr := f.Stat()
			if serr == nil && fi.Size() >= st.Bytes && f.Truncate(st.Bytes) == nil {
				if _, serr := f.Seek(st.Bytes, io.SeekStart); serr == nil {
					p.f, p.prev = f, st
					p.written, p.synced, p.validator, p.total = st.Bytes, st.Bytes, st.Validator, st.Total
					return p, nil
				}
			}
			f.Close()
		}
		log.Warn("partial download data is missing or short; starting over", "dir", dir, "bytes", st.Bytes)
	case err == nil:
		log.Info("partial download came from another URL; starting over", "dir", dir, "url", st.URL)
	case errors.Is(err, fs.ErrNotExist):
	default:
		log.Warn("removing partial download with an unreadable sidecar", "dir", dir, "err", err)
	}
	if err := removeTree(dir); err != nil {
		return nil, err
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, ioErr("creating partial download", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, partialDataName), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		removeTree(dir)
		return nil, ioErr("creating partial download", err)
	}
	p.f = f
	return p, nil
}

// write appends b, which the server sent under validator and total.
func (p *partial) write(b []byte, validator string, total int64) error {
	if _, err := p.f.Write(b); err != nil {
		return ioErr("writing partial download", err)
	}
	p.mu.Lock()
	p.written += int64(len(b))
	p.validator, p.total = validator, total
	p.mu.Unlock()
	return nil
}

// size returns the length of data.
func (p *partial) size() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.written
}

// reset empties the partial: the server starts over from byte 0.
func (p *partial) reset() error {
	p.cpMu.Lock()
	defer p.cpMu.Unlock()
	if err := os.Remove(filepath.Join(p.dir, partialStateName)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return ioErr("resetting partial download", err)
	}
	if err := p.f.Truncate(0); err != nil {
		return ioErr("resetting partial download", err)
	}
	if _, err := p.f.Seek(0, io.SeekStart); err != nil {
		return ioErr("resetting partial download", err)
	}
	p.mu.Lock()
	p.written, p.validator, p.total = 0, "", -1
	p.mu.Unlock()
	p.synced, p.prev = 0, nil
	return nil
}

// checkpoint makes the bytes written so far durable and records them in
// the sidecar. Without a validator nothing can be resumed and it does
// nothing.
func (p *partial) checkpoint() error {
	p.cpMu.Lock()
	defer p.cpMu.Unlock()
	p.mu.Lock()
	n, validator, total := p.written, p.validator, p.total
	p.mu.Unlock()
	if n == p.synced || validator == "" {
		return nil
	}
	if err := p.f.Sync(); err != nil {
		return ioErr("syncing partial download", err)
	}
	st := partialState{Version: 1, Key: p.key, URL: displayURL(p.url), URLSHA256: urlHash(p.url),
		Validator: validator, Total: total, Bytes: n, Updated: p.now().UTC()}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding partial download state: %w", err)
	}
	if err := writeAtomic(p.dir, partialStateName, b); err != nil {
		return err
	}
	p.synced = n
	return nil
}

// startCheckpoints checkpoints every interval until stopCheckpoints.
func (p *partial) startCheckpoints(interval time.Duration) {
	go func() {
		defer close(p.stopped)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-t.C:
				if err := p.checkpoint(); err != nil {
					p.log.Warn("cannot checkpoint partial download", "dir", p.dir, "err", err)
				}
			}
		}
	}()
}

// stopCheckpoints stops the checkpoint goroutine and waits for it.
func (p *partial) stopCheckpoints() {
	p.stopOnce.Do(func() {
		close(p.stop)
		<-p.stopped
	})
}

// keep checkpoints the partial for a later run and closes it; one that
// cannot be resumed (nothing written, no validator, checkpoint failed) is
// removed instead.
func (p *partial) keep() {
	err := p.checkpoint()
	p.f.Close()
	if err == nil {
		if st, rerr := readPartialState(p.dir, p.key); rerr == nil {
			p.log.Info("keeping partial download for a later fetch", "dir", p.dir, "bytes", st.Bytes, "total", st.Total)
			return
		}
	} else {
		p.log.Warn("cannot keep partial download", "dir", p.dir, "err", err)
	}
	if rerr := removeTree(p.dir); rerr != nil {
		p.log.Error("cannot remove partial download", "dir", p.dir, "err", rerr)
	}
}

// discard closes and removes the partial.
func (p *partial) discard() {
	p.f.Close()
	if err := removeTree(p.dir); err != nil {
		p.log.Error("cannot remove partial download", "dir", p.dir, "err", err)
	}
}

// keepPartial decides what to do with a fetch's partial download: a fetch
// that was cancelled or failed only because the server kept failing keeps
// it for a later run; success and every other failure remove it.
func keepPartial(ctx context.Context, err error) bool {
	if err == nil {
		return false
	}
	if ctx.Err() != nil {
		return true
	}
	var re *refusedError
	if errors.As(err, &re) {
		return false
	}
	if isDiskFull(err) {
		return false
	}
	code, _ := errdefs.CodeOf(err)
	return code == CodeDownloadFailed
}

// source is the byte stream of one fetch: the bytes of a partial download
// from an earlier run, then the rest from the server, which are appended
// to the partial as they arrive.
type source struct {
	rem     *remote
	part    *partial
	replay  io.Reader // nil when there is nothing to re-feed
	started bool
	n       int64 // bytes delivered
}

func (s *source) Read(b []byte) (int, error) {
	if !s.started {
		s.started = true
		if s.replay != nil {
			// Ask the server first: if it starts over, so do we, before
			// anything has gone into the hash or the temp dir.
			if err := s.rem.open(); err != nil {
				return 0, err
			}
			if s.rem.restarted {
				s.replay = nil
				if err := s.part.reset(); err != nil {
					return 0, err
				}
			}
			// Decided: from now on the replayed bytes are in the hash, and
			// a later answer that does not continue the stream means a
			// new fetch.
			s.rem.fresh = false
		}
	}
	if s.replay != nil {
		n, err := s.replay.Read(b)
		s.n += int64(n)
		switch {
		case err == io.EOF:
			s.replay = nil
			if n > 0 {
				return n, nil
			}
		case err != nil:
			return n, ioErr("reading partial download", err)
		default:
			return n, nil
		}
	}
	n, err := s.rem.Read(b)
	if n > 0 {
		s.n += int64(n)
		if werr := s.part.write(b[:n], s.rem.validator, s.rem.total); werr != nil {
			return n, werr
		}
	}
	return n, err
}

// keyLocks is a set of per-key locks.
type keyLocks struct {
	mu   sync.Mutex
	held map[string]chan struct{}
}

// lock takes the lock of key, waiting for it until ctx ends.
func (k *keyLocks) lock(ctx context.Context, key string) error {
	for {
		k.mu.Lock()
		if k.held == nil {
			k.held = map[string]chan struct{}{}
		}
		ch, busy := k.held[key]
		if !busy {
			k.held[key] = make(chan struct{})
			k.mu.Unlock()
			return nil
		}
		k.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// tryLock takes the lock of key if it is free.
func (k *keyLocks) tryLock(key string) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.held == nil {
		k.held = map[string]chan struct{}{}
	}
	if _, busy := k.held[key]; busy {
		return false
	}
	k.held[key] = make(chan struct{})
	return true
}

func (k *keyLocks) unlock(key string) {
	k.mu.Lock()
	ch := k.held[key]
	delete(k.held, key)
	k.mu.Unlock()
	close(ch)
}

// partialInfo describes a partial download on disk.
type partialInfo struct {
	key     string
	dir     string
	state   *partialState // nil when unreadable
	updated time.Time     // state.Updated, else the directory's mtime
	disk    int64
}

// partials lists the partial downloads in the store.
func (s *Store) partials() ([]partialInfo, error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, ioErr("reading image store", err)
	}
	var out []partialInfo
	for _, e := range ents {
		key, ok := strings.CutPrefix(e.Name(), partialPrefix)
		if !ok || key == "" || !e.IsDir() {
			continue
		}
		in := partialInfo{key: key, dir: filepath.Join(s.dir, e.Name())}
		if st, err := readPartialState(in.dir, key); err == nil {
			in.state, in.updated = st, st.Updated
		} else if fi, err := e.Info(); err == nil {
			in.updated = fi.ModTime()
		}
		if _, disk, err := treeSize(in.dir); err == nil {
			in.disk = disk
		}
		out = append(out, in)
	}
	return out, nil
}

// recoverPartials runs in NewStore: it keeps the partial downloads a later
// fetch can resume and removes the rest (bad key, unreadable sidecar,
// image already published, older than MaxPartialAge).
func (s *Store) recoverPartials() error {
	ps, err := s.partials()
	if err != nil {
		return err
	}
	now := s.opts.Now()
	for _, p := range ps {
		reason := ""
		if _, _, err := parseKey(p.key); err != nil {
			reason = "not a store key"
		} else if p.state == nil {
			_, err := readPartialState(p.dir, p.key)
			reason = fmt.Sprintf("unreadable sidecar: %v", err)
		} else if _, err := os.Stat(filepath.Join(s.dir, p.key, markerName)); err == nil {
			reason = "the image is published"
		} else if now.Sub(p.updated) > s.opts.MaxPartialAge {
			reason = "older than the maximum age"
		}
		if reason == "" {
			s.log.Info("keeping partial image download", "key", p.key, "bytes", p.state.Bytes, "total", p.state.Total)
			continue
		}
		s.log.Warn("removing partial image download", "dir", p.dir, "reason", reason)
		if err := removeTree(p.dir); err != nil {
			return err
		}
	}
	return nil
}
