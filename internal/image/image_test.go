package image

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"cmp"
	"context"
	"crypto/md5"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/netpolicy"
)

func TestKey(t *testing.T) {
	sum := strings.Repeat("ab", 32)
	tests := []struct {
		desc    string
		spec    Spec
		want    string
		wantErr string
	}{
		{desc: "sha256", spec: Spec{Checksum: sum, ChecksumType: "sha256"}, want: "sha256-" + sum},
		{desc: "upper case hex and type", spec: Spec{Checksum: strings.ToUpper(sum), ChecksumType: "SHA256"}, want: "sha256-" + sum},
		{desc: "md5", spec: Spec{Checksum: strings.Repeat("0f", 16), ChecksumType: "md5"}, want: "md5-" + strings.Repeat("0f", 16)},
		{desc: "sha1", spec: Spec{Checksum: strings.Repeat("0f", 20), ChecksumType: "sha1"}, want: "sha1-" + strings.Repeat("0f", 20)},
		{desc: "sha512", spec: Spec{Checksum: strings.Repeat("0f", 64), ChecksumType: "sha512"}, want: "sha512-" + strings.Repeat("0f", 64)},
		{desc: "unknown type", spec: Spec{Checksum: sum, ChecksumType: "crc32"}, wantErr: CodeInvalidChecksum},
		{desc: "empty type", spec: Spec{Checksum: sum}, wantErr: CodeInvalidChecksum},
		{desc: "too short", spec: Spec{Checksum: sum[:62], ChecksumType: "sha256"}, wantErr: CodeInvalidChecksum},
		{desc: "md5 length for sha256", spec: Spec{Checksum: strings.Repeat("0f", 16), ChecksumType: "sha256"}, wantErr: CodeInvalidChecksum},
		{desc: "not hex", spec: Spec{Checksum: strings.Repeat("zz", 32), ChecksumType: "sha256"}, wantErr: CodeInvalidChecksum},
		{desc: "path traversal", spec: Spec{Checksum: "../../../../etc/passwd" + strings.Repeat("a", 42), ChecksumType: "sha256"}, wantErr: CodeInvalidChecksum},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			got, err := Key(tt.spec)
			if tt.wantErr != "" {
				wantCode(t, err, tt.wantErr, errdefs.ErrInvalid)
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Key = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

// sampleFiles is the content of the archives in the format tests.
func sampleFiles() (disk, meta []byte) {
	return diskBytes("QFI\xfb", 700<<10, 1), []byte(`{"os":"debian"}`)
}

func sampleEntries() []entry {
	disk, meta := sampleFiles()
	return []entry{
		{name: "./", typ: tar.TypeDir},
		{name: "./disk.qcow2", body: disk},
		{name: "./conf/", typ: tar.TypeDir},
		{name: "./conf/meta.json", body: meta},
		{name: "./current", typ: tar.TypeSymlink, link: "disk.qcow2"},
		{name: "./conf/up", typ: tar.TypeSymlink, link: "../disk.qcow2"},
	}
}

func sampleTree(withHardlink bool) map[string]string {
	disk, meta := sampleFiles()
	m := map[string]string{
		"disk.qcow2":     "file:" + sha(disk),
		"conf":           "dir",
		"conf/meta.json": "file:" + sha(meta),
		"current":        "link:disk.qcow2",
		"conf/up":        "link:../disk.qcow2",
	}
	if withHardlink {
		m["copy.qcow2"] = "file:" + sha(disk)
	}
	return m
}

func TestEnsureFormats(t *testing.T) {
	withLink := append(sampleEntries(), entry{name: "copy.qcow2", typ: tar.TypeLink, link: "./disk.qcow2"})
	plainTar := buildTar(t, withLink)
	disk, _ := sampleFiles()
	vmdk := append([]byte("KDMV"), make([]byte, 100<<10)...)
	raw := bytes.Repeat([]byte("not a known format "), 1000)
	tests := []struct {
		desc     string
		path     string
		data     func(t *testing.T) []byte
		want     map[string]string
		format   string
		wantErr  string
		unpacked bool // expect an "unpacking" progress phase
	}{
		{desc: "tar", path: "/img", data: func(*testing.T) []byte { return plainTar }, want: sampleTree(true), format: "tar"},
		{desc: "tar.gz named .zip", path: "/img.zip", data: func(t *testing.T) []byte { return gz(t, plainTar) }, want: sampleTree(true), format: "tar.gz"},
		{desc: "tar.bz2", path: "/img.tar.bz2", data: func(t *testing.T) []byte { return bz2(t, plainTar) }, want: sampleTree(true), format: "tar.bz2"},
		{desc: "tar.zst", path: "/img.tar.zst", data: func(t *testing.T) []byte { return zst(t, plainTar) }, want: sampleTree(true), format: "tar.zst"},
		{desc: "tar.xz", path: "/img.tar.xz", data: func(t *testing.T) []byte { return xzc(t, plainTar) }, want: sampleTree(true), format: "tar.xz"},
		{desc: "zip", path: "/img.tar", data: func(t *testing.T) []byte { return buildZip(t, sampleEntries()) }, want: sampleTree(false), format: "zip"},
		{desc: "zip of stored files, unpacked after the download", path: "/img.zip", data: func(t *testing.T) []byte { return buildZipMethod(t, sampleEntries(), zip.Store) }, want: sampleTree(false), format: "zip", unpacked: true},
		{desc: "bare qcow2", path: "/download?id=1", data: func(*testing.T) []byte { return disk }, want: map[string]string{DiskQcow2: "file:" + sha(disk)}, format: "qcow2"},
		{desc: "qcow2.gz", path: "/d.gz", data: func(t *testing.T) []byte { return gz(t, disk) }, want: map[string]string{DiskQcow2: "file:" + sha(disk)}, format: "qcow2.gz"},
		{desc: "bare vmdk", path: "/d", data: func(*testing.T) []byte { return vmdk }, want: map[string]string{DiskVMDK: "file:" + sha(vmdk)}, format: "vmdk"},
		{desc: "raw .img", path: "/disk.img", data: func(*testing.T) []byte { return raw }, want: map[string]string{DiskRaw: "file:" + sha(raw)}, format: "raw"},
		{desc: "raw .raw.xz", path: "/disk.raw.xz", data: func(t *testing.T) []byte { return xzc(t, raw) }, want: map[string]string{DiskRaw: "file:" + sha(raw)}, format: "raw.xz"},
		{desc: "unknown content, other name", path: "/disk.bin", data: func(*testing.T) []byte { return raw }, wantErr: CodeUnsupported},
		{desc: "nested compression", path: "/x.gz", data: func(t *testing.T) []byte { return gz(t, gz(t, plainTar)) }, wantErr: CodeUnsupported},
		{desc: "truncated gzip", path: "/x.gz", data: func(t *testing.T) []byte { b := gz(t, plainTar); return b[:len(b)/2] }, wantErr: CodeCorrupt},
		{desc: "truncated tar", path: "/x.tar", data: func(t *testing.T) []byte { return plainTar[:len(plainTar)/2] }, wantErr: CodeCorrupt},
		{desc: "gzip with bad crc", path: "/x.gz", data: func(t *testing.T) []byte {
			b := bytes.Clone(gz(t, plainTar))
			b[len(b)-6] ^= 0xff
			return b
		}, wantErr: CodeCorrupt},
		{desc: "empty", path: "/x.img", data: func(*testing.T) []byte { return nil }, wantErr: CodeCorrupt},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			data := tt.data(t)
			srv := newServer(t, data)
			s := newStore(t, testOptions())
			var mu sync.Mutex
			var phases []string
			g, err := s.Ensure(context.Background(), specFor(srv.URL+tt.path, data), func(p Progress) {
				mu.Lock()
				defer mu.Unlock()
				if len(phases) == 0 || phases[len(phases)-1] != p.Phase {
					phases = append(phases, p.Phase)
				}
			})
			if tt.wantErr != "" {
				wantCode(t, err, tt.wantErr, errdefs.ErrInvalid)
				wantEmpty(t, s)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := tree(t, g.Dir)
			if !equalMaps(got, tt.want) {
				t.Fatalf("tree:\n got %v\nwant %v", got, tt.want)
			}
			if g.Format != tt.format {
				t.Errorf("format %q, want %q", g.Format, tt.format)
			}
			wantPhases := []string{PhaseDownloading, PhaseVerifying}
			if tt.unpacked {
				wantPhases = append(wantPhases, PhaseUnpacking)
			}
			if !slices.Equal(phases, wantPhases) {
				t.Errorf("phases %v, want %v", phases, wantPhases)
			}
			checkSealed(t, g.Dir)
			// Cached now: a second Ensure makes no request.
			before, _ := srv.count()
			g2, err := ensure(t, s, specFor(srv.URL+tt.path, data))
			if err != nil || g2.Dir != g.Dir {
				t.Fatalf("second Ensure: %v, %v", g2, err)
			}
			if after, _ := srv.count(); after != before {
				t.Fatalf("cached Ensure made %d requests", after-before)
			}
			if names := storeNames(t, s); !slices.Equal(names, []string{g.Key}) {
				t.Fatalf("store holds %v", names)
			}
		})
	}
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// checkSealed asserts that files are 0444 and directories 0555.
func checkSealed(t *testing.T, dir string) {
	t.Helper()
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
		case fi.IsDir():
			if fi.Mode().Perm() != 0o555 {
				t.Errorf("%s: mode %v, want 0555", p, fi.Mode().Perm())
			}
		default:
			if fi.Mode().Perm() != 0o444 {
				t.Errorf("%s: mode %v, want 0444", p, fi.Mode().Perm())
			}
		}
		return nil
	})
}

