// Package vm orchestrates the life of a VM: a create request becomes a record,
// then image -> clone -> boot -> discover -> callback, each step persisted so a
// restarted daemon can resume, reattach or clean up. One Manager owns all
// in-flight work; there are no package globals.
package vm

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/callback"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/events"
	"github.com/goldvm/goldvm/internal/hypervisor"
	"github.com/goldvm/goldvm/internal/image"
	"github.com/goldvm/goldvm/internal/records"
)

// ImageStore is what the manager needs of the gold image store.
type ImageStore interface {
	// Ensure returns the gold image, fetching it the first time.
	Ensure(ctx context.Context, spec image.Spec, progress func(image.Progress)) (*image.Gold, error)
	// Touch marks an image as just used.
	Touch(key string)
	// GoldDir is where the gold image key's files are (or would be) once
	// published; it is computed, the image need not exist.
	GoldDir(key string) string
	// Release tells the store a VM that depended on key is gone (a damaged
	// image is removed once inUse answers 0 for it).
	Release(key string, inUse func(key string) int) error
	// Get returns a published image by key.
	Get(key string) (*image.Gold, error)
	// Capture publishes an image whose files fill writes (see
	// image.Store.Capture).
	Capture(ctx context.Context, parent api.ImageParent, fill func(ctx context.Context, files string) error) (*image.Gold, error)
}

// Config wires a Manager.
type Config struct {
	// VMDir holds one directory per VM.
	VMDir  string
	Store  *records.DB
	Images ImageStore
	// Media is the store of boot media (kernels, initrds, CD-ROMs), an
	// image store that keeps downloads as they are; nil: requests with
	// boot media are refused.
	Media     ImageStore
	Driver    hypervisor.Driver
	Callbacks *callback.Sender
	Limits    Limits
	Logger    *slog.Logger
	// DestroyTimeout bounds a driver's Destroy (default 2m).
	DestroyTimeout time.Duration
	// Redactor hides host directories in the error messages VM records
	// show (nil: shown as they are).
	Redactor *errdefs.Redactor
	// Capacity is the host's budget for VMs (vCPUs and MiB; a zero field
	// is no limit) and QueueTimeout how long a creation waits for it
	// (default DefaultQueueTimeout).
	Capacity     api.Resources
	QueueTimeout time.Duration
	// CrashPoint, when set, is called at each named point of creation and
	// deletion (see the Crash* constants). Crash tests set it to kill the
	// daemon there; it is nil in normal operation.
	CrashPoint func(point string)
	// Events receives every state change of a VM (nil: none).
	Events *events.Bus
	// WarmTemplatesAfter, when > 0, makes the warm-start template of an
	// image and hardware after that many of its VMs booted cold (drivers
	// with templates only).
	WarmTemplatesAfter int
}

// Points at which Config.CrashPoint is called.
const (
	CrashDownloading = "downloading" // image bytes have arrived, fetch not done
	CrashUnpacking   = "unpacking"   // a spooled zip is being unpacked
	CrashCloned      = "cloned"      // the overlay exists, QEMU not started
	CrashBooting     = "booting"     // QEMU started, guest not yet discovered
	CrashDiscovering = "discovering" // discovery under way
	CrashCallback    = "callback"    // creation done, callback not yet delivered
	CrashDeleting    = "deleting"    // record marked deleting, nothing removed yet
	CrashDestroyed   = "destroyed"   // machine destroyed, record not yet removed
)

// Manager runs VM creation, deletion, watching and recovery.
type Manager struct {
	// macMu serialises the check that a machine's MAC is no other VM's
	// with the record's update (resolveMachine).
	macMu sync.Mutex
	// warmMu serialises hand-outs of warm VMs (TakeWarm).
	warmMu sync.Mutex
	cfg    Config
	log    *slog.Logger
	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex
	creates   map[string]*task // in-flight creations, by VM id
	watchers  map[string]*task // running-VM watchers, by VM id
	probes    map[string]*task // late guest-OS probes of running VMs, by VM id
	idLocks   map[string]*sync.Mutex
	unsaved   map[string]*records.Record // changes the store could not save yet (see records.go)
	retrying  bool                       // a retryUnsaved loop runs
	coldBoots map[string]int             // cold boots by image and hardware (see noteColdBoot)

	capacity *capacity
}

