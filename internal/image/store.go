// Package image is goldvm's content-addressed store of "gold" images.
//
// An image is named by its checksum (see Key) and fetched at most once: the
// HTTP body streams through the hash and, at the same time, through a
// format detector, a decompressor and a tar reader into a temporary
// directory, so a download is also its unpacking. Only when the body has
// been read to its last byte and the checksum matches are the files synced,
// made read-only and published, by writing a completion marker last and
// renaming the directory into place. A directory without a valid marker is
// never served, and NewStore removes it.
//
// The raw bytes are also kept in a partial download file while they
// stream in, so that a fetch interrupted by a crash, a restart or a
// cancellation continues where it stopped instead of from byte 0: the next
// fetch of the key re-feeds them through the same pipeline and asks the
// server for the rest (Range with If-Range). See partial.go for when a
// partial is kept, resumed, restarted from 0 and removed.
//
// Layout beneath the store directory:
//
//	<key>/files/        the image's files (Gold.Dir), dirs 0555, files 0444
//	<key>/image.json    completion marker (key, url, size, checksum, file list)
//	<key>/last-used     last use time, replaced atomically by Touch
//	.tmp-<key>-<rand>/  a fetch in progress (removed on failure or restart)
//	.partial-<key>/     raw bytes fetched so far: data, and state.json (url,
//	                    validator, total, bytes on disk); kept across restarts
//	.del-<key>-<rand>/  an image being deleted
//
// Formats are recognised by content, never by file name: gzip, bzip2, zstd
// or xz compression (or none) around a tar archive or a bare qcow2 / VMDK
// disk; zip; and, only when the URL path ends in .img or .raw (optionally
// with a compression suffix), a raw disk of any content. A zip is unpacked
// as it streams, entry by entry from its local headers, and checked against
// its central directory at the end (which also gives the entries' modes);
// only a zip whose stored entries have their sizes after their data (as
// archive/zip writes them) cannot be, and is unpacked from its partial
// download file after verification: its progress then has an "unpacking"
// phase.
//
// Safety: all writes go through os.Root; entry names with .. or a leading
// slash, links resolving outside, writes through symlinked directories,
// device nodes and fifos are refused ("image-unsafe-archive"), and so are
// qcow2 backing / data files and VMDK extents that name anything but a
// relative path inside the image, since the hypervisor would open them.
// Declared and actual unpacked sizes and the entry count are capped.
package image

import (
	"context"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/events"
	"github.com/goldvm/goldvm/internal/machine"
)

// Progress phases.
const (
	PhaseDownloading = "downloading"
	PhaseVerifying   = "verifying"
	PhaseUnpacking   = "unpacking"
)

const (
	markerName   = "image.json"
	lastUsedName = "last-used"
	filesDirName = "files"
	tmpPrefix    = ".tmp-"
	delPrefix    = ".del-"
)

// Spec names an image: where to fetch it and the checksum of the bytes
// served there.
type Spec struct {
	URL          string `json:"url"`
	Checksum     string `json:"checksum"`      // hex
	ChecksumType string `json:"checksum_type"` // md5, sha1, sha256 or sha512
}

var checksumSizes = map[string]int{"md5": md5.Size, "sha1": sha1.Size, "sha256": sha256.Size, "sha512": sha512.Size}

func newHash(kind string) hash.Hash {
	switch kind {
	case "md5":
		return md5.New()
	case "sha1":
		return sha1.New()
	case "sha512":
		return sha512.New()
	default:
		return sha256.New()
	}
}

// Key returns the store key of spec: "<checksum type>-<lowercase hex>",
// e.g. "sha256-9f86d0…". The key depends only on the checksum, not the URL,
// so the same bytes served from two places are one image. It validates the
// type and that the checksum is hex of the right length before the key is
// ever used as a path; failures are errdefs.ErrInvalid with code
// "invalid-checksum".
func Key(spec Spec) (string, error) {
	kind := strings.ToLower(strings.TrimSpace(spec.ChecksumType))
	size, ok := checksumSizes[kind]
	if !ok {
		return "", errInvalidChecksum("checksum_type %q is not one of md5, sha1, sha256, sha512", spec.ChecksumType)
	}
	sum := strings.ToLower(strings.TrimSpace(spec.Checksum))
	if len(sum) != 2*size {
		return "", errInvalidChecksum("a %s checksum has %d hex digits, got %d", kind, 2*size, len(sum))
	}
	if _, err := hex.DecodeString(sum); err != nil {
		return "", errInvalidChecksum("checksum is not hexadecimal")
	}
	return kind + "-" + sum, nil
}