func TestEnsureMD5AndMarker(t *testing.T) {
	data := buildTar(t, sampleEntries())
	srv := newServer(t, data)
	s := newStore(t, testOptions())
	sum := md5.Sum(data)
	spec := Spec{URL: srv.URL + "/a.tar?token=secret", Checksum: hex.EncodeToString(sum[:]), ChecksumType: "md5"}
	g, err := ensure(t, s, spec)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(s.Dir(), g.Key, markerName))
	if err != nil {
		t.Fatal(err)
	}
	var m marker
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if m.Key != g.Key || m.ChecksumType != "md5" || m.Size != g.Size || len(m.Files) == 0 || m.Created.IsZero() {
		t.Fatalf("marker %+v", m)
	}
	if strings.Contains(string(b), "secret") {
		t.Fatal("marker keeps the URL query")
	}
	if !slices.Equal(g.Files, []string{"disk.qcow2", "conf/meta.json"}) {
		t.Fatalf("files %v", g.Files)
	}
	got, err := s.Get(g.Key)
	if err != nil || got.Dir != g.Dir || got.Size != g.Size {
		t.Fatalf("Get: %+v, %v", got, err)
	}
}

func TestChecksumMismatch(t *testing.T) {
	data := gz(t, buildTar(t, sampleEntries()))
	srv := newServer(t, data)
	s := newStore(t, testOptions())
	spec := specFor(srv.URL+"/a.tgz", data)
	spec.Checksum = sha([]byte("something else"))
	_, err := ensure(t, s, spec)
	wantCode(t, err, CodeChecksumMismatch, errdefs.ErrInvalid)
	wantEmpty(t, s)
	if _, err := s.Get(mustKey(t, spec)); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Get after mismatch: %v", err)
	}
}