// task is one background job that can be cancelled and waited for.
type task struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// New returns a Manager. Call Recover once before serving requests.
func New(cfg Config) *Manager {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.DestroyTimeout == 0 {
		cfg.DestroyTimeout = 2 * time.Minute
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Manager{
		cfg: cfg, log: cfg.Logger, ctx: ctx, cancel: cancel,
		creates: map[string]*task{}, watchers: map[string]*task{}, probes: map[string]*task{}, idLocks: map[string]*sync.Mutex{},
		unsaved: map[string]*records.Record{}, coldBoots: map[string]int{},
		capacity: newCapacity(cfg.Capacity, cfg.QueueTimeout, cfg.Events),
	}
}

// Capacity is GET /capacity's answer: the host's budget, what running and
// admitted VMs hold and what the queue waits for.
func (m *Manager) Capacity() api.Capacity { return m.capacity.snapshot() }

// BackendCapacity is what the backend's hosts have (see
// hypervisor.CapacityReporter), nil for a driver that does not report it;
// a backend that cannot be asked gives its error in the answer's Error.
func (m *Manager) BackendCapacity(ctx context.Context) *api.BackendCapacity {
	cr, ok := m.cfg.Driver.(hypervisor.CapacityReporter)
	if !ok {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	bc, err := cr.BackendCapacity(ctx)
	if err != nil {
		return &api.BackendCapacity{Error: err.Error()}
	}
	return &bc
}

// resources is what a record's VM holds of the capacity.
func resources(r *records.Record) api.Resources {
	return api.Resources{CPUs: r.CPUs, MemoryMiB: r.MemoryMiB}
}

// view is the API view of a record, with its queue position.
func (m *Manager) view(r *records.Record) api.VM {
	v := r.VM
	if v.Status == api.StatusCreating && v.Phase == api.PhaseQueued {
		v.QueuePosition = m.capacity.position(r.ID)
	}
	return v
}

// Close stops all background work and waits for it. VMs keep running, and
// creations under way stay "creating": the next Recover resumes them.
func (m *Manager) Close() {
	m.cancel()
	m.wg.Wait()
}

// DriverName is the backend in use.
func (m *Manager) DriverName() string { return m.cfg.Driver.Name() }

func (m *Manager) crashPoint(point string) {
	if m.cfg.CrashPoint != nil {
		m.cfg.CrashPoint(point)
	}
}

func (m *Manager) lockID(id string) func() {
	m.mu.Lock()
	l, ok := m.idLocks[id]
	if !ok {
		l = new(sync.Mutex)
		m.idLocks[id] = l
	}
	m.mu.Unlock()
	l.Lock()
	return l.Unlock
}

// spawn runs fn in a tracked goroutine under a child of the manager's context.
func (m *Manager) spawn(set map[string]*task, id string, fn func(ctx context.Context)) {
	ctx, cancel := context.WithCancel(m.ctx)
	t := &task{cancel: cancel, done: make(chan struct{})}
	m.mu.Lock()
	set[id] = t
	m.mu.Unlock()
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer close(t.done)
		defer cancel()
		defer func() {
			m.mu.Lock()
			if set[id] == t {
				delete(set, id)
			}
			m.mu.Unlock()
		}()
		fn(ctx)
	}()
}

// stop cancels the task for id in set, if any, and waits for it to end.
func (m *Manager) stop(set map[string]*task, id string) {
	m.mu.Lock()
	t := set[id]
	m.mu.Unlock()
	if t != nil {
		t.cancel()
		<-t.done
	}
}

// spec is the driver's view of the VM r, the same on every call: the gold
// image's key and directory come from the record's image, whether or not
// the image is (still) there.
func (m *Manager) spec(r *records.Record) hypervisor.Spec {
	s := hypervisor.Spec{
		ID: r.ID, Dir: r.Dir, CPUs: r.CPUs, MemoryMiB: r.MemoryMiB,
		Network: r.NetworkType, Peers: r.Peers, Headless: r.Headless, Machine: r.Machine,
		Kernel: r.KernelPath, Initrd: r.InitrdPath, CDROMs: r.CDROMPaths, Placement: r.Placement,
		CloudInit: &hypervisor.CloudInit{
			InstanceID: r.ID, Hostname: r.ID, UserData: r.UserData, SSHAuthorizedKeys: r.SSHAuthorizedKeys,
		},
	}
	if r.Boot != nil {
		s.Append = r.Boot.Append
	}
	if r.Image.EmptyDisk != "" {
		// Validated at creation.
		s.EmptyDisk, _ = emptyDiskBytes(r.Image.EmptyDisk)
	}
	if key, err := image.Key(imageSpec(r)); err == nil {
		s.ImageKey, s.GoldDir = key, m.cfg.Images.GoldDir(key)
	}
	return s
}

// goldSpec is spec with the gold disk the driver decided when gold was
// published, for the calls that open it (Clone, Start).
func (m *Manager) goldSpec(r *records.Record, gold *image.Gold) hypervisor.Spec {
	s := m.spec(r)
	s.GoldDir = gold.Dir
	if d := gold.Disk; d != nil {
		s.GoldDisk = hypervisor.GoldDisk{Path: d.Path, Format: d.Format, VirtualSize: d.VirtualSize, Source: d.Source, GuestOS: d.GuestOS}
	}
	return s
}

// startWatch follows a running VM and marks it stopped when its machine ends.
func (m *Manager) startWatch(id string) {
	w, ok := m.cfg.Driver.(hypervisor.Watcher)
	if !ok {
		return
	}
	m.spawn(m.watchers, id, func(ctx context.Context) {
		r, err := m.get(id)
		if err != nil {
			return
		}
		reason, err := w.Watch(ctx, m.spec(r))
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			reason = "watch failed: " + err.Error()
		}
		m.markStopped(id, reason)
	})
}

