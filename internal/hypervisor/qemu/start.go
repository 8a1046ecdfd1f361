package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/hypervisor"
	"golang.org/x/sys/unix"
)

// livePID returns the pid of VM spec's QEMU if it runs.
func (d *Driver) livePID(spec hypervisor.Spec) (int, bool) {
	pid, ok := readPID(p(spec.Dir, filePID))
	if !ok || !isVMProcess(pid, spec.ID) {
		return 0, false
	}
	return pid, true
}

// availableDisplays lists QEMU's -display backends.
func (d *Driver) availableDisplays() map[string]bool {
	d.displayOnce.Do(func() {
		d.displays = map[string]bool{}
		out, _ := exec.Command(d.cfg.QemuBinary, "-display", "help").Output()
		for _, l := range strings.Split(string(out), "\n") {
			if f := strings.Fields(l); len(f) == 1 {
				d.displays[f[0]] = true
			}
		}
	})
	return d.displays
}

// display picks the -display backend for a VM.
func (d *Driver) display(spec hypervisor.Spec) string {
	if spec.Headless {
		return "none"
	}
	if os.Getenv("DISPLAY") == "" && os.Getenv("WAYLAND_DISPLAY") == "" {
		d.log.Info("GUI requested but there is no DISPLAY; running headless", "vm", spec.ID)
		return "none"
	}
	ds := d.availableDisplays()
	for _, c := range []string{"gtk", "sdl"} {
		if ds[c] {
			return c
		}
	}
	d.log.Info("GUI requested but QEMU has no gtk/sdl display (apt-get install qemu-system-gui); running headless", "vm", spec.ID)
	return "none"
}

// Start boots the clone. QEMU is started in its own session (setsid) with
// no pipe to the daemon, so it outlives the daemon; a restarted daemon finds
// it again through qemu.pid. goldvm does not use -daemonize because QEMU's
// seccomp sandbox (spawn=deny) forbids the fork that -daemonize does; Start
// instead waits until QMP answers query-status, and reports QEMU's stderr if
// the process exits first. Start on a running VM just checks QMP.
func (d *Driver) Start(ctx context.Context, spec hypervisor.Spec) error {
	return d.start(ctx, spec, warmOpts{})
}