func mustKey(t testing.TB, spec Spec) string {
	k, err := Key(spec)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestDownloadResilience(t *testing.T) {
	disk := diskBytes("QFI\xfb", 3<<20, 7)
	data := gz(t, buildTar(t, []entry{{name: "disk.qcow2", body: disk}}))
	tests := []struct {
		desc         string
		hook         func(s *server) func(n int, w http.ResponseWriter, r *http.Request) bool
		opts         func(o *Options)
		wantErr      string
		wantRequests int  // 0: don't check
		wantRange    bool // the server must have seen a Range request
		wantNoRange  bool
	}{
		{
			desc: "connection cut mid-body is resumed with Range",
			hook: func(s *server) func(int, http.ResponseWriter, *http.Request) bool {
				return func(n int, w http.ResponseWriter, r *http.Request) bool {
					if n == 1 {
						s.cut(w, len(s.data)/3)
						return true
					}
					return false
				}
			},
			wantRequests: 2, wantRange: true,
		},
		{
			desc: "cut twice, resumed twice",
			hook: func(s *server) func(int, http.ResponseWriter, *http.Request) bool {
				return func(n int, w http.ResponseWriter, r *http.Request) bool {
					if n == 1 {
						s.cut(w, len(s.data)/3)
						return true
					}
					if n == 2 {
						// Serve part of the requested range, then cut.
						var start int
						if _, err := fmtSscanf(r.Header.Get("Range"), "bytes=%d-", &start); err != nil {
							panic(err)
						}
						w.Header().Set("Content-Range", "bytes "+itoa(start)+"-"+itoa(len(s.data)-1)+"/"+itoa(len(s.data)))
						w.Header().Set("Content-Length", itoa(len(s.data)-start))
						w.WriteHeader(http.StatusPartialContent)
						w.Write(s.data[start : start+(len(s.data)-start)/2])
						w.(http.Flusher).Flush()
						panic(http.ErrAbortHandler)
					}
					return false
				}
			},
			wantRequests: 3, wantRange: true,
		},
		{
			desc: "500 then 200 succeeds after a retry",
			hook: func(s *server) func(int, http.ResponseWriter, *http.Request) bool {
				return func(n int, w http.ResponseWriter, r *http.Request) bool {
					if n == 1 {
						http.Error(w, "boom", http.StatusInternalServerError)
						return true
					}
					return false
				}
			},
			wantRequests: 2, wantNoRange: true,
		},
		{
			desc: "server ignoring Range restarts the whole fetch",
			hook: func(s *server) func(int, http.ResponseWriter, *http.Request) bool {
				return func(n int, w http.ResponseWriter, r *http.Request) bool {
					if n == 1 {
						s.cut(w, len(s.data)/2)
						return true
					}
					w.Header().Set("ETag", s.etag)
					w.Write(s.data) // 200, whatever the Range
					return true
				}
			},
			wantRequests: 3, wantRange: true,
		},
		{
			desc: "404 is final after one request",
			hook: func(s *server) func(int, http.ResponseWriter, *http.Request) bool {
				return func(n int, w http.ResponseWriter, r *http.Request) bool {
					http.NotFound(w, r)
					return true
				}
			},
			wantErr: CodeDownloadFailed, wantRequests: 1,
		},
		{
			desc: "503 forever fails after the retries",
			hook: func(s *server) func(int, http.ResponseWriter, *http.Request) bool {
				return func(n int, w http.ResponseWriter, r *http.Request) bool {
					http.Error(w, "busy", http.StatusServiceUnavailable)
					return true
				}
			},
			opts:    func(o *Options) { o.Retries = 3 },
			wantErr: CodeDownloadFailed, wantRequests: 4,
		},
		{
			desc: "a stalled server fails after the stall timeout",
			hook: func(s *server) func(int, http.ResponseWriter, *http.Request) bool {
				return func(n int, w http.ResponseWriter, r *http.Request) bool {
					w.Header().Set("Content-Length", itoa(len(s.data)))
					w.WriteHeader(http.StatusOK)
					w.(http.Flusher).Flush()
					<-r.Context().Done() // headers, then nothing
					return true
				}
			},
			opts:    func(o *Options) { o.Retries = 1; o.StallTimeout = 100 * time.Millisecond },
			wantErr: CodeDownloadFailed, wantRequests: 2,
		},
		{
			desc:    "download larger than MaxDownloadBytes",
			opts:    func(o *Options) { o.MaxDownloadBytes = 1 << 20 },
			wantErr: CodeTooLarge, wantRequests: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			srv := newServer(t, data)
			if tt.hook != nil {
				srv.hook = tt.hook(srv)
			}
			opts := testOptions()
			if tt.opts != nil {
				tt.opts(&opts)
			}
			s := newStore(t, opts)
			g, err := ensure(t, s, specFor(srv.URL+"/a.tgz", data))
			n, ranges := srv.count()
			if tt.wantRequests != 0 && n != tt.wantRequests {
				t.Errorf("server saw %d requests, want %d (ranges %v)", n, tt.wantRequests, ranges)
			}
			if tt.wantRange && len(ranges) == 0 {
				t.Errorf("server saw no Range request")
			}
			srv.mu.Lock()
			for _, ir := range srv.ifRanges {
				if ir != srv.etag {
					t.Errorf("If-Range %q, want the ETag %q", ir, srv.etag)
				}
			}
			srv.mu.Unlock()
			if tt.wantNoRange && len(ranges) != 0 {
				t.Errorf("unexpected Range requests %v", ranges)
			}
			if tt.wantErr != "" {
				wantCode(t, err, tt.wantErr, nil)
				if tt.wantErr == CodeDownloadFailed && tt.desc == "404 is final after one request" && !strings.Contains(err.Error(), "404") {
					t.Errorf("message lacks the HTTP status: %v", err)
				}
				wantEmpty(t, s)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := tree(t, g.Dir)
			if got["disk.qcow2"] != "file:"+sha(disk) {
				t.Fatalf("tree %v", got)
			}
			if names := storeNames(t, s); len(names) != 1 {
				t.Fatalf("store holds %v", names)
			}
		})
	}
}

func TestUnsafeArchives(t *testing.T) {
	body := []byte("payload")
	tests := []struct {
		desc    string
		tar     []entry // or zip
		zip     []entry
		wantErr string
	}{
		{desc: "dot-dot name", tar: []entry{{name: "../x", body: body}}, wantErr: CodeUnsafeArchive},
		{desc: "dot-dot inside name", tar: []entry{{name: "a/../../x", body: body}}, wantErr: CodeUnsafeArchive},
		{desc: "absolute name", tar: []entry{{name: "/tmp/goldvm-abs-test", body: body}}, wantErr: CodeUnsafeArchive},
		{desc: "symlink to /etc", tar: []entry{{name: "etc", typ: tar.TypeSymlink, link: "/etc"}}, wantErr: CodeUnsafeArchive},
		{desc: "symlink up and out", tar: []entry{{name: "a/l", typ: tar.TypeSymlink, link: "../../x"}}, wantErr: CodeUnsafeArchive},
		{desc: "symlink chain out", tar: []entry{
			{name: "c", typ: tar.TypeSymlink, link: "."},
			{name: "l", typ: tar.TypeSymlink, link: "c/../x"},
		}, wantErr: CodeUnsafeArchive},
		{desc: "write through a symlinked dir", tar: []entry{
			{name: "d", typ: tar.TypeSymlink, link: "."},
			{name: "d/x", body: body},
		}, wantErr: CodeUnsafeArchive},
		{desc: "symlink then file over it", tar: []entry{
			{name: "x", typ: tar.TypeSymlink, link: "y"},
			{name: "x", body: body},
		}, wantErr: CodeUnsafeArchive},
		{desc: "hardlink out", tar: []entry{{name: "h", typ: tar.TypeLink, link: "../../../etc/passwd"}}, wantErr: CodeUnsafeArchive},
		{desc: "hardlink to absolute", tar: []entry{{name: "h", typ: tar.TypeLink, link: "/etc/passwd"}}, wantErr: CodeUnsafeArchive},
		{desc: "hardlink to a later entry", tar: []entry{
			{name: "h", typ: tar.TypeLink, link: "f"},
			{name: "f", body: body},
		}, wantErr: CodeUnsafeArchive},
		{desc: "hardlink to a symlink", tar: []entry{
			{name: "s", typ: tar.TypeSymlink, link: "f"},
			{name: "h", typ: tar.TypeLink, link: "s"},
		}, wantErr: CodeUnsafeArchive},
		{desc: "char device", tar: []entry{{name: "null", typ: tar.TypeChar}}, wantErr: CodeUnsafeArchive},
		{desc: "block device", tar: []entry{{name: "sda", typ: tar.TypeBlock}}, wantErr: CodeUnsafeArchive},
		{desc: "fifo", tar: []entry{{name: "p", typ: tar.TypeFifo}}, wantErr: CodeUnsafeArchive},
		{desc: "zip dot-dot", zip: []entry{{name: "../x", body: body}}, wantErr: CodeUnsafeArchive},
		{desc: "zip absolute", zip: []entry{{name: "/x", body: body}}, wantErr: CodeUnsafeArchive},
		{desc: "zip symlink out", zip: []entry{{name: "l", typ: tar.TypeSymlink, link: "../../etc"}}, wantErr: CodeUnsafeArchive},
		{desc: "zip device", zip: []entry{{name: "d", typ: tar.TypeChar}}, wantErr: CodeUnsafeArchive},
		{desc: "zip with two entries of one name", zip: []entry{{name: "disk.img", body: body}, {name: "./disk.img", body: body}}, wantErr: CodeUnsafeArchive},
		{desc: "zip symlink then a file through it", zip: []entry{{name: "l", typ: tar.TypeSymlink, link: "d"}, {name: "d/", typ: tar.TypeDir}, {name: "l/x", body: body}}, wantErr: CodeUnsafeArchive},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			base := t.TempDir()
			var data []byte
			if tt.zip != nil {
				data = buildZip(t, tt.zip)
			} else {
				data = gz(t, buildTar(t, tt.tar))
			}
			srv := newServer(t, data)
			opts := testOptions()
			s, err := NewStore(filepath.Join(base, "store", "images"), opts)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			_, err = ensure(t, s, specFor(srv.URL+"/x", data))
			wantCode(t, err, tt.wantErr, errdefs.ErrInvalid)
			wantEmpty(t, s)
			// Nothing was written next to the store either.
			if got := tree(t, base); !equalMaps(got, map[string]string{"store": "dir", "store/images": "dir"}) {
				t.Fatalf("files outside the store: %v", keys(got))
			}
			if _, err := os.Lstat("/tmp/goldvm-abs-test"); err == nil {
				t.Fatal("absolute entry was written")
			}
		})
	}
}

