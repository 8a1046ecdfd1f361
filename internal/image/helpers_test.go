package image

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/flate"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// entry is one archive member for the test builders.
type entry struct {
	name   string
	body   []byte
	typ    byte // tar type flag; 0 means regular
	link   string
	mode   int64
	size   int64 // declared size override for tar (0: len(body))
	noBody bool  // write the header only
}

func buildTar(t testing.TB, entries []entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		typ := e.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		mode := e.mode
		if mode == 0 {
			mode = 0o644
			if typ == tar.TypeDir {
				mode = 0o755
			}
		}
		h := &tar.Header{Name: e.name, Typeflag: typ, Linkname: e.link, Mode: mode, Format: tar.FormatPAX,
			ModTime: time.Unix(1700000000, 0)}
		if typ == tar.TypeReg {
			h.Size = int64(len(e.body))
			if e.size != 0 {
				h.Size = e.size
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("tar header %s: %v", e.name, err)
		}
		if e.noBody {
			tw.Flush()
			return buf.Bytes() // truncated on purpose
		}
		if len(e.body) > 0 {
			if _, err := tw.Write(e.body); err != nil {
				t.Fatalf("tar body %s: %v", e.name, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func buildZip(t testing.TB, entries []entry) []byte {
	t.Helper()
	return buildZipMethod(t, entries, zip.Deflate)
}

// buildZipMethod writes entries with archive/zip and the given method.
// archive/zip puts every file's sizes in a data descriptor after its
// data, so a stored (zip.Store) file's end cannot be found as it streams.
func buildZipMethod(t testing.TB, entries []entry, method uint16) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, e := range entries {
		h := &zip.FileHeader{Name: e.name, Method: method}
		switch e.typ {
		case tar.TypeDir:
			h.Name = strings.TrimSuffix(e.name, "/") + "/"
			h.SetMode(0o755 | os.ModeDir)
		case tar.TypeSymlink:
			h.SetMode(0o777 | os.ModeSymlink)
			e.body = []byte(e.link)
		case tar.TypeChar:
			h.SetMode(0o644 | os.ModeDevice | os.ModeCharDevice)
		default:
			h.SetMode(0o644)
		}
		w, err := zw.CreateHeader(h)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(e.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func gz(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	w.Write(b)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func zst(t testing.TB, b []byte) []byte {
	t.Helper()
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	return enc.EncodeAll(b, nil)
}

func xzc(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := xz.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(b)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// bz2 compresses with the bzip2 command (the standard library only
// decompresses). Without it the test is skipped, except under CI=true.
func bz2(t testing.TB, b []byte) []byte {
	t.Helper()
	p, err := exec.LookPath("bzip2")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("bzip2 command needed under CI: %v", err)
		}
		t.Skip("bzip2 command not installed")
	}
	cmd := exec.Command(p, "-c", "-1")
	cmd.Stdin = bytes.NewReader(b)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("bzip2: %v", err)
	}
	return out
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// diskBytes returns a fake disk image: magic, then random and zero blocks.
func diskBytes(magic string, size int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed+1))
	b := make([]byte, size)
	for off := 0; off < size; off += 64 << 10 {
		if (off/(64<<10))%2 == 0 {
			end := min(off+64<<10, size)
			for i := off; i < end; i += 8 {
				v := r.Uint64()
				for j := 0; j < 8 && i+j < end; j++ {
					b[i+j] = byte(v >> (8 * j))
				}
			}
		}
	}
	copy(b, magic)
	if magic == "QFI\xfb" {
		copy(b, qcow2Header("", ""))
	}
	return b
}

// qcow2Header returns the first 512 bytes of a version 3 qcow2 with 64 KiB
// clusters, optionally naming a backing file and an external data file.
func qcow2Header(backing, dataFile string) []byte {
	h := make([]byte, 512)
	be := binary.BigEndian
	copy(h, "QFI\xfb")
	be.PutUint32(h[4:], 3)
	be.PutUint32(h[20:], 16)    // cluster bits
	be.PutUint64(h[24:], 1<<30) // virtual size
	be.PutUint32(h[96:], 4)     // refcount order
	be.PutUint32(h[100:], 104)  // header length
	off := 104
	if dataFile != "" {
		be.PutUint32(h[off:], 0x44415441)
		be.PutUint32(h[off+4:], uint32(len(dataFile)))
		copy(h[off+8:], dataFile)
		off += 8 + (len(dataFile)+7)&^7
	}
	off += 8 // end of extensions (zeros)
	if backing != "" {
		be.PutUint64(h[8:], uint64(off))
		be.PutUint32(h[16:], uint32(len(backing)))
		copy(h[off:], backing)
	}
	return h
}

// server is a loopback image server that counts requests and can misbehave.
type server struct {
	*httptest.Server
	data []byte
	etag string

	mu       sync.Mutex
	requests int
	ranges   []string
	ifRanges []string
	// hook may handle request n (1-based) itself and return true.
	hook func(n int, w http.ResponseWriter, r *http.Request) bool
}

func newServer(t testing.TB, data []byte) *server {
	s := &server{data: data, etag: `"` + sha(data)[:16] + `"`}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

func (s *server) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.requests++
	n := s.requests
	if rg := r.Header.Get("Range"); rg != "" {
		s.ranges = append(s.ranges, rg)
		s.ifRanges = append(s.ifRanges, r.Header.Get("If-Range"))
	}
	hook := s.hook
	s.mu.Unlock()
	if hook != nil && hook(n, w, r) {
		return
	}
	w.Header().Set("ETag", s.etag)
	http.ServeContent(w, r, "", time.Unix(1700000000, 0), bytes.NewReader(s.data))
}

func (s *server) count() (int, []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests, append([]string(nil), s.ranges...)
}

// cut sends the headers and the first n bytes of data, then breaks the
// connection.
func (s *server) cut(w http.ResponseWriter, n int) {
	w.Header().Set("ETag", s.etag)
	w.Header().Set("Content-Length", fmt.Sprint(len(s.data)))
	w.WriteHeader(http.StatusOK)
	w.Write(s.data[:n])
	w.(http.Flusher).Flush()
	panic(http.ErrAbortHandler)
}

func testOptions() Options {
	return Options{
		RetryBackoff: time.Millisecond,
		StallTimeout: 5 * time.Second,
		Logger:       slog.New(slog.DiscardHandler),
	}
}

func newStore(t testing.TB, opts Options) *Store {
	t.Helper()
	s, err := NewStore(filepath.Join(t.TempDir(), "images"), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func specFor(url string, data []byte) Spec {
	return Spec{URL: url, Checksum: sha(data), ChecksumType: "sha256"}
}

// wantCode fails unless err is an *errdefs.Error with code and category.
func wantCode(t testing.TB, err error, code string, category error) {
	t.Helper()
	if err == nil {
		t.Fatalf("want error %s, got nil", code)
	}
	var e *errdefs.Error
	if !errors.As(err, &e) {
		t.Fatalf("want *errdefs.Error %s, got %T: %v", code, err, err)
	}
	if e.Code != code {
		t.Fatalf("want code %s, got %s: %v", code, e.Code, err)
	}
	if category != nil && !errors.Is(err, category) {
		t.Fatalf("error %v is not in category %v", err, category)
	}
}

// storeNames lists the store directory.
func storeNames(t testing.TB, s *Store) []string {
	t.Helper()
	return listDir(t, s.Dir())
}

// listDir lists the names in dir.
func listDir(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// wantEmpty fails unless the store directory is empty.
func wantEmpty(t testing.TB, s *Store) {
	t.Helper()
	if names := storeNames(t, s); len(names) != 0 {
		t.Fatalf("store should be empty, has %v", names)
	}
}

// tree returns path -> description ("file:<sha>", "dir", "link:<target>")
// for everything under dir.
func tree(t testing.TB, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			return nil
		}
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			tgt, _ := os.Readlink(p)
			out[rel] = "link:" + tgt
		case fi.IsDir():
			out[rel] = "dir"
		default:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			out[rel] = "file:" + sha(b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func ensure(t testing.TB, s *Store, spec Spec) (*Gold, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return s.Ensure(ctx, spec, nil)
}

var _ = io.EOF

func itoa(n int) string { return fmt.Sprint(n) }

func fmtSscanf(s, format string, args ...any) (int, error) { return fmt.Sscanf(s, format, args...) }

func flateWriter(w io.Writer) (*flate.Writer, error) {
	return flate.NewWriter(w, flate.BestCompression)
}

var errNoSpace = syscall.ENOSPC

// rawZip builds a zip with one deflated entry whose header says what the
// caller wants, whatever the data really inflates to.
func rawZip(t testing.TB, name string, deflated []byte, size uint64, crc uint32) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	w, err := zw.CreateRaw(&zip.FileHeader{Name: name, Method: zip.Deflate, CRC32: crc,
		CompressedSize64: uint64(len(deflated)), UncompressedSize64: size})
	if err != nil {
		t.Fatal(err)
	}
	w.Write(deflated)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