// start is Start, with a template's extra arguments when warm is set (see
// template.go).
func (d *Driver) start(ctx context.Context, spec hypervisor.Spec, warm warmOpts) error {
	if err := checkSpec(spec); err != nil {
		return err
	}
	if spec.MemoryMiB <= 0 || spec.CPUs < 0 {
		return errdefs.Newf(errdefs.ErrInvalid, "invalid-size", "invalid VM size: %d CPUs, %d MiB", spec.CPUs, spec.MemoryMiB)
	}
	np, err := d.plan(spec)
	if err != nil {
		return err
	}
	l := d.vmLock(spec.ID)
	l.life.Lock()
	defer l.life.Unlock()

	if pid, ok := d.livePID(spec); ok {
		d.log.Debug("already running", "vm", spec.ID, "pid", pid)
		return d.waitQMP(ctx, spec, pid, nil)
	}
	if _, err := os.Stat(p(spec.Dir, fileDisk)); err != nil {
		return errdefs.New(errdefs.ErrConflict, "vm-disk-missing", "the VM has no disk (Clone it first)", err)
	}
	if err := checkDisk(spec); err != nil {
		return err
	}
	for _, f := range []string{fileQMP, fileQMPWatch, fileQGA, fileIdentity, filePID, fileSSHPort, fileVNC} {
		os.Remove(p(spec.Dir, f))
	}
	if err := d.setupNetwork(ctx, spec.ID, np); err != nil {
		return err
	}
	if err := d.guardVM(ctx, spec, np); err != nil {
		return netErr(err)
	}
	for _, f := range []string{fileConsole} {
		if fh, err := os.OpenFile(p(spec.Dir, f), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600); err == nil {
			fh.Close()
		}
	}
	// An unprivileged QEMU creates its sockets and pid file in the VM's
	// directory and opens the disk and console log there.
	cred, err := d.credFor(spec)
	if err != nil {
		return err
	}
	files := []string{spec.Dir, p(spec.Dir, fileDisk), p(spec.Dir, fileConsole)}
	seed, err := d.writeSeed(spec, np)
	if err != nil {
		return err
	}
	if seed != "" {
		files = append(files, seed)
	}
	for _, f := range files {
		if err := giveTo(cred, f); err != nil {
			return err
		}
	}
	var hw api.Machine
	if spec.Machine != nil {
		hw = *spec.Machine
	}
	fwCode, fwVars, err := d.firmware(spec, hw, cred)
	if err != nil {
		return err
	}
	errf, err := os.OpenFile(p(spec.Dir, fileStderr), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	lp := launchParams{
		ID: spec.ID, Dir: spec.Dir, CPUs: spec.CPUs, MemoryMiB: spec.MemoryMiB,
		Machine: d.cfg.Machine, Accel: d.accel.Args, Display: d.display(spec),
		Sandbox: d.cfg.Sandbox, MAC: macOf(spec), Net: np,
		GoldPath: spec.GoldDisk.Path, GoldFormat: spec.GoldDisk.Format, Seed: seed,
		HW: hw, FirmwareCode: fwCode, FirmwareVars: fwVars,
		Kernel: spec.Kernel, Initrd: spec.Initrd, Append: spec.Append, CDROMs: spec.CDROMs,
	}
	warm.apply(&lp)
	var extra []*os.File
	if cred != nil && !np.User {
		// An unprivileged QEMU cannot open a tap: hand it one, as
		// libvirt does.
		tap, err := openTap(np.Tap)
		if err != nil {
			errf.Close()
			return netErr(err)
		}
		defer tap.Close()
		extra, lp.TapFD = []*os.File{tap}, 3
	}
	if warm.memFile != nil {
		// The template's RAM as a sealed memfd: QEMU opens it by its
		// descriptor (see memfd.go).
		lp.MemPath = "/proc/self/fd/" + strconv.Itoa(3+len(extra))
		extra = append(extra, warm.memFile)
	}
	args := append(buildArgs(lp), warm.extraArgs(spec.Dir)...)
	// Not CommandContext: the VM must outlive the request that started it.
	cmd := exec.Command(d.cfg.QemuBinary, args...)
	cmd.ExtraFiles = extra
	cmd.Dir = spec.Dir
	cmd.Stdout, cmd.Stderr = errf, errf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Credential: cred}
	d.log.Debug("starting qemu", "vm", spec.ID, "args", args)
	err = cmd.Start()
	errf.Close()
	if err != nil {
		return errdefs.New(errdefs.ErrUnavailable, "qemu-start-failed", "cannot run QEMU", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // reaps it while this daemon lives
	if err := d.waitQMP(ctx, spec, cmd.Process.Pid, exited); err != nil {
		cmd.Process.Kill()
		return err
	}
	for _, f := range []string{fileQMP, fileQMPWatch, fileQGA, fileIdentity, filePID, fileVNC} {
		os.Chmod(p(spec.Dir, f), 0o600)
	}
	if np.User {
		if port, err := d.userNetSSHPort(ctx, spec); err != nil {
			d.log.Warn("cannot learn the forwarded SSH port", "vm", spec.ID, "err", err)
		} else {
			writeFileAtomic(p(spec.Dir, fileSSHPort), []byte(strconv.Itoa(port)+"\n"))
		}
	}
	d.log.Info("started", "vm", spec.ID, "pid", cmd.Process.Pid, "accel", d.accel.Name, "network", np.Kind, "tap", np.Tap, "usernet", np.User)
	return nil
}

// startErr turns QEMU's stderr into an error.
func startErr(dir string, waitErr error) error {
	b, _ := os.ReadFile(p(dir, fileStderr))
	msg := strings.TrimSpace(tail(string(b), 2000))
	cause := fmt.Errorf("qemu exited (%v): %s", waitErr, msg)
	if isLockError(msg) {
		return lockedErr(cause)
	}
	return errdefs.New(errdefs.ErrUnavailable, "qemu-start-failed", "QEMU exited while starting", cause)
}

// waitQMP waits until QMP on qmp.sock answers query-status. exited, if not
// nil, reports the process's exit.
func (d *Driver) waitQMP(ctx context.Context, spec hypervisor.Spec, pid int, exited <-chan error) error {
	var last error
	for {
		if exited != nil {
			select {
			case err := <-exited:
				return startErr(spec.Dir, err)
			default:
			}
		} else if !isVMProcess(pid, spec.ID) {
			return errdefs.New(errdefs.ErrUnavailable, "qemu-start-failed", "QEMU exited", hypervisor.ErrNotRunning)
		}
		_, err := d.queryStatus(ctx, spec)
		if err == nil {
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			return errdefs.New(errdefs.ErrUnavailable, "qemu-start-timeout",
				"QEMU did not answer on QMP in time", fmt.Errorf("%w (last: %v)", ctx.Err(), last))
		case err := <-exitedOrNil(exited):
			return startErr(spec.Dir, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func exitedOrNil(c <-chan error) <-chan error {
	if c == nil {
		return nil
	}
	return c
}

// withQMP runs fn on a fresh connection to qmp.sock, one at a time per VM
// (the socket serves one client at a time).
func (d *Driver) withQMP(ctx context.Context, spec hypervisor.Spec, fn func(q *qmpConn) error) error {
	l := d.vmLock(spec.ID)
	l.qmp.Lock()
	defer l.qmp.Unlock()
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	q, err := dialQMP(dctx, p(spec.Dir, fileQMP))
	cancel()
	if err != nil {
		return err
	}
	defer q.Close()
	return fn(q)
}

func (d *Driver) queryStatus(ctx context.Context, spec hypervisor.Spec) (qmpStatus, error) {
	var st qmpStatus
	err := d.withQMP(ctx, spec, func(q *qmpConn) error {
		ret, err := q.Execute(ctx, "query-status", nil)
		if err != nil {
			return err
		}
		return json.Unmarshal(ret, &st)
	})
	return st, err
}

var usernetFwdRe = regexp.MustCompile(`HOST_FORWARD\]\s+\d+\s+\S+\s+(\d+)\s+\S+\s+22\b`)

// userNetSSHPort asks QEMU which host port hostfwd picked.
func (d *Driver) userNetSSHPort(ctx context.Context, spec hypervisor.Spec) (int, error) {
	var out string
	err := d.withQMP(ctx, spec, func(q *qmpConn) error {
		ret, err := q.Execute(ctx, "human-monitor-command", map[string]any{"command-line": "info usernet"})
		if err != nil {
			return err
		}
		return json.Unmarshal(ret, &out)
	})
	if err != nil {
		return 0, err
	}
	m := usernetFwdRe.FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("no SSH forward in %q", out)
	}
	return strconv.Atoi(m[1])
}

// SSHForwardPort returns the loopback port forwarded to the guest's port 22
// for a VM on user-mode networking (recorded at Start in spec.Dir/ssh-port).
func SSHForwardPort(dir string) (int, error) {
	b, err := os.ReadFile(p(dir, fileSSHPort))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// openTap attaches to the persistent tap device name and returns its file
// (IFF_TAP, no packet information, with virtio-net headers).
func openTap(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("attaching to tap %s: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun:"+name), nil
}
