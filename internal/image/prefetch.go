package image

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/goldvm/goldvm/internal/errdefs"
)

// Pre-fetches.
//
// A pre-fetch (POST /images) fetches an image before any VM asks for it.
// The Prefetcher owns them: each runs in a goroutine of the Prefetcher
// under a context it cancels on Close (shutdown) and on Cancel (DELETE
// /images/{key}). Each is recorded in <store>/.prefetch/<key>.json
// (written atomically, the full URL included, so the directory is 0700)
// from the moment it is accepted until it succeeds, fails or is
// cancelled; NewPrefetcher starts again every recorded pre-fetch, so one
// that a shutdown or crash interrupted resumes (from its partial download,
// see partial.go). A failed pre-fetch is kept in memory only, for
// PrefetchOptions.FailedTTL and at most PrefetchOptions.MaxFailed of them,
// so that GET /images can show why it failed.

const prefetchDirName = ".prefetch"

// Pre-fetch states.
const (
	PrefetchFetching = "fetching"
	PrefetchFailed   = "error"
)

// PrefetchOptions configures a Prefetcher. Zero values take the defaults.
type PrefetchOptions struct {
	// FailedTTL is how long a failed pre-fetch stays listed. Default 1h.
	FailedTTL time.Duration
	// MaxFailed is how many failed pre-fetches stay listed; the oldest
	// goes first. Default 100.
	MaxFailed int
	// Logger receives start, resume and failure events. Default: the
	// store's logger.
	Logger *slog.Logger
	// Now returns the current time. Default time.Now.
	Now func() time.Time
}

// PrefetchInfo describes a pre-fetch under way or failed.
type PrefetchInfo struct {
	Key string
	// Spec is what is fetched; its URL without credentials or query.
	Spec Spec
	// State is PrefetchFetching or PrefetchFailed.
	State string
	// Progress is the last progress report of a fetch under way.
	Progress *Progress
	// Err is why a failed pre-fetch failed.
	Err error
	// Started is when the pre-fetch was accepted; Ended when it failed.
	Started, Ended time.Time
}

// prefetchRecord is the file that keeps a pre-fetch across restarts.
type prefetchRecord struct {
	Version int       `json:"version"`
	Key     string    `json:"key"`
	Spec    Spec      `json:"spec"` // the full URL: needed to resume
	Started time.Time `json:"started"`
}

type prefetchJob struct {
	spec   Spec
	info   PrefetchInfo
	cancel context.CancelFunc
	done   chan struct{} // closed when the goroutine has returned
}

// Prefetcher runs pre-fetches into a Store. Its methods are safe for
// concurrent use.
type Prefetcher struct {
	store *Store
	dir   string
	opts  PrefetchOptions
	log   *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	opMu   sync.Mutex // serialises Start and Cancel (records and partials)
	mu     sync.Mutex // guards jobs, their info, and closed
	jobs   map[string]*prefetchJob
	closed bool
}

// NewPrefetcher returns the Prefetcher of s and resumes the pre-fetches
// its records name (dropping those whose image is published meanwhile, and
// unreadable ones, each logged).
func NewPrefetcher(s *Store, opts PrefetchOptions) (*Prefetcher, error) {
	if opts.FailedTTL <= 0 {
		opts.FailedTTL = time.Hour
	}
	if opts.MaxFailed <= 0 {
		opts.MaxFailed = 100
	}
	if opts.Logger == nil {
		opts.Logger = s.log
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Prefetcher{store: s, dir: filepath.Join(s.dir, prefetchDirName), opts: opts,
		log: opts.Logger.With("component", "prefetch"), ctx: ctx, cancel: cancel, jobs: map[string]*prefetchJob{}}
	// The directory is made with the first record: a store that never
	// pre-fetched holds only images.
	ents, err := os.ReadDir(p.dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		cancel()
		return nil, ioErr("reading pre-fetch records", err)
	}
	for _, e := range ents {
		name := filepath.Join(p.dir, e.Name())
		rec, err := p.readRecord(e.Name())
		if err != nil {
			p.log.Warn("removing unreadable pre-fetch record", "path", name, "err", err)
			if err := os.RemoveAll(name); err != nil {
				cancel()
				return nil, ioErr("removing pre-fetch record", err)
			}
			continue
		}
		if _, err := s.Get(rec.Key); err == nil {
			p.removeRecord(rec.Key)
			continue
		}
		p.log.Info("resuming pre-fetch interrupted by a restart", "key", rec.Key, "url", displayURL(rec.Spec.URL))
		p.start(rec.Key, rec.Spec, rec.Started)
	}
	return p, nil
}

func (p *Prefetcher) recordPath(key string) string { return filepath.Join(p.dir, key+".json") }

// readRecord reads and checks the record file name.
func (p *Prefetcher) readRecord(name string) (*prefetchRecord, error) {
	key, ok := strings.CutSuffix(name, ".json")
	if !ok {
		return nil, errors.New("not a pre-fetch record")
	}
	b, err := os.ReadFile(filepath.Join(p.dir, name))
	if err != nil {
		return nil, err
	}
	var rec prefetchRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("parsing: %w", err)
	}
	if k, err := Key(rec.Spec); err != nil || rec.Version != 1 || rec.Key != key || k != key {
		return nil, fmt.Errorf("record of version %d names key %q for file %s", rec.Version, rec.Key, name)
	}
	return &rec, nil
}