// parseKey checks that key has the shape Key produces, so it is safe as a
// path element, and returns its checksum type and hex.
func parseKey(key string) (kind, sum string, err error) {
	kind, sum, ok := strings.Cut(key, "-")
	if !ok {
		return "", "", errdefs.Newf(errdefs.ErrNotFound, CodeNotFound, "no image %q", key)
	}
	k, err := Key(Spec{Checksum: sum, ChecksumType: kind})
	if err != nil || k != key {
		return "", "", errdefs.Newf(errdefs.ErrNotFound, CodeNotFound, "no image %q", key)
	}
	return kind, sum, nil
}

// Options configures a Store. Zero values take the defaults.
type Options struct {
	// MaxImageBytes limits the unpacked size of one image, declared
	// (headers) and actual (bytes decompressed). Default 64 GiB.
	MaxImageBytes int64
	// MaxDownloadBytes limits the size of the download. Default 64 GiB.
	MaxDownloadBytes int64
	// MaxEntries limits the number of archive entries. Default 100000.
	MaxEntries int
	// HTTPClient fetches images. Default: a client without an overall
	// timeout (StallTimeout bounds each read instead).
	HTTPClient *http.Client
	// Logger receives cleanup, retry and publish events. Default: discard.
	Logger *slog.Logger
	// Retries is how many consecutive failed attempts (network error, stall,
	// 5xx, 408, 429) are retried; a connection that delivered at least
	// 1 MiB before failing resets the count. Default 5; negative: none.
	Retries int
	// RetryBackoff is the wait before the first retry; it doubles with each
	// further one, up to 30s. Default 1s; negative: no wait.
	RetryBackoff time.Duration
	// StallTimeout fails an attempt (and retries it) when no byte arrives
	// for this long. Default 60s.
	StallTimeout time.Duration
	// ProgressInterval is the minimum time between two download progress
	// reports; a report is also sent every 256 KiB. Default 200ms.
	ProgressInterval time.Duration
	// MaxPartialAge bounds how long a partial download (see partial.go) is
	// kept for resuming: NewStore and Evict remove older ones, whatever the
	// eviction policy. Default 7 days.
	MaxPartialAge time.Duration
	// Now returns the current time. Default time.Now.
	Now func() time.Time
	// PrepareDisk, when set, is called on every image before it is
	// published, with the directory of its unpacked files and a scratch
	// directory beside them: it finds the image's disk, decides its format
	// for good, checks it (a hypervisor's own tools, e.g. qemu-img) and may
	// write a converted disk into scratch. Its answer is recorded in the
	// image's marker and given to the hypervisor ever after; its errors
	// fail the fetch as they are. Images published without it (an older
	// goldvm, or another backend) are damaged to a store that has it.
	PrepareDisk func(ctx context.Context, files, scratch string) (Disk, error)
	// InUse tells NewStore how many VMs depend on an image (nil: none).
	// An image that fails its check at start-up is removed only when no
	// VM depends on it; otherwise it is kept and reported as damaged
	// (ImageInfo.Damaged) until Release finds it unused.
	InUse func(key string) int
	// Events receives the images' state changes: fetching, ready, error,
	// deleted, evicted (nil: none).
	Events *events.Bus
	// Counters counts lookups and downloaded bytes for metrics (nil: none).
	Counters Counters
	// Verbatim makes a store of boot media (kernels, initrds, CD-ROM
	// images): each download is kept as it is, one file named MediaFile,
	// neither decompressed nor unpacked. Used without PrepareDisk.
	Verbatim bool
}

