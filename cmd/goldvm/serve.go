package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/callback"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/group"
	"github.com/goldvm/goldvm/internal/hypervisor"
	"github.com/goldvm/goldvm/internal/hypervisor/qemu"
	"github.com/goldvm/goldvm/internal/hypervisor/vmware"
	"github.com/goldvm/goldvm/internal/image"
	"github.com/goldvm/goldvm/internal/machine"
	"github.com/goldvm/goldvm/internal/metadata"
	"github.com/goldvm/goldvm/internal/netpolicy"
	"github.com/goldvm/goldvm/internal/records"
	"github.com/goldvm/goldvm/internal/server"
	"github.com/goldvm/goldvm/internal/vm"
)

// defaultDataDir is /var/lib/goldvm for root, else a per-user directory.
func defaultDataDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/goldvm"
	}
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "goldvm")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "share", "goldvm")
	}
	return filepath.Join(os.TempDir(), "goldvm")
}

func envInt(key string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(key)); err == nil {
		return v
	}
	return def
}

func runServe(args []string) error { return serve(args, nil) }

// serve runs the daemon as args, the environment and the configuration
// file say; with show, it prints that configuration instead (goldvm config
// print). Errors about a setting from the file or the environment say so.
func serve(args []string, show *configShow) (err error) {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	listen := fs.String("listen", envOr("GOLDVM_LISTEN", "127.0.0.1:12345"), "address to listen on ($GOLDVM_LISTEN)")
	dataDir := fs.String("data-dir", envOr("GOLDVM_DATA_DIR", defaultDataDir()), "where images, VMs and the database live ($GOLDVM_DATA_DIR)")
	token := fs.String("token", os.Getenv("GOLDVM_TOKEN"), "bearer token clients must send, at least 16 bytes; required when not listening on loopback ($GOLDVM_TOKEN)")
	backend := fs.String("backend", envOr("GOLDVM_BACKEND", "qemu"), "hypervisor backend: qemu, vmware or lxd ($GOLDVM_BACKEND)")
	accel := fs.String("accel", envOr("GOLDVM_ACCEL", "auto"), "QEMU acceleration: auto, kvm or tcg ($GOLDVM_ACCEL)")
	bridge := fs.String("bridge", os.Getenv("GOLDVM_BRIDGE"), "host bridge for network_type=bridged ($GOLDVM_BRIDGE)")
	vmrun := fs.String("vmrun", os.Getenv("VMRUN_PATH"), "path of vmrun for the vmware backend ($VMRUN_PATH)")
	maxCPUs := fs.Int("max-cpus", envInt("GOLDVM_MAX_CPUS", 64), "most vCPUs one VM may have ($GOLDVM_MAX_CPUS)")
	maxMemory := fs.String("max-memory", envOr("GOLDVM_MAX_MEMORY", ""), "most memory one VM may have, IEC (e.g. 16gib)")
	defaultMemory := fs.String("default-memory", envOr("GOLDVM_DEFAULT_MEMORY", ""), "memory of a VM whose request and image do not say, IEC (default 1gib, at most --max-memory) ($GOLDVM_DEFAULT_MEMORY)")
	defaultThreads := fs.Int("default-threads", envInt("GOLDVM_DEFAULT_THREADS", 1), "threads per core of the CPU topology goldvm makes up for a number of vCPUs, and the vCPUs of a VM whose request and image do not say; 2 suits hosts with hyperthreading ($GOLDVM_DEFAULT_THREADS)")
	capCPUs := fs.Int("capacity-cpus", envInt("GOLDVM_CAPACITY_CPUS", 0), "vCPUs all VMs together may have (default: host CPUs × --cpu-overcommit) ($GOLDVM_CAPACITY_CPUS)")
	capMemory := fs.String("capacity-memory", envOr("GOLDVM_CAPACITY_MEMORY", ""), "memory all VMs together may have, IEC (default: host memory × --memory-overcommit) ($GOLDVM_CAPACITY_MEMORY)")
	cpuOver := fs.Float64("cpu-overcommit", 8, "vCPUs per host CPU when --capacity-cpus is not given")
	memOver := fs.Float64("memory-overcommit", 1, "guest memory per byte of host memory when --capacity-memory is not given")
	queueTimeout := fs.Duration("queue-timeout", envDuration("GOLDVM_QUEUE_TIMEOUT", vm.DefaultQueueTimeout), "how long a VM waits for capacity before it fails with insufficient-capacity ($GOLDVM_QUEUE_TIMEOUT)")
	maxImage := fs.String("max-image-size", envOr("GOLDVM_MAX_IMAGE_SIZE", "64gib"), "largest unpacked image accepted, IEC")
	imageBudget := fs.String("image-budget", os.Getenv("GOLDVM_IMAGE_BUDGET"), "disk space gold images may take, IEC (e.g. 200gib); least recently used unused images are evicted beyond it ($GOLDVM_IMAGE_BUDGET)")
	imageMaxIdle := fs.Duration("image-max-idle", envDuration("GOLDVM_IMAGE_MAX_IDLE", 0), "evict unused images not used for this long, e.g. 168h; 0 keeps them ($GOLDVM_IMAGE_MAX_IDLE)")
	stallTimeout := fs.Duration("image-stall-timeout", envDuration("GOLDVM_IMAGE_STALL_TIMEOUT", time.Minute), "fail (and retry) an image download when no byte arrives for this long")
	imageRetries := fs.Int("image-retries", envInt("GOLDVM_IMAGE_RETRIES", 5), "retries of a failed image download (network errors, stalls, 5xx)")
	imageBackoff := fs.Duration("image-retry-backoff", envDuration("GOLDVM_IMAGE_RETRY_BACKOFF", time.Second), "wait before the first image download retry; doubles each time")
	cbAttempts := fs.Int("callback-attempts", envInt("GOLDVM_CALLBACK_ATTEMPTS", 8), "how many times a callback is tried before it is recorded as failed")
	cbBackoff := fs.Duration("callback-backoff", envDuration("GOLDVM_CALLBACK_BACKOFF", time.Second), "wait after the first failed callback; doubles each time, up to a minute")
	agentWait := fs.Duration("agent-wait", envDuration("GOLDVM_AGENT_WAIT", qemu.DefaultAgentWait), "qemu: once a guest's address is known, wait this long for its guest agent's OS name before reporting it running with its image's OS (or none)")
	warmTemplates := fs.Int("warm-templates", envInt("GOLDVM_WARM_TEMPLATES", 0), "qemu: make the warm-start template of an image and hardware after this many of its VMs booted cold (then later ones start from it); 0 makes templates only on request (POST /images/{key}/templates) ($GOLDVM_WARM_TEMPLATES)")
	cbTimeout := fs.Duration("callback-timeout", envDuration("GOLDVM_CALLBACK_TIMEOUT", 10*time.Second), "timeout of one callback attempt")
	urlAllow := fs.String("url-allow", os.Getenv("GOLDVM_URL_ALLOW"), "networks (CIDR, comma-separated) image downloads and callbacks may connect to; empty: any not denied ($GOLDVM_URL_ALLOW)")
	urlDeny := fs.String("url-deny", os.Getenv("GOLDVM_URL_DENY"), "more networks (CIDR, comma-separated) image downloads and callbacks may not connect to; link-local ("+netpolicy.DefaultDeny+"), where clouds serve instance credentials, is always denied ($GOLDVM_URL_DENY)")
	qemuUser := fs.String("qemu-user", os.Getenv("GOLDVM_QEMU_USER"), "as root, run every QEMU as this user (e.g. a system user goldvm-qemu), which owns each VM's directory, disk and tap; \"root\" runs QEMU as root (not recommended) ($GOLDVM_QEMU_USER)")
	qemuUIDs := fs.String("qemu-uid-range", os.Getenv("GOLDVM_QEMU_UID_RANGE"), "as root, run each VM's QEMU as a user id of its own from FIRST-LAST, ids no account or process uses (checked at start): one VM's QEMU cannot reach another's disk; the default when neither this nor --qemu-user is given is "+qemu.DefaultUIDRange+" ($GOLDVM_QEMU_UID_RANGE)")
	maxGroupSize := fs.Int("max-group-size", envInt("GOLDVM_MAX_GROUP_SIZE", 100), "largest size a group may ask for ($GOLDVM_MAX_GROUP_SIZE)")
	maxGroupWarm := fs.Int("max-group-warm", envInt("GOLDVM_MAX_GROUP_WARM", group.DefaultMaxWarm), "largest warm pool a group may ask for ($GOLDVM_MAX_GROUP_WARM)")
	groupRetry := fs.Duration("group-retry-backoff", envDuration("GOLDVM_GROUP_RETRY_BACKOFF", 2*time.Second), "wait after a group's first failed creation; doubles with each failure in a row, up to 5m")
	logLevel := fs.String("log-level", envOr("GOLDVM_LOG_LEVEL", "info"), "debug, info, warn or error")
	logFormat := fs.String("log-format", envOr("GOLDVM_LOG_FORMAT", ""), "text or json; default text on a terminal, json otherwise ($GOLDVM_LOG_FORMAT)")
	lxdOpts := addLXDFlags(fs)
	cfg, err := loadConfig(fs, args, show)
	if err != nil {
		return err
	}
	defer func() { err = cfg.explain(err) }()
	if err := checkSettings(fs); err != nil {
		return err
	}
	if show != nil {
		return show.print(cfg)
	}

	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log, err := newLogger(os.Stderr, *logFormat, level)
	if err != nil {
		return err
	}
	slog.SetDefault(log)

	if err := checkListen(*listen, *token); err != nil {
		return err
	}
	if err := server.CheckToken(*token); err != nil {
		return fmt.Errorf("--token/$GOLDVM_TOKEN: %w", err)
	}
	limits := vm.Limits{MaxCPUs: *maxCPUs}
	if *maxMemory != "" {
		n, err := api.ParseIEC(*maxMemory)
		if err != nil {
			return fmt.Errorf("--max-memory: %w", err)
		}
		limits.MaxMemoryMiB = n >> 20
	}
	if *defaultMemory != "" {
		n, err := api.ParseIEC(*defaultMemory)
		if err != nil {
			return fmt.Errorf("--default-memory: %w", err)
		}
		limits.DefaultMemoryMiB = n >> 20
	}
	if *defaultThreads < 1 || *defaultThreads > machine.MaxTopology {
		return fmt.Errorf("--default-threads %d: give 1 to %d", *defaultThreads, machine.MaxTopology)
	}
	limits.DefaultThreads = *defaultThreads
	capacity, err := hostCapacity(*capCPUs, *capMemory, *cpuOver, *memOver)
	if err != nil {
		return err
	}
	netPolicy, err := netpolicy.Parse(*urlAllow, *urlDeny)
	if err != nil {
		return fmt.Errorf("--url-allow/--url-deny: %w", err)
	}
	maxImageBytes, err := api.ParseIEC(*maxImage)
	if err != nil {
		return fmt.Errorf("--max-image-size: %w", err)
	}

	// Absolute from here on: QEMU runs in each VM's directory, and messages
	// name files by these paths.
	if *dataDir, err = filepath.Abs(*dataDir); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	if err := os.MkdirAll(*dataDir, 0o700); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	db, err := records.Open(filepath.Join(*dataDir, "goldvm.db"))
	if err != nil {
		return err
	}
	defer db.Close()
	var driver hypervisor.Driver
	// qemuDriver keeps warm-start templates beside the images (nil on the
	// other backends).
	var qemuDriver *qemu.Driver
	// The metadata service answers each VM with its own record, read
	// through the manager (made below, before any VM is served).
	var mgr *vm.Manager
	mdService := metadata.New(func(ctx context.Context, id string) (any, error) { return mgr.Get(ctx, id) }, log)
	defer mdService.Close()
	crash := crashPoint(log)
	switch *backend {
	case "qemu":
		if err := chooseQEMUUser(qemuUser, qemuUIDs, log); err != nil {
			return err
		}
		d, err := qemu.New(qemu.Config{
			Accel: *accel, RunDir: filepath.Join(*dataDir, "run"), VMRoot: filepath.Join(*dataDir, "vms"),
			BridgedBridge: *bridge, Sandbox: true, AgentWait: *agentWait, Metadata: mdService, RunAs: *qemuUser, RunAsRange: *qemuUIDs, Logger: log,
			TemplateDir: filepath.Join(*dataDir, "templates"), CrashPoint: crash,
		})
		if err != nil {
			return fmt.Errorf("qemu backend: %w", err)
		}
		if d.RunsQEMUUnprivileged() {
			if err := openForQEMU(*dataDir); err != nil {
				return fmt.Errorf("QEMU as an unprivileged user: %w", err)
			}
			log.Info("QEMU runs as an unprivileged user", "user", *qemuUser, "uid_range", *qemuUIDs)
		} else if os.Geteuid() == 0 {
			// The bridges' dnsmasq, which runs as nobody, reads the
			// address reservations of VMs started from a template under
			// run/: the data directory must be searchable (not listable).
			if fi, err := os.Stat(*dataDir); err == nil && fi.Mode().Perm()&0o001 == 0 {
				if err := makeSearchable(*dataDir); err != nil {
					return fmt.Errorf("data directory: %w", err)
				}
			}
		}
		defer d.Close()
		driver, qemuDriver = d, d
		limits.MinMemoryMiB = 80 // measured: smaller guests die while the kernel unpacks
	case "vmware":
		d, err := vmware.New(vmware.Config{VmrunPath: *vmrun, StateDir: filepath.Join(*dataDir, "vmware"), Logger: log})
		if err != nil {
			return fmt.Errorf("vmware backend: %w", err)
		}
		driver = d
	case "lxd":
		d, err := newLXD(lxdOpts, log)
		if err != nil {
			return fmt.Errorf("lxd backend: %w", err)
		}
		driver = d
	default:
		return fmt.Errorf("--backend %q: use qemu, vmware or lxd", *backend)
	}

	bus, mets := newObservability()
	forgetDriverImages(bus, driver, log)
	imageOpts := image.Options{
		MaxImageBytes: maxImageBytes, Logger: log, HTTPClient: &http.Client{Transport: netPolicy.Transport()},
		StallTimeout: *stallTimeout, Retries: none(*imageRetries), RetryBackoff: noneDur(*imageBackoff),
		InUse: vm.ImageUsers(db), Events: bus, Counters: mets,
	}
	if gp, ok := driver.(hypervisor.GoldPreparer); ok {
		// The driver decides each image's disk, and its format, before the
		// image is published.
		imageOpts.PrepareDisk = func(ctx context.Context, files, scratch string) (image.Disk, error) {
			g, err := gp.PrepareGold(ctx, files, scratch)
			return image.Disk{Path: g.Path, Format: g.Format, VirtualSize: g.VirtualSize, Source: g.Source, GuestOS: g.GuestOS}, err
		}
	}
	if qemuDriver != nil {
		// An image's templates go with it.
		imageOpts.Removed = func(key string) {
			if err := qemuDriver.DropTemplates(key); err != nil {
				log.Error("remove the templates of a removed image", "image", key, "err", err)
			}
		}
	}
	images, err := image.NewStore(filepath.Join(*dataDir, "images"), imageOpts)
	if err != nil {
		return fmt.Errorf("image store: %w", err)
	}
	if qemuDriver != nil {
		keep := func(key string) bool {
			_, err := os.Stat(filepath.Join(images.Dir(), key))
			return err == nil
		}
		if err := qemuDriver.PruneTemplates(keep); err != nil {
			log.Error("prune templates", "err", err)
		}
	}
	// Closed after the manager (defers run last-in first-out): fetches under
	// way then stop cleanly and keep their partial bytes for the next start.
	defer images.Close()
	// Boot media (kernels, initrds, CD-ROMs): fetched and verified like
	// images, kept as they are. QEMU only.
	var media vm.ImageStore
	if driver.Name() == "qemu" {
		mediaOpts := imageOpts
		mediaOpts.PrepareDisk, mediaOpts.Verbatim, mediaOpts.Removed = nil, true, nil
		ms, err := image.NewStore(filepath.Join(*dataDir, "media"), mediaOpts)
		if err != nil {
			return fmt.Errorf("media store: %w", err)
		}
		defer ms.Close()
		media = ms
	}
	// Resumes the pre-fetches a restart interrupted; closed before the
	// store, so that they stop as a shutdown and resume at the next start.
	prefetcher, err := image.NewPrefetcher(images, image.PrefetchOptions{Logger: log})
	if err != nil {
		return fmt.Errorf("image pre-fetches: %w", err)
	}
	defer prefetcher.Close()

	// API clients see "$GOLDVM_DATA_DIR/…" instead of where the data lives
	// (messages name files by the absolute paths goldvm uses).
	redactor := errdefs.NewRedactor(map[string]string{*dataDir: "$GOLDVM_DATA_DIR"})
	mgr = vm.New(vm.Config{
		VMDir: filepath.Join(*dataDir, "vms"), Store: db, Images: images, Media: media, Driver: driver,
		Callbacks: callback.New(callback.Options{MaxAttempts: *cbAttempts, Backoff: noneDur(*cbBackoff), Timeout: *cbTimeout, Transport: netPolicy.Transport()}), Limits: limits, Logger: log,
		CrashPoint: crash, Redactor: redactor, Events: bus, Capacity: capacity, QueueTimeout: *queueTimeout,
		WarmTemplatesAfter: *warmTemplates,
	})
	collectState(mets, mgr, images)
	defer mgr.Close()
	if err := os.MkdirAll(filepath.Join(*dataDir, "vms"), 0o700); err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	err = mgr.Recover(rctx)
	cancel()
	if err != nil {
		return fmt.Errorf("recover: %w", err)
	}

	policy := image.EvictPolicy{MaxIdle: *imageMaxIdle}
	if *imageBudget != "" {
		if policy.MaxBytes, err = budgetBytes(*imageBudget); err != nil {
			return fmt.Errorf("--image-budget: %w", err)
		}
	}
	stopEvict := startEviction(images, policy, mgr.ImageUsers, log)
	defer stopEvict()

	groups := group.New(group.Config{Store: db, VMs: mgr, MaxSize: *maxGroupSize, MaxWarm: *maxGroupWarm, RetryBase: *groupRetry, Events: bus, Logger: log})
	collectGroups(mets, groups)
	gctx, stopGroups := context.WithCancel(context.Background())
	groupsDone := make(chan struct{})
	go func() { defer close(groupsDone); groups.Run(gctx) }()
	defer func() { stopGroups(); <-groupsDone }()

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if qemuDriver != nil && qemuDriver.UsesUserNet() {
		// Guests on user-mode networking reach the host's loopback, and so
		// this API, through their gateway: their connections are refused.
		ln = &guestRefusingListener{Listener: ln, fromGuest: qemuDriver.FromGuest, log: log}
	}
	handler := server.New(server.Config{VMs: mgr, Groups: groups, Images: images, Prefetcher: prefetcher, Token: *token, Redactor: redactor, Logger: log, Events: bus, Metrics: mets})
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       time.Minute,
		IdleTimeout:       2 * time.Minute,
	}
	srv.RegisterOnShutdown(handler.StopStreams)
	configFile := cfg.file
	if !cfg.fileRead {
		configFile = "" // the default file, absent
	}
	log.Info("goldvm serving", "listen", ln.Addr().String(), "data_dir", *dataDir, "backend", driver.Name(), "version", buildVersion().String(), "config", configFile)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down; VMs keep running and are reattached at next start")
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// checkListen refuses to listen beyond loopback without a token.
func checkListen(addr, token string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--listen %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	if token == "" {
		return fmt.Errorf("--listen %s is not a loopback address: set a bearer token with --token or GOLDVM_TOKEN", addr)
	}
	return nil
}

