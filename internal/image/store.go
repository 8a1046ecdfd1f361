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
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/events"
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
	// Removed, when set, is called with the key of every image this store
	// deletes or evicts, once its files are gone (a driver then drops what
	// it keeps beside the image, such as warm-start templates).
	Removed func(key string)
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
	// GuestOS is the OS the disk's os-release names, read at publish; ""
	// when unknown.
	GuestOS string `json:"guest_os,omitempty"`
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
	// GuestOS is the OS its disk's os-release names (Disk.GuestOS).
	GuestOS string `json:"guest_os,omitempty"`
	// Damaged, when set, says why the image failed its start-up check. It
	// is kept because VMs depend on it, and not given to new VMs.
	Damaged string `json:"damaged,omitempty"`
	// Parent is what a captured image was made from (nil otherwise).
	Parent *api.ImageParent `json:"parent,omitempty"`
	// PackageSHA256 is the sha256 of the image's package, once known.
	PackageSHA256 string `json:"package_sha256,omitempty"`
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
	// Parent names the image and VM a captured image was made from.
	Parent *api.ImageParent `json:"parent,omitempty"`
	// Package is the package's checksum, recorded at capture (see
	// package.go).
	Package *packageRecord `json:"package,omitempty"`
}

// packageRecord is the recorded checksum of an image's package.
type packageRecord struct {
	Format string `json:"format"` // packageFormatVersion
	SHA256 string `json:"sha256"`
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
	info = ImageInfo{Key: key, URL: m.URL, Checksum: m.Checksum, ChecksumType: m.ChecksumType,
		Format: m.Format, Size: m.Size, DiskBytes: disk, Created: m.Created, LastUsed: s.lastUsed(key, m.Created), Damaged: why,
		Parent: m.Parent, PackageSHA256: recordedPackageSum(s.dir, m)}
	if m.Disk != nil {
		info.GuestOS = m.Disk.GuestOS
	}
	return info, true, nil
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