// Disk is an image's disk as PrepareDisk decided it.
type Disk struct {
	// Path is the disk's absolute path when PrepareDisk returns it; the
	// marker records it relative to the image's directory.
	Path string `json:"path"`
	// Format is the disk's format ("qcow2", "raw"), passed explicitly to
	// every tool that opens the disk: nothing probes it again.
	Format string `json:"format"`
	// VirtualSize is the size of the disk the guest sees, in bytes.
	VirtualSize int64 `json:"virtual_size"`
	// Size is the file's size in bytes (filled in by the store).
	Size int64 `json:"size"`
	// Source is the package's disk a converted disk was made from,
	// relative to the image's files; empty when Path is that disk.
	Source string `json:"source,omitempty"`
}

func (o *Options) setDefaults() {
	if o.MaxImageBytes <= 0 {
		o.MaxImageBytes = 64 << 30
	}
	if o.MaxDownloadBytes <= 0 {
		o.MaxDownloadBytes = 64 << 30
	}
	if o.MaxEntries <= 0 {
		o.MaxEntries = 100000
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case o.Retries == 0:
		o.Retries = 5
	case o.Retries < 0:
		o.Retries = 0
	}
	switch {
	case o.RetryBackoff == 0:
		o.RetryBackoff = time.Second
	case o.RetryBackoff < 0:
		o.RetryBackoff = 0
	}
	if o.StallTimeout <= 0 {
		o.StallTimeout = 60 * time.Second
	}
	if o.ProgressInterval <= 0 {
		o.ProgressInterval = 200 * time.Millisecond
	}
	if o.MaxPartialAge <= 0 {
		o.MaxPartialAge = 7 * 24 * time.Hour
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Progress tells how far an Ensure has come. BytesTotal is 0 when unknown.
// Phase is "downloading" (download and, for streamable formats, unpacking
// at once), "verifying" (the checksum is being compared) or "unpacking"
// (a zip, after verification).
type Progress struct {
	Phase      string
	BytesDone  int64
	BytesTotal int64
}

// Gold is a published, verified, read-only image.
type Gold struct {
	// Key is the store key (see Key).
	Key string
	// Dir holds the unpacked files; it and everything in it is read-only.
	Dir string
	// Size is the logical size of all regular files, in bytes.
	Size int64
	// Spec is what the image was fetched from. For an image found in the
	// store the URL has no credentials or query.
	Spec Spec
	// Format describes the package, e.g. "tar.gz", "zip", "qcow2", "raw.xz".
	Format string
	// Files lists the regular files, relative to Dir, in archive order.
	Files []string
	// Disk is the disk PrepareDisk decided on, its Path absolute; nil
	// for a store without PrepareDisk.
	Disk *Disk
	// Machine is the image's hardware definition (its machine.json as
	// read at publish); nil when it has none.
	Machine *api.Machine
}

// ImageInfo describes a published image for listings.
type ImageInfo struct {
	Key          string    `json:"key"`
	URL          string    `json:"url"` // without credentials or query
	Checksum     string    `json:"checksum"`
	ChecksumType string    `json:"checksum_type"`
	Format       string    `json:"format"`
	Size         int64     `json:"size"`       // logical bytes of the files
	DiskBytes    int64     `json:"disk_bytes"` // bytes allocated on disk
	Created      time.Time `json:"created"`
	LastUsed     time.Time `json:"last_used"`
	// Damaged, when set, says why the image failed its start-up check. It
	// is kept because VMs depend on it, and not given to new VMs.
	Damaged string `json:"damaged,omitempty"`
}

// marker is the completion marker, written last into a fetched image.
type marker struct {
	Version      int          `json:"version"`
	Key          string       `json:"key"`
	URL          string       `json:"url"`
	Checksum     string       `json:"checksum"`
	ChecksumType string       `json:"checksum_type"`
	Format       string       `json:"format"`
	Size         int64        `json:"size"`
	Files        []fileRecord `json:"files"`
	Created      time.Time    `json:"created"`
	// Disk (version 2) is the disk PrepareDisk decided on.
	Disk *Disk `json:"disk,omitempty"`
	// Machine is the package's machine.json, checked and migrated to
	// the current format; nil when the package has none.
	Machine *api.Machine `json:"machine,omitempty"`
}

// Store is the image store. Its methods are safe for concurrent use.
type Store struct {
	dir  string
	opts Options
	log  *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	flights map[string]*flight
	closed  bool
	// dmu guards damaged: key -> why the image failed its start-up check
	// (kept for its VMs). Taken alone, also under mu.
	dmu     sync.Mutex
	damaged map[string]string
	delMu   sync.Mutex // serialises Delete and Evict
	// plocks: a fetch holds its key's lock while it uses the key's partial
	// download (a cancelled fetch may still be saving it when the next
	// one starts); Evict skips partials whose lock is held.
	plocks keyLocks
	// checkpointEvery is checkpointInterval; tests shorten it.
	checkpointEvery time.Duration
}

// NewStore opens (creating if needed) the store in dir, normally
// <data-dir>/images. It first recovers from a crash: every image must have
// a valid completion marker whose key matches its directory and whose size
// and file list match the files; images that do not, temp dirs of
// interrupted fetches and half-deleted images are removed, each logged.
// Partial downloads are kept for resuming unless their sidecar is
// unreadable, their image is published or they are older than
// Options.MaxPartialAge. Other names in dir are logged and left alone.
func NewStore(dir string, opts Options) (*Store, error) {
	opts.setDefaults()
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("image store %s: %w", dir, err)
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return nil, ioErr("creating image store "+abs, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Store{dir: abs, opts: opts, log: opts.Logger.With("component", "image"), ctx: ctx, cancel: cancel,
		flights: map[string]*flight{}, damaged: map[string]string{}, checkpointEvery: checkpointInterval}
	if err := s.recover(); err != nil {
		cancel()
		return nil, err
	}
	return s, nil
}

// Dir returns the store's directory.
func (s *Store) Dir() string { return s.dir }

// GoldDir returns where the files of image key are once it is published
// (Gold.Dir). It only computes the path: the image need not exist.
func (s *Store) GoldDir(key string) string { return filepath.Join(s.dir, key, filesDirName) }

// Close cancels fetches in progress and waits for them to clean up.
func (s *Store) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	return nil
}

func (s *Store) recover() error {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return ioErr("reading image store", err)
	}
	for _, e := range ents {
		name := e.Name()
		p := filepath.Join(s.dir, name)
		switch {
		case strings.HasPrefix(name, tmpPrefix):
			s.log.Warn("removing interrupted image fetch", "dir", p)
			if err := removeTree(p); err != nil {
				return err
			}
		case strings.HasPrefix(name, partialPrefix):
			// Handled below, once damaged images are gone.
		case name == prefetchDirName:
			// The Prefetcher's records (prefetch.go).
		case strings.HasPrefix(name, delPrefix):
			s.log.Warn("finishing interrupted image delete", "dir", p)
			if err := removeTree(p); err != nil {
				return err
			}
		case e.IsDir():
			if _, _, err := parseKey(name); err != nil {
				s.log.Warn("unknown directory in image store; leaving it", "dir", p)
				continue
			}
			if err := s.check(name); err != nil {
				if n := s.users(name); n > 0 {
					// Its VMs' disks depend on it: removing it would break
					// them. It is kept, reported, and not given to new VMs.
					s.log.Error("image is damaged but VMs depend on it; keeping it until they are deleted",
						"key", name, "vms", n, "reason", err)
					s.damaged[name] = err.Error()
					continue
				}
				s.log.Warn("removing incomplete or damaged image", "key", name, "reason", err)
				if err := removeTree(p); err != nil {
					return err
				}
			}
		default:
			s.log.Warn("unknown file in image store; leaving it", "path", p)
		}
	}
	if err := s.recoverPartials(); err != nil {
		return err
	}
	return syncDir(s.dir)
}

// check verifies a published image against its marker: the marker parses,
// names this key, and every file it lists exists with its size and the
// total size matches.
func (s *Store) check(key string) error {
	m, err := s.readMarker(key)
	if err != nil {
		return err
	}
	files := filepath.Join(s.dir, key, filesDirName)
	size, _, err := treeSize(files)
	if err != nil {
		return err
	}
	if size != m.Size {
		return fmt.Errorf("files hold %d bytes, marker says %d", size, m.Size)
	}
	if s.opts.PrepareDisk != nil && m.Disk == nil {
		return errors.New("the image was published without its disk being inspected (by an older goldvm or another backend)")
	}
	if m.Disk != nil {
		fi, err := os.Lstat(filepath.Join(s.dir, key, filepath.FromSlash(m.Disk.Path)))
		if err != nil {
			return fmt.Errorf("disk: %w", err)
		}
		if !fi.Mode().IsRegular() || fi.Size() != m.Disk.Size {
			return fmt.Errorf("disk %s does not match the marker", m.Disk.Path)
		}
	}
	for _, f := range m.Files {
		fi, err := os.Lstat(filepath.Join(files, filepath.FromSlash(f.Path)))
		if err != nil {
			return fmt.Errorf("listed file: %w", err)
		}
		if (f.Type == "file" || f.Type == "hardlink") && (!fi.Mode().IsRegular() || fi.Size() != f.Size) {
			return fmt.Errorf("file %s does not match the marker", f.Path)
		}
	}
	return nil
}

// users asks Options.InUse how many VMs depend on key.
func (s *Store) users(key string) int {
	if s.opts.InUse == nil {
		return 0
	}
	return s.opts.InUse(key)
}

// damagedReason returns why key was found damaged, or "".
func (s *Store) damagedReason(key string) string {
	s.dmu.Lock()
	defer s.dmu.Unlock()
	return s.damaged[key]
}

// Release tells the store that a VM depending on key is gone. A damaged
// image (see Options.InUse) for which inUse now answers 0 is removed, so the
// next VM fetches it again.
func (s *Store) Release(key string, inUse func(key string) int) error {
	if s.damagedReason(key) == "" {
		return nil
	}
	s.delMu.Lock()
	defer s.delMu.Unlock()
	if inUse != nil && inUse(key) > 0 {
		return nil
	}
	err := s.deleteLocked(key, inUse)
	if err == nil {
		s.log.Info("removed damaged image after its last VM", "key", key)
	}
	return err
}

func (s *Store) readMarker(key string) (*marker, error) {
	b, err := os.ReadFile(filepath.Join(s.dir, key, markerName))
	if err != nil {
		return nil, fmt.Errorf("reading completion marker: %w", err)
	}
	var m marker
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("parsing completion marker: %w", err)
	}
	if m.Key != key {
		return nil, fmt.Errorf("completion marker names %q", m.Key)
	}
	return &m, nil
}