// zerosDeflate returns a raw deflate stream of n MiB of zeros, built by
// repeating one compressed MiB, so the test needs no gigabyte of memory.
func zerosDeflate(t testing.TB, mib int) []byte {
	t.Helper()
	var chunk bytes.Buffer
	fw, err := flateWriter(&chunk)
	if err != nil {
		t.Fatal(err)
	}
	fw.Write(make([]byte, 1<<20))
	fw.Flush()
	var out bytes.Buffer
	for range mib {
		out.Write(chunk.Bytes())
	}
	out.Write([]byte{0x03, 0x00}) // final empty fixed-Huffman block
	return out.Bytes()
}

func TestSizeLimits(t *testing.T) {
	const gib = 1 << 30
	tests := []struct {
		desc    string
		data    func(t *testing.T) []byte
		opts    func(o *Options)
		wantErr string
	}{
		{
			// Refused as soon as the entry inflates past its header's
			// size: the archive lies, so it is corrupt before any limit.
			desc:    "zip bomb: 1 GiB of zeros claimed as 1000 bytes",
			data:    func(t *testing.T) []byte { return rawZip(t, "bomb.img", zerosDeflate(t, 1024), 1000, 0) },
			opts:    func(o *Options) { o.MaxImageBytes = 8 << 20 },
			wantErr: CodeCorrupt,
		},
		{
			desc: "zip bomb with its sizes only in a data descriptor",
			data: func(t *testing.T) []byte {
				return buildZip(t, []entry{{name: "bomb.img", body: make([]byte, 64<<20)}})
			},
			opts: func(o *Options) { o.MaxImageBytes = 8 << 20 },
		},
		{
			desc: "zip bomb: 1 GiB of zeros declared honestly",
			data: func(t *testing.T) []byte { return rawZip(t, "bomb.img", zerosDeflate(t, 1024), gib, 0) },
			opts: func(o *Options) { o.MaxImageBytes = 8 << 20 },
		},
		{
			desc: "tar entry claiming 50 GiB",
			data: func(t *testing.T) []byte {
				return gz(t, buildTar(t, []entry{{name: "disk.img", size: 50 * gib, noBody: true}}))
			},
			opts: func(o *Options) { o.MaxImageBytes = gib },
		},
		{
			desc: "tar entries adding up past the limit",
			data: func(t *testing.T) []byte {
				return buildTar(t, []entry{{name: "a", body: make([]byte, 600<<10)}, {name: "b", body: make([]byte, 600<<10)}})
			},
			opts: func(o *Options) { o.MaxImageBytes = 1 << 20 },
		},
		{
			desc: "gzip bomb as a bare disk",
			data: func(t *testing.T) []byte { return gz(t, make([]byte, 16<<20)) },
			opts: func(o *Options) { o.MaxImageBytes = 1 << 20 },
		},
		{
			desc: "too many entries",
			data: func(t *testing.T) []byte {
				var es []entry
				for i := range 50 {
					es = append(es, entry{name: "f" + itoa(i), body: []byte("x")})
				}
				return buildTar(t, es)
			},
			opts: func(o *Options) { o.MaxEntries = 20 },
		},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			data := tt.data(t)
			srv := newServer(t, data)
			opts := testOptions()
			tt.opts(&opts)
			s := newStore(t, opts)
			_, err := ensure(t, s, specFor(srv.URL+"/disk.img.gz", data))
			wantCode(t, err, cmp.Or(tt.wantErr, CodeTooLarge), errdefs.ErrInvalid)
			wantEmpty(t, s)
		})
	}
}

