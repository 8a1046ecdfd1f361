package lxd

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/hypervisor"
)

// imageAlias is the LXD alias of the gold image key.
func imageAlias(key string) string { return "goldvm/" + key }

// layout is what a gold image gives LXD, found by findLayout.
type layout struct {
	// metadata is metadata.yaml: the package's own, or one built from the
	// root file system's os-release.
	metadata []byte
	// rootfs (containers) is the root file system's directory, templates
	// its templates/ directory when the package has one.
	rootfs, templates string
	// disk (virtual machines) is the qcow2 disk that becomes rootfs.img.
	disk string
}

// findLayout reads the gold image in gold as an LXD image of type kind:
//   - containers: metadata.yaml (optional) and rootfs/ (and templates/) at
//     the top, or a bare root file system (sbin/init at the top);
//   - virtual machines: metadata.yaml (optional) and one qcow2 disk.
//
// Without metadata.yaml it builds one: the host's architecture and the
// os-release of the root file system as the image's properties.
func findLayout(gold, key, kind string) (*layout, error) {
	l := &layout{}
	meta, err := os.ReadFile(filepath.Join(gold, "metadata.yaml"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("reading the image's metadata.yaml: %w", err)
	}
	l.metadata = meta
	if kind == TypeVM {
		if l.disk, err = findQCOW2(gold); err != nil {
			return nil, err
		}
	} else {
		switch {
		case isDir(filepath.Join(gold, "rootfs")):
			l.rootfs = filepath.Join(gold, "rootfs")
			if isDir(filepath.Join(gold, "templates")) {
				l.templates = filepath.Join(gold, "templates")
			}
		case exists(filepath.Join(gold, "sbin", "init")):
			l.rootfs = gold
		default:
			return nil, errdefs.Newf(errdefs.ErrInvalid, api.CodeImageNoRootfs, "the image has no rootfs/ directory and no sbin/init at its top: it is not a container's root file system")
		}
	}
	if l.metadata == nil {
		l.metadata = buildMetadata(osRelease(l.rootfs), key, modTime(gold))
	}
	return l, nil
}

func isDir(p string) bool {
	fi, err := os.Lstat(p)
	return err == nil && fi.IsDir()
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

func modTime(p string) int64 {
	if fi, err := os.Stat(p); err == nil {
		return fi.ModTime().Unix()
	}
	return 0
}

// findQCOW2 returns the one qcow2 file of gold (by its magic bytes).
func findQCOW2(gold string) (string, error) {
	var disks []string
	err := filepath.WalkDir(gold, func(p string, e fs.DirEntry, err error) error {
		if err != nil || !e.Type().IsRegular() {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		magic := make([]byte, 4)
		if _, err := io.ReadFull(f, magic); err == nil && string(magic) == "QFI\xfb" {
			disks = append(disks, p)
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("looking for the image's disk: %w", err)
	}
	switch len(disks) {
	case 0:
		return "", errdefs.Newf(errdefs.ErrInvalid, api.CodeImageNoDisk, "the image holds no qcow2 disk for an LXD virtual machine")
	case 1:
		return disks[0], nil
	}
	return "", errdefs.Newf(errdefs.ErrInvalid, api.CodeImageManyDisks, "the image holds %d qcow2 disks; an LXD virtual machine has one", len(disks))
}

// osRelease reads rootfs's etc/os-release (or usr/lib/os-release) without
// following any link out of rootfs; empty for a VM or when it has none.
func osRelease(rootfs string) map[string]string {
	out := map[string]string{}
	if rootfs == "" {
		return out
	}
	root, err := os.OpenRoot(rootfs)
	if err != nil {
		return out
	}
	defer root.Close()
	for _, name := range []string{"etc/os-release", "usr/lib/os-release"} {
		f, err := root.Open(name)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(io.LimitReader(f, 64<<10))
		for sc.Scan() {
			k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
			if !ok || strings.HasPrefix(k, "#") {
				continue
			}
			if u, err := strconv.Unquote(v); err == nil {
				v = u
			} else {
				v = strings.Trim(v, `'"`)
			}
			out[k] = v
		}
		f.Close()
		break
	}
	return out
}

// buildMetadata makes the metadata.yaml of an image that has none (JSON,
// which is YAML): the host's architecture and, as properties, the OS as
// os-release names it; LXD copies them into each instance's image.*
// settings, where Discover reads the guest OS.
func buildMetadata(rel map[string]string, key string, created int64) []byte {
	props := map[string]string{"os": "unknown", "description": "goldvm image " + key}
	if v := rel["ID"]; v != "" {
		props["os"] = v
	}
	if v := rel["VERSION_ID"]; v != "" {
		props["release"] = v
	}
	if v := rel["PRETTY_NAME"]; v != "" {
		props["description"] = v
	} else if v := rel["NAME"]; v != "" {
		props["description"] = v
	}
	b, _ := json.MarshalIndent(map[string]any{
		"architecture":  lxdArch(runtime.GOARCH),
		"creation_date": created,
		"properties":    props,
	}, "", "  ")
	return append(b, '\n')
}

// lxdArch is LXD's name of a Go architecture.
func lxdArch(goarch string) string {
	switch goarch {
	case "amd64":
		return "x86_64"
	case "arm64":
		return "aarch64"
	case "386":
		return "i686"
	case "ppc64le":
		return "ppc64le"
	case "s390x":
		return "s390x"
	case "riscv64":
		return "riscv64"
	}
	return goarch
}

// writeTar writes l as LXD's unified image tarball: metadata.yaml, then
// templates/ and rootfs/ (containers) or rootfs.img (virtual machines).
// Entries come in a fixed order with their files' times, so one gold image
// always gives the same bytes (and LXD the same fingerprint). Everything
// belongs to root; the sealed gold tree's read-only modes are given back
// their owner's write bit, and directories named tmp the sticky 1777.
// goldvm's image store does not keep a package's execute bits, so a file
// is executable (0755) when it has one or its content says it is a
// program (see executable).
func writeTar(w io.Writer, l *layout) error {
	tw := tar.NewWriter(w)
	if err := tw.WriteHeader(&tar.Header{Name: "metadata.yaml", Mode: 0o644, Size: int64(len(l.metadata)), Typeflag: tar.TypeReg, Format: tar.FormatPAX}); err != nil {
		return err
	}
	if _, err := tw.Write(l.metadata); err != nil {
		return err
	}
	if l.disk != "" {
		if err := addFile(tw, l.disk, "rootfs.img", 0o644); err != nil {
			return err
		}
		return tw.Close()
	}
	if l.templates != "" {
		if err := addTree(tw, l.templates, "templates"); err != nil {
			return err
		}
	}
	if err := addTree(tw, l.rootfs, "rootfs"); err != nil {
		return err
	}
	return tw.Close()
}

// addTree adds the tree at dir under the name prefix, skipping, at the top
// of a bare root file system, the files goldvm's image store keeps there.
func addTree(tw *tar.Writer, dir, prefix string) error {
	return walkSorted(dir, func(p string, fi fs.FileInfo) error {
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		name := prefix
		if rel != "." {
			name = prefix + "/" + filepath.ToSlash(rel)
		}
		hdr := &tar.Header{Name: name, ModTime: fi.ModTime(), Format: tar.FormatPAX}
		switch {
		case fi.IsDir():
			hdr.Typeflag = tar.TypeDir
			hdr.Name += "/"
			hdr.Mode = 0o755
			if fi.Name() == "tmp" {
				hdr.Mode = 0o1777
			}
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			hdr.Typeflag = tar.TypeSymlink
			hdr.Linkname = target
			hdr.Mode = 0o777
		case fi.Mode().IsRegular():
			mode := int64(0o644)
			if fi.Mode()&0o111 != 0 || executable(p) {
				mode = 0o755
			}
			return addFile(tw, p, name, mode)
		default:
			return nil // the image store keeps no other kind of file
		}
		return tw.WriteHeader(hdr)
	})
}

// executable reports whether the file at p starts as a program does: an
// ELF header or a "#!" line.
func executable(p string) bool {
	f, err := os.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	head := make([]byte, 4)
	n, _ := io.ReadFull(f, head)
	head = head[:n]
	return bytes.HasPrefix(head, []byte("\x7fELF")) || bytes.HasPrefix(head, []byte("#!"))
}

// walkSorted calls fn on dir and everything under it, depth first, in
// name order, without following symlinks.
func walkSorted(dir string, fn func(p string, fi fs.FileInfo) error) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if err := fn(dir, fi); err != nil {
		return err
	}
	if !fi.IsDir() {
		return nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name() < entries[j].Name() })
	for _, e := range entries {
		if err := walkSorted(filepath.Join(dir, e.Name()), fn); err != nil {
			return err
		}
	}
	return nil
}

func addFile(tw *tar.Writer, path, name string, mode int64) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	hdr := &tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: mode, Size: fi.Size(), ModTime: fi.ModTime(), Format: tar.FormatPAX}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	_, err = io.Copy(tw, f)
	return err
}

// ensureImage makes sure LXD has the gold image of spec, aliased
// goldvm/<key>, importing it the first time (one import per key at a
// time; the others wait for it).
func (d *Driver) ensureImage(ctx context.Context, spec hypervisor.Spec) error {
	mu := d.imageLock(spec.ImageKey)
	if err := mu.lock(ctx); err != nil {
		return err
	}
	defer mu.unlock()
	alias := imageAlias(spec.ImageKey)
	err := d.c.do(ctx, http.MethodGet, "/1.0/images/aliases/"+alias, nil, nil)
	if err == nil || !isStatus(err, http.StatusNotFound) {
		return err
	}
	l, err := findLayout(spec.GoldDir, spec.ImageKey, d.cfg.InstanceType)
	if err != nil {
		return err
	}
	fp, err := d.upload(ctx, l)
	if err != nil {
		return err
	}
	err = d.c.do(ctx, http.MethodPost, "/1.0/images/aliases", map[string]string{
		"name": alias, "target": fp, "description": "goldvm gold image " + spec.ImageKey,
	}, nil)
	if isStatus(err, http.StatusConflict) {
		err = nil // made meanwhile by another goldvm on the same LXD
	}
	if err == nil {
		d.log.Info("imported gold image into LXD", "key", spec.ImageKey, "fingerprint", fp, "alias", alias)
	}
	return err
}

// imageLock returns the lock of the gold image key: one import or removal
// of an image at a time.
func (d *Driver) imageLock(key string) keyLock {
	d.mu.Lock()
	defer d.mu.Unlock()
	l, ok := d.imageLocks[key]
	if !ok {
		l = make(keyLock, 1)
		d.imageLocks[key] = l
	}
	return l
}

// keyLock is a mutex whose Lock gives up when its context ends.
type keyLock chan struct{}

func (l keyLock) lock(ctx context.Context) error {
	select {
	case l <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (l keyLock) unlock() { <-l }

// upload streams l to LXD as a unified tarball (POST /1.0/images) and
// returns the image's fingerprint, the tarball's SHA-256. An image LXD
// already has under that fingerprint (its alias was removed) is no error.
func (d *Driver) upload(ctx context.Context, l *layout) (string, error) {
	pr, pw := io.Pipe()
	h := sha256.New()
	wrote := make(chan error, 1)
	go func() {
		err := writeTar(io.MultiWriter(pw, h), l)
		pw.CloseWithError(err)
		wrote <- err
	}()
	r, err := d.c.raw(ctx, http.MethodPost, "/1.0/images", pr, http.Header{"X-Lxd-Public": {"0"}})
	pr.CloseWithError(errors.New("upload ended"))
	werr := <-wrote
	if werr != nil && err == nil {
		return "", fmt.Errorf("packing the gold image for LXD: %w", werr)
	}
	fp := hex.EncodeToString(h.Sum(nil))
	if err == nil {
		var op struct {
			Metadata map[string]string `json:"metadata"`
		}
		err = d.c.finish(ctx, http.MethodPost, "/1.0/images", r, &op)
		if err == nil && op.Metadata["fingerprint"] != "" {
			fp = op.Metadata["fingerprint"]
		}
	}
	var ae *apiError
	if errors.As(err, &ae) && strings.Contains(ae.Message, "already exists") {
		err = nil
	}
	if werr != nil && err != nil && !errors.Is(werr, io.ErrClosedPipe) {
		err = fmt.Errorf("%w (packing: %v)", err, werr)
	}
	return fp, err
}

// ForgetImage removes LXD's copy of the gold image key (see
// hypervisor.ImageForgetter), unless an instance still uses it.
func (d *Driver) ForgetImage(ctx context.Context, key string) error {
	mu := d.imageLock(key)
	if err := mu.lock(ctx); err != nil {
		return err
	}
	defer mu.unlock()
	var alias struct {
		Target string `json:"target"`
	}
	err := d.c.do(ctx, http.MethodGet, "/1.0/images/aliases/"+imageAlias(key), nil, &alias)
	if isStatus(err, http.StatusNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	insts, err := d.instances(ctx)
	if err != nil {
		return err
	}
	for _, in := range insts {
		if in.Config[keyImage] == key || in.Config["volatile.base_image"] == alias.Target {
			d.log.Info("LXD image kept: an instance uses it", "key", key, "instance", in.Name)
			return nil
		}
	}
	err = d.c.do(ctx, http.MethodDelete, "/1.0/images/"+alias.Target, nil, nil)
	if isStatus(err, http.StatusNotFound) {
		err = nil
	}
	if err == nil {
		d.log.Info("removed gold image from LXD", "key", key, "fingerprint", alias.Target)
	}
	return err
}