func (s *Store) gold(key string, m *marker, spec *Spec) *Gold {
	g := &Gold{Key: key, Dir: s.GoldDir(key), Size: m.Size, Format: m.Format,
		Spec: Spec{URL: m.URL, Checksum: m.Checksum, ChecksumType: m.ChecksumType}}
	if spec != nil {
		g.Spec = *spec
	}
	for _, f := range m.Files {
		if f.Type == "file" || f.Type == "hardlink" {
			g.Files = append(g.Files, f.Path)
		}
	}
	if m.Disk != nil {
		d := *m.Disk
		d.Path = filepath.Join(s.dir, key, filepath.FromSlash(d.Path))
		g.Disk = &d
	}
	if m.Machine != nil {
		mm := *m.Machine
		g.Machine = &mm
	}
	return g
}

// Get returns the published image key, or an errdefs.ErrNotFound error with
// code "image-not-found".
func (s *Store) Get(key string) (*Gold, error) {
	if _, _, err := parseKey(key); err != nil {
		return nil, err
	}
	if why := s.damagedReason(key); why != "" {
		return nil, errdefs.Newf(errdefs.ErrConflict, CodeDamaged,
			"image %s is damaged (%s); it is kept for the VMs that depend on it and refetched once they are deleted", key, why)
	}
	m, err := s.readMarker(key)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			s.log.Warn("image has an unreadable marker", "key", key, "err", err)
		}
		return nil, errdefs.New(errdefs.ErrNotFound, CodeNotFound, fmt.Sprintf("no image %s", key), err)
	}
	return s.gold(key, m, nil), nil
}

