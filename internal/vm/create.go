package vm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/hypervisor"
	"github.com/goldvm/goldvm/internal/image"
	"github.com/goldvm/goldvm/internal/machine"
	"github.com/goldvm/goldvm/internal/records"
)

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
	return m.CreateWith(ctx, req, CreateOptions{SystemTags: system})
}

// CreateOptions are what the daemon adds to a create request of its own.
type CreateOptions struct {
	// SystemTags are tags of the daemon's own (see CreateTagged).
	SystemTags map[string]string
	// FromGroup, when set, is stored as the record's from_group.
	FromGroup *api.HandOut
	// NoCallback creates the VM without the request's callback_url (a
	// group's warm VM, which is nobody's until handed out).
	NoCallback bool
}

// CreateWith is Create with the daemon's own additions.
func (m *Manager) CreateWith(ctx context.Context, req api.CreateVMRequest, opts CreateOptions) (*api.VM, error) {
	if opts.NoCallback {
		req.CallbackURL = ""
	}
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
	tags, err := withSystemTags(v.Tags, opts.SystemTags)
	if err != nil {
		return nil, err
	}
	now := time.Now().UTC()
	id := records.NewID()
	r := &records.Record{
		VM: api.VM{
			ID: id, Status: api.StatusCreating, Phase: api.PhasePending, Backend: m.cfg.Driver.Name(),
			CPUs: v.CPUs, MemoryMiB: v.MemoryMiB, NetworkType: v.NetworkType, Image: v.Image,
			Headless: v.Headless, LaunchGUI: !v.Headless, CallbackURL: v.CallbackURL, ToolsInitTimeout: api.Duration(v.ToolsInitTimeout),
			SSHAuthorizedKeys: v.SSHKeys, CDROMs: v.CDROMs, Boot: v.Boot, Peers: v.Peers, Placement: v.Placement,
			CreatedAt: now, UpdatedAt: now, Tags: tags, FromGroup: opts.FromGroup,
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
	_, err := m.update(id, func(r *records.Record) error {
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
		_, uerr := m.update(id, func(r *records.Record) error {
			r.Status, r.Phase, r.Progress = api.StatusError, "", nil
			r.Error = &api.Error{Code: code, Message: msg}
			return nil
		})
		if uerr != nil {
			log.Error("record failure", "err", uerr)
		}
	} else {
		done, uerr := m.update(id, func(r *records.Record) error {
			r.Status, r.Phase, r.Progress, r.Error = api.StatusRunning, "", nil, nil
			setDiscovered(r, info)
			return nil
		})
		if uerr != nil {
			log.Error("record success", "err", uerr)
			return
		}
		m.capacity.setRunning(id)
		log.Info("vm running", "ip", info.IPAddress, "guest_os", info.GuestOS, "ip_source", info.IPSource)
		m.startWatch(id)
		if info.GuestOSSource != api.SourceGuestAgent {
			m.startProbe(id, time.Duration(r.ToolsInitTimeout))
		}
		m.noteColdBoot(done)
	}
	m.crashPoint(CrashCallback)
	m.deliverCallback(ctx, id)
}

// create runs the steps.
func (m *Manager) create(ctx context.Context, r *records.Record) (hypervisor.GuestInfo, error) {
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
		m.update(id, func(r *records.Record) error {
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
	gold, err := m.ensureImage(ctx, r, progress)
	if err != nil {
		return hypervisor.GuestInfo{}, err
	}
	if gold.Key != "" {
		m.cfg.Images.Touch(gold.Key)
	}
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
	warm := false
	if spec.EmptyDisk == 0 { // no template is made of an empty disk
		if warm, err = m.warmStart(ctx, r, spec); err != nil {
			return hypervisor.GuestInfo{}, err
		}
	}
	if !warm {
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
		m.startedFrom(r)
	}
	if vnc, ok := m.cfg.Driver.(hypervisor.VNCer); ok {
		m.update(id, func(r *records.Record) error { r.VNCSocket = vnc.VNCSocket(spec); return nil })
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
		m.update(id, func(r *records.Record) error {
			dd := d
			r.Callback = &dd
			return nil
		})
	})
	m.log.Info("callback", "vm", id, "state", d.State, "attempts", d.Attempts, "last_error", d.LastError)
}

// resolveMachine merges the request's hardware over the image's
// machine.json and the host's defaults, checks it against the limits and
// records it (and the cpus and memory that follow from it) in the record.
// An image's definition that breaks a limit fails with image-bad-machine.
func (m *Manager) resolveMachine(r *records.Record, gold *image.Gold) (*records.Record, error) {
	lim := m.cfg.Limits.withDefaults()
	var req api.Machine
	if r.Requested != nil {
		req = *r.Requested
	} else {
		// A record from before machine definitions: its cpus and memory
		// were the request's.
		req.Threads, req.Cores, req.Sockets = lim.machineLimits().Topology(r.CPUs)
		req.MemoryMiB = r.MemoryMiB
	}
	hw, err := m.machineFor(req, gold)
	if err != nil {
		return r, err
	}
	// A MAC given by the request or the image's machine.json is one VM's
	// at a time: two VMs with one MAC would share a DHCP address and each
	// other's traffic on the bridge. The check and the record's update
	// happen under one lock, so two creations cannot both take it.
	m.macMu.Lock()
	defer m.macMu.Unlock()
	if hw.MAC != "" {
		if other, err := m.macOwner(r.ID, hw.MAC); err != nil {
			return r, err
		} else if other != "" {
			return r, errdefs.Newf(errdefs.ErrConflict, api.CodeMACInUse,
				"the MAC %s of this VM's machine definition is VM %s's: give the request a machine.mac of its own", hw.MAC, other)
		}
	}
	return m.update(r.ID, func(r *records.Record) error {
		r.Machine = &hw
		r.CPUs, r.MemoryMiB = hw.CPUs(), hw.MemoryMiB
		return nil
	})
}

// macOwner returns the id of another VM than id whose machine has mac ("":
// none). VMs whose creation failed hold no MAC.
func (m *Manager) macOwner(id, mac string) (string, error) {
	recs, err := m.list()
	if err != nil {
		return "", err
	}
	for _, o := range recs {
		if o.ID != id && o.Status != api.StatusError && o.Machine != nil && strings.EqualFold(o.Machine.MAC, mac) {
			return o.ID, nil
		}
	}
	return "", nil
}

// machineFor merges the requested hardware over the image's machine.json
// and the host's defaults and checks it against the limits.
func (m *Manager) machineFor(req api.Machine, gold *image.Gold) (api.Machine, error) {
	lim := m.cfg.Limits.withDefaults()
	var img api.Machine
	if gold.Machine != nil {
		img = *gold.Machine
	}
	hw, err := lim.machineLimits().Resolve(machine.Merge(req, img))
	if err == nil && req.MAC == "" {
		// The request's own is checked with it.
		err = machine.CheckMAC(hw.MAC, "mac")
	}
	if err == nil && hw.MemoryMiB < lim.MinMemoryMiB {
		err = errdefs.Newf(errdefs.ErrInvalid, api.CodeInvalidRequest, "memory %d MiB is less than the minimum of %d MiB", hw.MemoryMiB, lim.MinMemoryMiB)
	}
	if err != nil && gold.Machine != nil {
		return hw, machine.ImageError(err)
	}
	return hw, err
}

// fetchMedia fetches the VM's boot media into the media store (once per
// checksum, verified, kept as they are) and records their paths.
func (m *Manager) fetchMedia(ctx context.Context, r *records.Record) (*records.Record, error) {
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
	return m.update(r.ID, func(r *records.Record) error {
		r.KernelPath, r.InitrdPath, r.CDROMPaths = kernel, initrd, cdroms
		return nil
	})
}
