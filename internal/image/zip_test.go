package image

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/binary"
	"hash/crc32"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/goldvm/goldvm/internal/errdefs"
)

// zipWith writes a zip with archive/zip: add writes the entries.
func zipWith(t *testing.T, add func(w *zip.Writer) error) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := zip.NewWriter(&buf)
	if err := add(w); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestZipStreamedAndSpooled unpacks each archive through Store.Ensure from
// a loopback server twice: as it streams (the stream reader handing over
// to the spool when it cannot find the end of a stored entry), and with
// every zip spooled (unpacked from the partial download once verified).
// Both ways must give the same tree, or fail with the same code in the
// invalid category and a message saying why: never an internal error.
func TestZipStreamedAndSpooled(t *testing.T) {
	deflated := buildZip(t, sampleEntries())
	// archive/zip gives a stored entry's size (and a symlink's: its
	// target is its data) only in the data descriptor after its data.
	stored := buildZipMethod(t, sampleEntries(), zip.Store)
	disk, meta := sampleFiles()
	mixed := zipWith(t, func(w *zip.Writer) error {
		for _, e := range []struct {
			name   string
			method uint16
			body   []byte
		}{{"disk.qcow2", zip.Deflate, disk}, {"conf/meta.json", zip.Store, meta}} {
			fw, err := w.CreateHeader(&zip.FileHeader{Name: e.name, Method: e.method})
			if err != nil {
				return err
			}
			if _, err := fw.Write(e.body); err != nil {
				return err
			}
		}
		return nil
	})
	mixedTree := map[string]string{"disk.qcow2": "file:" + sha(disk), "conf": "dir", "conf/meta.json": "file:" + sha(meta)}
	// Cut before its central directory, as Info-ZIP 3.0 leaves an archive
	// when it fails to store a symlink to a pipe.
	cut := stored[:binary.LittleEndian.Uint32(stored[len(stored)-6:])]
	badCRC := bytes.Clone(stored)
	badCRC[bytes.Index(badCRC, meta)+3] ^= 0x20
	encrypted := zipWith(t, func(w *zip.Writer) error {
		fw, err := w.CreateRaw(&zip.FileHeader{Name: "secret", Method: zip.Store, Flags: 0x1,
			CRC32: crc32.ChecksumIEEE(meta), CompressedSize64: uint64(len(meta)), UncompressedSize64: uint64(len(meta))})
		if err == nil {
			_, err = fw.Write(meta)
		}
		return err
	})

	tests := []struct {
		desc     string
		data     []byte
		want     map[string]string // the tree, or nil
		spooled  bool              // Ensure unpacks it after the download even when it may stream
		code     string            // else the error
		msg      string
		spoolMsg string // the message when spooled, if it differs
	}{
		{desc: "deflated entries", data: deflated, want: sampleTree(false)},
		{desc: "stored entries sized only after their data", data: stored, want: sampleTree(false), spooled: true},
		{desc: "deflated, then stored sized only after its data", data: mixed, want: mixedTree, spooled: true},
		{desc: "cut before the central directory", data: cut, code: CodeCorrupt, msg: "no valid end record or central directory"},
		{desc: "stored entry failing its CRC check", data: badCRC, code: CodeCorrupt, msg: `zip entry "./conf/meta.json" fails its CRC check`},
		{desc: "encrypted entry", data: encrypted, code: CodeUnsupported, msg: `zip entry "secret" is encrypted`},
	}
	for _, tt := range tests {
		for _, spoolAll := range []bool{false, true} {
			name := tt.desc + "/streamed"
			if spoolAll {
				name = tt.desc + "/spooled"
			}
			t.Run(name, func(t *testing.T) {
				spoolAllZips = spoolAll
				t.Cleanup(func() { spoolAllZips = false })
				srv := newServer(t, tt.data)
				s := newStore(t, testOptions())
				var mu sync.Mutex
				unpacked := false
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				g, err := s.Ensure(ctx, specFor(srv.URL+"/img.zip", tt.data), func(p Progress) {
					mu.Lock()
					defer mu.Unlock()
					unpacked = unpacked || p.Phase == PhaseUnpacking
				})
				if tt.code != "" {
					wantCode(t, err, tt.code, errdefs.ErrInvalid)
					if !strings.Contains(err.Error(), tt.msg) {
						t.Fatalf("error %q does not say %q", err, tt.msg)
					}
					wantEmpty(t, s)
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				if got := tree(t, g.Dir); !equalMaps(got, tt.want) {
					t.Fatalf("tree:\n got %v\nwant %v", got, tt.want)
				}
				if g.Format != "zip" {
					t.Errorf("format %q, want zip", g.Format)
				}
				mu.Lock()
				defer mu.Unlock()
				if want := tt.spooled || spoolAll; unpacked != want {
					t.Errorf("unpacked after the download: %v, want %v", unpacked, want)
				}
				if names := storeNames(t, s); !slices.Equal(names, []string{g.Key}) {
					t.Fatalf("store holds %v", names)
				}
			})
		}
	}
}
