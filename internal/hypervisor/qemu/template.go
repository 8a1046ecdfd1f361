package qemu

// Warm start: templates of a booted guest, and VMs started from them.
//
// A template is made once per (gold disk, shape): a VM is booted with its
// RAM in a file (memory-backend-file, share=on), goldvm waits until the
// guest agent answers and the guest has an address, pauses it and saves its
// device state over an fd: migration URI with x-ignore-shared (the RAM stays
// in the file; the state is about a megabyte). Its overlay becomes the
// frozen disk layer. A template directory, owned by this driver, holds
//
//	layer.qcow2     the frozen disk layer (backing: the gold disk)
//	ram.bin         the guest's RAM
//	state.bin       the device state
//	stream.bin      the full state stream, RAM included (see below)
//	template.json   what it was made for; written last, so a directory
//	                without it is not a template
//
// and is published by renaming a temporary directory into place:
// <root>/<image key>/<shape key>/. A VM started from it gets a new overlay
// on the frozen layer, the RAM file mapped privately (share=off: pages are
// shared through the page cache until the guest writes them), the state
// loaded over an fd: URI (an exec: URI dies under spawn=deny), cont, and then
// a new identity: its own MAC and an address goldvm reserved for it on the
// bridge's DHCP server (or a new DHCP lease), the host's clock, its hostname
// and fresh entropy (plus a VMGenID device). identityScript applies it in
// the guest: a copy of it that the template's preparation left waiting on
// a virtio-serial port of its own (the identity port) when the guest has
// one, else run through the guest agent.
//
// QEMU 7.2 opens a memory-backend-file read-write even for a private
// mapping, so a QEMU that runs under a user id of its own per VM (a root
// daemon's default) must not be given the RAM file: every VM's QEMU could
// then change the memory of every later VM. Such a VM maps a sealed memfd
// copy of the RAM file instead (memfd.go). Where none can be made it starts
// from stream.bin: the same saved state migrated once more without
// x-ignore-shared, so it holds the RAM too (see saveStream). It is root's,
// mode 0644; the daemon opens it and passes QEMU the descriptor
// (read-only), and QEMU loads it into anonymous memory (memory-backend-ram
// with the same id): each VM then has its own copy of the guest's RAM.
//
// A template is only valid for the QEMU binary, accelerator, pinned machine
// type, CPUs, memory, network kind and device layout it was made with; all
// of them go into its shape key.

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/hypervisor"
)

// Files of a template directory.
const (
	fileTplLayer  = "layer.qcow2"
	fileTplRAM    = "ram.bin"
	fileTplState  = "state.bin"
	fileTplStream = "stream.bin"
	fileTplMeta   = "template.json"
)

// CrashRestoring is the point of a warm start at which Config.CrashPoint
// is called: the VM's overlay exists and its QEMU runs, waiting for the
// template's state, which is not loaded yet.
const CrashRestoring = "restoring"

// templateDiscoverTimeout bounds how long MakeTemplate waits for the
// template guest's address and agent.
const templateDiscoverTimeout = 5 * time.Minute

// templateAgentWait is how long MakeTemplate waits for the template
// guest's agent once Discover has given up on it.
const templateAgentWait = 30 * time.Second

// templateLayout is the version of the device layout a template's state
// was saved with; a change to buildArgs that moves devices must bump it.
//
// 2: the identity port (org.goldvm.identity.0) after the VMGenID device.
const templateLayout = 2

// TemplateShape is the machine a template is made for. A VM starts from a
// template only when its own shape is exactly this.
type TemplateShape struct {
	// CPUs and MemoryMiB are the VM's size.
	CPUs      int   `json:"cpus"`
	MemoryMiB int64 `json:"memory_mib"`
	// Network is the api network type (nat, hostonly, bridged).
	Network string `json:"network"`
	// Machine is a pinned machine type such as "pc-q35-7.2" (not an alias
	// like "q35", whose meaning changes with the QEMU version).
	Machine string `json:"machine"`
	// Hardware is the VM's resolved hardware (nil: the driver's
	// defaults); its chipset is Machine. Hardware with a UUID or MAC of
	// its own, or UEFI firmware, has no template.
	Hardware *api.Machine `json:"hardware,omitempty"`
	// Seed is whether the VM has a cloud-init seed CD-ROM (with an
	// instance id and hostname only: user-data and SSH keys are not
	// carried into a running guest).
	Seed bool `json:"seed,omitempty"`
}

// normalized returns the shape with Hardware's chipset pinned, or an error
// when the hardware cannot be templated.
func (s TemplateShape) normalized() (TemplateShape, error) {
	if s.Hardware == nil {
		return s, nil
	}
	hw := *s.Hardware
	if hw.UUID != "" || hw.MAC != "" || hw.Firmware == "uefi" {
		return s, fmt.Errorf("hardware with its own UUID or MAC, or UEFI firmware, has no template: %w", errdefs.ErrInvalid)
	}
	hw.Chipset = s.Machine
	s.Hardware = &hw
	return s, nil
}

var pinnedMachineRe = regexp.MustCompile(`^pc-(q35|i440fx)-[0-9]+\.[0-9]+$`)

// Template is a published template.
type Template struct {
	// Dir is the template's directory.
	Dir string `json:"-"`
	// Key identifies the shape on this host (QEMU version, accelerator,
	// network kind and layout included).
	Key string `json:"key"`
	// ImageKey is the gold image's store key.
	ImageKey string `json:"image_key"`
	// Shape is what the template was made for.
	Shape TemplateShape `json:"shape"`
	// GoldPath and GoldFormat are the gold disk below the frozen layer.
	GoldPath   string `json:"gold_path"`
	GoldFormat string `json:"gold_format"`
	// QEMUVersion and Accel are the emulator and accelerator it ran on.
	QEMUVersion string `json:"qemu_version"`
	Accel       string `json:"accel"`
	// MAC is the template guest's MAC, which every restore starts with.
	MAC string `json:"mac"`
	// Interface is the guest's network interface with MAC, and Prepared
	// whether the guest's DHCP clients were stopped and its addresses
	// removed before the save (their command lines kept in the guest, see
	// identityScript), which a restore then need not do. GuestOS is the
	// OS its agent named. All three are empty in templates of older
	// goldvm versions.
	Interface string `json:"interface,omitempty"`
	Prepared  bool   `json:"prepared,omitempty"`
	GuestOS   string `json:"guest_os,omitempty"`
	// Resident is whether a copy of identityScript waits in the saved
	// guest on its identity port (see identityScript), which a restore
	// then gives the VM's identity to instead of the agent.
	Resident bool `json:"resident,omitempty"`
	// Stream is whether the template has a full state stream (RAM
	// included), which VMs under per-VM user ids start from.
	Stream bool `json:"stream,omitempty"`
	// Created is when it was published.
	Created time.Time `json:"created"`
	// SizeBytes is the disk space of its files.
	SizeBytes int64 `json:"size_bytes"`
}

