//go:build linux

package image

import (
	"archive/zip"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/goldvm/goldvm/internal/errdefs"
)

// TestDiskFull fills a real 2 MiB tmpfs: the fetch must fail with
// disk-full and leave nothing behind. It needs root to mount; without it
// the test is skipped (failed under CI=true).
func TestDiskFull(t *testing.T) {
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=2m"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("mounting a tmpfs: %v", err)
		}
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	for _, tt := range []struct {
		desc string
		data []byte
	}{
		{desc: "tar.zst", data: zst(t, buildTar(t, []entry{{name: "disk.qcow2", body: diskBytes("QFI\xfb", 6<<20, 5)}}))},
		{desc: "zip streamed", data: buildZip(t, []entry{{name: "disk.qcow2", body: diskBytes("QFI\xfb", 6<<20, 6)}})},
		// Stored, sized after its data: taken for the spool path.
		{desc: "zip spooled", data: buildZipMethod(t, []entry{{name: "disk.qcow2", body: diskBytes("QFI\xfb", 6<<20, 6)}}, zip.Store)},
	} {
		t.Run(tt.desc, func(t *testing.T) {
			s, err := NewStore(filepath.Join(dir, "images"), testOptions())
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			srv := newServer(t, tt.data)
			_, err = ensure(t, s, specFor(srv.URL+"/x", tt.data))
			wantCode(t, err, CodeDiskFull, errdefs.ErrUnavailable)
			wantEmpty(t, s)
		})
	}
}