// crashPoint returns the crash hook for tests: with GOLDVM_CRASH_AT=<point>
// the daemon SIGKILLs itself the first time it reaches that point, as a
// power cut or OOM kill would. Unset in normal use.
func crashPoint(log *slog.Logger) func(string) {
	at := os.Getenv("GOLDVM_CRASH_AT")
	if at == "" {
		return nil
	}
	log.Warn("crash testing: the daemon will kill itself", "at", at)
	return func(point string) {
		if point == at {
			log.Warn("crash testing: killing the daemon", "at", point)
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {} // never returns
		}
	}
}

func envDuration(key string, def time.Duration) time.Duration {
	if v, err := time.ParseDuration(os.Getenv(key)); err == nil {
		return v
	}
	return def
}

// startEviction applies the image eviction policy now and every minute
// until the returned function is called. Images any VM depends on are never
// evicted (inUse counts them).
func startEviction(images *image.Store, policy image.EvictPolicy, inUse func(string) int, log *slog.Logger) func() {
	if policy.MaxBytes == 0 && policy.MaxIdle == 0 {
		return func() {}
	}
	log.Info("image eviction on", "budget_bytes", policy.MaxBytes, "max_idle", policy.MaxIdle)
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(time.Minute)
		defer t.Stop()
		for {
			if _, err := images.Evict(policy, inUse); err != nil {
				log.Error("image eviction", "err", err)
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() { close(done); <-stopped }
}

// openForQEMU lets an unprivileged QEMU reach the VMs' directories and the
// gold images under dataDir: every directory above them must be
// searchable (x) by others, which it checks for dataDir's parents and
// grants for dataDir, its vms and images directories and each image's
// directory (their contents stay unlistable and, but for the read-only
// gold images, unreadable). dataDir is absolute.
func openForQEMU(dataDir string) error {
	for dir := filepath.Dir(dataDir); ; dir = filepath.Dir(dir) {
		fi, err := os.Stat(dir)
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("QEMU, which runs as an unprivileged user, cannot reach %s: %s is not searchable by other users (chmod o+x %s, choose another --data-dir, or run QEMU as root with --qemu-user root)", dataDir, dir, dir)
		}
		if dir == filepath.Dir(dir) {
			break
		}
	}
	dirs := []string{dataDir, filepath.Join(dataDir, "vms")}
	// Gold images and boot media (kernels, initrds, CD-ROMs).
	for _, store := range []string{"images", "media"} {
		dirs = append(dirs, filepath.Join(dataDir, store))
		keys, err := os.ReadDir(filepath.Join(dataDir, store))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		for _, k := range keys {
			if k.IsDir() && !strings.HasPrefix(k.Name(), ".") {
				dirs = append(dirs, filepath.Join(dataDir, store, k.Name()))
			}
		}
	}
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
		// Searchable, not listable: QEMU opens the paths it is given.
		if err := makeSearchable(d); err != nil {
			return err
		}
	}
	return nil
}