// warmOpts are a template's additions to a VM's QEMU arguments (zero: a
// plain boot).
type warmOpts struct {
	machine  string   // pinned machine type
	frozen   string   // frozen disk layer below the overlay
	memPath  string   // RAM file
	memShare bool     // RAM file shared (making a template) or private
	memRAM   bool     // anonymous RAM instead of the file (full stream restore)
	memFile  *os.File // the RAM as a sealed memfd, given to QEMU as a descriptor (see memfd.go)
	incoming bool     // wait for the state (-incoming defer)
}

func (w warmOpts) set() bool { return w.memPath != "" || w.memRAM || w.memFile != nil }

func (w warmOpts) apply(lp *launchParams) {
	if !w.set() {
		return
	}
	if lp.HW.Chipset != "" {
		lp.HW.Chipset = w.machine
	}
	lp.Machine, lp.Frozen, lp.MemPath, lp.MemShare, lp.MemRAM, lp.Incoming = w.machine, w.frozen, w.memPath, w.memShare, w.memRAM, w.incoming
}

// extraArgs are devices appended after buildArgs' (the same for the template
// and its restores: the device state must find the same devices).
func (w warmOpts) extraArgs(dir string) []string {
	if !w.set() {
		return nil
	}
	return []string{
		// A new generation id at every restore: guests reseed their RNG.
		"-device", "vmgenid,id=vmgenid0,guid=auto",
		// The port a resident copy of identityScript waits on.
		"-chardev", "socket,id=ident0,path=" + optEscape(sockArg(dir, fileIdentity)) + ",server=on,wait=off",
		"-device", "virtserialport,bus=vser0.0,chardev=ident0,name=" + identityPortName,
	}
}

// identityPortName is the name of the virtio-serial port of VMs with a
// template, on which the template guest's resident identityScript waits.
const identityPortName = "org.goldvm.identity.0"

var (
	qemuVersionMu sync.Mutex
	qemuVersions  = map[string]string{}
	// qemuMachines is each QEMU binary's `-machine help`, asked once: a
	// QEMU process costs tens of milliseconds of every create otherwise.
	qemuMachines = map[string]string{}
)

// qemuVersion is the first line of `qemu-system-x86_64 --version`.
func (d *Driver) qemuVersion() (string, error) {
	qemuVersionMu.Lock()
	defer qemuVersionMu.Unlock()
	if v, ok := qemuVersions[d.cfg.QemuBinary]; ok {
		return v, nil
	}
	out, err := exec.Command(d.cfg.QemuBinary, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("%s --version: %w", d.cfg.QemuBinary, err)
	}
	v := strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	qemuVersions[d.cfg.QemuBinary] = v
	return v, nil
}

// TemplateKey returns the key of a template of gold for shape on this
// driver: a hash of everything a saved state depends on.
func (d *Driver) TemplateKey(gold hypervisor.GoldDisk, shape TemplateShape) (string, error) {
	if shape.CPUs <= 0 || shape.MemoryMiB <= 0 {
		return "", fmt.Errorf("template shape: %d CPUs, %d MiB: %w", shape.CPUs, shape.MemoryMiB, errdefs.ErrInvalid)
	}
	if !pinnedMachineRe.MatchString(shape.Machine) {
		return "", fmt.Errorf("template shape: machine type %q is not pinned (want e.g. pc-q35-7.2): %w", shape.Machine, errdefs.ErrInvalid)
	}
	shape, err := shape.normalized()
	if err != nil {
		return "", err
	}
	np, err := d.plan(hypervisor.Spec{Network: shape.Network})
	if err != nil {
		return "", err
	}
	ver, err := d.qemuVersion()
	if err != nil {
		return "", err
	}
	b, _ := json.Marshal(map[string]any{
		"shape": shape, "gold": gold.Path, "format": gold.Format, "qemu": ver, "accel": d.accel.Args,
		"user_net": np.User, "sandbox": d.cfg.Sandbox, "layout": templateLayout,
	})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16]), nil
}

// templateDir is where the template of imageKey with key lives.
func templateDir(root, imageKey, key string) string { return filepath.Join(root, imageKey, key) }

// LoadTemplate returns the complete template of imageKey with key under
// root; errdefs.ErrNotFound when there is none.
func LoadTemplate(root, imageKey, key string) (Template, error) {
	dir := templateDir(root, imageKey, key)
	b, err := os.ReadFile(p(dir, fileTplMeta))
	if err != nil {
		return Template{}, fmt.Errorf("template %s/%s: %w (%w)", imageKey, key, errdefs.ErrNotFound, err)
	}
	var t Template
	if err := json.Unmarshal(b, &t); err != nil {
		return Template{}, fmt.Errorf("template %s: %w", dir, err)
	}
	t.Dir = dir
	files := []string{fileTplLayer, fileTplRAM, fileTplState}
	if t.Stream {
		files = append(files, fileTplStream)
	}
	for _, f := range files {
		if _, err := os.Stat(p(dir, f)); err != nil {
			return Template{}, fmt.Errorf("template %s is incomplete: %w", dir, err)
		}
	}
	return t, nil
}

// ListTemplates returns the complete templates under root, of imageKey
// ("": of every image), by image and creation time. Temporary directories
// of templates being made (or left by a crash) are skipped.
func ListTemplates(root, imageKey string) ([]Template, error) {
	var out []Template
	images := []string{imageKey}
	if imageKey == "" {
		ents, err := os.ReadDir(root)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		images = nil
		for _, e := range ents {
			if e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
				images = append(images, e.Name())
			}
		}
	}
	for _, img := range images {
		ents, err := os.ReadDir(filepath.Join(root, img))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		for _, e := range ents {
			if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
				continue
			}
			if t, err := LoadTemplate(root, img, e.Name()); err == nil {
				out = append(out, t)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].ImageKey != out[j].ImageKey {
			return out[i].ImageKey < out[j].ImageKey
		}
		return out[i].Created.Before(out[j].Created)
	})
	return out, nil
}

