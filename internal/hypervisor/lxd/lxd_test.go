package lxd

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/hypervisor"
)

func wantCode(t *testing.T, err error, code string) {
	t.Helper()
	if got, _ := errdefs.CodeOf(err); got != code {
		t.Fatalf("error %v has code %q, want %q", err, got, code)
	}
}

// TestUnreachable: no LXD behind the URL is backend-unavailable (503),
// found when the driver is made, before anything is created.
func TestUnreachable(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "no-lxd.socket")
	_, err := New(context.Background(), Config{URL: "unix://" + sock})
	wantCode(t, err, api.CodeBackendUnavailable)
	if !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("%v is not ErrUnavailable", err)
	}
	if info, _ := api.LookupCode(api.CodeBackendUnavailable); info.Status != http.StatusServiceUnavailable {
		t.Errorf("backend-unavailable is HTTP %d, want 503", info.Status)
	}
}

// TestBadSettings: every unusable setting is named, with code
// invalid-lxd-setting, before LXD is asked anything.
func TestBadSettings(t *testing.T) {
	for name, cfg := range map[string]Config{
		"type":         {InstanceType: "jail"},
		"project":      {Project: "no/slash"},
		"scheme":       {URL: "http://host:8443"},
		"https-nocert": {URL: "https://host:8443"},
		"https-path":   {URL: "https://host:8443/1.0", CertFile: "c", KeyFile: "k"},
		"https-nofile": {URL: "https://host:8443", CertFile: "/nonexistent/c", KeyFile: "/nonexistent/k"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := New(context.Background(), cfg)
			wantCode(t, err, api.CodeInvalidLXDSetting)
		})
	}
}

// writeTree makes files (path → content; content "->x" is a symlink to x,
// a path ending in / a directory) under a new directory.
func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for p, c := range files {
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		var err error
		switch {
		case p[len(p)-1] == '/':
			err = os.MkdirAll(full, 0o755)
		case len(c) > 2 && c[:2] == "->":
			err = os.Symlink(c[2:], full)
		default:
			err = os.WriteFile(full, []byte(c), 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestFindLayout: the layouts a gold image may have, the metadata built
// from os-release when the package has none, and the errors.
func TestFindLayout(t *testing.T) {
	osRel := "NAME=\"Tiny\"\nID=tiny\nVERSION_ID=\"3.1\"\nPRETTY_NAME='Tiny Linux 3.1'\n# comment\n"
	bare := writeTree(t, map[string]string{"sbin/init": "#!/bin/sh\n", "etc/os-release": osRel})
	l, err := findLayout(bare, "sha256-ab", TypeContainer)
	if err != nil || l.rootfs != bare || l.templates != "" {
		t.Fatalf("bare rootfs: %+v, %v", l, err)
	}
	var meta struct {
		Architecture string            `json:"architecture"`
		Properties   map[string]string `json:"properties"`
	}
	if err := json.Unmarshal(l.metadata, &meta); err != nil {
		t.Fatalf("built metadata %s: %v", l.metadata, err)
	}
	want := map[string]string{"os": "tiny", "release": "3.1", "description": "Tiny Linux 3.1"}
	for k, v := range want {
		if meta.Properties[k] != v {
			t.Errorf("properties[%s] = %q, want %q (%s)", k, meta.Properties[k], v, l.metadata)
		}
	}
	if meta.Architecture != lxdArch(runtime.GOARCH) {
		t.Errorf("architecture %q, want the host's, %q", meta.Architecture, lxdArch(runtime.GOARCH))
	}

	// An os-release that is a link out of the root file system is not
	// followed.
	escape := writeTree(t, map[string]string{"sbin/init": "x", "etc/os-release": "->/etc/os-release"})
	l, err = findLayout(escape, "sha256-cd", TypeContainer)
	if err != nil || !bytes.Contains(l.metadata, []byte("goldvm image sha256-cd")) {
		t.Fatalf("os-release linking out: %s, %v", l.metadata, err)
	}

	unified := writeTree(t, map[string]string{"metadata.yaml": "architecture: x86_64\n", "rootfs/bin/sh": "x", "templates/hosts.tpl": "x"})
	l, err = findLayout(unified, "k", TypeContainer)
	if err != nil || string(l.metadata) != "architecture: x86_64\n" || l.rootfs != filepath.Join(unified, "rootfs") || l.templates != filepath.Join(unified, "templates") {
		t.Fatalf("unified: %+v, %v", l, err)
	}

	_, err = findLayout(writeTree(t, map[string]string{"disk.qcow2": "QFI\xfb..."}), "k", TypeContainer)
	wantCode(t, err, api.CodeImageNoRootfs)
	_, err = findLayout(writeTree(t, map[string]string{"readme": "x"}), "k", TypeVM)
	wantCode(t, err, api.CodeImageNoDisk)
	_, err = findLayout(writeTree(t, map[string]string{"a.qcow2": "QFI\xfb1", "b.img": "QFI\xfb2"}), "k", TypeVM)
	wantCode(t, err, api.CodeImageManyDisks)
	vm := writeTree(t, map[string]string{"raw.img": "not qcow2", "d/disk.qcow2": "QFI\xfb1"})
	if l, err = findLayout(vm, "k", TypeVM); err != nil || l.disk != filepath.Join(vm, "d/disk.qcow2") {
		t.Fatalf("vm: %+v, %v", l, err)
	}
}

// TestWriteTar: the unified tarball is the same bytes every time, owned by
// root, with programs executable and tmp sticky, whatever the sealed
// tree's modes.
func TestWriteTar(t *testing.T) {
	dir := writeTree(t, map[string]string{
		"rootfs/sbin/init": "#!/bin/sh\n", "rootfs/bin/busybox": "\x7fELF...", "rootfs/bin/sh": "->busybox",
		"rootfs/etc/hostname": "x\n", "rootfs/tmp/": "",
	})
	seal(t, dir)
	l, err := findLayout(dir, "k", TypeContainer)
	if err != nil {
		t.Fatal(err)
	}
	var a, b bytes.Buffer
	if err := writeTar(&a, l); err != nil {
		t.Fatal(err)
	}
	if err := writeTar(&b, l); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("two tarballs of one image differ")
	}
	got := map[string]string{}
	tr := tar.NewReader(&a)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s owned by %d:%d", h.Name, h.Uid, h.Gid)
		}
		got[h.Name] = os.FileMode(h.Mode).String() + " " + h.Linkname
	}
	want := map[string]string{
		"metadata.yaml": "-rw-r--r-- ", "rootfs/": "-rwxr-xr-x ", "rootfs/sbin/init": "-rwxr-xr-x ",
		"rootfs/bin/busybox": "-rwxr-xr-x ", "rootfs/bin/sh": "-rwxrwxrwx busybox", "rootfs/etc/hostname": "-rw-r--r-- ",
		"rootfs/tmp/": "-rwxrwxrwx ",
	}
	for name, w := range want {
		if got[name] != w {
			t.Errorf("%s: %q, want %q", name, got[name], w)
		}
	}
	if len(got) != len(want)+3 { // rootfs/bin/, rootfs/etc/, rootfs/sbin/
		t.Errorf("entries %v", got)
	}
}