// List describes every published image, sorted by key.
func (s *Store) List() ([]ImageInfo, error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, ioErr("reading image store", err)
	}
	var out []ImageInfo
	for _, e := range ents {
		key := e.Name()
		if !e.IsDir() {
			continue
		}
		if _, _, err := parseKey(key); err != nil {
			continue
		}
		info, found, err := s.info(key)
		if err != nil {
			return nil, err
		}
		if found {
			out = append(out, info)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

// Info describes the published image key, or returns an
// errdefs.ErrNotFound error with code "image-not-found".
func (s *Store) Info(key string) (ImageInfo, error) {
	if _, _, err := parseKey(key); err != nil {
		return ImageInfo{}, err
	}
	info, found, err := s.info(key)
	if err == nil && !found {
		err = errdefs.Newf(errdefs.ErrNotFound, CodeNotFound, "no image %s", key)
	}
	return info, err
}

// info describes the image key, a valid key; found is false when it has no
// readable marker (not published, or half-made) or its files are gone.
func (s *Store) info(key string) (info ImageInfo, found bool, err error) {
	why := s.damagedReason(key)
	m, err := s.readMarker(key)
	if err != nil {
		if why != "" {
			_, disk, _ := treeSize(filepath.Join(s.dir, key))
			return ImageInfo{Key: key, DiskBytes: disk, Damaged: why}, true, nil
		}
		return info, false, nil
	}
	_, disk, err := treeSize(filepath.Join(s.dir, key, filesDirName))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return info, false, nil // deleted meanwhile
		}
		return info, false, err
	}
	if m.Disk != nil && !strings.HasPrefix(m.Disk.Path, filesDirName+"/") {
		// A converted disk, beside the files.
		if fi, err := os.Stat(filepath.Join(s.dir, key, filepath.FromSlash(m.Disk.Path))); err == nil {
			disk += allocated(fi)
		}
	}
	return ImageInfo{Key: key, URL: m.URL, Checksum: m.Checksum, ChecksumType: m.ChecksumType,
		Format: m.Format, Size: m.Size, DiskBytes: disk, Created: m.Created, LastUsed: s.lastUsed(key, m.Created), Damaged: why}, true, nil
}