func (p *Prefetcher) removeRecord(key string) {
	if err := os.Remove(p.recordPath(key)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		p.log.Error("cannot remove pre-fetch record", "key", key, "err", err)
	}
}

// Start pre-fetches spec unless a pre-fetch of its key is under way, and
// returns that pre-fetch. A failed pre-fetch of the key is started again.
// The pre-fetch is recorded on disk before Start returns. The caller checks
// first whether the image is published already.
func (p *Prefetcher) Start(spec Spec) (PrefetchInfo, error) {
	key, err := Key(spec)
	if err != nil {
		return PrefetchInfo{}, err
	}
	p.opMu.Lock()
	defer p.opMu.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return PrefetchInfo{}, errors.New("pre-fetcher is closed")
	}
	if j := p.jobs[key]; j != nil && j.info.State == PrefetchFetching {
		return j.info, nil
	}
	now := p.opts.Now().UTC()
	b, err := json.MarshalIndent(prefetchRecord{Version: 1, Key: key, Spec: spec, Started: now}, "", "  ")
	if err != nil {
		return PrefetchInfo{}, fmt.Errorf("encoding pre-fetch record: %w", err)
	}
	if err := os.MkdirAll(p.dir, 0o700); err != nil {
		return PrefetchInfo{}, ioErr("creating pre-fetch records", err)
	}
	if err := writeAtomic(p.dir, key+".json", b); err != nil {
		return PrefetchInfo{}, err
	}
	return p.startLocked(key, spec, now), nil
}

func (p *Prefetcher) start(key string, spec Spec, started time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.startLocked(key, spec, started)
}

// startLocked runs the pre-fetch of key in a goroutine; p.mu is held.
func (p *Prefetcher) startLocked(key string, spec Spec, started time.Time) PrefetchInfo {
	ctx, cancel := context.WithCancel(p.ctx)
	shown := spec
	shown.URL = displayURL(spec.URL)
	j := &prefetchJob{spec: spec, cancel: cancel, done: make(chan struct{}),
		info: PrefetchInfo{Key: key, Spec: shown, State: PrefetchFetching, Started: started}}
	p.jobs[key] = j
	p.wg.Add(1)
	go p.run(ctx, j)
	return j.info
}

func (p *Prefetcher) run(ctx context.Context, j *prefetchJob) {
	defer p.wg.Done()
	defer close(j.done)
	defer j.cancel()
	key := j.info.Key
	_, err := p.store.Ensure(ctx, j.spec, func(pr Progress) {
		p.mu.Lock()
		j.info.Progress = &pr
		p.mu.Unlock()
	})
	if ctx.Err() != nil || errors.Is(err, context.Canceled) {
		// Close, or the store's Close (the record stays: the next start
		// resumes), or Cancel (which removes the record).
		return
	}
	p.removeRecord(key)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.jobs[key] != j {
		return
	}
	if err == nil {
		delete(p.jobs, key)
		return
	}
	p.log.Error("pre-fetch failed", "key", key, "err", err)
	j.info.State, j.info.Progress, j.info.Err, j.info.Ended = PrefetchFailed, nil, err, p.opts.Now().UTC()
	p.pruneLocked()
}