// MakeTemplate boots gold in shape, waits for its agent and address, saves
// it and publishes the template under root (see the file comment). An
// existing template of the same key is returned as it is.
func (d *Driver) MakeTemplate(ctx context.Context, root, imageKey string, gold hypervisor.GoldDisk, shape TemplateShape) (Template, error) {
	key, err := d.TemplateKey(gold, shape)
	if err != nil {
		return Template{}, err
	}
	shape, _ = shape.normalized()
	if !idRe.MatchString(imageKey) {
		return Template{}, fmt.Errorf("image key %q: %w", imageKey, errdefs.ErrInvalid)
	}
	if t, err := LoadTemplate(root, imageKey, key); err == nil {
		return t, nil
	}
	final := templateDir(root, imageKey, key)
	if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
		return Template{}, err
	}
	// QEMU under another user opens the frozen layer (whatever the umask).
	for _, dir := range []string{root, filepath.Dir(final)} {
		if err := os.Chmod(dir, 0o755); err != nil {
			return Template{}, err
		}
	}
	ver, _ := d.qemuVersion()
	tmp, err := os.MkdirTemp(filepath.Dir(final), ".tmp-"+key[:12]+"-")
	if err != nil {
		return Template{}, err
	}
	published := false
	defer func() {
		if !published {
			os.RemoveAll(tmp)
		}
	}()
	if err := os.Chmod(tmp, 0o755); err != nil {
		return Template{}, err
	}
	var rnd [3]byte
	rand.Read(rnd[:])
	spec := hypervisor.Spec{
		ID: "tpl-" + key[:12] + "-" + hex.EncodeToString(rnd[:]), Dir: tmp, GoldDisk: gold, ImageKey: imageKey,
		CPUs: shape.CPUs, MemoryMiB: shape.MemoryMiB, Network: shape.Network, Headless: true, Machine: shape.Hardware,
	}
	if shape.Seed {
		spec.CloudInit = &hypervisor.CloudInit{InstanceID: spec.ID, Hostname: "goldvm-template"}
	}
	defer d.Destroy(context.WithoutCancel(ctx), spec) // its QEMU, tap and run files; the template's files stay
	if err := d.Clone(ctx, spec); err != nil {
		return Template{}, err
	}
	warm := warmOpts{machine: shape.Machine, memPath: p(tmp, fileTplRAM), memShare: true}
	if err := d.start(ctx, spec, warm); err != nil {
		return Template{}, err
	}
	dctx, cancel := context.WithTimeout(ctx, templateDiscoverTimeout)
	info, err := d.Discover(dctx, spec)
	cancel()
	if err != nil {
		return Template{}, fmt.Errorf("template guest: %w", err)
	}
	if info.GuestOSSource != api.SourceGuestAgent {
		// A VM is reported running after AgentWait (with its image's OS,
		// if any); a template needs the agent, which may start later on a
		// busy host.
		actx, cancel := context.WithTimeout(ctx, templateAgentWait)
		if name, err := d.ProbeGuestOS(actx, spec); err == nil && name != "" {
			info.GuestOS, info.GuestOSSource = name, api.SourceGuestAgent
		}
		cancel()
	}
	if info.GuestOSSource != api.SourceGuestAgent || info.IPAddress == "" {
		return Template{}, errdefs.New(errdefs.ErrConflict, api.CodeTemplateNoAgent, fmt.Sprintf(
			"the image's guest has an address (%q) but no guest agent answered within %s: a template needs one; its VMs boot cold", info.IPAddress, d.cfg.AgentWait+templateAgentWait), nil)
	}
	// The identity port stays connected until the state is saved: a
	// restore connects before loading it, so the resident script never
	// sees the port closed (a read then returns end of file).
	ident, err := dialUnix(ctx, p(tmp, fileIdentity))
	if err != nil {
		d.log.Warn("template guest: no identity port; its VMs get their identity through the agent", "err", err)
		ident = nil
	} else {
		defer ident.Close()
	}
	ifName, resident, err := d.prepareTemplateGuest(ctx, spec, ident != nil)
	if err != nil {
		return Template{}, fmt.Errorf("template guest: %w", err)
	}
	if resident {
		// Saved before it waits on the port, the resident script would
		// spend a restored guest's first, slowest moments starting up.
		if err := awaitResident(ctx, ident); err != nil {
			d.log.Warn("template guest: its resident identity script did not start; its VMs get their identity through the agent", "err", err)
			resident = false
		}
	}
	if pid, ok := readPID(p(tmp, filePID)); ok {
		took, err := waitGuestQuiet(ctx, pid, d.log)
		if err != nil {
			d.log.Warn("template guest: saved while still busy; its VMs will start slower", "waited", took, "err", err)
		} else {
			d.log.Debug("template guest quiet", "waited", took)
		}
	}
	if err := d.saveState(ctx, spec, p(tmp, fileTplState)); err != nil {
		return Template{}, err
	}
	if pid, ok := readPID(p(tmp, filePID)); ok {
		waitExited(ctx, pid, 10*time.Second)
	}
	if err := os.Rename(p(tmp, fileDisk), p(tmp, fileTplLayer)); err != nil {
		return Template{}, err
	}
	if err := d.Destroy(context.WithoutCancel(ctx), spec); err != nil {
		return Template{}, err
	}
	if err := d.saveStream(ctx, spec, shape, tmp); err != nil {
		return Template{}, err
	}
	os.Remove(p(tmp, fileConsoleEnd))
	t := Template{
		Key: key, ImageKey: imageKey, Shape: shape, GoldPath: gold.Path, GoldFormat: gold.Format,
		QEMUVersion: ver, Accel: d.accel.Name, MAC: macFor(spec.ID), Created: time.Now().UTC(), Stream: true,
		Interface: ifName, Prepared: true, GuestOS: info.GuestOS, Resident: resident,
	}
	// Every VM's QEMU reads the frozen layer and maps the RAM file; none
	// may change them. QEMU 7.2 opens a memory-backend-file read-write even
	// for a private mapping, so the RAM file belongs to the user QEMU runs
	// as when that is one user; with a user per VM it stays root's and VMs
	// start from the stream (see the file comment).
	uid, gid := 0, 0
	if d.root && d.runAs != nil {
		uid, gid = int(d.runAs.Uid), int(d.runAs.Gid)
	}
	for _, f := range []string{fileTplLayer, fileTplRAM, fileTplState, fileTplStream} {
		path := p(tmp, f)
		if fi, err := os.Stat(path); err == nil {
			t.SizeBytes += fi.Size()
		}
		if d.root {
			if err := os.Chown(path, 0, 0); err != nil {
				return Template{}, err
			}
		}
		if err := os.Chmod(path, 0o444); err != nil {
			return Template{}, err
		}
		if err := syncFile(path); err != nil {
			return Template{}, err
		}
	}
	if d.root && uid != 0 {
		if err := os.Chown(p(tmp, fileTplRAM), uid, gid); err != nil {
			return Template{}, err
		}
		os.Chmod(p(tmp, fileTplRAM), 0o644)
	}
	if err := os.Chmod(p(tmp, fileTplStream), 0o644); err != nil {
		return Template{}, err
	}
	if d.root {
		os.Chown(tmp, 0, 0)
	}
	// A QEMU under a user of its own per VM made it its own (0700).
	if err := os.Chmod(tmp, 0o755); err != nil {
		return Template{}, err
	}
	meta, _ := json.MarshalIndent(t, "", "  ")
	if err := writeFileAtomic(p(tmp, fileTplMeta), append(meta, '\n')); err != nil {
		return Template{}, err
	}
	os.Chmod(p(tmp, fileTplMeta), 0o644)
	syncFile(tmp)
	if err := os.Rename(tmp, final); err != nil {
		// Made concurrently by another caller: use theirs.
		if t2, err2 := LoadTemplate(root, imageKey, key); err2 == nil {
			return t2, nil
		}
		return Template{}, fmt.Errorf("publishing template: %w", err)
	}
	published = true
	syncFile(filepath.Dir(final))
	t.Dir = final
	if d.perVMUsers() {
		// Made now rather than in the first warm start.
		if _, err := d.sealedTemplateRAM(t); err != nil {
			d.log.Warn("no sealed copy of the template's RAM; its VMs will load the full state stream", "template", key, "err", err)
		}
	}
	d.log.Info("template made", "image", imageKey, "key", key, "shape", shape, "size", t.SizeBytes)
	return t, nil
}