func TestConcurrentEnsureSharesOneDownload(t *testing.T) {
	data := zst(t, buildTar(t, sampleEntries()))
	srv := newServer(t, data)
	release := make(chan struct{})
	srv.hook = func(n int, w http.ResponseWriter, r *http.Request) bool {
		<-release // hold the download until every caller waits
		return false
	}
	s := newStore(t, testOptions())
	spec := specFor(srv.URL+"/x", data)
	const callers = 20
	var wg sync.WaitGroup
	var progressed atomic.Int32
	golds := make([]*Gold, callers)
	errs := make([]error, callers)
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var got atomic.Bool
			golds[i], errs[i] = s.Ensure(context.Background(), spec, func(Progress) {
				if !got.Swap(true) {
					progressed.Add(1)
				}
			})
		}()
	}
	waitFor(t, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		f := s.flights[mustKey(t, spec)]
		if f == nil {
			return false
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		return len(f.waiters) == callers
	})
	close(release)
	wg.Wait()
	for i := range callers {
		if errs[i] != nil {
			t.Fatalf("caller %d: %v", i, errs[i])
		}
		if golds[i].Dir != golds[0].Dir {
			t.Fatalf("caller %d got %s", i, golds[i].Dir)
		}
	}
	if n, _ := srv.count(); n != 1 {
		t.Fatalf("server saw %d requests, want 1", n)
	}
	if p := progressed.Load(); p != callers {
		t.Fatalf("%d of %d callers got progress", p, callers)
	}
}