// makeSearchable lets others search dir (o+x, g+x) but not list it.
func makeSearchable(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	return os.Chmod(dir, fi.Mode().Perm()&^0o044|0o011)
}

// chooseQEMUUser settles who QEMU runs as when the daemon is root: by
// default each VM's QEMU gets a user id of its own from
// qemu.DefaultUIDRange, checked to be unused; "--qemu-user root" is the
// explicit opt-in to root-run QEMU.
func chooseQEMUUser(user, uidRange *string, log *slog.Logger) error {
	if os.Geteuid() != 0 {
		return nil
	}
	switch {
	case *user == "root" || *user == "0":
		log.Warn("QEMU runs as root (--qemu-user root): a guest that escapes QEMU owns the host")
		*user = ""
	case *user == "" && *uidRange == "":
		if err := qemu.CheckUIDRangeFree(qemu.DefaultUIDRange); err != nil {
			return fmt.Errorf("QEMU runs under user ids of its own by default, but %w: give --qemu-uid-range FIRST-LAST with ids no one uses, or --qemu-user USER", err)
		}
		*uidRange = qemu.DefaultUIDRange
	case *uidRange != "":
		if err := qemu.CheckUIDRangeFree(*uidRange); err != nil {
			return fmt.Errorf("--qemu-uid-range: %w", err)
		}
	}
	return nil
}

// guestRefusingListener closes, as it accepts them, the connections that
// fromGuest says a VM's QEMU opened for its guest (user-mode networking
// maps the guest's gateway to the host's loopback).
type guestRefusingListener struct {
	net.Listener
	fromGuest func(peer, local netip.AddrPort) bool
	log       *slog.Logger
}

// Accept returns the next connection that is not a guest's.
func (l *guestRefusingListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return c, err
		}
		peer, ok1 := c.RemoteAddr().(*net.TCPAddr)
		local, ok2 := c.LocalAddr().(*net.TCPAddr)
		if ok1 && ok2 && peer.IP.IsLoopback() && l.fromGuest(peer.AddrPort(), local.AddrPort()) {
			l.log.Warn("refused an API connection from a guest (user-mode networking reaches the host's loopback)", "peer", peer.String())
			c.Close()
			continue
		}
		return c, nil
	}
}