// DropTemplates removes every template of imageKey from
// Config.TemplateDir: called when the image is deleted or evicted (which
// the image store refuses while any VM uses the image, so no VM runs on a
// template's layer).
func (d *Driver) DropTemplates(imageKey string) error {
	if d.cfg.TemplateDir == "" || !idRe.MatchString(imageKey) {
		return nil
	}
	d.dropSealedRAM(filepath.Join(d.cfg.TemplateDir, imageKey))
	return removeDir(d.cfg.TemplateDir, imageKey)
}

// PruneTemplates removes from Config.TemplateDir the templates of the
// images keep answers false for (deleted while the daemon was down), and
// what a crash left of templates being made or removed. Call it at start,
// before any template is made.
func (d *Driver) PruneTemplates(keep func(imageKey string) bool) error {
	if d.cfg.TemplateDir == "" {
		return nil
	}
	ents, err := os.ReadDir(d.cfg.TemplateDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		switch {
		case !e.IsDir():
		case strings.HasPrefix(e.Name(), ".") || !keep(e.Name()):
			d.log.Info("removing templates of a deleted image", "image", e.Name())
			errs = append(errs, removeDir(d.cfg.TemplateDir, e.Name()))
		default:
			errs = append(errs, pruneUnfinished(filepath.Join(d.cfg.TemplateDir, e.Name())))
		}
	}
	return errors.Join(errs...)
}

// pruneUnfinished removes the temporary directories in an image's template
// directory (templates a crash interrupted while being made or removed).
func pruneUnfinished(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			errs = append(errs, os.RemoveAll(filepath.Join(dir, e.Name())))
		}
	}
	return errors.Join(errs...)
}

// removeDir removes parent/name by renaming it aside first, so that a
// crash halfway leaves a dot-directory (which PruneTemplates removes), never
// a half-removed template that looks complete.
func removeDir(parent, name string) error {
	trash := filepath.Join(parent, ".del-"+name)
	if err := os.Rename(filepath.Join(parent, name), trash); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	return os.RemoveAll(trash)
}

// saveState pauses the VM and saves its device state into path (the RAM
// stays in its shared file), then quits QEMU.
func (d *Driver) saveState(ctx context.Context, spec hypervisor.Spec, path string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	err = d.withQMP(ctx, spec, func(q *qmpConn) error {
		if _, err := q.Execute(ctx, "stop", nil); err != nil {
			return err
		}
		if err := migrateOut(ctx, q, f, true); err != nil {
			return err
		}
		_, err := q.Execute(ctx, "quit", nil)
		return err
	})
	if err != nil && !strings.Contains(err.Error(), "connection closed") {
		return fmt.Errorf("saving the template's state: %w", err)
	}
	return f.Sync()
}

// saveStream writes the full state stream (RAM included) of the template
// being made in dir into dir/stream.bin. QEMU 7.2 does not migrate a VM a
// second time, so the template guest cannot: a VM of the same spec (same
// directory, so under the same user id) is restored from the template's
// RAM file and state, never resumed, and migrated again without
// x-ignore-shared. Its overlay and run files are removed.
func (d *Driver) saveStream(ctx context.Context, spec hypervisor.Spec, shape TemplateShape, dir string) error {
	defer d.Destroy(context.WithoutCancel(ctx), spec)
	layer := spec
	layer.GoldDisk = hypervisor.GoldDisk{Path: p(dir, fileTplLayer), Format: "qcow2", VirtualSize: spec.GoldDisk.VirtualSize}
	if err := d.Clone(ctx, layer); err != nil {
		return err
	}
	warm := warmOpts{machine: shape.Machine, frozen: p(dir, fileTplLayer), memPath: p(dir, fileTplRAM), incoming: true}
	if err := d.start(ctx, spec, warm); err != nil {
		return err
	}
	state, err := os.Open(p(dir, fileTplState))
	if err != nil {
		return err
	}
	defer state.Close()
	out, err := os.OpenFile(p(dir, fileTplStream), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer out.Close()
	err = d.withQMP(ctx, spec, func(q *qmpConn) error {
		if err := migrateIn(ctx, q, state, true); err != nil {
			return err
		}
		if err := migrateOut(ctx, q, out, false); err != nil {
			return err
		}
		_, err := q.Execute(ctx, "quit", nil)
		return err
	})
	if err != nil && !strings.Contains(err.Error(), "connection closed") {
		return fmt.Errorf("saving the template's full state stream: %w", err)
	}
	if pid, ok := readPID(p(dir, filePID)); ok {
		waitExited(ctx, pid, 10*time.Second)
	}
	return out.Sync()
}

// setIgnoreShared sets the x-ignore-shared migration capability: with it,
// RAM in a shared memory-backend-file is left out of the stream. Both ends
// of a migration must agree on it.
func setIgnoreShared(ctx context.Context, q *qmpConn, on bool) error {
	_, err := q.Execute(ctx, "migrate-set-capabilities", map[string]any{
		"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": on}},
	})
	return err
}

// migrateOut migrates the paused VM of q into f, over an fd: URI, and
// waits until it is done.
func migrateOut(ctx context.Context, q *qmpConn, f *os.File, ignoreShared bool) error {
	if err := migrateFD(ctx, q, "migrate", f, ignoreShared); err != nil {
		return err
	}
	return waitMigrated(ctx, q)
}

// migrateFD sets x-ignore-shared, passes QEMU f and starts cmd (migrate
// or migrate-incoming) on it.
func migrateFD(ctx context.Context, q *qmpConn, cmd string, f *os.File, ignoreShared bool) error {
	if err := setIgnoreShared(ctx, q, ignoreShared); err != nil {
		return err
	}
	if _, err := q.ExecuteFD(ctx, "getfd", map[string]any{"fdname": "tplstate"}, f); err != nil {
		return err
	}
	_, err := q.Execute(ctx, cmd, map[string]any{"uri": "fd:tplstate"})
	return err
}