func (s *Store) lastUsed(key string, created time.Time) time.Time {
	b, err := os.ReadFile(filepath.Join(s.dir, key, lastUsedName))
	if err != nil {
		return created
	}
	t, err := time.Parse(time.RFC3339Nano, strings.TrimSpace(string(b)))
	if err != nil {
		return created
	}
	return t
}

// Touch records that key was used now, in the image's last-used file
// (replaced atomically). Unknown keys are ignored. Ensure touches too.
func (s *Store) Touch(key string) {
	if _, _, err := parseKey(key); err != nil {
		return
	}
	dir := filepath.Join(s.dir, key)
	if _, err := os.Stat(filepath.Join(dir, markerName)); err != nil {
		return
	}
	if err := writeAtomic(dir, lastUsedName, []byte(s.opts.Now().UTC().Format(time.RFC3339Nano)+"\n")); err != nil {
		s.log.Warn("cannot record image use", "key", key, "err", err)
	}
}

// Delete removes the published image key. inUse (may be nil) tells how many
// VMs use the image; if any do, Delete fails with errdefs.ErrConflict, code
// "image-in-use". The caller must make sure inUse counts a VM from the
// moment it obtained the Gold (or serialise VM creation with Delete).
func (s *Store) Delete(key string, inUse func(key string) int) error {
	s.delMu.Lock()
	defer s.delMu.Unlock()
	if err := s.deleteLocked(key, inUse); err != nil {
		return err
	}
	s.announce(api.ActionDeleted, key, Spec{}, nil, nil)
	return nil
}

func (s *Store) deleteLocked(key string, inUse func(key string) int) error {
	if _, err := s.Get(key); err != nil && s.damagedReason(key) == "" {
		return err
	}
	if inUse != nil {
		if n := inUse(key); n > 0 {
			return errdefs.Newf(errdefs.ErrConflict, CodeInUse, "image %s is used by %d VM(s)", key, n)
		}
	}
	// Renaming first makes the delete atomic for readers: the key is gone
	// at once, and NewStore finishes a delete that a crash interrupted.
	tomb, err := os.MkdirTemp(s.dir, delPrefix+key+"-")
	if err != nil {
		return ioErr("deleting image", err)
	}
	if err := os.Remove(tomb); err != nil {
		return ioErr("deleting image", err)
	}
	if err := os.Rename(filepath.Join(s.dir, key), tomb); err != nil {
		return ioErr("deleting image", err)
	}
	s.dmu.Lock()
	delete(s.damaged, key)
	s.dmu.Unlock()
	if err := syncDir(s.dir); err != nil {
		return err
	}
	s.log.Info("deleted image", "key", key)
	return removeTree(tomb)
}