// TestImagesAndStrays: the gold image is imported once for any number of
// VMs and drivers, kept by ForgetImage while an instance uses it and
// removed after; Reap removes the instances of unknown VMs only.
func TestImagesAndStrays(t *testing.T) {
	requireLXD(t)
	gold, key := goldFromPackage(t, containerPackage(t))
	project := testProject(t)
	d1, d2 := newTestDriver(t, project), newTestDriver(t, project)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	spec := func(id string) hypervisor.Spec {
		return hypervisor.Spec{ID: id, Dir: t.TempDir(), GoldDir: gold, ImageKey: key, CPUs: 1, MemoryMiB: 64, Network: api.NetworkNAT}
	}
	keep, stray := spec("keep-"+project[len(project)-8:]), spec("stray-"+project[len(project)-8:])
	if err := d1.Clone(ctx, keep); err != nil {
		t.Fatal(err)
	}
	if err := d2.Clone(ctx, stray); err != nil {
		t.Fatal(err)
	}
	images := func() []string {
		var fps []string
		if err := d1.c.do(ctx, http.MethodGet, "/1.0/images", nil, &fps); err != nil {
			t.Fatal(err)
		}
		return fps
	}
	first := images()
	if len(first) != 1 {
		t.Fatalf("LXD images after two clones by two drivers: %v, want one", first)
	}
	if err := d1.ForgetImage(ctx, key); err != nil {
		t.Fatal(err)
	}
	if got := images(); len(got) != 1 {
		t.Fatalf("ForgetImage removed an image instances use: %v", got)
	}

	if err := d2.Reap(ctx, func(id string) bool { return id == keep.ID }); err != nil {
		t.Fatal(err)
	}
	for s, want := range map[*hypervisor.Spec]bool{&keep: true, &stray: false} {
		_, _, ok, err := d1.lookup(ctx, *s)
		if err != nil || ok != want {
			t.Errorf("after Reap, instance of %s exists: %v (%v), want %v", s.ID, ok, err, want)
		}
	}
	if err := d1.Destroy(ctx, keep); err != nil {
		t.Fatal(err)
	}
	if err := d1.ForgetImage(ctx, key); err != nil {
		t.Fatal(err)
	}
	if got := images(); len(got) != 0 {
		t.Fatalf("images after ForgetImage with no instance: %v", got)
	}
	if err := d1.ForgetImage(ctx, key); err != nil {
		t.Fatalf("ForgetImage of a forgotten image: %v", err)
	}
	// Imported again, it is the same bytes: the same fingerprint.
	if err := d2.Clone(ctx, keep); err != nil {
		t.Fatal(err)
	}
	if again := images(); len(again) != 1 || filepath.Base(again[0]) != filepath.Base(first[0]) {
		t.Fatalf("re-import: %v, was %v", again, first)
	}
	if err := d2.Destroy(ctx, keep); err != nil {
		t.Fatal(err)
	}
}
