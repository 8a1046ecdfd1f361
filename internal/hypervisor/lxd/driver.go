// Package lxd is the LXD backend of goldvm: a hypervisor.Driver that
// drives LXD (5.0, Debian 12's) over its REST API with net/http, on the
// local unix socket or, for a remote LXD or cluster, https with a client
// certificate.
//
// Each goldvm VM is an LXD instance named goldvm-<id> in one project
// (default "goldvm", made when missing), of type container or
// virtual-machine, carrying its VM id in user.goldvm.id and its gold
// image's key in user.goldvm.image; LXD keeps every other state, so the
// VM's directory stays empty and a restarted daemon finds its instances
// by name. The gold image, fetched and verified by goldvm's image store
// as for any backend, is imported into LXD once (the first Clone of that
// key) as a unified tarball aliased goldvm/<key>, and removed again by
// ForgetImage when goldvm deletes or evicts the image.
package lxd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/cloudinit"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/hypervisor"
)

// Instance types (--lxd-instance-type).
const (
	TypeContainer = "container"
	TypeVM        = "virtual-machine"
)

// Instance settings goldvm keeps on every instance it makes.
const (
	keyID    = "user.goldvm.id"
	keyImage = "user.goldvm.image"
	// the user-data LXD gives the instance's cloud-init (its devlxd API
	// for containers, its config drive for VMs).
	keyUserData = "cloud-init.user-data"
	// prefix of every instance name: goldvm-<id>.
	namePrefix = "goldvm-"
)

// Config configures the driver.
type Config struct {
	// URL is "" for the local unix socket (Debian's, else the snap's),
	// "unix:///path/unix.socket", or "https://host:8443".
	URL string
	// CertFile and KeyFile are the client certificate LXD trusts (https).
	CertFile, KeyFile string
	// ServerCertFile is the server's certificate (https), when a CA the
	// host trusts did not sign it.
	ServerCertFile string
	// Project is the LXD project of goldvm's instances and images,
	// created when missing (default "goldvm").
	Project string
	// InstanceType is TypeVM (the default) or TypeContainer.
	InstanceType string
	// Profiles are the profiles of every instance (default: "default",
	// which gives it its root disk and network).
	Profiles []string
	// StopTimeout is how long Destroy and Stop wait for a clean shutdown
	// before they stop the instance by force (default 10s).
	StopTimeout time.Duration
	// PollInterval is how often Discover and Watch ask LXD for the
	// instance's state (default 500ms).
	PollInterval time.Duration
	// Logger receives the driver's logs (default slog.Default()).
	Logger *slog.Logger
}

// Driver is the LXD backend.
type Driver struct {
	cfg Config
	c   *client
	log *slog.Logger

	mu         sync.Mutex
	imageLocks map[string]keyLock

	// server is what GET /1.0 last said (at New, and at every
	// CheckAvailable, i.e. before every create).
	server atomic.Pointer[serverInfo]
}

// serverInfo is the part of GET /1.0 the driver reads.
type serverInfo struct {
	Environment struct {
		ServerName      string `json:"server_name"`
		ServerClustered bool   `json:"server_clustered"`
	} `json:"environment"`
}

// The driver's capabilities.
var (
	_ hypervisor.Driver         = (*Driver)(nil)
	_ hypervisor.Watcher        = (*Driver)(nil)
	_ hypervisor.ConsoleReader  = (*Driver)(nil)
	_ hypervisor.Reaper         = (*Driver)(nil)
	_ hypervisor.NetworkChecker = (*Driver)(nil)
	_ hypervisor.Stopper        = (*Driver)(nil)
	_ hypervisor.Suspender      = (*Driver)(nil)
	_ hypervisor.ImageForgetter = (*Driver)(nil)

	_ hypervisor.AvailabilityChecker = (*Driver)(nil)
	_ hypervisor.Placer              = (*Driver)(nil)
)

var projectPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$`)

// New checks cfg, connects to LXD and makes the project when it is
// missing. An LXD that does not answer is errdefs.ErrUnavailable, code
// backend-unavailable.
func New(ctx context.Context, cfg Config) (*Driver, error) {
	if cfg.Project == "" {
		cfg.Project = "goldvm"
	}
	if !projectPattern.MatchString(cfg.Project) {
		return nil, errdefs.Newf(errdefs.ErrInvalid, api.CodeInvalidLXDSetting, "--lxd-project %q is not a usable project name", cfg.Project)
	}
	switch cfg.InstanceType {
	case "":
		cfg.InstanceType = TypeVM
	case TypeVM, TypeContainer:
	default:
		return nil, errdefs.Newf(errdefs.ErrInvalid, api.CodeInvalidLXDSetting, "--lxd-instance-type %q: use %s or %s", cfg.InstanceType, TypeVM, TypeContainer)
	}
	if len(cfg.Profiles) == 0 {
		cfg.Profiles = []string{"default"}
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = 10 * time.Second
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = 500 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	c, err := newClient(cfg.URL, cfg.CertFile, cfg.KeyFile, cfg.ServerCertFile, cfg.Project)
	if err != nil {
		return nil, err
	}
	d := &Driver{cfg: cfg, c: c, log: cfg.Logger.With("backend", "lxd"), imageLocks: map[string]keyLock{}}
	if err := d.readServer(ctx); err != nil {
		return nil, err
	}
	if err := d.ensureProject(ctx); err != nil {
		return nil, err
	}
	return d, nil
}

// ensureProject makes the project when it is missing: images of its own
// (features.images), the default project's profiles (features.profiles
// off, so that instances get the root disk and network LXD's init gave
// the default profile).
func (d *Driver) ensureProject(ctx context.Context) error {
	err := d.c.do(ctx, http.MethodGet, "/1.0/projects/"+d.cfg.Project, nil, nil)
	if !isStatus(err, http.StatusNotFound) {
		return err
	}
	err = d.c.do(ctx, http.MethodPost, "/1.0/projects", map[string]any{
		"name":        d.cfg.Project,
		"description": "goldvm's instances and gold images",
		"config": map[string]string{
			"features.images":          "true",
			"features.profiles":        "false",
			"features.storage.volumes": "false",
		},
	}, nil)
	if isStatus(err, http.StatusConflict) {
		return nil
	}
	if err == nil {
		d.log.Info("created LXD project", "project", d.cfg.Project)
	}
	return err
}

// CheckAvailable asks LXD for its server information (GET /1.0), within
// 5 seconds: an LXD that does not answer is backend-unavailable.
func (d *Driver) CheckAvailable(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err := d.readServer(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		return errdefs.New(errdefs.ErrUnavailable, api.CodeBackendUnavailable, "LXD at "+d.c.where+" did not answer in time", err)
	}
	return err
}

// readServer asks LXD for its server information (GET /1.0) and keeps it.
func (d *Driver) readServer(ctx context.Context) error {
	var si serverInfo
	if err := d.c.do(ctx, http.MethodGet, "/1.0", nil, &si); err != nil {
		return err
	}
	d.server.Store(&si)
	return nil
}

// CheckPlacement accepts a placement when LXD is a cluster (as it was at
// the last CheckAvailable). A standalone LXD refuses every ?target=, its
// own name's included ("Target only allowed when clustered", LXD 5.0), so
// placement is refused there, before anything is made. Whether the member
// or group exists is LXD's to say when the instance is created.
func (d *Driver) CheckPlacement(p api.Placement) error {
	if si := d.server.Load(); si == nil || !si.Environment.ServerClustered {
		name := ""
		if si != nil {
			name = si.Environment.ServerName
		}
		return errdefs.Newf(errdefs.ErrInvalid, api.CodePlacementUnsupported,
			"placement %q: LXD at %s (server %q) is not clustered, and a standalone LXD takes no target; leave placement out", p.String(), d.c.where, name)
	}
	return nil
}

// Name returns "lxd".
func (d *Driver) Name() string { return "lxd" }

// InstanceType returns the type of the instances the driver makes.
func (d *Driver) InstanceType() string { return d.cfg.InstanceType }

var idPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,48}[a-z0-9]$`)