// EvictPolicy says which unused images Evict may remove.
type EvictPolicy struct {
	// MaxBytes: while all images together take more disk space than this,
	// remove the least recently used unused one. 0: no size bound.
	MaxBytes int64
	// MaxIdle: remove unused images not used for longer than this.
	// 0: no idle bound.
	MaxIdle time.Duration
}

// Evict removes unused images by policy, least recently used first, and
// returns the removed image keys. An image for which inUse returns > 0 is
// never removed, even if the store stays over MaxBytes.
//
// Partial downloads (see partial.go) take part too: their disk space
// counts towards MaxBytes, their last checkpoint is their last use, and
// one older than Options.MaxPartialAge always goes. One that a fetch is
// using is never removed. Removed partials are logged, not returned.
func (s *Store) Evict(policy EvictPolicy, inUse func(key string) int) ([]string, error) {
	s.delMu.Lock()
	defer s.delMu.Unlock()
	infos, err := s.List()
	if err != nil {
		return nil, err
	}
	partials, err := s.partials()
	if err != nil {
		return nil, err
	}
	type candidate struct {
		ImageInfo
		partial *partialInfo
	}
	var cands []candidate
	var total int64
	for _, in := range infos {
		cands = append(cands, candidate{ImageInfo: in})
		total += in.DiskBytes
	}
	for i, p := range partials {
		cands = append(cands, candidate{ImageInfo: ImageInfo{Key: p.key, DiskBytes: p.disk, LastUsed: p.updated}, partial: &partials[i]})
		total += p.disk
	}
	sort.SliceStable(cands, func(i, j int) bool { return cands[i].LastUsed.Before(cands[j].LastUsed) })
	now := s.opts.Now()
	var removed []string
	var errs []error
	for _, in := range cands {
		idle := policy.MaxIdle > 0 && now.Sub(in.LastUsed) > policy.MaxIdle
		over := policy.MaxBytes > 0 && total > policy.MaxBytes
		if p := in.partial; p != nil {
			if !idle && !over && now.Sub(in.LastUsed) <= s.opts.MaxPartialAge {
				continue
			}
			if !s.plocks.tryLock(p.key) {
				continue // a fetch is using it
			}
			err := removeTree(p.dir)
			s.plocks.unlock(p.key)
			if err != nil {
				errs = append(errs, fmt.Errorf("evicting partial download %s: %w", p.key, err))
				continue
			}
			total -= in.DiskBytes
			s.log.Info("evicted partial image download", "key", p.key, "idle", idle, "disk_bytes", in.DiskBytes)
			continue
		}
		if !idle && !over && in.Damaged == "" {
			continue
		}
		if inUse != nil && inUse(in.Key) > 0 {
			continue
		}
		if err := s.deleteLocked(in.Key, inUse); err != nil {
			var e *errdefs.Error
			if errors.As(err, &e) && (e.Code == CodeInUse || e.Code == CodeNotFound) {
				continue
			}
			errs = append(errs, fmt.Errorf("evicting %s: %w", in.Key, err))
			continue
		}
		total -= in.DiskBytes
		removed = append(removed, in.Key)
		s.log.Info("evicted image", "key", in.Key, "idle", idle, "disk_bytes", in.DiskBytes)
		s.announce(api.ActionEvicted, in.Key, Spec{URL: in.URL, Checksum: in.Checksum, ChecksumType: in.ChecksumType}, nil, nil)
	}
	return removed, errors.Join(errs...)
}

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
	tmp, err := os.MkdirTemp(s.dir, tmpPrefix+key+"-")
	if err != nil {
		return nil, ioErr("creating temp dir", err)
	}
	defer func() {
		if err != nil {
			if rerr := removeTree(tmp); rerr != nil {
				log.Error("cannot remove temp dir", "dir", tmp, "err", rerr)
			}
		}
	}()
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

