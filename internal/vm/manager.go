// Package vm orchestrates the life of a VM: a create request becomes a record,
// then image -> clone -> boot -> discover -> callback, each step persisted so a
// restarted daemon can resume, reattach or clean up. One Manager owns all
// in-flight work; there are no package globals.
package vm

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/callback"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/events"
	"github.com/goldvm/goldvm/internal/hypervisor"
	"github.com/goldvm/goldvm/internal/image"
	"github.com/goldvm/goldvm/internal/machine"
	"github.com/goldvm/goldvm/internal/store"
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
}

// Config wires a Manager.
type Config struct {
	// VMDir holds one directory per VM.
	VMDir  string
	Store  *store.Store
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
	cfg    Config
	log    *slog.Logger
	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	creates  map[string]*task // in-flight creations, by VM id
	watchers map[string]*task // running-VM watchers, by VM id
	probes   map[string]*task // late guest-OS probes of running VMs, by VM id
	idLocks  map[string]*sync.Mutex
	unsaved  map[string]*store.Record // changes the store could not save yet (see records.go)
	retrying bool                     // a retryUnsaved loop runs

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
		unsaved:  map[string]*store.Record{},
		capacity: newCapacity(cfg.Capacity, cfg.QueueTimeout),
	}
}

// Capacity is GET /capacity's answer: the host's budget, what running and
// admitted VMs hold and what the queue waits for.
func (m *Manager) Capacity() api.Capacity { return m.capacity.snapshot() }

// resources is what a record's VM holds of the capacity.
func resources(r *store.Record) api.Resources {
	return api.Resources{CPUs: r.CPUs, MemoryMiB: r.MemoryMiB}
}