// startProbe keeps asking a running VM's guest agent for the OS, for at
// most limit, when the driver can (hypervisor.GuestOSProber), and records
// the answer: a guest whose agent starts after its address is known.
func (m *Manager) startProbe(id string, limit time.Duration) {
	pr, ok := m.cfg.Driver.(hypervisor.GuestOSProber)
	if !ok {
		return
	}
	m.spawn(m.probes, id, func(ctx context.Context) {
		r, err := m.get(id)
		if err != nil {
			return
		}
		pctx, cancel := context.WithTimeout(ctx, limit)
		defer cancel()
		name, err := pr.ProbeGuestOS(pctx, m.spec(r))
		if err != nil || name == "" {
			return
		}
		_, err = m.update(id, func(r *records.Record) error {
			if r.Status != api.StatusRunning {
				return errors.New("not running")
			}
			r.GuestOS, r.GuestOSName = name, name
			if r.Sources == nil {
				r.Sources = &api.Sources{}
			}
			r.Sources.GuestOS = api.SourceGuestAgent
			return nil
		})
		if err == nil {
			m.log.Info("guest agent answered after the VM was running", "vm", id, "guest_os", name)
		}
	})
}

func (m *Manager) markStopped(id, reason string) {
	_, err := m.update(id, func(r *records.Record) error {
		if r.Status != api.StatusRunning && r.Status != api.StatusSuspended {
			return errors.New("not running")
		}
		r.Status = api.StatusStopped
		r.StopReason = reason
		return nil
	})
	m.capacity.release(id)
	if err == nil {
		m.log.Warn("vm stopped", "vm", id, "reason", reason)
	}
}

// lockedRecord takes VM id's lock and reads its record, for a change made
// under that lock; the caller calls unlock when done. An id that is not a
// VM's is vm-not-found, and nothing is locked on an error.
func (m *Manager) lockedRecord(id string) (r *records.Record, unlock func(), err error) {
	if !records.ValidID(id) {
		return nil, nil, errdefs.Newf(errdefs.ErrNotFound, api.CodeVMNotFound, "no VM with id %q", id)
	}
	unlock = m.lockID(id)
	if r, err = m.get(id); err != nil {
		unlock()
		return nil, nil, err
	}
	return r, unlock, nil
}

// Get returns a VM record.
func (m *Manager) Get(ctx context.Context, id string) (*api.VM, error) {
	if !records.ValidID(id) {
		return nil, errdefs.Newf(errdefs.ErrNotFound, "vm-not-found", "no VM with id %q", id)
	}
	r, err := m.get(id)
	if err != nil {
		return nil, err
	}
	// Drivers that cannot watch are asked on each read.
	if _, ok := m.cfg.Driver.(hypervisor.Watcher); !ok && r.Status == api.StatusRunning {
		if st, err := m.cfg.Driver.State(ctx, m.spec(r)); err == nil && st == hypervisor.StateStopped {
			m.markStopped(id, "machine is no longer running")
			if r2, err := m.get(id); err == nil {
				r = r2
			}
		}
	}
	v := m.view(r)
	return &v, nil
}

// List returns all VMs, newest first.
func (m *Manager) List(ctx context.Context) ([]api.VM, error) {
	recs, err := m.list()
	if err != nil {
		return nil, err
	}
	out := make([]api.VM, 0, len(recs))
	for _, r := range recs {
		out = append(out, m.view(r))
	}
	return out, nil
}

// imageSpec is the gold image a record's disk depends on.
func imageSpec(r *records.Record) image.Spec {
	return image.Spec{URL: r.Image.URL, Checksum: r.Image.Checksum, ChecksumType: r.Image.ChecksumType}
}

// ImageUsage counts, per gold image key, the VMs whose disk depends on it or
// will: a VM still being created counts from the moment it is accepted, so
// an eviction can never remove an image between its fetch and the clone.
// It returns nil if the records cannot be read.
func (m *Manager) ImageUsage() map[string]int {
	recs, err := m.list()
	if err != nil {
		return nil
	}
	return imageUsage(recs)
}

// ImageUsers returns, for the image store's start-up check
// (image.Options.InUse, asked before there is a Manager), how many of
// db's VMs depend on an image; as Manager.ImageUsers, "many" when the
// records cannot be read.
func ImageUsers(db *records.DB) func(key string) int {
	return func(key string) int {
		recs, err := db.List()
		if err != nil {
			return 1 << 30
		}
		return imageUsage(recs)[key]
	}
}

// imageUsage counts the records per gold image key (see ImageUsage).
func imageUsage(recs []*records.Record) map[string]int {
	usage := map[string]int{}
	for _, r := range recs {
		if r.Status == api.StatusError {
			continue // its overlay was removed when it failed
		}
		if k, err := image.Key(imageSpec(r)); err == nil {
			usage[k]++
		}
	}
	return usage
}

// ImageUsers counts the VMs that depend on the gold image key (see
// ImageUsage). When the records cannot be read it answers "many": an image
// is never evicted or deleted blindly.
func (m *Manager) ImageUsers(key string) int {
	usage := m.ImageUsage()
	if usage == nil {
		return 1 << 30
	}
	return usage[key]
}