// migrateIn loads the state in f into the QEMU of q, which waits for it
// (-incoming defer), over an fd: URI, and waits until it is loaded. A
// state saved after stop leaves the VM paused.
func migrateIn(ctx context.Context, q *qmpConn, f *os.File, ignoreShared bool) error {
	if err := migrateFD(ctx, q, "migrate-incoming", f, ignoreShared); err != nil {
		return err
	}
	for {
		ret, err := q.Execute(ctx, "query-status", nil)
		if err != nil {
			return err
		}
		var st qmpStatus
		json.Unmarshal(ret, &st)
		if st.Status != "inmigrate" {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// waitMigrated polls query-migrate until the outgoing migration ends.
func waitMigrated(ctx context.Context, q *qmpConn) error {
	for {
		ret, err := q.Execute(ctx, "query-migrate", nil)
		if err != nil {
			return err
		}
		var st struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		json.Unmarshal(ret, &st)
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration %s: %s", st.Status, st.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// ShapeOf returns the template shape of the VM spec: its size, network,
// whether it has a cloud-init seed, and hardware with the chipset pinned to the machine type the alias names
// in this QEMU. It fails with errdefs.ErrNotFound when spec asks for
// anything a template does not carry (a kernel, CD-ROMs, cloud-init, a
// window, its own UUID or MAC, UEFI).
func (d *Driver) ShapeOf(spec hypervisor.Spec) (TemplateShape, error) {
	if spec.Kernel != "" || len(spec.CDROMs) > 0 || !spec.Headless {
		return TemplateShape{}, fmt.Errorf("a template has no boot media or window: %w", errdefs.ErrNotFound)
	}
	if ci := spec.CloudInit; ci != nil && (ci.UserData != "" || len(ci.SSHAuthorizedKeys) > 0) {
		return TemplateShape{}, fmt.Errorf("user-data and SSH keys are not given to a guest started from a template: %w", errdefs.ErrNotFound)
	}
	chipset := d.cfg.Machine
	if spec.Machine != nil && spec.Machine.Chipset != "" {
		chipset = spec.Machine.Chipset
	}
	pinned, err := d.pinMachine(chipset)
	if err != nil {
		return TemplateShape{}, fmt.Errorf("%w: %w", errdefs.ErrNotFound, err)
	}
	shape, err := TemplateShape{CPUs: spec.CPUs, MemoryMiB: spec.MemoryMiB, Network: spec.Network, Machine: pinned, Hardware: spec.Machine, Seed: spec.CloudInit != nil}.normalized()
	if err != nil {
		return TemplateShape{}, fmt.Errorf("%w: %w", errdefs.ErrNotFound, err)
	}
	return shape, nil
}

var machineAliasRe = regexp.MustCompile(`(?m)^(\S+)\s.*\(alias of (\S+)\)`)

// pinMachine returns the machine type an alias such as "q35" stands for in
// this QEMU (a pinned type is returned as it is).
func (d *Driver) pinMachine(m string) (string, error) {
	if pinnedMachineRe.MatchString(m) {
		return m, nil
	}
	qemuVersionMu.Lock()
	help, ok := qemuMachines[d.cfg.QemuBinary]
	qemuVersionMu.Unlock()
	if !ok {
		out, err := exec.Command(d.cfg.QemuBinary, "-machine", "help").Output()
		if err != nil {
			return "", fmt.Errorf("%s -machine help: %w", d.cfg.QemuBinary, err)
		}
		help = string(out)
		qemuVersionMu.Lock()
		qemuMachines[d.cfg.QemuBinary] = help
		qemuVersionMu.Unlock()
	}
	for _, mm := range machineAliasRe.FindAllStringSubmatch(help, -1) {
		if mm[1] == m && pinnedMachineRe.MatchString(mm[2]) {
			return mm[2], nil
		}
	}
	return "", fmt.Errorf("machine type %q names no pinned machine type", m)
}

// TemplateFor returns the template under root that spec can start from;
// errdefs.ErrNotFound when none matches.
func (d *Driver) TemplateFor(root string, spec hypervisor.Spec) (Template, error) {
	shape, err := d.ShapeOf(spec)
	if err != nil {
		return Template{}, err
	}
	key, err := d.TemplateKey(spec.GoldDisk, shape)
	if err != nil {
		return Template{}, fmt.Errorf("%w: %w", errdefs.ErrNotFound, err)
	}
	return LoadTemplate(root, spec.ImageKey, key)
}

// perVMUsers says whether QEMU runs under a user id per VM: its VMs are
// then not given a template's RAM file (QEMU 7.2 opens it read-write even
// for a private mapping, and a file all VMs of a per-VM-user range could
// write would let one VM's QEMU change every later VM's memory) but a
// sealed memfd copy of it (memfd.go), or else the full state stream.
func (d *Driver) perVMUsers() bool { return d.root && d.uidRange.first != 0 }

// StartFromTemplate starts the VM spec from t instead of booting it: a new
// overlay on the frozen layer, the state restored, and a new identity
// (MAC, address, clock, hostname, entropy) set in the guest (newIdentity).
// On failure the VM is left destroyed (its directory emptied), ready for a
// cold Clone and Start.
func (d *Driver) StartFromTemplate(ctx context.Context, spec hypervisor.Spec, t Template) (err error) {
	// A QEMU under a user id of its own maps a sealed memfd copy of the
	// RAM file, or else (no memfd) loads the full state stream.
	var sealed *os.File
	stream := false
	if d.perVMUsers() {
		f, err := d.sealedTemplateRAM(t)
		if err != nil {
			d.log.Warn("no sealed copy of the template's RAM; the VM loads the full state stream", "template", t.Key, "err", err)
			stream = true
		}
		sealed = f
	}
	if stream && !t.Stream {
		return errors.New("QEMU runs under a user id per VM, and this template has no full state stream (made by an older goldvm)")
	}
	defer func() {
		if err != nil {
			if derr := d.Destroy(context.WithoutCancel(ctx), spec); derr != nil {
				d.log.Warn("cleaning up a failed warm start", "vm", spec.ID, "err", derr)
			}
		}
	}()
	d.warmStarting.Add(1)
	defer d.warmStarting.Add(-1)
	t0 := time.Now()
	layer := spec
	layer.GoldDisk = hypervisor.GoldDisk{Path: p(t.Dir, fileTplLayer), Format: "qcow2", VirtualSize: spec.GoldDisk.VirtualSize}
	if err := d.Clone(ctx, layer); err != nil {
		return err
	}
	t1 := time.Now()
	warm := warmOpts{machine: t.Shape.Machine, frozen: p(t.Dir, fileTplLayer), memPath: p(t.Dir, fileTplRAM), incoming: true}
	stateFile := fileTplState
	switch {
	case stream:
		warm.memPath, warm.memRAM, stateFile = "", true, fileTplStream
	case sealed != nil:
		warm.memPath, warm.memFile = "", sealed
	}
	if err := d.start(ctx, spec, warm); err != nil {
		return err
	}
	if d.cfg.CrashPoint != nil {
		d.cfg.CrashPoint(CrashRestoring)
	}
	t2 := time.Now()
	state, err := os.Open(p(t.Dir, stateFile))
	if err != nil {
		return err
	}
	defer state.Close()
	var ident net.Conn
	if t.Resident {
		// Connected before the load, as when the state was saved (see
		// MakeTemplate).
		if ident, err = dialUnix(ctx, p(spec.Dir, fileIdentity)); err != nil {
			return fmt.Errorf("the identity port: %w", err)
		}
		defer ident.Close()
	}
	err = d.withQMP(ctx, spec, func(q *qmpConn) error {
		if err := migrateIn(ctx, q, state, !stream); err != nil {
			return err
		}
		// Saved after stop, the state restores paused.
		_, err := q.Execute(ctx, "cont", nil)
		return err
	})
	if err != nil {
		return fmt.Errorf("restoring the template's state: %w", err)
	}
	t3 := time.Now()
	np, err := d.plan(spec)
	if err != nil {
		return err
	}
	addr, err := d.reserveAddress(np, spec.ID, macFor(spec.ID))
	if err != nil && !errors.Is(err, errNoReservations) {
		return err
	}
	if err := d.newIdentity(ctx, spec, t, np, addr, ident); err != nil {
		return fmt.Errorf("giving the restored guest its identity: %w", err)
	}
	if addr.IsValid() && t.GuestOS != "" {
		// What Discover would ask the agent for is known: the address the
		// script set, the OS of the template's guest.
		d.rememberStarted(spec.ID, hypervisor.GuestInfo{
			IPAddress: addr.Addr().String(), IPSource: api.SourceReserved,
			GuestOS: t.GuestOS, GuestOSSource: api.SourceGuestAgent,
		})
	}
	ms := func(a, b time.Time) int64 { return b.Sub(a).Milliseconds() }
	how := "dhcp"
	if addr.IsValid() {
		how = "reserved " + addr.String()
	}
	d.log.Info("started from template", "vm", spec.ID, "template", t.Key, "full_stream", stream, "overlay_ms", ms(t0, t1),
		"qemu_ms", ms(t1, t2), "restore_ms", ms(t2, t3), "identity_ms", ms(t3, time.Now()), "address", how)
	return nil
}

// identityScript is run by the guest's shell. With STEP=prepare, through
// the agent in a template guest before its state is saved: it stops the
// DHCP clients of the interface with MAC OLDMAC (their command lines kept
// in $SAVED), removes its IPv4 addresses and prints the interface's name;
// then, when the guest has the virtio-serial port PORTNAME, it starts
// itself (SCRIPT) again with STEP=resident, in the background, and prints
// "resident". The resident copy holds the port open, forks the children
// that will run the identity's commands (see prefork) and waits for one
// identity: lines "NAME value" (the variables below), then "go"; it applies
// it, answers "done CODE" and exits. Otherwise (through the agent, in a
// restored guest) it applies the identity given in its environment.
//
// Applying an identity: set the clock to the second (EPOCH), the hostname
// (NAME) and entropy, do what prepare does unless PREPARED, and move the
// interface IF (found by OLDMAC when empty) to the VM's MAC. Then with
// ADDR, the address with prefix goldvm reserved for the VM on its DHCP
// server, set that address and ROUTES (";"-separated, what the DHCP server
// gives), leaving the DHCP clients stopped: a reboot gets the same address
// by DHCP. Without ADDR start the DHCP clients again with their command
// lines (or dhclient/networkctl when none ran).
//
// Under TCG every process a restored guest starts costs 50-100 ms (QEMU
// translates its code afresh), so applying an identity with ADDR in a
// prepared template's guest runs four commands (date, ip) and uses shell
// builtins for the rest; the resident copy spares the agent's answer and
// its guest-exec (a fork of qemu-ga and a shell), another 0.3-0.6 s, and
// forked the four commands' processes before the save.
const identityScript = `
find_if() {
	for i in /sys/class/net/*; do
		read -r a <"$i/address" 2>/dev/null && [ "$a" = "$OLDMAC" ] && IF="${i##*/}"
	done
	[ -n "$IF" ] || { echo "no interface with MAC $OLDMAC" >&2; return 3; }
}
stop_dhcp() {
	PIDS=
	for c in /proc/[0-9]*/comm; do
		read -r n <"$c" 2>/dev/null || continue
		case "$n" in udhcpc|dhclient|dhcpcd) p="${c%/comm}"; PIDS="$PIDS ${p#/proc/}" ;; esac
	done
	: >"$SAVED"
	for p in $PIDS; do tr '\0' ' ' </proc/$p/cmdline >>"$SAVED"; echo >>"$SAVED"; done
	[ -n "$PIDS" ] && kill $PIDS 2>/dev/null
	ip -4 addr flush dev "$IF"
}
# prefork: forks, ahead of the save, a child per step of an identity with
# an address (date, mac, addr, route), each waiting for its argument on a
# FIFO of its own in $PF; the applet is the child's last command, which a
# busybox shell runs without forking again. A restored guest then forks
# nothing (its first fork costs tens of milliseconds of translation).
prefork() {
	PF=/run/goldvm-identity.$$
	[ -n "$IF" ] && mkdir -m 700 "$PF" 2>/dev/null && mkfifo "$PF/date" "$PF/mac" "$PF/addr" "$PF/route" || { PF=; return 0; }
	( read -r a <"$PF/date" && date -u -s "@$a" ) </dev/null >/dev/null 2>&1 3>&- &
	PF_date=$!
	( read -r a <"$PF/mac" && ip link set dev "$IF" address "$a" ) </dev/null >/dev/null 2>&1 3>&- &
	PF_mac=$!
	( read -r a <"$PF/addr" && ip -4 addr add "$a" dev "$IF" ) </dev/null >/dev/null 2>&3 &
	PF_addr=$!
	( read -r a <"$PF/route" && ip -4 route replace $a dev "$IF" ) </dev/null >/dev/null 2>&3 &
	PF_route=$!
}
# pf STEP VALUE: hands VALUE to the child forked for STEP and returns its
# status; 127 when there is none (any more), 126 when it is gone.
pf() {
	eval "p=\${PF_$1:-}"
	[ -n "$p" ] || return 127
	eval "PF_$1="
	# A child that is gone would leave the FIFO's writer blocked.
	kill -0 "$p" 2>/dev/null && echo "$2" >"$PF/$1" || return 126
	wait "$p"
}
# unfork: ends the forked children no identity used.
unfork() {
	for s in date mac addr route; do
		eval "p=\${PF_$s:-}"
		[ -n "$p" ] && kill "$p" 2>/dev/null
	done
	[ -n "$PF" ] && rm -rf "$PF"
}
identity() {
	pf date "$EPOCH" || date -u -s "@$EPOCH" >/dev/null 2>&1
	echo "$NAME" >/proc/sys/kernel/hostname 2>/dev/null || hostname "$NAME"
	echo "$NAME" >/etc/hostname 2>/dev/null
	echo "$ENTROPY" >/dev/urandom 2>/dev/null
	[ -n "$IF" ] || find_if || return 3
	[ -n "$PREPARED" ] || stop_dhcp
	# virtio-net takes a new MAC while up; other NICs want the link down.
	pf mac "$NEWMAC" || ip link set dev "$IF" address "$NEWMAC" 2>/dev/null ||
		{ ip link set dev "$IF" down && ip link set dev "$IF" address "$NEWMAC" && ip link set dev "$IF" up; } || return 4
	if [ -n "$ADDR" ]; then
		pf addr "$ADDR" || ip -4 addr add "$ADDR" dev "$IF" || return 5
		IFS=';'
		for r in $ROUTES; do
			IFS=' '
			pf route "$r" || ip -4 route replace $r dev "$IF" || return 6
		done
		return 0
	fi
	ip link set dev "$IF" up
	if [ -s "$SAVED" ]; then
		while read -r c; do [ -n "$c" ] && sh -c "$c" </dev/null >/dev/null 2>&1 3>&-; done <"$SAVED"
	elif command -v networkctl >/dev/null; then
		networkctl renew "$IF" >/dev/null 2>&1 3>&- || networkctl reconfigure "$IF" 3>&-
	elif command -v dhclient >/dev/null; then
		dhclient "$IF" </dev/null >/dev/null 2>&1 3>&-
	fi
	rm -f "$SAVED"
}
find_port() {
	for n in /sys/class/virtio-ports/*/name; do
		read -r x <"$n" 2>/dev/null && [ "$x" = "$PORTNAME" ] || continue
		d="${n%/name}"
		PORT="/dev/${d##*/}"
		[ -c "$PORT" ] && return 0
		read -r mm <"$d/dev" && mknod "$PORT" c "${mm%:*}" "${mm#*:}" && return 0
	done
	return 1
}
resident() {
	exec 3<>"$PORT" || return 1
	prefork
	echo ready >&3
	while read -r k v <&3; do
		case "$k" in
		EPOCH|NAME|ENTROPY|OLDMAC|NEWMAC|IF|PREPARED|ADDR|ROUTES) eval "$k=\$v" ;;
		go) identity 2>&3; echo "done $?" >&3; unfork; return 0 ;;
		esac
	done
	unfork
}
SAVED=/run/goldvm-dhcp-clients
[ -d /run ] || SAVED=/tmp/goldvm-dhcp-clients
case "$STEP" in
prepare)
	find_if || exit 3
	stop_dhcp
	echo "$IF"
	if [ -n "$PORTNAME" ] && [ -n "$SCRIPT" ] && find_port; then
		STEP=resident PORT="$PORT" IF="$IF" sh -c "$SCRIPT" </dev/null >/dev/null 2>&1 &
		echo resident
	fi
	;;
resident) resident ;;
*) identity ;;
esac
`

// prepareTemplateGuest runs identityScript's prepare step in the template
// guest spec and returns the name of its interface, and whether a copy of
// the script now waits on the identity port (asked for with withPort).
func (d *Driver) prepareTemplateGuest(ctx context.Context, spec hypervisor.Spec, withPort bool) (string, bool, error) {
	actx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	c, err := dialSyncedQGA(actx, p(spec.Dir, fileQGA))
	if err != nil {
		return "", false, err
	}
	defer c.Close()
	env := []string{"STEP=prepare", "OLDMAC=" + macFor(spec.ID)}
	if withPort {
		env = append(env, "PORTNAME="+identityPortName, "SCRIPT="+identityScript)
	}
	out, err := d.runIdentityScript(actx, c, spec, env)
	if err != nil {
		return "", false, fmt.Errorf("stopping its DHCP clients: %w", err)
	}
	lines := strings.Fields(out)
	if len(lines) == 0 {
		return "", false, errors.New("preparing: the guest named no interface")
	}
	return lines[0], len(lines) > 1 && lines[1] == "resident", nil
}

// clockRefineWait bounds how long the microsecond clock of a VM started
// from a template waits for other warm starts to finish.
const clockRefineWait = 10 * time.Second

// newIdentity gives the restored guest its identity: through ident, the
// connection to a template's resident identityScript, when not nil, else
// by running identityScript through the agent. Then it sets the guest's
// clock to the microsecond through the agent, in the background. addr,
// when valid, is the address reserved for the VM on the DHCP server of
// np's bridge.
func (d *Driver) newIdentity(ctx context.Context, spec hypervisor.Spec, t Template, np netPlan, addr netip.Prefix, ident net.Conn) error {
	actx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var ent [32]byte
	rand.Read(ent[:])
	env := []string{
		"EPOCH=" + fmt.Sprint(time.Now().Round(time.Second).Unix()), "NAME=" + hostnameFor(spec),
		"ENTROPY=" + hex.EncodeToString(ent[:]), "OLDMAC=" + t.MAC, "NEWMAC=" + macFor(spec.ID), "IF=" + t.Interface,
	}
	if t.Prepared {
		env = append(env, "PREPARED=1")
	}
	if addr.IsValid() {
		env = append(env, "ADDR="+addr.String(), "ROUTES="+strings.Join(dhcpRoutes(np), ";"))
	}
	var agent *qgaClient
	if ident != nil {
		if err := giveResidentIdentity(actx, ident, env); err != nil {
			return err
		}
	} else {
		c, err := dialSyncedQGA(actx, p(spec.Dir, fileQGA))
		if err != nil {
			return err
		}
		if _, err := d.runIdentityScript(actx, c, spec, env); err != nil {
			c.Close()
			return err
		}
		agent = c
	}
	// The script set the clock to the second; the agent sets it to the
	// microsecond where it can (qemu-ga then runs hwclock -w, whose failure
	// leaves the time set). That takes 0.1-0.2 s of a freshly restored
	// guest's CPU, so it is not waited for, and it waits until no other
	// warm start is under way (at most clockRefineWait), not to slow down
	// VMs started together.
	go func() {
		for wait := time.Duration(0); d.warmStarting.Load() > 0 && wait < clockRefineWait; wait += 50 * time.Millisecond {
			time.Sleep(50 * time.Millisecond)
		}
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if agent == nil {
			c, err := dialSyncedQGA(sctx, p(spec.Dir, fileQGA))
			if err != nil {
				d.log.Debug("guest-set-time", "vm", spec.ID, "err", err)
				return
			}
			agent = c
		}
		defer agent.Close()
		if err := agent.ExecuteArgs(sctx, "guest-set-time", map[string]any{"time": time.Now().UnixNano()}, nil); err != nil {
			d.log.Debug("guest-set-time", "vm", spec.ID, "err", err)
		}
	}()
	return nil
}

// A template saved while its guest is still busy (the tail of its boot:
// init, services, a DHCP client, the agent's own start) makes every restore
// do that work again, under TCG in code translated afresh: the test guest
// saved a second after its agent first answered cost each restore 0.6 s of
// CPU before it did anything asked of it. So MakeTemplate waits until the
// template's QEMU uses at most quietTicks clock ticks (of 10 ms) in each of
// quietWindows windows of quietWindow in a row, for at most quietMax.
const (
	quietWindow  = 500 * time.Millisecond
	quietTicks   = 3
	quietWindows = 2
	quietMax     = 30 * time.Second
)

// waitGuestQuiet waits until the QEMU pid is quiet (see quietTicks) and
// returns how long that took.
func waitGuestQuiet(ctx context.Context, pid int, log *slog.Logger) (time.Duration, error) {
	start := time.Now()
	prev, err := procCPUTicks(pid)
	if err != nil {
		return 0, err
	}
	for calm := 0; calm < quietWindows; {
		if time.Since(start) >= quietMax {
			return time.Since(start), fmt.Errorf("its QEMU still used over %d%% of a CPU after %s", int(quietTicks*10*time.Millisecond*100/quietWindow), quietMax)
		}
		select {
		case <-ctx.Done():
			return time.Since(start), ctx.Err()
		case <-time.After(quietWindow):
		}
		now, err := procCPUTicks(pid)
		if err != nil {
			return time.Since(start), err
		}
		log.Debug("template guest CPU", "ticks", now-prev)
		if now-prev <= quietTicks {
			calm++
		} else {
			calm = 0
		}
		prev = now
	}
	return time.Since(start), nil
}

// awaitResident waits until the resident identityScript at the other end
// of conn says it is ready.
func awaitResident(ctx context.Context, conn net.Conn) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	defer bindDeadline(ctx, conn)()
	line, err := bufio.NewReader(io.LimitReader(conn, 4<<10)).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "ready" {
		return fmt.Errorf("it said %.64q", line)
	}
	return nil
}

// giveResidentIdentity sends env (NAME=value pairs) to the resident
// identityScript at the other end of conn and waits until it has applied
// them.
func giveResidentIdentity(ctx context.Context, conn net.Conn, env []string) error {
	defer bindDeadline(ctx, conn)()
	var b strings.Builder
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		if strings.ContainsAny(v, "\n\r") {
			return fmt.Errorf("identity %s: a line break in %q", k, v)
		}
		if v != "" {
			b.WriteString(k + " " + v + "\n")
		}
	}
	b.WriteString("go\n")
	if _, err := io.WriteString(conn, b.String()); err != nil {
		return fmt.Errorf("writing to the identity port: %w", err)
	}
	r := bufio.NewReader(io.LimitReader(conn, 64<<10))
	var said []string
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return fmt.Errorf("the guest's resident identity script did not answer: %w", err)
		}
		line = strings.TrimSpace(line)
		code, done := strings.CutPrefix(line, "done ")
		if !done {
			said = append(said, line)
			continue
		}
		if code != "0" {
			return fmt.Errorf("identity script exited %.8q: %s", code, tail(strings.Join(said, "; "), 1024))
		}
		return nil
	}
}

// runIdentityScript runs identityScript with env through the agent
// connection c and returns its output.
func (d *Driver) runIdentityScript(ctx context.Context, c *qgaClient, spec hypervisor.Spec, env []string) (string, error) {
	var started struct {
		PID int `json:"pid"`
	}
	env = append(env, "PATH=/usr/sbin:/usr/bin:/sbin:/bin")
	if err := c.ExecuteArgs(ctx, "guest-exec", map[string]any{
		"path": "/bin/sh", "arg": []string{"-c", identityScript}, "env": env, "capture-output": true,
	}, &started); err != nil {
		return "", err
	}
	for {
		var st struct {
			Exited   bool   `json:"exited"`
			ExitCode int    `json:"exitcode"`
			OutData  string `json:"out-data"`
			ErrData  string `json:"err-data"`
		}
		if err := c.ExecuteArgs(ctx, "guest-exec-status", map[string]any{"pid": started.PID}, &st); err != nil {
			return "", err
		}
		if st.Exited {
			o, _ := base64.StdEncoding.DecodeString(st.OutData)
			e, _ := base64.StdEncoding.DecodeString(st.ErrData)
			d.log.Debug("identity script", "vm", spec.ID, "exit", st.ExitCode, "out", string(o), "err", string(e))
			if st.ExitCode != 0 {
				return "", fmt.Errorf("identity script exited %d: %s", st.ExitCode, strings.TrimSpace(string(e)))
			}
			return string(o), nil
		}
		// Each question is work for the guest too: ask every 25 ms.
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(25 * time.Millisecond):
		}
	}
}

