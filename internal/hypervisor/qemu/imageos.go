package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/goldvm/goldvm/internal/nbd"
	"github.com/goldvm/goldvm/internal/osrelease"
)

// imageOSTimeout bounds the reading of a gold disk's os-release.
const imageOSTimeout = time.Minute

// imageOS is the OS a gold disk names in its os-release, read once when
// the image is published; "" (logged) when it cannot be told. The disk is
// hostile: it is never mounted nor shown to the kernel. A confined
// qemu-nbd (the format given, read-only, no network, bounded address space
// and time, empty environment) serves it on a unix socket, and
// internal/osrelease reads its partitions and ext2/3/4 file systems
// through goldvm's own NBD client.
func (d *Driver) imageOS(ctx context.Context, disk, format string) string {
	name, err := d.readImageOS(ctx, disk, format)
	if err != nil {
		d.log.Info("the gold disk's OS is not known from its os-release", "disk", filepath.Base(disk), "err", err)
		return ""
	}
	d.log.Info("the gold disk's os-release names its OS", "disk", filepath.Base(disk), "guest_os", name)
	return name
}

// nbdDiskSpec is the disk as qemu-nbd opens it: a json: description
// with its driver given (nothing probed) and, for a qcow2, no backing
// file (whatever name the image holds), as QEMU opens it (diskArgs).
func nbdDiskSpec(disk, format string) (string, error) {
	node := map[string]any{"driver": format, "file": map[string]any{"driver": "file", "filename": disk}}
	switch format {
	case "qcow2":
		node["backing"] = nil
	case "raw":
	default:
		return "", fmt.Errorf("qemu-nbd: a %q disk is not read", format)
	}
	b, err := json.Marshal(node)
	return "json:" + string(b), err
}

func (d *Driver) readImageOS(ctx context.Context, disk, format string) (string, error) {
	bin := filepath.Join(filepath.Dir(d.cfg.QemuImg), "qemu-nbd")
	if _, err := os.Stat(bin); err != nil {
		if bin, err = exec.LookPath("qemu-nbd"); err != nil {
			return "", fmt.Errorf("qemu-nbd (qemu-utils) is not installed: %w", err)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, imageOSTimeout)
	defer cancel()
	dir, err := os.MkdirTemp("", "goldvm-nbd-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "nbd.sock")
	spec, err := nbdDiskSpec(disk, format)
	if err != nil {
		return "", err
	}
	// Without --persistent qemu-nbd exits when its one client leaves.
	argv := confined([]string{bin, "--read-only", "--socket=" + sock, "--shared=1", spec})
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = confinedEnv
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("starting qemu-nbd: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		<-exited
	}()
	var c *nbd.Client
	for {
		if c, err = nbd.Dial(ctx, "unix", sock); err == nil {
			break
		}
		select {
		case werr := <-exited:
			exited <- werr
			return "", fmt.Errorf("qemu-nbd exited: %v: %s", werr, tail(stderr.String(), 500))
		case <-ctx.Done():
			return "", fmt.Errorf("qemu-nbd did not answer: %w", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	defer c.Close()
	rel, err := osrelease.Find(c, c.Size())
	if err != nil {
		return "", err
	}
	return rel.Name(), nil
}