// instanceName is the LXD name of spec's VM, goldvm-<id>; ids LXD cannot
// take as a host name are refused.
func instanceName(spec hypervisor.Spec) (string, error) {
	id := strings.ToLower(spec.ID)
	if !idPattern.MatchString(id) || id != spec.ID {
		return "", errdefs.Newf(errdefs.ErrInvalid, api.CodeInvalidVMID, "VM id %q is not usable as an LXD instance name", spec.ID)
	}
	return namePrefix + id, nil
}

// instance is the part of LXD's instance object the driver reads.
type instance struct {
	Name     string            `json:"name"`
	Status   string            `json:"status"`
	Type     string            `json:"type"`
	Location string            `json:"location"`
	Config   map[string]string `json:"config"`
}

// instanceState is the part of LXD's instance state the driver reads.
type instanceState struct {
	Status  string `json:"status"`
	Network map[string]struct {
		Type      string `json:"type"`
		Addresses []struct {
			Family  string `json:"family"`
			Address string `json:"address"`
			Scope   string `json:"scope"`
		} `json:"addresses"`
	} `json:"network"`
}

// Clone creates the instance from the gold image (imported first when LXD
// does not have it yet), with spec's CPUs and memory as its limits and its
// user-data, ssh_authorized_keys folded in, as cloud-init.user-data. LXD
// clones the image on its storage pool (see the README for which pools
// copy and which share blocks). An instance of the same VM left by an
// interrupted Clone is taken as it is.
func (d *Driver) Clone(ctx context.Context, spec hypervisor.Spec) error {
	name, err := instanceName(spec)
	if err != nil {
		return err
	}
	if err := d.SupportsNetwork(spec.Network); err != nil {
		return err
	}
	if spec.CPUs <= 0 || spec.MemoryMiB <= 0 {
		return errdefs.Newf(errdefs.ErrInvalid, api.CodeInvalidSize, "a VM needs CPUs and memory (got %d CPUs, %d MiB)", spec.CPUs, spec.MemoryMiB)
	}
	if err := d.ensureImage(ctx, spec); err != nil {
		return err
	}
	config := map[string]string{
		keyID:           spec.ID,
		keyImage:        spec.ImageKey,
		"limits.cpu":    strconv.Itoa(spec.CPUs),
		"limits.memory": strconv.FormatInt(spec.MemoryMiB, 10) + "MiB",
	}
	if ci := spec.CloudInit; ci != nil {
		if ud := cloudinit.UserData(cloudinit.Config{CloudInit: *ci}); ud != "" {
			config[keyUserData] = ud
		}
	}
	if d.cfg.InstanceType == TypeVM {
		// Gold images are not signed for UEFI Secure Boot.
		config["security.secureboot"] = "false"
	}
	path := "/1.0/instances"
	if spec.Placement != nil {
		path += "?target=" + url.QueryEscape(spec.Placement.String())
	}
	err = d.c.do(ctx, http.MethodPost, path, map[string]any{
		"name":     name,
		"type":     d.cfg.InstanceType,
		"profiles": d.cfg.Profiles,
		"config":   config,
		"source":   map[string]string{"type": "image", "alias": imageAlias(spec.ImageKey)},
	}, nil)
	if isStatus(err, http.StatusConflict) {
		in, gerr := d.get(ctx, name)
		if gerr == nil && in.Config[keyID] == spec.ID {
			return nil
		}
	}
	if err != nil {
		return errdefs.New(errdefs.ErrUnavailable, api.CodeCloneFailed, "creating LXD instance "+name, err)
	}
	return nil
}

// get returns the instance name.
func (d *Driver) get(ctx context.Context, name string) (*instance, error) {
	var in instance
	if err := d.c.do(ctx, http.MethodGet, "/1.0/instances/"+name, nil, &in); err != nil {
		return nil, err
	}
	return &in, nil
}