// hostnameFor is the guest hostname of a VM started from a template: its
// cloud-init hostname, else its id, cut to a DNS label.
func hostnameFor(spec hypervisor.Spec) string {
	name := spec.ID
	if spec.CloudInit != nil && spec.CloudInit.Hostname != "" {
		name = spec.CloudInit.Hostname
	}
	h := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		if r >= 'A' && r <= 'Z' {
			return r + 'a' - 'A'
		}
		return '-'
	}, name)
	h = strings.Trim(h, "-")
	if len(h) > 63 {
		h = strings.Trim(h[:63], "-")
	}
	if h == "" {
		h = "vm"
	}
	return h
}

// StartWarmOrCold starts spec from its template under root when one
// matches, and
// otherwise, or when the warm start fails in any way, clones and boots it.
// It returns "template" or "cold", and why a cold boot was used ("" when
// no template matched).
func (d *Driver) StartWarmOrCold(ctx context.Context, root string, spec hypervisor.Spec) (from, reason string, err error) {
	t, terr := d.TemplateFor(root, spec)
	if terr == nil {
		werr := d.StartFromTemplate(ctx, spec, t)
		if werr == nil {
			return "template", "", nil
		}
		reason = werr.Error()
		d.log.Warn("warm start failed; booting cold", "vm", spec.ID, "template", t.Key, "err", werr)
	}
	if err := d.Clone(ctx, spec); err != nil {
		return "cold", reason, err
	}
	return "cold", reason, d.Start(ctx, spec)
}