// waitFor polls cond (no wall-clock assertion: it only bounds a hang).
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition never became true")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestCancelledWaiters(t *testing.T) {
	data := buildTar(t, sampleEntries())
	srv := newServer(t, data)
	started := make(chan struct{}, 10)
	srv.hook = func(n int, w http.ResponseWriter, r *http.Request) bool {
		if n == 1 {
			started <- struct{}{}
			w.Header().Set("Content-Length", itoa(len(data)))
			w.WriteHeader(http.StatusOK)
			w.Write(data[:1024])
			w.(http.Flusher).Flush()
			<-r.Context().Done() // until the client goes away
			return true
		}
		return false
	}
	s := newStore(t, testOptions())
	spec := specFor(srv.URL+"/x", data)

	ctx1, cancel1 := context.WithCancel(context.Background())
	ctx2, cancel2 := context.WithCancel(context.Background())
	errc := make(chan error, 2)
	go func() { _, err := s.Ensure(ctx1, spec, nil); errc <- err }()
	<-started
	go func() { _, err := s.Ensure(ctx2, spec, nil); errc <- err }()
	waitFor(t, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		f := s.flights[mustKey(t, spec)]
		f.mu.Lock()
		defer f.mu.Unlock()
		return len(f.waiters) == 2
	})
	cancel1()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("first caller: %v", err)
	}
	// The fetch goes on for the second caller.
	s.mu.Lock()
	f := s.flights[mustKey(t, spec)]
	s.mu.Unlock()
	if f == nil {
		t.Fatal("fetch was abandoned while a caller still waits")
	}
	cancel2()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("second caller: %v", err)
	}
	<-f.done // the fetch was cancelled and cleaned up
	wantEmpty(t, s)
	// A new Ensure starts over and succeeds.
	if _, err := ensure(t, s, spec); err != nil {
		t.Fatal(err)
	}
}

func TestNewStoreRecovers(t *testing.T) {
	data := buildTar(t, sampleEntries())
	srv := newServer(t, data)
	dir := filepath.Join(t.TempDir(), "images")
	s, err := NewStore(dir, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	good, err := ensure(t, s, specFor(srv.URL+"/x", data))
	if err != nil {
		t.Fatal(err)
	}
	s.Close()

	other := strings.Repeat("1", 64)
	mk := func(p string) {
		if err := os.MkdirAll(filepath.Join(dir, p), 0o755); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, p, "disk"), []byte("half"), 0o644)
	}
	mk(".tmp-sha256-" + other + "-123/files")           // interrupted fetch
	mk("sha256-" + other + "/files")                    // published without a marker
	mk(".del-sha256-" + strings.Repeat("2", 64) + "-9") // interrupted delete
	mk("lost+found")                                    // not ours: left alone
	// A sealed (read-only) half-made directory must go too.
	sealed := "sha512-" + strings.Repeat("3", 128)
	mk(sealed + "/files/sub")
	sealTree(filepath.Join(dir, sealed))
	// An image whose file was truncated after publishing.
	bad := "sha1-" + strings.Repeat("4", 40)
	copyDir(t, filepath.Join(dir, good.Key), filepath.Join(dir, bad))
	b, _ := os.ReadFile(filepath.Join(dir, bad, markerName))
	os.Chmod(filepath.Join(dir, bad, markerName), 0o644)
	os.WriteFile(filepath.Join(dir, bad, markerName), bytes.ReplaceAll(b, []byte(good.Key), []byte(bad)), 0o444)
	os.Chmod(filepath.Join(dir, bad, "files"), 0o755)
	os.Chmod(filepath.Join(dir, bad, "files", "disk.qcow2"), 0o644)
	os.Truncate(filepath.Join(dir, bad, "files", "disk.qcow2"), 10)

	s2, err := NewStore(dir, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	names := storeNames(t, s2)
	if !slices.Equal(names, []string{"lost+found", good.Key}) {
		t.Fatalf("after recovery the store holds %v", names)
	}
	if _, err := s2.Get(good.Key); err != nil {
		t.Fatal(err)
	}
}

func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		d := filepath.Join(dst, rel)
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			return os.Symlink(l, d)
		case fi.IsDir():
			return os.MkdirAll(d, 0o755)
		default:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			return os.WriteFile(d, b, 0o444)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestDeleteAndEvict(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var clock atomic.Int64
	clock.Store(now.UnixNano())
	opts := testOptions()
	opts.Now = func() time.Time { return time.Unix(0, clock.Load()) }
	s := newStore(t, opts)
	var imgs []*Gold
	for i := range 3 {
		data := diskBytes("QFI\xfb", 256<<10, uint64(10+i))
		srv := newServer(t, data)
		g, err := ensure(t, s, specFor(srv.URL+"/d", data))
		if err != nil {
			t.Fatal(err)
		}
		imgs = append(imgs, g)
		clock.Add(int64(time.Hour))
	}
	// Use order: 1 (oldest), 0, 2 (newest).
	s.Touch(imgs[1].Key)
	clock.Add(int64(time.Hour))
	s.Touch(imgs[0].Key)
	clock.Add(int64(time.Hour))
	s.Touch(imgs[2].Key)

	list, err := s.List()
	if err != nil || len(list) != 3 {
		t.Fatalf("List: %v, %v", list, err)
	}
	for _, in := range list {
		if in.Size != 256<<10 || in.DiskBytes <= 0 || in.URL == "" || in.ChecksumType != "sha256" || in.LastUsed.Before(in.Created) {
			t.Fatalf("info %+v", in)
		}
	}
	// Info answers one image as List does.
	if one, err := s.Info(list[1].Key); err != nil || one != list[1] {
		t.Fatalf("Info(%s) = %+v, %v; want %+v", list[1].Key, one, err, list[1])
	}
	for _, k := range []string{"sha256-" + strings.Repeat("9", 64), "../../etc"} {
		_, err := s.Info(k)
		wantCode(t, err, CodeNotFound, errdefs.ErrNotFound)
	}

	used := map[string]int{imgs[1].Key: 1}
	inUse := func(k string) int { return used[k] }

	// Delete refuses an image in use and removes a read-only one.
	wantCode(t, s.Delete(imgs[1].Key, inUse), CodeInUse, errdefs.ErrConflict)
	wantCode(t, s.Delete("sha256-"+strings.Repeat("9", 64), inUse), CodeNotFound, errdefs.ErrNotFound)
	wantCode(t, s.Delete("../../etc", inUse), CodeNotFound, errdefs.ErrNotFound)

	// Size bound: room for one image. 1 is LRU but in use; 0 goes, then 2;
	// 1 stays although the store is still over the bound.
	removed, err := s.Evict(EvictPolicy{MaxBytes: list[0].DiskBytes}, inUse)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(removed, []string{imgs[0].Key, imgs[2].Key}) {
		t.Fatalf("evicted %v", removed)
	}
	if names := storeNames(t, s); !slices.Equal(names, []string{imgs[1].Key}) {
		t.Fatalf("store holds %v", names)
	}
	// Idle bound: still in use, still kept; once free, it goes.
	clock.Add(int64(48 * time.Hour))
	if removed, _ := s.Evict(EvictPolicy{MaxIdle: time.Hour}, inUse); len(removed) != 0 {
		t.Fatalf("evicted in-use %v", removed)
	}
	used = nil
	if removed, _ := s.Evict(EvictPolicy{MaxIdle: time.Hour}, inUse); !slices.Equal(removed, []string{imgs[1].Key}) {
		t.Fatalf("evicted %v", removed)
	}
	wantEmpty(t, s)
	if _, err := s.Get(imgs[1].Key); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Get after evict: %v", err)
	}
}

