package image

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/machine"
)

// An image's package is the image as another goldvm fetches it by URL and
// checksum (GET /images/{key}/package): a tar.zst of its machine.json, if
// it has one, then its disk named "disk.<format>" (an image without a
// prepared disk: its regular files in archive order). It is made on the
// fly, never staged on disk, and is the same bytes every time: fixed tar
// headers (mode 0644, uid and gid 0, no user names, mtime 0), a fixed
// order, and one zstd encoder configuration, single-threaded. Its sha256
// is computed once and recorded (see PackageSHA256); a captured image's
// key is that sha256, so a package re-imported elsewhere keeps its key.

// packageSumName is the sidecar holding the sha256 of the package of an
// image that was not captured here (computed at its first request).
const packageSumName = "package-sha256"

// packageFormatVersion changes whenever the package's bytes would (its
// layout, or the zstd encoder's output): a recorded sum of another
// version is computed again.
const packageFormatVersion = "goldvm-package-1"

// packageEntry is one file of a package: its name in the tar and its path.
type packageEntry struct{ name, path string }

// packageEntries lists the files of the package of the image in dir (its
// temp dir while it is published, then its store dir), as m describes it.
func packageEntries(dir string, m *marker) ([]packageEntry, error) {
	files := filepath.Join(dir, filesDirName)
	var out []packageEntry
	if m.Disk != nil {
		mj := filepath.Join(files, machine.FileName)
		if fi, err := os.Lstat(mj); err == nil && fi.Mode().IsRegular() {
			out = append(out, packageEntry{machine.FileName, mj})
		} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, ioErr("reading image", err)
		}
		return append(out, packageEntry{"disk." + m.Disk.Format, filepath.Join(dir, filepath.FromSlash(m.Disk.Path))}), nil
	}
	for _, f := range m.Files {
		if f.Type == "file" || f.Type == "hardlink" {
			out = append(out, packageEntry{f.Path, filepath.Join(files, filepath.FromSlash(f.Path))})
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("image %s has no files to package", m.Key)
	}
	return out, nil
}

// newPackageEncoder is the one zstd configuration of packages.
func newPackageEncoder(w io.Writer) (*zstd.Encoder, error) {
	return zstd.NewWriter(w, zstd.WithEncoderConcurrency(1), zstd.WithEncoderLevel(zstd.SpeedDefault),
		zstd.WithWindowSize(8<<20), zstd.WithEncoderCRC(true), zstd.WithZeroFrames(false), zstd.WithLowerEncoderMem(false))
}

// onlyWriter and onlyReader hide ReadFrom and WriteTo, so that every copy
// goes through the same fixed buffer.
type onlyWriter struct{ io.Writer }
type onlyReader struct{ io.Reader }

// writePackage writes the package of entries to w.
func writePackage(ctx context.Context, w io.Writer, entries []packageEntry) error {
	zw, err := newPackageEncoder(w)
	if err != nil {
		return fmt.Errorf("zstd encoder: %w", err)
	}
	defer zw.Close()
	tw := tar.NewWriter(zw)
	buf := make([]byte, 1<<20)
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return err
		}
		f, err := os.Open(e.path)
		if err != nil {
			return ioErr("packaging image", err)
		}
		fi, err := f.Stat()
		if err != nil {
			f.Close()
			return ioErr("packaging image", err)
		}
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: e.name, Mode: 0o644, Size: fi.Size(), ModTime: time.Unix(0, 0)}
		if err := tw.WriteHeader(hdr); err != nil {
			f.Close()
			return fmt.Errorf("packaging %s: %w", e.name, err)
		}
		n, err := io.CopyBuffer(onlyWriter{tw}, onlyReader{&ctxReader{ctx, f}}, buf)
		f.Close()
		if err != nil {
			return fmt.Errorf("packaging %s: %w", e.name, err)
		}
		if n != fi.Size() {
			return fmt.Errorf("packaging %s: it changed size while read", e.name)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("packaging: %w", err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("packaging: %w", err)
	}
	return nil
}

// ctxReader stops reading when its context ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// packageSum returns the sha256 (hex) of the package of entries.
func packageSum(ctx context.Context, entries []packageEntry) (string, error) {
	h := sha256.New()
	if err := writePackage(ctx, h, entries); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// PackageSHA256 returns the sha256 (hex) of image key's package: recorded
// at capture, or computed at the first call and kept beside the image.
func (s *Store) PackageSHA256(ctx context.Context, key string) (string, error) {
	g, m, err := s.published(key)
	if err != nil {
		return "", err
	}
	if sum := recordedPackageSum(s.dir, m); sum != "" {
		return sum, nil
	}
	entries, err := packageEntries(filepath.Join(s.dir, key), m)
	if err != nil {
		return "", err
	}
	sum, err := packageSum(ctx, entries)
	if err != nil {
		return "", err
	}
	if err := writeAtomic(filepath.Join(s.dir, g.Key), packageSumName, []byte(packageFormatVersion+" "+sum+"\n")); err != nil {
		s.log.Warn("cannot record the package checksum", "key", key, "err", err)
	}
	return sum, nil
}

// recordedPackageSum is the package sha256 recorded for the image of
// marker m in the store dir, or "".
func recordedPackageSum(dir string, m *marker) string {
	if m.Package != nil && m.Package.Format == packageFormatVersion {
		return m.Package.SHA256
	}
	b, err := os.ReadFile(filepath.Join(dir, m.Key, packageSumName))
	if err != nil {
		return ""
	}
	v, sum, ok := strings.Cut(strings.TrimSpace(string(b)), " ")
	if !ok || v != packageFormatVersion || len(sum) != 2*sha256.Size {
		return ""
	}
	return sum
}

// WritePackage writes image key's package to w and checks it against sum
// (PackageSHA256): a package whose bytes differ (the image changed on disk,
// or the encoder did) fails with an error once all was written, so that a
// caller can abort the transfer rather than end it.
func (s *Store) WritePackage(ctx context.Context, key, sum string, w io.Writer) error {
	_, m, err := s.published(key)
	if err != nil {
		return err
	}
	entries, err := packageEntries(filepath.Join(s.dir, key), m)
	if err != nil {
		return err
	}
	s.Touch(key)
	h := sha256.New()
	if err := writePackage(ctx, io.MultiWriter(w, h), entries); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sum {
		return fmt.Errorf("package of image %s has sha256 %s, recorded %s", key, got, sum)
	}
	return nil
}

// published returns the published image key and its marker.
func (s *Store) published(key string) (*Gold, *marker, error) {
	g, err := s.Get(key)
	if err != nil {
		return nil, nil, err
	}
	m, err := s.readMarker(key)
	if err != nil {
		return nil, nil, errdefs.New(errdefs.ErrNotFound, CodeNotFound, fmt.Sprintf("no image %s", key), err)
	}
	return g, m, nil
}