// view is the API view of a record, with its queue position.
func (m *Manager) view(r *store.Record) api.VM {
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
func (m *Manager) spec(r *store.Record) hypervisor.Spec {
	s := hypervisor.Spec{
		ID: r.ID, Dir: r.Dir, CPUs: r.CPUs, MemoryMiB: r.MemoryMiB,
		Network: r.NetworkType, Headless: r.Headless, Machine: r.Machine,
		Kernel: r.KernelPath, Initrd: r.InitrdPath, CDROMs: r.CDROMPaths,
		CloudInit: &hypervisor.CloudInit{
			InstanceID: r.ID, Hostname: r.ID, UserData: r.UserData, SSHAuthorizedKeys: r.SSHAuthorizedKeys,
		},
	}
	if r.Boot != nil {
		s.Append = r.Boot.Append
	}
	if key, err := image.Key(imageSpec(r)); err == nil {
		s.ImageKey, s.GoldDir = key, m.cfg.Images.GoldDir(key)
	}
	return s
}

// goldSpec is spec with the gold disk the driver decided when gold was
// published, for the calls that open it (Clone, Start).
func (m *Manager) goldSpec(r *store.Record, gold *image.Gold) hypervisor.Spec {
	s := m.spec(r)
	s.GoldDir = gold.Dir
	if d := gold.Disk; d != nil {
		s.GoldDisk = hypervisor.GoldDisk{Path: d.Path, Format: d.Format, VirtualSize: d.VirtualSize, Source: d.Source}
	}
	return s
}

// Create validates req, stores a record in status "creating" and starts the
// creation in the background. It returns the new record at once.
func (m *Manager) Create(ctx context.Context, req api.CreateVMRequest) (*api.VM, error) {
	return m.CreateTagged(ctx, req, nil)
}

// CreateTagged is Create with tags of the daemon's own (keys starting
// with api.TagPrefixReserved, e.g. a group's) added to the request's. The
// tags are in the record from the moment it is stored, in one transaction:
// a VM never exists without them.
func (m *Manager) CreateTagged(ctx context.Context, req api.CreateVMRequest, system map[string]string) (*api.VM, error) {
	v, err := m.ValidateRequest(req)
	if err != nil {
		return nil, err
	}
	if ac, ok := m.cfg.Driver.(hypervisor.AvailabilityChecker); ok {
		if err := ac.CheckAvailable(ctx); err != nil {
			return nil, err
		}
	}
	if (v.Boot != nil || len(v.CDROMs) > 0) && m.cfg.Media == nil {
		return nil, errdefs.Newf(errdefs.ErrInvalid, api.CodeNotSupported, "the %s backend takes no boot media (boot, cdroms)", m.cfg.Driver.Name())
	}
	tags, err := withSystemTags(v.Tags, system)
	if err != nil {
		return nil, err
	}
	now := time.Now().UTC()
	id := store.NewID()
	r := &store.Record{
		VM: api.VM{
			ID: id, Status: api.StatusCreating, Phase: api.PhasePending, Backend: m.cfg.Driver.Name(),
			CPUs: v.CPUs, MemoryMiB: v.MemoryMiB, NetworkType: v.NetworkType, Image: v.Image,
			Headless: v.Headless, LaunchGUI: !v.Headless, CallbackURL: v.CallbackURL, ToolsInitTimeout: api.Duration(v.ToolsInitTimeout),
			SSHAuthorizedKeys: v.SSHKeys, CDROMs: v.CDROMs, Boot: v.Boot,
			CreatedAt: now, UpdatedAt: now, Tags: tags,
		},
		Dir:       filepath.Join(m.cfg.VMDir, id),
		UserData:  v.UserData,
		Requested: &v.Machine,
	}
	if r.CallbackURL != "" {
		r.Callback = &api.CallbackDelivery{State: api.CallbackPending}
	}
	if err := m.cfg.Store.Create(r); err != nil {
		if errors.Is(err, syscall.ENOSPC) {
			return nil, errdefs.New(errdefs.ErrUnavailable, "disk-full", "the data directory's disk is full; free space or delete VMs and images", err)
		}
		return nil, fmt.Errorf("store new VM: %w", err)
	}
	m.log.Info("vm accepted", "vm", id, "request", v.String())
	m.publish(api.ActionAccepted, r)
	m.spawn(m.creates, id, func(ctx context.Context) { m.runCreate(ctx, id) })
	return &r.VM, nil
}

// setPhase persists a phase change (and clears progress when it moves on).
func (m *Manager) setPhase(id string, p api.Phase) error {
	_, err := m.update(id, func(r *store.Record) error {
		if r.Status != api.StatusCreating {
			return fmt.Errorf("vm %s is %s, not creating", id, r.Status)
		}
		r.Phase = p
		if p != api.PhaseDownloading && p != api.PhaseVerifying && p != api.PhaseUnpacking {
			r.Progress = nil
		}
		return nil
	})
	return err
}

// runCreate is the creation pipeline of one VM. It ends with the record in
// "running" or "error", unless ctx ends first (shutdown or delete), in which
// case the record is left for Recover or Delete.
func (m *Manager) runCreate(ctx context.Context, id string) {
	log := m.log.With("vm", id)
	r, err := m.get(id)
	if err != nil {
		log.Error("create: record vanished", "err", err)
		return
	}
	info, err := m.create(ctx, r)
	if ctx.Err() != nil {
		m.capacity.release(id)
		log.Info("create interrupted; left for recovery or delete", "phase", r.Phase)
		return
	}
	if err != nil {
		m.capacity.release(id)
		code, msg := m.cfg.Redactor.CodeOf(err)
		log.Error("create failed", "code", code, "err", err)
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.cfg.DestroyTimeout)
		if derr := m.cfg.Driver.Destroy(dctx, m.spec(r)); derr != nil {
			log.Error("undo of failed create", "err", derr)
		}
		cancel()
		_, uerr := m.update(id, func(r *store.Record) error {
			r.Status, r.Phase, r.Progress = api.StatusError, "", nil
			r.Error = &api.Error{Code: code, Message: msg}
			return nil
		})
		if uerr != nil {
			log.Error("record failure", "err", uerr)
		}
	} else {
		_, uerr := m.update(id, func(r *store.Record) error {
			r.Status, r.Phase, r.Progress, r.Error = api.StatusRunning, "", nil, nil
			r.IPAddress, r.GuestOS, r.SSHAddress = info.IPAddress, info.GuestOS, info.SSHAddress
			r.GuestOSName = cmp.Or(info.GuestOSName, info.GuestOS)
			if info.IPSource != "" || info.GuestOSSource != "" {
				r.Sources = &api.Sources{IPAddress: info.IPSource, GuestOS: info.GuestOSSource}
			}
			return nil
		})
		if uerr != nil {
			log.Error("record success", "err", uerr)
			return
		}
		m.capacity.setRunning(id)
		log.Info("vm running", "ip", info.IPAddress, "guest_os", info.GuestOS, "ip_source", info.IPSource)
		m.startWatch(id)
		if info.GuestOS == "" {
			m.startProbe(id, time.Duration(r.ToolsInitTimeout))
		}
	}
	m.crashPoint(CrashCallback)
	m.deliverCallback(ctx, id)
}

