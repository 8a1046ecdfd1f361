package image

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/goldvm/goldvm/api"
)

// diskPreparer is a PrepareDisk that takes files/disk.qcow2 as it is.
func diskPreparer(ctx context.Context, files, scratch string) (Disk, error) {
	p := filepath.Join(files, "disk.qcow2")
	if _, err := os.Stat(p); err != nil {
		return Disk{}, err
	}
	return Disk{Path: p, Format: "qcow2", VirtualSize: 1 << 20}, nil
}

// capturedFiles writes a disk and a machine.json, as a VM's capture does.
func capturedFiles(disk []byte) func(ctx context.Context, files string) error {
	return func(ctx context.Context, files string) error {
		if err := os.WriteFile(filepath.Join(files, "disk.qcow2"), disk, 0o644); err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(files, "machine.json"), []byte(`{"version": 2, "cpu": "max"}`), 0o644)
	}
}

// untar lists a package's entries: name -> content, in order.
func untar(t *testing.T, pkg []byte) ([]*tar.Header, [][]byte) {
	t.Helper()
	zr, err := zstd.NewReader(bytes.NewReader(pkg))
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	tr := tar.NewReader(zr)
	var hdrs []*tar.Header
	var data [][]byte
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return hdrs, data
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		hdrs, data = append(hdrs, h), append(data, b)
	}
}

// A captured image is published under the sha256 of its package, which is
// deterministic (fixed headers, order and encoder); served and fetched by
// URL and that checksum into a second store, it has the same key, files and
// package checksum.
func TestCapturePackageRoundTrip(t *testing.T) {
	opts := testOptions()
	opts.PrepareDisk = diskPreparer
	a := newStore(t, opts)
	ctx := context.Background()
	disk := diskBytes("QFI\xfb", 3<<20, 7)
	parent := api.ImageParent{Key: "sha256-" + sha([]byte("parent")), VM: "vm-1"}
	g, err := a.Capture(ctx, parent, capturedFiles(disk))
	if err != nil {
		t.Fatal(err)
	}
	info, err := a.Info(g.Key)
	if err != nil {
		t.Fatal(err)
	}
	if info.Parent == nil || *info.Parent != parent || info.Format != FormatCaptured || "sha256-"+info.PackageSHA256 != g.Key {
		t.Fatalf("captured image info %+v (key %s)", info, g.Key)
	}
	if g.Machine == nil || g.Machine.Version != api.MachineVersion {
		t.Errorf("captured machine %+v", g.Machine)
	}
	sum, err := a.PackageSHA256(ctx, g.Key)
	if err != nil || "sha256-"+sum != g.Key {
		t.Fatalf("package sha256 %s %v, key %s", sum, err, g.Key)
	}
	var pkg, again bytes.Buffer
	if err := a.WritePackage(ctx, g.Key, sum, &pkg); err != nil {
		t.Fatal(err)
	}
	if err := a.WritePackage(ctx, g.Key, sum, &again); err != nil || !bytes.Equal(pkg.Bytes(), again.Bytes()) {
		t.Fatalf("second package differs (%v)", err)
	}
	if sha(pkg.Bytes()) != sum {
		t.Fatalf("package bytes have sha256 %s, recorded %s", sha(pkg.Bytes()), sum)
	}
	hdrs, data := untar(t, pkg.Bytes())
	if len(hdrs) != 2 || hdrs[0].Name != "machine.json" || hdrs[1].Name != "disk.qcow2" || !bytes.Equal(data[1], disk) {
		t.Fatalf("package entries %v", hdrs)
	}
	for _, h := range hdrs {
		if h.Mode != 0o644 || h.Uid != 0 || h.Gid != 0 || h.Uname != "" || h.Gname != "" || !h.ModTime.Equal(time.Unix(0, 0)) {
			t.Errorf("entry %s has header %+v", h.Name, h)
		}
	}
	// The same content captured again is the same image.
	if g2, err := a.Capture(ctx, parent, capturedFiles(disk)); err != nil || g2.Key != g.Key {
		t.Fatalf("second capture: %v %v", g2, err)
	}
	// A wrong recorded sum fails the write (the server then cuts the reply).
	if err := a.WritePackage(ctx, g.Key, sha([]byte("x")), io.Discard); err == nil {
		t.Error("a package that does not match its sum was written without error")
	}

	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := a.WritePackage(r.Context(), g.Key, sum, w); err != nil {
			panic(http.ErrAbortHandler)
		}
	}))
	defer srv.Close()
	b := newStore(t, opts)
	g3, err := ensure(t, b, Spec{URL: srv.URL + "/package", Checksum: sum, ChecksumType: "sha256"})
	if err != nil {
		t.Fatal(err)
	}
	if g3.Key != g.Key || g3.Format != "tar.zst" {
		t.Fatalf("re-imported image %s (%s), captured %s", g3.Key, g3.Format, g.Key)
	}
	if sum3, err := b.PackageSHA256(ctx, g3.Key); err != nil || sum3 != sum {
		t.Fatalf("re-imported image's package sha256 %s %v, want %s", sum3, err, sum)
	}
	if got, want := tree(t, g3.Dir), tree(t, g.Dir); len(got) != len(want) || got["disk.qcow2"] != want["disk.qcow2"] || got["machine.json"] != want["machine.json"] {
		t.Fatalf("re-imported files %v, captured %v", got, want)
	}
	// Recorded beside the image, and shown.
	if i, err := b.Info(g3.Key); err != nil || i.PackageSHA256 != sum {
		t.Fatalf("re-imported info %+v %v", i, err)
	}
	// Eviction takes the re-imported copy, never the capture (the only one).
	for _, st := range []*Store{a, b} {
		if _, err := st.Evict(EvictPolicy{MaxBytes: 1}, nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.Get(g.Key); err != nil {
		t.Errorf("the capture was evicted: %v", err)
	}
	if _, err := b.Get(g.Key); err == nil {
		t.Error("the re-imported image was not evicted")
	}
}

// A capture whose fill fails leaves nothing in the store.
func TestCaptureFailureLeavesNothing(t *testing.T) {
	s := newStore(t, testOptions())
	_, err := s.Capture(context.Background(), api.ImageParent{VM: "vm-1"}, func(ctx context.Context, files string) error {
		os.WriteFile(filepath.Join(files, "half"), []byte("x"), 0o644)
		return errors.New("flatten failed")
	})
	if err == nil {
		t.Fatal("capture succeeded")
	}
	wantEmpty(t, s)
}