// pruneLocked forgets failed pre-fetches older than FailedTTL and, beyond
// MaxFailed, the oldest ones. p.mu is held.
func (p *Prefetcher) pruneLocked() {
	now := p.opts.Now()
	var failed []*prefetchJob
	for key, j := range p.jobs {
		if j.info.State != PrefetchFailed {
			continue
		}
		if now.Sub(j.info.Ended) > p.opts.FailedTTL {
			delete(p.jobs, key)
			continue
		}
		failed = append(failed, j)
	}
	if len(failed) <= p.opts.MaxFailed {
		return
	}
	sort.Slice(failed, func(a, b int) bool {
		if !failed[a].info.Ended.Equal(failed[b].info.Ended) {
			return failed[a].info.Ended.Before(failed[b].info.Ended)
		}
		return failed[a].info.Key < failed[b].info.Key
	})
	for _, j := range failed[:len(failed)-p.opts.MaxFailed] {
		delete(p.jobs, j.info.Key)
	}
}

// Get returns the pre-fetch of key, under way or failed.
func (p *Prefetcher) Get(key string) (PrefetchInfo, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pruneLocked()
	j, ok := p.jobs[key]
	if !ok {
		return PrefetchInfo{}, false
	}
	return j.info, true
}

// List returns the pre-fetches under way or failed, oldest first.
func (p *Prefetcher) List() []PrefetchInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pruneLocked()
	out := make([]PrefetchInfo, 0, len(p.jobs))
	for _, j := range p.jobs {
		out = append(out, j.info)
	}
	sort.Slice(out, func(a, b int) bool {
		if !out[a].Started.Equal(out[b].Started) {
			return out[a].Started.Before(out[b].Started)
		}
		return out[a].Key < out[b].Key
	})
	return out
}

// Cancel ends the pre-fetch of key (DELETE /images/{key}): a failed one is
// forgotten; one under way is stopped, its record and partial download
// removed, and, should it have published the image before it stopped, the
// image deleted. While VMs wait for the image (inUse, may be nil, counts
// them) the fetch is theirs too: Cancel then fails with errdefs.ErrConflict,
// code "image-in-use", and changes nothing. found tells whether there was
// a pre-fetch of key.
func (p *Prefetcher) Cancel(ctx context.Context, key string, inUse func(string) int) (found bool, err error) {
	p.opMu.Lock()
	defer p.opMu.Unlock()
	p.mu.Lock()
	j, ok := p.jobs[key]
	if !ok {
		p.mu.Unlock()
		return false, nil
	}
	if j.info.State == PrefetchFetching && inUse != nil {
		if n := inUse(key); n > 0 {
			p.mu.Unlock()
			return true, errdefs.Newf(errdefs.ErrConflict, CodeInUse, "image %s is being fetched for %d VM(s)", key, n)
		}
	}
	delete(p.jobs, key)
	p.mu.Unlock()
	if j.info.State != PrefetchFetching {
		return true, nil
	}
	j.cancel()
	<-j.done
	p.removeRecord(key)
	if err := p.store.discardPartial(ctx, key); err != nil {
		return true, err
	}
	if err := p.store.Delete(key, inUse); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
		return true, err
	}
	p.log.Info("pre-fetch cancelled", "key", key)
	return true, nil
}

// Close stops the pre-fetches under way and waits for them; their records
// stay, so the next NewPrefetcher resumes them. Close it before the Store.
func (p *Prefetcher) Close() error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.cancel()
	p.wg.Wait()
	return nil
}

// discardPartial removes the partial download of key once no fetch uses
// it any more (it waits for a cancelled fetch to finish saving it), unless
// a fetch of key is under way for another caller.
func (s *Store) discardPartial(ctx context.Context, key string) error {
	s.mu.Lock()
	_, busy := s.flights[key]
	s.mu.Unlock()
	if busy {
		return nil
	}
	if err := s.plocks.lock(ctx, key); err != nil {
		return err
	}
	defer s.plocks.unlock(key)
	return removeTree(s.partialDir(key))
}