// publish syncs and seals the files, writes the marker last and renames
// the temp dir into place.
func (s *Store) publish(ctx context.Context, tmp, key string, spec Spec, x *extractor, report func(Progress), log *slog.Logger) (*Gold, error) {
	files := filepath.Join(tmp, filesDirName)
	mach, err := readMachine(files)
	if err != nil {
		return nil, err
	}
	disk, err := s.prepareDisk(ctx, tmp, files, report)
	if err != nil {
		return nil, err
	}
	if err := sealTree(files); err != nil {
		return nil, err
	}
	size, _, err := treeSize(files)
	if err != nil {
		return nil, err
	}
	kind, sum, _ := parseKey(key)
	m := &marker{Version: 1, Key: key, URL: displayURL(spec.URL), Checksum: sum, ChecksumType: kind,
		Format: x.format, Size: size, Files: x.records, Created: s.opts.Now().UTC(), Disk: disk, Machine: mach}
	if disk != nil {
		m.Version = 2
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encoding marker: %w", err)
	}
	if err := writeSynced(filepath.Join(tmp, markerName), b, 0o444); err != nil {
		return nil, err
	}
	// Searchable, not listable: a hypervisor running as another user
	// (goldvm serve --qemu-user) opens the disk inside by its path.
	if err := os.Chmod(tmp, 0o711); err != nil {
		return nil, ioErr("publishing image", err)
	}
	if err := syncDir(tmp); err != nil {
		return nil, err
	}
	dst := filepath.Join(s.dir, key)
	if err := os.Rename(tmp, dst); err != nil {
		// Someone published the same key meanwhile: theirs is as good.
		if g, gerr := s.Get(key); gerr == nil {
			log.Info("image was published concurrently; discarding this copy")
			if rerr := removeTree(tmp); rerr != nil {
				log.Error("cannot remove temp dir", "dir", tmp, "err", rerr)
			}
			return g, nil
		}
		return nil, ioErr("publishing image", err)
	}
	if err := syncDir(s.dir); err != nil {
		return nil, err
	}
	return s.gold(key, m, &spec), nil
}

// readMachine reads and checks the machine.json at the root of an image's
// files; nil when there is none. A bad one fails the fetch with code
// image-bad-machine.
func readMachine(files string) (*api.Machine, error) {
	path := filepath.Join(files, machine.FileName)
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, ioErr("reading machine.json", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, machine.ImageError(errors.New("not a regular file"))
	}
	if fi.Size() > machine.MaxFileSize {
		return nil, machine.ImageError(fmt.Errorf("%d bytes is more than the %d allowed", fi.Size(), machine.MaxFileSize))
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, ioErr("reading machine.json", err)
	}
	m, err := machine.Parse(b)
	if err != nil {
		return nil, err
	}
	return &m, nil
}

// prepareDisk runs Options.PrepareDisk on an image about to be published
// in tmp and returns its disk with a path relative to tmp; nil without
// PrepareDisk.
func (s *Store) prepareDisk(ctx context.Context, tmp, files string, report func(Progress)) (*Disk, error) {
	if s.opts.PrepareDisk == nil {
		return nil, nil
	}
	report(Progress{Phase: PhaseVerifying})
	d, err := s.opts.PrepareDisk(ctx, files, tmp)
	if err != nil {
		return nil, err
	}
	rel, err := filepath.Rel(tmp, d.Path)
	if err != nil || !filepath.IsLocal(rel) {
		return nil, fmt.Errorf("prepared disk %s is not inside the image", d.Path)
	}
	fi, err := os.Lstat(d.Path)
	if err != nil {
		return nil, ioErr("prepared disk", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("prepared disk %s is not a regular file", d.Path)
	}
	if !strings.HasPrefix(rel, filesDirName+string(filepath.Separator)) {
		// A disk made beside the files (a conversion): read-only and synced
		// like them.
		if err := os.Chmod(d.Path, 0o444); err != nil {
			return nil, ioErr("prepared disk", err)
		}
		if err := syncFile(d.Path); err != nil {
			return nil, err
		}
	}
	d.Path = filepath.ToSlash(rel)
	d.Size = fi.Size()
	return &d, nil
}