// errNoTemplateDir is the error of the template calls when
// Config.TemplateDir is not set.
var errNoTemplateDir = errdefs.Newf(errdefs.ErrInvalid, api.CodeNotSupported, "this daemon keeps no templates (no template directory)")

func (t Template) apiTemplate() api.Template {
	return api.Template{
		Key: t.Key, ImageKey: t.ImageKey, CPUs: t.Shape.CPUs, MemoryMiB: t.Shape.MemoryMiB, NetworkType: t.Shape.Network,
		Machine: t.Shape.Machine, SizeBytes: t.SizeBytes, CreatedAt: t.Created,
	}
}

// MakeTemplateFor makes (or finds) in Config.TemplateDir the template of
// the VM spec's gold image and shape (its ID and Dir are not used).
func (d *Driver) MakeTemplateFor(ctx context.Context, spec hypervisor.Spec) (api.Template, error) {
	if d.cfg.TemplateDir == "" {
		return api.Template{}, errNoTemplateDir
	}
	shape, err := d.ShapeOf(spec)
	if err != nil {
		return api.Template{}, errdefs.New(errdefs.ErrInvalid, api.CodeNotSupported, "this VM shape cannot have a template", err)
	}
	t, err := d.MakeTemplate(ctx, d.cfg.TemplateDir, spec.ImageKey, spec.GoldDisk, shape)
	if err != nil {
		return api.Template{}, err
	}
	return t.apiTemplate(), nil
}

// Templates lists the templates of imageKey ("": all) in
// Config.TemplateDir.
func (d *Driver) Templates(imageKey string) ([]api.Template, error) {
	out := []api.Template{}
	if d.cfg.TemplateDir == "" {
		return out, nil
	}
	ts, err := ListTemplates(d.cfg.TemplateDir, imageKey)
	for _, t := range ts {
		out = append(out, t.apiTemplate())
	}
	return out, err
}

// WarmStart starts the VM spec from its template in Config.TemplateDir.
// It answers false when there is none for spec's image and shape (then
// nothing was done); with true, err says whether the restore worked (on
// failure the VM's directory is left as for a fresh Clone).
func (d *Driver) WarmStart(ctx context.Context, spec hypervisor.Spec) (bool, error) {
	if d.cfg.TemplateDir == "" {
		return false, nil
	}
	t, err := d.TemplateFor(d.cfg.TemplateDir, spec)
	if err != nil {
		return false, nil
	}
	return true, d.StartFromTemplate(ctx, spec, t)
}