// create runs the steps.
func (m *Manager) create(ctx context.Context, r *store.Record) (hypervisor.GuestInfo, error) {
	id := r.ID
	if err := m.setPhase(id, api.PhaseDownloading); err != nil {
		return hypervisor.GuestInfo{}, err
	}
	var lastWrite time.Time
	var lastPhase string
	progress := func(p image.Progress) {
		// Persist at most twice a second, and on every phase change.
		if p.Phase == lastPhase && time.Since(lastWrite) < 500*time.Millisecond {
			return
		}
		lastPhase, lastWrite = p.Phase, time.Now()
		switch {
		case p.Phase == image.PhaseUnpacking:
			defer m.crashPoint(CrashUnpacking)
		case p.BytesDone > 0:
			defer m.crashPoint(CrashDownloading)
		}
		m.update(id, func(r *store.Record) error {
			if r.Status != api.StatusCreating {
				return errors.New("not creating")
			}
			if p.Phase != "" {
				r.Phase = api.Phase(p.Phase)
			}
			r.Progress = &api.Progress{BytesDone: p.BytesDone, BytesTotal: p.BytesTotal}
			return nil
		})
	}
	gold, err := m.cfg.Images.Ensure(ctx, imageSpec(r), progress)
	if err != nil {
		return hypervisor.GuestInfo{}, err
	}
	m.cfg.Images.Touch(gold.Key)
	if r, err = m.resolveMachine(r, gold); err != nil {
		return hypervisor.GuestInfo{}, err
	}
	if r, err = m.fetchMedia(ctx, r); err != nil {
		return hypervisor.GuestInfo{}, err
	}
	if err := m.capacity.admit(ctx, id, resources(r), func() {
		m.setPhase(id, api.PhaseQueued)
		m.log.Info("vm queued for capacity", "vm", id, "capacity", m.capacity.String())
	}); err != nil {
		return hypervisor.GuestInfo{}, err
	}
	if err := m.setPhase(id, api.PhaseCloning); err != nil {
		return hypervisor.GuestInfo{}, err
	}
	spec := m.goldSpec(r, gold)
	if err := os.MkdirAll(spec.Dir, 0o700); err != nil {
		return hypervisor.GuestInfo{}, fmt.Errorf("create VM directory: %w", err)
	}
	if err := m.cfg.Driver.Clone(ctx, spec); err != nil {
		return hypervisor.GuestInfo{}, err
	}
	m.crashPoint(CrashCloned)
	if err := m.setPhase(id, api.PhaseBooting); err != nil {
		return hypervisor.GuestInfo{}, err
	}
	if err := m.cfg.Driver.Start(ctx, spec); err != nil {
		return hypervisor.GuestInfo{}, err
	}
	if vnc, ok := m.cfg.Driver.(hypervisor.VNCer); ok {
		m.update(id, func(r *store.Record) error { r.VNCSocket = vnc.VNCSocket(spec); return nil })
	}
	m.crashPoint(CrashBooting)
	if err := m.setPhase(id, api.PhaseDiscovering); err != nil {
		return hypervisor.GuestInfo{}, err
	}
	m.crashPoint(CrashDiscovering)
	dctx, cancel := context.WithTimeout(ctx, time.Duration(r.ToolsInitTimeout))
	defer cancel()
	info, err := m.cfg.Driver.Discover(dctx, spec)
	if err != nil && ctx.Err() == nil && dctx.Err() != nil {
		if code, _ := errdefs.CodeOf(err); code == "internal-error" {
			err = errdefs.New(errdefs.ErrUnavailable, "discovery-timeout",
				fmt.Sprintf("the guest did not report its address within tools_init_timeout (%s)", time.Duration(r.ToolsInitTimeout)), err)
		}
	}
	return info, err
}

