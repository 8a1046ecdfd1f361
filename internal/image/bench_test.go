package image

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkEnsure measures the one-pass fetch of a 64 MiB disk-like image
// over loopback HTTP, and the same work done in sequence (download to a
// file, hash the file, unpack the file) in the same run. It reports the
// ratio one-pass/sequential (lower is better) as "onepass/seq".
func BenchmarkEnsure(b *testing.B) {
	disk := benchDisk(64 << 20)
	tarball := buildTar(b, []entry{{name: "disk.raw", body: disk}})
	for _, f := range []struct {
		name string
		data []byte
	}{
		{"tar.gz", gz(b, tarball)},
		{"tar.zst", zst(b, tarball)},
		{"zip", buildZip(b, []entry{{name: "disk.raw", body: disk}})},
	} {
		b.Run(f.name, func(b *testing.B) {
			srv := newServer(b, f.data)
			spec := specFor(srv.URL+"/disk."+f.name, f.data)
			b.SetBytes(int64(len(disk)))
			var onePass, seq time.Duration
			for b.Loop() {
				dir := b.TempDir()
				t0 := time.Now()
				s, err := NewStore(filepath.Join(dir, "images"), testOptions())
				if err != nil {
					b.Fatal(err)
				}
				if _, err := s.Ensure(context.Background(), spec, nil); err != nil {
					b.Fatal(err)
				}
				s.Close()
				onePass += time.Since(t0)

				t0 = time.Now()
				sequential(b, srv.URL+"/disk."+f.name, filepath.Join(dir, "seq"), spec.Checksum)
				seq += time.Since(t0)
				removeTree(dir)
			}
			b.ReportMetric(onePass.Seconds()/seq.Seconds(), "onepass/seq")
		})
	}
}

// sequential is the baseline: each stage finishes before the next starts.
func sequential(b *testing.B, url, dir, sum string) {
	os.MkdirAll(filepath.Join(dir, "files"), 0o755)
	resp, err := http.Get(url)
	if err != nil {
		b.Fatal(err)
	}
	pkg := filepath.Join(dir, "pkg")
	f, err := os.Create(pkg)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		b.Fatal(err)
	}
	resp.Body.Close()
	f.Seek(0, io.SeekStart)
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		b.Fatal(err)
	}
	if hex.EncodeToString(h.Sum(nil)) != sum {
		b.Fatal("checksum")
	}
	f.Seek(0, io.SeekStart)
	root, err := os.OpenRoot(filepath.Join(dir, "files"))
	if err != nil {
		b.Fatal(err)
	}
	defer root.Close()
	x := newExtractor(context.Background(), root, limits{maxBytes: 1 << 30, maxEntries: 10})
	needsSpool, err := x.extractStream(f, "")
	if err == nil && needsSpool {
		var fi os.FileInfo
		if fi, err = f.Stat(); err == nil {
			err = x.extractZip(f, fi.Size())
		}
	}
	if err != nil {
		b.Fatal(err)
	}
	f.Close()
	if err := sealTree(filepath.Join(dir, "files")); err != nil {
		b.Fatal(err)
	}
}

// benchDisk is disk-like: random, zero and text blocks of 64 KiB.
func benchDisk(size int) []byte {
	d := diskBytes("QFI\xfb", size, 42)
	text := bytes.Repeat([]byte("Lorem ipsum dolor sit amet /usr/lib/x86_64-linux-gnu "), 2000)
	for off := 3 * 64 << 10; off+64<<10 <= size; off += 4 * 64 << 10 {
		copy(d[off:off+64<<10], text)
	}
	return d
}