// instances lists every instance of the project.
func (d *Driver) instances(ctx context.Context) ([]instance, error) {
	var ins []instance
	err := d.c.do(ctx, http.MethodGet, "/1.0/instances?recursion=1", nil, &ins)
	return ins, err
}

// setState asks LXD to start, stop, freeze or unfreeze the instance and
// waits for it.
func (d *Driver) setState(ctx context.Context, name, action string, timeout time.Duration, force bool) error {
	body := map[string]any{"action": action, "force": force}
	if timeout > 0 {
		body["timeout"] = int(timeout.Seconds())
	}
	return d.c.do(ctx, http.MethodPut, "/1.0/instances/"+name+"/state", body, nil)
}

// state returns the instance's state; ok is false when there is no such
// instance.
func (d *Driver) state(ctx context.Context, name string) (st *instanceState, ok bool, err error) {
	st = &instanceState{}
	err = d.c.do(ctx, http.MethodGet, "/1.0/instances/"+name+"/state", nil, st)
	if isStatus(err, http.StatusNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	return st, true, nil
}

// lookup returns spec's instance name and state; ok is false when there
// is no such instance.
func (d *Driver) lookup(ctx context.Context, spec hypervisor.Spec) (name string, st *instanceState, ok bool, err error) {
	if name, err = instanceName(spec); err != nil {
		return "", nil, false, err
	}
	st, ok, err = d.state(ctx, name)
	return name, st, ok, err
}

// Start starts the instance and returns once LXD says it runs.
func (d *Driver) Start(ctx context.Context, spec hypervisor.Spec) error {
	name, st, ok, err := d.lookup(ctx, spec)
	if err != nil {
		return err
	}
	if !ok {
		return errdefs.Newf(errdefs.ErrConflict, api.CodeVMNotCloned, "LXD has no instance %s to start", name)
	}
	switch st.Status {
	case "Running":
		return nil
	case "Frozen":
		return d.setState(ctx, name, "unfreeze", 0, false)
	}
	return d.setState(ctx, name, "start", 0, false)
}

// Discover waits until LXD reports an IPv4 address (global scope) on one
// of the instance's interfaces, and takes the guest OS from the image's
// properties (image.description, else image.os and image.release), which
// LXD copies into the instance: no guest agent needed.
func (d *Driver) Discover(ctx context.Context, spec hypervisor.Spec) (hypervisor.GuestInfo, error) {
	name, err := instanceName(spec)
	if err != nil {
		return hypervisor.GuestInfo{}, err
	}
	in, err := d.get(ctx, name)
	if err != nil {
		return hypervisor.GuestInfo{}, err
	}
	info := hypervisor.GuestInfo{GuestOS: guestOS(in.Config), Location: memberOf(in)}
	for {
		st, ok, err := d.state(ctx, name)
		if err != nil {
			if ctx.Err() != nil {
				return info, discoveryTimeout(name, ctx.Err())
			}
			return info, err
		}
		if !ok || st.Status == "Stopped" {
			return info, errdefs.New(errdefs.ErrConflict, api.CodeVMNotRunning, "LXD instance "+name+" stopped while booting", hypervisor.ErrNotRunning)
		}
		if ip := ipv4(st); ip != "" {
			info.IPAddress = ip
			return info, nil
		}
		if err := sleepCtx(ctx, d.cfg.PollInterval); err != nil {
			return info, discoveryTimeout(name, err)
		}
	}
}

func discoveryTimeout(name string, err error) error {
	return errdefs.New(errdefs.ErrUnavailable, api.CodeDiscoveryTimeout, "LXD instance "+name+" reported no IPv4 address in time", err)
}

// memberOf is the cluster member in runs on, "" on a standalone LXD
// (whose instances' location is "none").
func memberOf(in *instance) string {
	if in.Location == "none" {
		return ""
	}
	return in.Location
}

// guestOS names the guest's OS from the instance's image.* settings.
func guestOS(config map[string]string) string {
	if v := config["image.description"]; v != "" {
		return v
	}
	osName := config["image.os"]
	if osName == "" {
		return "unknown"
	}
	if r := config["image.release"]; r != "" {
		return osName + " " + r
	}
	return osName
}

// ipv4 returns the first global IPv4 address of a non-loopback interface.
func ipv4(st *instanceState) string {
	names := make([]string, 0, len(st.Network))
	for n := range st.Network {
		names = append(names, n)
	}
	slices.Sort(names) // eth0 before eth1
	for _, n := range names {
		nw := st.Network[n]
		if nw.Type == "loopback" || n == "lo" {
			continue
		}
		for _, a := range nw.Addresses {
			if a.Family == "inet" && a.Scope == "global" && net.ParseIP(a.Address) != nil {
				return a.Address
			}
		}
	}
	return ""
}

// State maps LXD's status: Running, Frozen (paused), anything else, or no
// instance at all, or an instance whose cluster member is offline,
// stopped.
func (d *Driver) State(ctx context.Context, spec hypervisor.Spec) (hypervisor.State, error) {
	name, st, ok, err := d.lookup(ctx, spec)
	if (err != nil && name != "") || (ok && st.Status == "Error") {
		if d.memberDown(ctx, name) != "" {
			return hypervisor.StateStopped, nil
		}
	}
	if err != nil {
		return "", err
	}
	if !ok {
		return hypervisor.StateStopped, nil
	}
	switch st.Status {
	case "Running":
		return hypervisor.StateRunning, nil
	case "Frozen":
		return hypervisor.StatePaused, nil
	}
	return hypervisor.StateStopped, nil
}

// Destroy stops the instance (cleanly, then by force after StopTimeout)
// and deletes it. No instance is no error.
func (d *Driver) Destroy(ctx context.Context, spec hypervisor.Spec) error {
	name, err := instanceName(spec)
	if err != nil {
		return err
	}
	if err := d.Stop(ctx, spec); err != nil {
		return err
	}
	// LXD refuses the delete while an operation of its own (the stop
	// after a failed start, say) still holds the instance.
	for try := 0; ; try++ {
		err = d.c.do(ctx, http.MethodDelete, "/1.0/instances/"+name, nil, nil)
		if !isBusy(err) || try == 60 || sleepCtx(ctx, d.cfg.PollInterval) != nil {
			break
		}
	}
	if err != nil && !isStatus(err, http.StatusNotFound) {
		return errdefs.New(errdefs.ErrConflict, api.CodeVMCleanupFailed, "deleting LXD instance "+name, err)
	}
	return nil
}

// isBusy reports whether LXD refused a request because another operation
// holds the instance.
func isBusy(err error) bool {
	var ae *apiError
	return errors.As(err, &ae) && strings.Contains(ae.Message, "is busy running")
}

// sleepCtx waits for d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// Stop shuts the instance down and keeps it: a clean shutdown (SIGPWR to
// a container's init, the ACPI button of a VM) for StopTimeout, then by
// force. A stopped or missing instance is no error.
func (d *Driver) Stop(ctx context.Context, spec hypervisor.Spec) error {
	name, st, ok, err := d.lookup(ctx, spec)
	if err != nil || !ok || st.Status == "Stopped" {
		return err
	}
	if st.Status == "Frozen" {
		// A frozen instance cannot shut down cleanly.
		return d.setState(ctx, name, "stop", 0, true)
	}
	if err := d.setState(ctx, name, "stop", d.cfg.StopTimeout, false); err == nil {
		return nil
	} else if ctx.Err() != nil {
		return err
	} else {
		d.log.Info("LXD instance did not stop cleanly; stopping it by force", "instance", name, "err", err)
	}
	err = d.setState(ctx, name, "stop", 0, true)
	if err != nil && isStatus(err, http.StatusBadRequest) {
		// "The instance is already stopped": it stopped meanwhile.
		if st, ok, serr := d.state(ctx, name); serr == nil && (!ok || st.Status == "Stopped") {
			return nil
		}
	}
	if err != nil {
		return errdefs.New(errdefs.ErrUnavailable, api.CodeVMStopFailed, "stopping LXD instance "+name, err)
	}
	return nil
}

// Suspend freezes the instance (its processes stop where they are).
func (d *Driver) Suspend(ctx context.Context, spec hypervisor.Spec) error {
	return d.freeze(ctx, spec, "freeze", "Running")
}

// Resume unfreezes a frozen instance.
func (d *Driver) Resume(ctx context.Context, spec hypervisor.Spec) error {
	return d.freeze(ctx, spec, "unfreeze", "Frozen")
}

func (d *Driver) freeze(ctx context.Context, spec hypervisor.Spec, action, from string) error {
	name, st, ok, err := d.lookup(ctx, spec)
	if err != nil {
		return err
	}
	if !ok || st.Status != from {
		return fmt.Errorf("LXD instance %s: %w", name, hypervisor.ErrNotRunning)
	}
	return d.setState(ctx, name, action, 0, false)
}

// SuspendEndsProcess is false: a frozen instance keeps its processes.
func (d *Driver) SuspendEndsProcess() bool { return false }

// Watch polls the instance's state every PollInterval until it is no
// longer running or frozen, or gone, or LXD cannot answer for it because
// its cluster member is offline (see memberDown: the reason names the
// member; a group then replaces the VM).
func (d *Driver) Watch(ctx context.Context, spec hypervisor.Spec) (string, error) {
	name, err := instanceName(spec)
	if err != nil {
		return "", err
	}
	for {
		st, ok, err := d.state(ctx, name)
		if ctx.Err() == nil && (err != nil || (ok && st.Status == "Error")) {
			if reason := d.memberDown(ctx, name); reason != "" {
				return reason, nil
			}
		}
		switch {
		case ctx.Err() != nil:
			return "", ctx.Err()
		case err != nil:
			// LXD restarting: keep watching.
			d.log.Debug("watch: LXD state", "instance", name, "err", err)
		case !ok:
			return "instance deleted", nil
		case st.Status != "Running" && st.Status != "Frozen":
			return "instance " + strings.ToLower(st.Status), nil
		}
		if err := sleepCtx(ctx, d.cfg.PollInterval); err != nil {
			return "", err
		}
	}
}

// Console returns the end of the instance's console log as LXD keeps it
// (GET /1.0/instances/<name>/console); nothing when it has none.
func (d *Driver) Console(ctx context.Context, spec hypervisor.Spec, limit int64) ([]byte, error) {
	name, err := instanceName(spec)
	if err != nil {
		return nil, err
	}
	b, err := d.c.text(ctx, "/1.0/instances/"+name+"/console", limit)
	if isStatus(err, http.StatusNotFound) {
		return nil, nil
	}
	return b, err
}

// Reap deletes the project's instances that carry a goldvm id no record
// has (strays of a crash), and goldvm-* instances without an id. Those on
// an offline cluster member are left: LXD lists them without their
// settings, so whose they are cannot be told (and they cannot be deleted).
func (d *Driver) Reap(ctx context.Context, known func(id string) bool) error {
	ins, err := d.instances(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, in := range ins {
		id, ok := in.Config[keyID]
		if !strings.HasPrefix(in.Name, namePrefix) || (ok && known(id)) || unreachable(in) {
			continue
		}
		if id == "" {
			id = strings.TrimPrefix(in.Name, namePrefix)
		}
		d.log.Warn("removing stray LXD instance", "instance", in.Name, "id", id)
		if err := d.Destroy(ctx, hypervisor.Spec{ID: id}); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// SupportsNetwork accepts nat, the network of the instances' profile (on
// LXD's managed bridge: reachable from the host, NAT to the outside).
func (d *Driver) SupportsNetwork(networkType string) error {
	if networkType == api.NetworkNAT || networkType == "" {
		return nil
	}
	return errdefs.Newf(errdefs.ErrInvalid, api.CodeInvalidNetworkType, "the lxd backend gives instances the network of their profile: network_type %q is not supported, use nat", networkType)
}