// deliverCallback posts the record to callback_url, persisting each attempt.
func (m *Manager) deliverCallback(ctx context.Context, id string) {
	r, err := m.get(id)
	if err != nil || r.CallbackURL == "" || m.cfg.Callbacks == nil {
		return
	}
	if r.Callback != nil && r.Callback.State != api.CallbackPending {
		return
	}
	body := r.VM
	body.Callback = nil
	data, err := json.Marshal(body)
	if err != nil {
		m.log.Error("encode callback", "vm", id, "err", err)
		return
	}
	prior := api.CallbackDelivery{}
	if r.Callback != nil {
		prior = *r.Callback
	}
	d := m.cfg.Callbacks.Deliver(ctx, r.CallbackURL, data, prior, func(d api.CallbackDelivery) {
		m.update(id, func(r *store.Record) error {
			dd := d
			r.Callback = &dd
			return nil
		})
	})
	m.log.Info("callback", "vm", id, "state", d.State, "attempts", d.Attempts, "last_error", d.LastError)
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
		_, err = m.update(id, func(r *store.Record) error {
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
	_, err := m.update(id, func(r *store.Record) error {
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

// Get returns a VM record.
func (m *Manager) Get(ctx context.Context, id string) (*api.VM, error) {
	if !store.ValidID(id) {
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
func imageSpec(r *store.Record) image.Spec {
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
func ImageUsers(db *store.Store) func(key string) int {
	return func(key string) int {
		recs, err := db.List()
		if err != nil {
			return 1 << 30
		}
		return imageUsage(recs)[key]
	}
}

// imageUsage counts the records per gold image key (see ImageUsage).
func imageUsage(recs []*store.Record) map[string]int {
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

// Delete stops the VM, removes its files and its record. A creation under way
// is cancelled first. The record is marked "deleting" before anything is
// removed, so a daemon killed mid-delete finishes the job on restart.
func (m *Manager) Delete(ctx context.Context, id string) error {
	if !store.ValidID(id) {
		return errdefs.Newf(errdefs.ErrNotFound, "vm-not-found", "no VM with id %q", id)
	}
	unlock := m.lockID(id)
	defer unlock()
	var prev api.Status
	r, err := m.update(id, func(r *store.Record) error {
		prev = r.Status
		r.Status = api.StatusDeleting
		return nil
	})
	if err != nil {
		return err
	}
	m.log.Info("deleting vm", "vm", id, "was", prev)
	m.crashPoint(CrashDeleting)
	m.stop(m.creates, id)
	m.stop(m.watchers, id)
	m.stop(m.probes, id)
	if err := m.destroy(ctx, r); err != nil {
		// Keep the record, in its previous state, so the caller can retry.
		m.update(id, func(r *store.Record) error { r.Status = prev; return nil })
		if prev == api.StatusRunning {
			m.startWatch(id)
		}
		return err
	}
	return nil
}

func (m *Manager) destroy(ctx context.Context, r *store.Record) error {
	dctx, cancel := context.WithTimeout(ctx, m.cfg.DestroyTimeout)
	defer cancel()
	if err := m.cfg.Driver.Destroy(dctx, m.spec(r)); err != nil {
		return fmt.Errorf("destroy vm %s: %w", r.ID, err)
	}
	m.crashPoint(CrashDestroyed)
	if err := os.RemoveAll(r.Dir); err != nil {
		return fmt.Errorf("remove vm directory: %w", err)
	}
	if err := m.cfg.Store.Delete(r.ID); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
		return err
	}
	m.forget(r.ID)
	m.capacity.release(r.ID)
	m.log.Info("vm deleted", "vm", r.ID)
	if key, err := image.Key(imageSpec(r)); err == nil {
		if err := m.cfg.Images.Release(key, m.ImageUsers); err != nil {
			m.log.Error("release the vm's image", "vm", r.ID, "key", key, "err", err)
		}
	}
	m.publish(api.ActionDeleted, r)
	return nil
}

// Recover brings the records and the host back in line after a start:
// creations under way are cleaned and restarted, running VMs are reattached
// (or marked stopped), deletions are finished, pending callbacks are sent,
// and directories or processes that no record owns are removed.
func (m *Manager) Recover(ctx context.Context) error {
	recs, err := m.list()
	if err != nil {
		return err
	}
	known := map[string]bool{}
	for _, r := range recs {
		known[r.ID] = true
		log := m.log.With("vm", r.ID)
		spec := m.spec(r)
		switch r.Status {
		case api.StatusCreating:
			// Whatever was half made is removed; the pipeline starts again
			// (the image store keeps what it fully fetched).
			log.Info("recover: restarting interrupted creation", "phase", r.Phase)
			if err := m.cfg.Driver.Destroy(ctx, spec); err != nil {
				log.Error("recover: clean half-made vm", "err", err)
			}
			id := r.ID
			m.spawn(m.creates, id, func(ctx context.Context) { m.runCreate(ctx, id) })
			continue
		case api.StatusDeleting:
			log.Info("recover: finishing interrupted delete")
			if err := m.destroy(ctx, r); err != nil {
				log.Error("recover: delete", "err", err)
			}
			continue
		case api.StatusRunning, api.StatusStopped, api.StatusSuspended:
			st, err := m.cfg.Driver.State(ctx, spec)
			if err != nil {
				log.Error("recover: state", "err", err)
			}
			if r.Status == api.StatusSuspended && suspendEndsProcess(m.cfg.Driver) && st == hypervisor.StateStopped {
				continue // suspended to disk: no process until resumed
			}
			if st == hypervisor.StateRunning || st == hypervisor.StatePaused {
				m.capacity.hold(r.ID, resources(r), true)
				want := api.StatusRunning
				if r.Status == api.StatusSuspended && st == hypervisor.StatePaused {
					want = api.StatusSuspended
				}
				if r.Status != want {
					m.update(r.ID, func(r *store.Record) error { r.Status, r.StopReason = want, ""; return nil })
				}
				log.Info("recover: reattached to running vm")
				m.startWatch(r.ID)
				if r.GuestOS == "" {
					m.startProbe(r.ID, time.Duration(r.ToolsInitTimeout))
				}
			} else if r.Status == api.StatusRunning || r.Status == api.StatusSuspended {
				m.markStopped(r.ID, "machine was not running when the daemon restarted")
			}
		case api.StatusError:
			// The undo may have been cut short by a crash; Destroy is
			// idempotent, but costs subprocesses, so it runs only when the
			// failed VM's directory still holds something.
			if dirHasEntries(r.Dir) {
				if err := m.cfg.Driver.Destroy(ctx, spec); err != nil {
					log.Error("recover: clean failed vm", "err", err)
				}
			}
		}
		if r.Callback != nil && r.Callback.State == api.CallbackPending && r.Status.IsFinal() {
			id := r.ID
			// Tracked as the VM's creation task, as in runCreate, so a
			// delete cancels the delivery.
			m.spawn(m.creates, id, func(ctx context.Context) { m.deliverCallback(ctx, id) })
		}
	}
	// Strays: VM directories and hypervisor processes without a record.
	entries, err := os.ReadDir(m.cfg.VMDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("read vm directory: %w", err)
	}
	for _, e := range entries {
		if known[e.Name()] {
			continue
		}
		dir := filepath.Join(m.cfg.VMDir, e.Name())
		m.log.Warn("recover: removing stray vm directory", "dir", dir)
		if store.ValidID(e.Name()) {
			m.cfg.Driver.Destroy(ctx, hypervisor.Spec{ID: e.Name(), Dir: dir})
		}
		os.RemoveAll(dir)
	}
	if rp, ok := m.cfg.Driver.(hypervisor.Reaper); ok {
		if err := rp.Reap(ctx, func(id string) bool { return known[id] }); err != nil {
			m.log.Error("recover: reap strays", "err", err)
		}
	}
	return nil
}

// Console returns at most the last limit bytes of the VM's serial console
// (see hypervisor.ConsoleReader). A backend that keeps none answers
// errdefs.ErrInvalid with code "not-supported".
func (m *Manager) Console(ctx context.Context, id string, limit int64) ([]byte, error) {
	cr, ok := m.cfg.Driver.(hypervisor.ConsoleReader)
	if !ok {
		return nil, errdefs.Newf(errdefs.ErrInvalid, "not-supported", "the %s backend keeps no console output", m.cfg.Driver.Name())
	}
	r, err := m.get(id)
	if err != nil {
		return nil, err
	}
	out, err := cr.Console(ctx, m.spec(r), limit)
	if err != nil {
		return nil, fmt.Errorf("console: %w", err)
	}
	return out, nil
}

// Screenshot returns a PNG of the running VM's display (see
// hypervisor.Screenshotter). A backend that cannot take one answers
// errdefs.ErrInvalid with code "not-supported"; a VM that is not running,
// errdefs.ErrConflict with code "vm-not-running".
func (m *Manager) Screenshot(ctx context.Context, id string) ([]byte, error) {
	shot, ok := m.cfg.Driver.(hypervisor.Screenshotter)
	if !ok {
		return nil, errdefs.Newf(errdefs.ErrInvalid, "not-supported", "the %s backend cannot take screenshots", m.cfg.Driver.Name())
	}
	r, err := m.get(id)
	if err != nil {
		return nil, err
	}
	if r.Status != api.StatusRunning {
		return nil, errdefs.Newf(errdefs.ErrConflict, "vm-not-running", "VM %s is %s, not running", r.ID, r.Status)
	}
	png, err := shot.Screenshot(ctx, m.spec(r))
	if err != nil {
		return nil, fmt.Errorf("screenshot: %w", err)
	}
	return png, nil
}

// DialVNC connects to the running VM's VNC server (see hypervisor.VNCer).
// A backend without one answers errdefs.ErrInvalid with code
// "not-supported"; a VM that is not running, errdefs.ErrConflict with
// code "vm-not-running".
func (m *Manager) DialVNC(ctx context.Context, id string) (net.Conn, error) {
	vnc, ok := m.cfg.Driver.(hypervisor.VNCer)
	if !ok {
		return nil, errdefs.Newf(errdefs.ErrInvalid, "not-supported", "the %s backend has no VNC console", m.cfg.Driver.Name())
	}
	r, err := m.get(id)
	if err != nil {
		return nil, err
	}
	if r.Status != api.StatusRunning {
		return nil, errdefs.Newf(errdefs.ErrConflict, "vm-not-running", "VM %s is %s, not running", r.ID, r.Status)
	}
	return vnc.DialVNC(ctx, m.spec(r))
}

// dirHasEntries reports whether dir exists and is not empty.
func dirHasEntries(dir string) bool {
	f, err := os.Open(dir)
	if err != nil {
		return false
	}
	defer f.Close()
	names, _ := f.Readdirnames(1)
	return len(names) > 0
}

// resolveMachine merges the request's hardware over the image's
// machine.json and the host's defaults, checks it against the limits and
// records it (and the cpus and memory that follow from it) in the record.
// An image's definition that breaks a limit fails with image-bad-machine.
func (m *Manager) resolveMachine(r *store.Record, gold *image.Gold) (*store.Record, error) {
	lim := m.cfg.Limits.withDefaults()
	var req, img api.Machine
	if r.Requested != nil {
		req = *r.Requested
	} else {
		// A record from before machine definitions: its cpus and memory
		// were the request's.
		req.Threads, req.Cores, req.Sockets = lim.machineLimits().Topology(r.CPUs)
		req.MemoryMiB = r.MemoryMiB
	}
	if gold.Machine != nil {
		img = *gold.Machine
	}
	hw, err := lim.machineLimits().Resolve(machine.Merge(req, img))
	if err == nil && hw.MemoryMiB < lim.MinMemoryMiB {
		err = errdefs.Newf(errdefs.ErrInvalid, api.CodeInvalidRequest, "memory %d MiB is less than the minimum of %d MiB", hw.MemoryMiB, lim.MinMemoryMiB)
	}
	if err != nil {
		if gold.Machine != nil {
			return r, machine.ImageError(err)
		}
		return r, err
	}
	return m.update(r.ID, func(r *store.Record) error {
		r.Machine = &hw
		r.CPUs, r.MemoryMiB = hw.CPUs(), hw.MemoryMiB
		return nil
	})
}

// fetchMedia fetches the VM's boot media into the media store (once per
// checksum, verified, kept as they are) and records their paths.
func (m *Manager) fetchMedia(ctx context.Context, r *store.Record) (*store.Record, error) {
	if r.Boot == nil && len(r.CDROMs) == 0 {
		return r, nil
	}
	fetch := func(img api.Image) (string, error) {
		g, err := m.cfg.Media.Ensure(ctx, image.Spec{URL: img.URL, Checksum: img.Checksum, ChecksumType: img.ChecksumType}, func(image.Progress) {})
		if err != nil {
			return "", err
		}
		m.cfg.Media.Touch(g.Key)
		return filepath.Join(g.Dir, image.MediaFile), nil
	}
	var kernel, initrd string
	var cdroms []string
	var err error
	if r.Boot != nil {
		if kernel, err = fetch(r.Boot.Kernel); err != nil {
			return r, fmt.Errorf("boot.kernel: %w", err)
		}
		if r.Boot.Initrd != nil {
			if initrd, err = fetch(*r.Boot.Initrd); err != nil {
				return r, fmt.Errorf("boot.initrd: %w", err)
			}
		}
	}
	for i, c := range r.CDROMs {
		path, err := fetch(c)
		if err != nil {
			return r, fmt.Errorf("cdroms[%d]: %w", i, err)
		}
		cdroms = append(cdroms, path)
	}
	return m.update(r.ID, func(r *store.Record) error {
		r.KernelPath, r.InitrdPath, r.CDROMPaths = kernel, initrd, cdroms
		return nil
	})
}