func TestEnsureBadInput(t *testing.T) {
	s := newStore(t, testOptions())
	tests := []struct {
		desc    string
		spec    Spec
		wantErr string
	}{
		{desc: "bad checksum", spec: Spec{URL: "http://127.0.0.1/x", Checksum: "abc", ChecksumType: "sha256"}, wantErr: CodeInvalidChecksum},
		{desc: "file url", spec: Spec{URL: "file:///etc/passwd", Checksum: strings.Repeat("a", 64), ChecksumType: "sha256"}, wantErr: CodeInvalidURL},
		{desc: "relative url", spec: Spec{URL: "/x", Checksum: strings.Repeat("a", 64), ChecksumType: "sha256"}, wantErr: CodeInvalidURL},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			_, err := ensure(t, s, tt.spec)
			wantCode(t, err, tt.wantErr, errdefs.ErrInvalid)
			wantEmpty(t, s)
		})
	}
}

func TestParseContentRange(t *testing.T) {
	tests := []struct {
		in           string
		start, total int64
		ok           bool
	}{
		{"bytes 10-99/100", 10, 100, true},
		{"bytes 10-99/*", 10, -1, true},
		{"bytes 10-99/50", 0, 0, false},
		{"bytes */100", 0, 0, false},
		{"items 1-2/3", 0, 0, false},
		{"bytes 5-4/10", 0, 0, false},
	}
	for _, tt := range tests {
		start, total, ok := parseContentRange(tt.in)
		if ok != tt.ok || (ok && (start != tt.start || total != tt.total)) {
			t.Errorf("%q: %d %d %v", tt.in, start, total, ok)
		}
	}
}

func TestDiskFullIsClassified(t *testing.T) {
	err := ioErr("writing", &os.PathError{Op: "write", Path: "x", Err: errNoSpace})
	wantCode(t, err, CodeDiskFull, errdefs.ErrUnavailable)
}

func TestProgressReports(t *testing.T) {
	data := gz(t, buildTar(t, []entry{{name: "disk.raw", body: diskBytes("QFI\xfb", 4<<20, 3)}}))
	srv := newServer(t, data)
	srv.hook = func(n int, w http.ResponseWriter, r *http.Request) bool {
		if n == 1 {
			srv.cut(w, len(data)/2)
			return true
		}
		return false
	}
	s := newStore(t, testOptions())
	var got []Progress
	_, err := s.Ensure(context.Background(), specFor(srv.URL+"/x", data), func(p Progress) { got = append(got, p) })
	if err != nil {
		t.Fatal(err)
	}
	if len(got) < 3 {
		t.Fatalf("only %d reports", len(got))
	}
	var last int64
	for i, p := range got[:len(got)-1] {
		if p.Phase != PhaseDownloading || p.BytesTotal != int64(len(data)) || p.BytesDone < last || p.BytesDone > p.BytesTotal {
			t.Fatalf("report %d: %+v (previous done %d)", i, p, last)
		}
		last = p.BytesDone
	}
	if last != int64(len(data)) {
		t.Fatalf("last download report at %d of %d", last, len(data))
	}
	if end := got[len(got)-1]; end.Phase != PhaseVerifying || end.BytesDone != int64(len(data)) {
		t.Fatalf("final report %+v", end)
	}
}

func TestCloseCancelsFetch(t *testing.T) {
	data := buildTar(t, sampleEntries())
	srv := newServer(t, data)
	started := make(chan struct{})
	srv.hook = func(n int, w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set("Content-Length", itoa(len(data)))
		w.WriteHeader(http.StatusOK)
		w.Write(data[:2048])
		w.(http.Flusher).Flush()
		close(started)
		<-r.Context().Done()
		return true
	}
	s := newStore(t, testOptions())
	errc := make(chan error, 1)
	go func() { _, err := ensure(t, s, specFor(srv.URL+"/x", data)); errc <- err }()
	<-started
	s.Close()
	if err := <-errc; err == nil {
		t.Fatal("Ensure succeeded after Close")
	}
	wantEmpty(t, s)
	if _, err := ensure(t, s, specFor(srv.URL+"/x", data)); err == nil {
		t.Fatal("Ensure on a closed store succeeded")
	}
	s.Touch("sha256-" + strings.Repeat("0", 64)) // unknown key: no-op, no panic
}

func TestDiskReferences(t *testing.T) {
	qcow := func(backing, dataFile string) []byte {
		return append(qcow2Header(backing, dataFile), make([]byte, 4096)...)
	}
	desc := func(extent string) []byte {
		return []byte("# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\n" +
			"RW 2048 FLAT \"" + extent + "\" 0\n")
	}
	sparseVMDK := func(extent string) []byte {
		b := make([]byte, 4096)
		copy(b, "KDMV")
		binary.LittleEndian.PutUint64(b[28:], 1) // descriptor at sector 1
		binary.LittleEndian.PutUint64(b[36:], 2) // two sectors long
		copy(b[512:], desc(extent))
		return b
	}
	tests := []struct {
		desc    string
		data    []byte
		path    string
		wantErr string
	}{
		{desc: "bare qcow2 backed by /etc/passwd", data: qcow("/etc/passwd", ""), wantErr: CodeUnsafeDisk},
		{desc: "bare qcow2 backed by a sibling outside", data: qcow("../other.qcow2", ""), wantErr: CodeUnsafeDisk},
		{desc: "bare qcow2 backed by a protocol", data: qcow("nbd://10.0.0.1/x", ""), wantErr: CodeUnsafeDisk},
		{desc: "bare qcow2 with json backing", data: qcow(`json:{"file":{"driver":"file","filename":"/etc/shadow"}}`, ""), wantErr: CodeUnsafeDisk},
		{desc: "qcow2 with an external data file", data: qcow("", "/dev/sda"), wantErr: CodeUnsafeDisk},
		{desc: "bare vmdk descriptor with a device extent", data: desc("/dev/sda"), wantErr: CodeUnsafeDisk},
		{desc: "sparse vmdk whose descriptor escapes", data: sparseVMDK("../../x-flat.vmdk"), wantErr: CodeUnsafeDisk},
		{desc: "qcow2 backing through a symlink chain", data: buildTar(t, []entry{
			{name: "c", typ: tar.TypeSymlink, link: "."},
			{name: "disk.qcow2", body: qcow("c/../base.qcow2", "")},
		}), wantErr: CodeUnsafeDisk},
		{desc: "overlay on a base inside the image", data: buildTar(t, []entry{
			{name: "base.qcow2", body: qcow("", "")},
			{name: "layers/top.qcow2", body: qcow("../base.qcow2", "")},
		})},
		{desc: "vmdk descriptor with a relative extent", data: buildTar(t, []entry{
			{name: "disk.vmdk", body: desc("disk-flat.vmdk")},
			{name: "disk-flat.vmdk", body: make([]byte, 2048*512)},
		})},
		{desc: "sparse vmdk with a relative descriptor extent", data: sparseVMDK("disk.vmdk")},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			srv := newServer(t, tt.data)
			s := newStore(t, testOptions())
			_, err := ensure(t, s, specFor(srv.URL+"/x", tt.data))
			if tt.wantErr != "" {
				wantCode(t, err, tt.wantErr, errdefs.ErrInvalid)
				wantEmpty(t, s)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A package found bad early must fail at once, not after the server
// finishes (or stalls): the request is cancelled. The stall timeout here
// is an hour, so a regression shows as a context deadline, not a pass.
func TestBadArchiveFailsWithoutWaitingForTheServer(t *testing.T) {
	for _, tt := range []struct {
		desc string
		head []byte
	}{
		{desc: "unsafe tar", head: buildTar(t, []entry{{name: "../evil", body: []byte("x")}})},
		// The first 64 KiB of a bigger tar.gz (a gzip member that has not
		// ended yet).
		{desc: "unsafe tar.gz", head: gz(t, buildTar(t, []entry{
			{name: "../evil", body: []byte("x")},
			{name: "disk.raw", body: diskBytes("", 1<<20, 9)},
		}))[:64<<10]},
	} {
		t.Run(tt.desc, func(t *testing.T) {
			srv := newServer(t, tt.head)
			srv.hook = func(n int, w http.ResponseWriter, r *http.Request) bool {
				w.Header().Set("Content-Length", itoa(len(tt.head)+1<<20))
				w.WriteHeader(http.StatusOK)
				w.Write(tt.head)
				w.(http.Flusher).Flush()
				<-r.Context().Done() // the rest never comes
				return true
			}
			opts := testOptions()
			opts.StallTimeout = time.Hour
			s := newStore(t, opts)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			_, err := s.Ensure(ctx, Spec{URL: srv.URL + "/x", Checksum: strings.Repeat("0", 64), ChecksumType: "sha256"}, nil)
			wantCode(t, err, CodeUnsafeArchive, errdefs.ErrInvalid)
			wantEmpty(t, s)
		})
	}
}

// TestNetworkPolicyRefusesTheImageServer: with a policy that denies the
// server's address, the fetch fails at once with image-download-failed
// naming the policy, without a request reaching the server or a retry,
// and leaves nothing behind.
func TestNetworkPolicyRefusesTheImageServer(t *testing.T) {
	data := gz(t, buildTar(t, sampleEntries()))
	srv := newServer(t, data)
	policy, err := netpolicy.Parse("", "127.0.0.0/8")
	if err != nil {
		t.Fatal(err)
	}
	opts := testOptions()
	opts.HTTPClient = &http.Client{Transport: policy.Transport()}
	opts.RetryBackoff = time.Hour // a retry would hang the test
	s := newStore(t, opts)
	_, err = ensure(t, s, specFor(srv.URL+"/img.tar.gz", data))
	wantCode(t, err, CodeDownloadFailed, errdefs.ErrUnavailable)
	if !strings.Contains(err.Error(), "denied network 127.0.0.0/8") {
		t.Errorf("error %q does not name the policy", err)
	}
	if n, _ := srv.count(); n != 0 {
		t.Errorf("server saw %d requests, want none", n)
	}
	wantEmpty(t, s)
}
