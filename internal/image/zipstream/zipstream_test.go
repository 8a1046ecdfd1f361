package zipstream

import (
	"archive/zip"
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/iotest"

	"github.com/klauspost/compress/flate"
)

// readEntry is one entry as the streaming reader returned it.
type readEntry struct {
	loc     Local
	content []byte
}

// readAll reads a whole archive with Reader: every entry's content,
// then Finish.
func readAll(r io.Reader) ([]readEntry, []Central, error) {
	z := NewReader(r)
	var got []readEntry
	for {
		loc, rd, err := z.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return got, nil, err
		}
		b, err := io.ReadAll(rd)
		if err != nil {
			return got, nil, err
		}
		got = append(got, readEntry{*loc, b})
	}
	c, err := z.Finish()
	return got, c, err
}

// goFile describes an entry for goZip.
type goFile struct {
	name   string
	body   []byte
	method uint16
	mode   fs.FileMode // set with SetMode when non-zero
	raw    bool        // written with CreateRaw and known sizes: no data descriptor
}

// goZip writes an archive with archive/zip.
func goZip(t testing.TB, files []goFile, comment string) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := zip.NewWriter(&buf)
	for _, f := range files {
		fh := &zip.FileHeader{Name: f.name, Method: f.method}
		if f.mode != 0 {
			fh.SetMode(f.mode)
		}
		var fw io.Writer
		var err error
		if f.raw {
			data := f.body
			if f.method == zip.Deflate {
				data = deflateBytes(t, f.body)
			}
			fh.CRC32 = crc32.ChecksumIEEE(f.body)
			fh.CompressedSize64 = uint64(len(data))
			fh.UncompressedSize64 = uint64(len(f.body))
			if fw, err = w.CreateRaw(fh); err == nil {
				_, err = fw.Write(data)
			}
		} else if fw, err = w.CreateHeader(fh); err == nil {
			_, err = fw.Write(f.body)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if comment != "" {
		if err := w.SetComment(comment); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func deflateBytes(t testing.TB, b []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	fw, err := flate.NewWriter(&out, flate.DefaultCompression)
	if err != nil {
		t.Fatal(err)
	}
	fw.Write(b)
	if err := fw.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// genText is compressible text of about n bytes.
func genText(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	words := []string{"disk", "image", "sector", "/usr/lib/x86_64-linux-gnu", "goldvm", "boot", "kernel", "initrd", "\n"}
	var b bytes.Buffer
	for b.Len() < n {
		b.WriteString(words[r.IntN(len(words))])
		b.WriteByte(' ')
	}
	return b.Bytes()[:n]
}

// genRandom is n incompressible bytes.
func genRandom(n int, seed uint64) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
	r.Read(b)
	return b
}

// checkStd checks that the streamed entries and Finish's result equal
// what archive/zip reads from the same bytes.
func checkStd(t *testing.T, data []byte, got []readEntry, central []Central) {
	t.Helper()
	zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil && !errors.Is(err, zip.ErrInsecurePath) {
		t.Fatalf("archive/zip cannot read the archive: %v", err)
	}
	if len(zr.File) != len(got) || len(central) != len(got) {
		t.Fatalf("archive/zip sees %d entries, the stream %d, Finish %d", len(zr.File), len(got), len(central))
	}
	for i, f := range zr.File {
		g, c := got[i].loc, central[i]
		if g.Name != f.Name || c.Name != f.Name {
			t.Errorf("entry %d: name %q / central %q, archive/zip %q", i, g.Name, c.Name, f.Name)
		}
		if g.Method != f.Method || g.Flags != f.Flags || g.CRC32 != f.CRC32 ||
			g.CompressedSize != f.CompressedSize64 || g.UncompressedSize != f.UncompressedSize64 {
			t.Errorf("entry %q: stream method %d flags %#x crc %08x sizes %d/%d; archive/zip %d %#x %08x %d/%d",
				f.Name, g.Method, g.Flags, g.CRC32, g.CompressedSize, g.UncompressedSize,
				f.Method, f.Flags, f.CRC32, f.CompressedSize64, f.UncompressedSize64)
		}
		if c.Mode != f.Mode() {
			t.Errorf("entry %q: mode %v, archive/zip %v", f.Name, c.Mode, f.Mode())
		}
		dataOff, err := f.DataOffset()
		if err != nil {
			t.Fatal(err)
		}
		h := data[g.Offset:]
		if !bytes.HasPrefix(h, []byte("PK\x03\x04")) ||
			g.Offset+localLen+int64(binary.LittleEndian.Uint16(h[26:]))+int64(binary.LittleEndian.Uint16(h[28:])) != dataOff {
			t.Errorf("entry %q: local header offset %d does not lead to archive/zip's data offset %d", f.Name, g.Offset, dataOff)
		}
		rc, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		want, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatalf("archive/zip reading %q: %v", f.Name, err)
		}
		if !bytes.Equal(want, got[i].content) {
			t.Errorf("entry %q: content differs from archive/zip's (%d vs %d bytes)", f.Name, len(got[i].content), len(want))
		}
	}
}

// TestZipStreamRoundTrip reads archives written by archive/zip and checks
// every entry against what was written and against archive/zip's reader.
func TestZipStreamRoundTrip(t *testing.T) {
	text, random := genText(300<<10, 1), genRandom(200<<10, 2)
	many := make([]goFile, 65536+3) // > 0xffff entries: archive/zip writes zip64 end records
	for i := range many {
		many[i] = goFile{name: fmt.Sprintf("f%05d", i), body: []byte{byte(i)}, method: zip.Store, raw: true}
	}
	tests := []struct {
		name    string
		files   []goFile
		comment string
		want64  bool // archive/zip wrote a zip64 end record
	}{
		{name: "deflate with data descriptors", files: []goFile{
			{name: "text.txt", body: text, method: zip.Deflate},
			{name: "random.bin", body: random, method: zip.Deflate},
			{name: "small", body: []byte("hello, zip\n"), method: zip.Deflate},
		}},
		{name: "stored with known sizes", files: []goFile{
			{name: "text.txt", body: text, method: zip.Store, raw: true},
			{name: "random.bin", body: random, method: zip.Store, raw: true},
			{name: "empty", method: zip.Store, raw: true},
		}},
		{name: "deflate with known sizes", files: []goFile{
			{name: "a/text.txt", body: text, method: zip.Deflate, raw: true},
			{name: "a/empty", method: zip.Deflate, raw: true},
			{name: "a/small", body: []byte("x"), method: zip.Deflate, raw: true},
		}},
		{name: "directories and an empty file", files: []goFile{
			{name: "dir/"},
			{name: "dir/sub/"},
			{name: "dir/sub/empty", method: zip.Deflate},
			{name: "dir/file", body: text[:1000], method: zip.Deflate},
		}},
		{name: "symlink and modes", files: []goFile{
			{name: "bin/", mode: fs.ModeDir | 0o755},
			{name: "bin/tool", body: []byte("#!/bin/sh\necho hi\n"), method: zip.Deflate, mode: 0o755},
			{name: "bin/link", body: []byte("tool"), method: zip.Deflate, mode: fs.ModeSymlink | 0o777},
			{name: "ro", body: []byte("read only"), method: zip.Store, raw: true, mode: 0o444},
		}},
		{name: "mixed methods", files: []goFile{
			{name: "1", body: text[:5000], method: zip.Deflate},
			{name: "2", body: random[:5000], method: zip.Store, raw: true},
			{name: "3", body: text[5000:9000], method: zip.Deflate, raw: true},
			{name: "4/"},
			{name: "4/5", body: text, method: zip.Deflate},
		}},
		{name: "archive comment", files: []goFile{{name: "f", body: []byte("data"), method: zip.Deflate}}, comment: "a comment\nwith two lines"},
		{name: "empty archive"},
		{name: "empty archive with comment", comment: "nothing here"},
		{name: "65539 entries", files: many, want64: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := goZip(t, tt.files, tt.comment)
			if has := bytes.Contains(data, []byte("PK\x06\x06")); has != tt.want64 {
				t.Fatalf("zip64 end record present: %v, want %v", has, tt.want64)
			}
			got, central, err := readAll(bytes.NewReader(data))
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.files) {
				t.Fatalf("read %d entries, wrote %d", len(got), len(tt.files))
			}
			for i, f := range tt.files {
				g := got[i]
				if g.loc.Name != f.name || !bytes.Equal(g.content, f.body) {
					t.Errorf("entry %d: %q with %d bytes, wrote %q with %d", i, g.loc.Name, len(g.content), f.name, len(f.body))
				}
				if g.loc.UncompressedSize != uint64(len(f.body)) || g.loc.CRC32 != crc32.ChecksumIEEE(f.body) {
					t.Errorf("entry %q: size %d crc %08x, want %d %08x", f.name, g.loc.UncompressedSize, g.loc.CRC32, len(f.body), crc32.ChecksumIEEE(f.body))
				}
				wantDeclared := int64(-1) // archive/zip writes sizes to a data descriptor
				if f.raw || strings.HasSuffix(f.name, "/") {
					wantDeclared = int64(len(f.body))
				}
				if g.loc.DeclaredSize != wantDeclared {
					t.Errorf("entry %q: DeclaredSize %d, want %d", f.name, g.loc.DeclaredSize, wantDeclared)
				}
				if f.mode != 0 && central[i].Mode != f.mode {
					t.Errorf("entry %q: mode %v, want %v", f.name, central[i].Mode, f.mode)
				}
			}
			checkStd(t, data, got, central)
		})
	}
}

// TestZipStreamSkipsUnreadData calls Next without reading entries (or
// after reading part of one): the data is still read and checked.
func TestZipStreamSkipsUnreadData(t *testing.T) {
	text := genText(200<<10, 3)
	files := []goFile{
		{name: "a", body: text, method: zip.Deflate},
		{name: "b", body: text[:70000], method: zip.Store, raw: true},
		{name: "c", body: text[1000:], method: zip.Deflate},
	}
	data := goZip(t, files, "")
	z := NewReader(bytes.NewReader(data))
	if _, err := z.Finish(); err == nil {
		t.Fatal("Finish before the entries were read succeeded")
	}
	var locs []*Local
	var first io.Reader
	for i := 0; ; i++ {
		loc, r, err := z.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = r
		}
		if i == 1 { // read a little of it only
			if _, err := io.ReadFull(r, make([]byte, 100)); err != nil {
				t.Fatal(err)
			}
		}
		locs = append(locs, loc)
	}
	if _, err := first.Read(make([]byte, 10)); err == nil || err == io.EOF {
		t.Errorf("reading an entry after Next moved on: %v, want an error", err)
	}
	central, err := z.Finish()
	if err != nil {
		t.Fatal(err)
	}
	if len(locs) != 3 || len(central) != 3 {
		t.Fatalf("%d entries, %d central", len(locs), len(central))
	}
	for i, f := range files {
		if locs[i].CRC32 != crc32.ChecksumIEEE(f.body) || locs[i].UncompressedSize != uint64(len(f.body)) {
			t.Errorf("skipped entry %q: crc %08x size %d, want %08x %d", f.name, locs[i].CRC32, locs[i].UncompressedSize, crc32.ChecksumIEEE(f.body), len(f.body))
		}
	}
	if _, _, err := z.Next(); err != io.EOF {
		t.Errorf("Next after the end: %v, want io.EOF", err)
	}
	again, err := z.Finish()
	if err != nil || len(again) != 3 {
		t.Errorf("second Finish: %v, %d entries", err, len(again))
	}

	// A corrupt entry that is skipped still fails Next.
	zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	off, err := zr.File[0].DataOffset()
	if err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(data)
	bad[off+int64(zr.File[0].CompressedSize64)/2] ^= 0x55
	z = NewReader(bytes.NewReader(bad))
	if _, _, err := z.Next(); err != nil {
		t.Fatal(err)
	}
	_, _, err = z.Next()
	wantErr(t, err, ErrCorrupt, "")
	if _, err := z.Finish(); err == nil {
		t.Error("Finish after a failure succeeded")
	}
}

// TestZipStreamReaderShapes reads through readers that return little data
// per call, or data together with io.EOF.
func TestZipStreamReaderShapes(t *testing.T) {
	files := []goFile{
		{name: "a", body: genText(50<<10, 4), method: zip.Deflate},
		{name: "b", body: genRandom(3000, 5), method: zip.Store, raw: true},
		{name: "c/"},
	}
	data := goZip(t, files, "c")
	for name, r := range map[string]io.Reader{
		"one byte":  iotest.OneByteReader(bytes.NewReader(data)),
		"half":      iotest.HalfReader(bytes.NewReader(data)),
		"data+EOF":  iotest.DataErrReader(bytes.NewReader(data)),
		"bufio 16B": bufio.NewReaderSize(bytes.NewReader(data), 16),
	} {
		t.Run(name, func(t *testing.T) {
			got, central, err := readAll(r)
			if err != nil {
				t.Fatal(err)
			}
			checkStd(t, data, got, central)
		})
	}
}

// TestZipStreamMode compares the mode computed from the central
// directory with archive/zip's FileHeader.Mode for every Unix file type
// and permission bit and every MS-DOS attribute byte, for each creator.
func TestZipStreamMode(t *testing.T) {
	n := 0
	for _, creator := range []uint16{0, 3, 7, 11, 14, 19} {
		for _, name := range []string{"f", "d/"} {
			var attrs []uint32
			for typ := uint32(0); typ < 16; typ++ {
				for _, perm := range []uint32{0, 0o644, 0o755, 0o4755, 0o2755, 0o1777, 0o7777} {
					attrs = append(attrs, (typ<<12|perm)<<16)
				}
			}
			for dos := uint32(0); dos < 256; dos++ {
				attrs = append(attrs, dos)
			}
			for _, ext := range attrs {
				fh := zip.FileHeader{Name: name, CreatorVersion: creator<<8 | 20, ExternalAttrs: ext}
				if got, want := fileMode(fh.CreatorVersion, ext, name), fh.Mode(); got != want {
					t.Errorf("creator %d, attrs %#x, name %q: mode %v, archive/zip %v", creator, ext, name, got, want)
				}
				n++
			}
		}
	}
	if n < 4000 {
		t.Fatalf("only %d combinations checked", n)
	}
}

// wantErr fails unless err is an *Error of the given kind whose message
// contains msg.
func wantErr(t *testing.T, err error, kind error, msg string) {
	t.Helper()
	var ze *Error
	if !errors.As(err, &ze) {
		t.Fatalf("want an *Error (%v), got %T: %v", kind, err, err)
	}
	if !errors.Is(err, kind) {
		t.Fatalf("want %v, got %v: %v", kind, ze.Kind, err)
	}
	if !strings.Contains(err.Error(), msg) {
		t.Fatalf("error %q does not mention %q", err, msg)
	}
}

// infoZipFiles is the tree the Info-ZIP tests archive, as name -> content
// ("d/link" is a symlink to "a.txt", names ending in "/" directories).
func infoZipFiles() map[string][]byte {
	return map[string][]byte{
		"d/":          nil,
		"d/a.txt":     genText(120<<10, 6),
		"d/r.bin":     genRandom(70<<10, 7),
		"d/empty":     nil,
		"d/link":      []byte("a.txt"),
		"d/sub/":      nil,
		"d/sub/b.txt": []byte("short\n"),
	}
}

// infoZipExtra is what Info-ZIP on Unix adds to every header: the
// extended timestamp ("UT") and Unix uid/gid ("ux") fields.
var infoZipExtra = []byte{
	'U', 'T', 5, 0, 3, 0x7f, 0x4d, 0x09, 0x6b,
	'u', 'x', 11, 0, 1, 4, 0, 0, 0, 0, 4, 0, 0, 0, 0,
}

// infoZipLayout builds, byte for byte, the archive of infoZipFiles that
// Info-ZIP writes in one of its modes: entries in the order zip -r adds
// them, written as hand says for each (name, content, mode set here).
func infoZipLayout(t testing.TB, end endKind, hand func(name string, e *handEntry)) []byte {
	files := infoZipFiles()
	var ents []handEntry
	for _, name := range []string{"d/", "d/empty", "d/link", "d/a.txt", "d/r.bin", "d/sub/", "d/sub/b.txt"} {
		e := handEntry{name: name, body: files[name], mode: 0o640, extra: infoZipExtra}
		switch {
		case name == "d/link":
			e.mode = fs.ModeSymlink | 0o777
		case strings.HasSuffix(name, "/"):
			e.mode = fs.ModeDir | 0o755
		}
		hand(name, &e)
		ents = append(ents, e)
	}
	return build(t, ents, end)
}

// infoZipCases are the layouts Info-ZIP writes, built in Go: each case
// says what the stream reader must make of it. spool names the entry at
// which the reader must give up with ErrNeedsSpool; kind and msg the
// error it must fail with otherwise; no error: it reads every entry of
// infoZipFiles (with "d/link" a symlink).
type infoZipCase struct {
	name      string
	data      []byte
	spool     string
	kind      error
	msg       string
	stdOpens  bool // archive/zip reads it (checked either way)
	stdinOnly bool // one entry "-" holding d/a.txt
}

func infoZipCases(t testing.TB) []infoZipCase {
	regular := func(name string) bool { return !strings.HasSuffix(name, "/") && name != "d/link" }
	deflated := func(name string) bool { return regular(name) && name != "d/empty" }
	toFile := infoZipLayout(t, endPlain, func(name string, e *handEntry) { e.deflate = deflated(name) })
	// To a pipe, Info-ZIP deflates every file and gives its sizes in a
	// data descriptor, keeping the uncompressed size in the local header;
	// a symlink it stores: some builds with its sizes in the local header,
	// others (Debian 12's zip 3.0) with its sizes only after its data.
	toPipe := func(linkSizes bool) []byte {
		return infoZipLayout(t, endPlain, func(name string, e *handEntry) {
			switch {
			case deflated(name):
				e.deflate, e.desc, e.descSig, e.keepUsize = true, true, true, true
			case name == "d/link":
				e.desc, e.descSig, e.keepCsize, e.keepUsize = true, true, linkSizes, linkSizes
			}
		})
	}
	pipeNoSizes := toPipe(false)
	linkEnd := bytes.Index(pipeNoSizes, []byte("a.txtPK\x07\x08")) + len("a.txt")
	stdin := build(t, []handEntry{{name: "-", body: infoZipFiles()["d/a.txt"], deflate: true, desc: true, descSig: true,
		descWide: true, localZip64: true, extra: infoZipExtra}}, endPlain)
	forced := func(end endKind) []byte {
		return infoZipLayout(t, end, func(name string, e *handEntry) {
			e.deflate, e.localZip64, e.central64 = deflated(name), true, true
		})
	}
	return []infoZipCase{
		{name: "to a file", data: toFile, stdOpens: true},
		{name: "to a pipe, symlink with its sizes", data: toPipe(true), stdOpens: true},
		{name: "to a pipe, symlink sized after its data", data: pipeNoSizes, spool: "d/link", stdOpens: true},
		// What Debian 12's zip 3.0 writes to a pipe before it fails with
		// "zip -0 not supported for I/O on pipes or devices".
		{name: "to a pipe, cut after the symlink", data: pipeNoSizes[:linkEnd], spool: "d/link"},
		{name: "stdin to a pipe", data: stdin, stdOpens: true, stdinOnly: true},
		{name: "forced zip64", data: forced(endZip64), stdOpens: true},
		// archive/zip finds the directory anyway; the stream reader refuses
		// an end record that contradicts the archive.
		{name: "forced zip64 to a pipe", data: forced(endBroken64), kind: ErrCorrupt, msg: brokenEndMsg, stdOpens: true},
	}
}

// checkInfoZip checks what the stream reader makes of data against c.
func checkInfoZip(t *testing.T, c infoZipCase) {
	t.Helper()
	got, central, err := readAll(bytes.NewReader(c.data))
	zr, stdErr := zip.NewReader(bytes.NewReader(c.data), int64(len(c.data)))
	if (stdErr == nil) != c.stdOpens {
		t.Errorf("archive/zip: %v, expected it to read the archive: %v", stdErr, c.stdOpens)
	}
	switch {
	case c.spool != "":
		wantErr(t, err, ErrNeedsSpool, fmt.Sprintf("%q", c.spool))
		if stdErr == nil {
			// Spooled, the archive is read by its central directory.
			for _, f := range zr.File {
				if rc, err := f.Open(); err != nil {
					t.Errorf("archive/zip cannot open %q: %v", f.Name, err)
				} else if _, err := io.Copy(io.Discard, rc); err != nil {
					t.Errorf("archive/zip cannot read %q: %v", f.Name, err)
				}
			}
		}
		return
	case c.kind != nil:
		wantErr(t, err, c.kind, c.msg)
		return
	case err != nil:
		t.Fatal(err)
	}
	checkStd(t, c.data, got, central)
	want := infoZipFiles()
	if c.stdinOnly {
		want = map[string][]byte{"-": want["d/a.txt"]}
	}
	if len(got) != len(want) {
		t.Fatalf("%d entries, want %d", len(got), len(want))
	}
	for i, g := range got {
		body, ok := want[g.loc.Name]
		if !ok || !bytes.Equal(body, g.content) {
			t.Errorf("entry %q: %d bytes, want %d (known: %v)", g.loc.Name, len(g.content), len(body), ok)
		}
		wantType := fs.FileMode(0)
		switch {
		case g.loc.Name == "d/link":
			wantType = fs.ModeSymlink
		case strings.HasSuffix(g.loc.Name, "/"):
			wantType = fs.ModeDir
		}
		if central[i].Mode.Type() != wantType {
			t.Errorf("entry %q: mode %v, want type %v", g.loc.Name, central[i].Mode, wantType)
		}
	}
}

// TestInfoZipLayouts reads the layouts Info-ZIP writes to a file, to a
// pipe (data descriptors; a symlink stored with or without its sizes in
// its local header, or the archive cut after it), from stdin (zip64 extra
// and 8-byte data descriptor), and with forced zip64 (to a pipe, zip 3.0
// writes an end record that points nowhere), all built in Go.
func TestInfoZipLayouts(t *testing.T) {
	for _, c := range infoZipCases(t) {
		t.Run(c.name, func(t *testing.T) {
			checkInfoZip(t, c)
			// TestInfoZip's inspection must come to the same expectation.
			in := inspectInfoZip(t, c.data)
			if in.spool != c.spool || in.kind != c.kind || in.kind != nil && !strings.Contains(c.msg, in.msg) || in.stdOpens != c.stdOpens {
				t.Errorf("inspection expects spool %q, error %v %q, archive/zip %v", in.spool, in.kind, in.msg, in.stdOpens)
			}
		})
	}
}

// TestInfoZip reads what the installed Info-ZIP zip command writes, to a
// file, to a pipe and from stdin. What it writes differs between builds
// and machines (a symlink to a pipe: with its sizes, without them, or zip
// fails and leaves the archive cut), so the expectation follows what the
// archive holds (inspectInfoZip); TestInfoZipLayouts has each layout
// byte for byte.
func TestInfoZip(t *testing.T) {
	if _, err := exec.LookPath("zip"); err != nil {
		t.Skip("zip command not installed")
	}
	dir := t.TempDir()
	files := infoZipFiles()
	for _, name := range slices.Sorted(maps.Keys(files)) { // parents first
		body, p := files[name], filepath.Join(dir, name)
		var err error
		switch {
		case strings.HasSuffix(name, "/"):
			err = os.MkdirAll(p, 0o755)
		case name == "d/link":
			err = os.Symlink(string(body), p)
		default:
			if err = os.MkdirAll(filepath.Dir(p), 0o755); err == nil {
				err = os.WriteFile(p, body, 0o640)
			}
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name  string
		args  []string
		pipe  bool // the archive is zip's standard output, a pipe
		stdin bool // zip reads d/a.txt from its standard input
	}{
		{name: "to a file", args: []string{"-q", "-r", "-y", "out.zip", "d"}},
		{name: "stored", args: []string{"-q", "-0", "-r", "-y", "out.zip", "d"}},
		{name: "to a pipe", args: []string{"-q", "-r", "-y", "-", "d"}, pipe: true},
		{name: "forced zip64", args: []string{"-q", "-fz", "-r", "-y", "out.zip", "d"}},
		{name: "forced zip64 to a pipe", args: []string{"-q", "-fz", "-r", "-y", "-", "d"}, pipe: true},
		{name: "stdin to a pipe", args: []string{"-q", "-", "-"}, pipe: true, stdin: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := filepath.Join(dir, "out.zip")
			os.Remove(out)
			cmd := exec.Command("zip", tt.args...)
			cmd.Dir = dir
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr // pipes
			if tt.stdin {
				f, err := os.Open(filepath.Join(dir, "d/a.txt")) // a file, not a pipe: "-" is then regular
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				cmd.Stdin = f
			}
			zipErr := cmd.Run()
			if zipErr != nil {
				t.Logf("zip %v: %v: %s", tt.args, zipErr, bytes.TrimSpace(stderr.Bytes()))
			}
			data := stdout.Bytes()
			if !tt.pipe {
				var err error
				if data, err = os.ReadFile(out); err != nil {
					if zipErr != nil {
						t.Skipf("zip wrote no archive")
					}
					t.Fatal(err)
				}
			}
			c := inspectInfoZip(t, data)
			c.stdinOnly = tt.stdin
			t.Logf("expecting: archive/zip reads it %v, spool at %q, error %v %q", c.stdOpens, c.spool, c.kind, c.msg)
			if c.kind == nil && c.spool == "" && zipErr != nil {
				t.Fatalf("zip failed, yet the archive is whole: %v", zipErr)
			}
			checkInfoZip(t, c)
		})
	}
}

// inspectInfoZip decides what the stream reader must make of an archive
// Info-ZIP wrote, from what it holds: the first entry stored with its
// sizes only after its data makes it give up (ErrNeedsSpool); before such
// an entry, an archive archive/zip cannot read must fail as corrupt (cut,
// or with an end record that points nowhere); otherwise it must read it
// whole.
func inspectInfoZip(t *testing.T, data []byte) infoZipCase {
	c := infoZipCase{name: "inspected", data: data}
	le := binary.LittleEndian
	// Walk the local headers (inflating deflated data to find its end) up
	// to the first stored entry whose end its header does not tell.
	off := 0
	for off+localLen <= len(data) && le.Uint32(data[off:]) == localSig {
		h := data[off:]
		flags, method := le.Uint16(h[6:]), le.Uint16(h[8:])
		csize, usize := uint64(le.Uint32(h[18:])), uint64(le.Uint32(h[22:]))
		nl, el := int(le.Uint16(h[26:])), int(le.Uint16(h[28:]))
		if off+localLen+nl+el > len(data) {
			break
		}
		name := string(h[localLen : localLen+nl])
		z64, wide := extraField(h[localLen+nl:localLen+nl+el], zip64ID)
		if wide && len(z64) >= 16 {
			usize, csize = le.Uint64(z64), le.Uint64(z64[8:])
		}
		off += localLen + nl + el
		desc := flags&flagDesc != 0
		switch {
		case method == 8 && (desc || csize > 0):
			br := bytes.NewReader(data[off:])
			if _, err := io.Copy(io.Discard, flate.NewReader(br)); err != nil {
				return c // the reader fails on it too; checkInfoZip sees how
			}
			off = len(data) - br.Len()
		case method == 0 && desc && (csize != usize || csize == 0) &&
			!bytes.HasPrefix(data[off:], []byte("PK\x07\x08\x00\x00\x00\x00")):
			c.spool = name
		default:
			off += int(csize)
		}
		if c.spool != "" {
			break
		}
		if desc {
			off += 4 + 12 // signature (Info-ZIP writes it), CRC, sizes
			if wide {
				off += 8
			}
		}
	}
	_, stdErr := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	c.stdOpens = stdErr == nil
	end := len(data) - endLen
	switch {
	case c.spool != "":
	case !c.stdOpens:
		c.kind, c.msg = ErrCorrupt, "zip archive"
	case end >= loc64Len && le.Uint32(data[end:]) == endSig && le.Uint32(data[end+16:]) == max32 &&
		le.Uint32(data[end-loc64Len:]) != loc64Sig:
		// zip -fz to a pipe (zip 3.0): no zip64 end record.
		c.kind, c.msg = ErrCorrupt, brokenEndMsg
	}
	return c
}

// brokenEndMsg is the stream reader's complaint about an end record that
// puts the central directory at 0xffffffff without a zip64 end record.
const brokenEndMsg = "places the central directory at offset 4294967295"

// handEntry is an entry of a hand-built archive (build), for layouts
// archive/zip does not write.
type handEntry struct {
	name       string
	body       []byte
	deflate    bool
	desc       bool // sizes in a data descriptor
	descSig    bool // with its signature
	descWide   bool // with 8-byte sizes
	localZip64 bool // zip64 extra in the local header, 32-bit sizes 0xffffffff
	central64  bool // zip64 extra in the central header, sizes and offset 0xffffffff
	noData     bool // deflate method without any compressed bytes
	// keepUsize and keepCsize keep the uncompressed and compressed size in
	// a local header although a data descriptor follows (Info-ZIP writing
	// to a pipe keeps the first for deflated entries, both for the stored
	// ones it can stream).
	keepUsize, keepCsize bool
	mode                 fs.FileMode // Unix mode in the central header; 0: regular 0644
	extra                []byte      // more extra fields, in both headers
}

// endKind is how build ends an archive.
type endKind int

const (
	endPlain endKind = iota // end record only
	endZip64                // zip64 end record and locator, saturated end record
	// endBroken64 saturates the end record's directory offset without a
	// zip64 end record, as Info-ZIP 3.0 does with -fz writing to a pipe.
	endBroken64
)

// stMode is the Unix st_mode of m, for external attributes.
func stMode(m fs.FileMode) uint32 {
	u := uint32(m.Perm())
	switch {
	case m&fs.ModeSymlink != 0:
		u |= 0o120000
	case m.IsDir():
		u |= 0o040000
	default:
		u |= 0o100000
	}
	return u
}

// build writes a hand-built archive, ended as end says.
func build(t testing.TB, ents []handEntry, end endKind) []byte {
	var b bytes.Buffer
	le := binary.LittleEndian
	type cent struct {
		h                    handEntry
		method, flags        uint16
		crc                  uint32
		csize, usize, offset uint64
	}
	var cds []cent
	for _, e := range ents {
		data, method := e.body, uint16(0)
		if e.deflate {
			data, method = deflateBytes(t, e.body), 8
		}
		if e.noData {
			data, method = nil, 8
		}
		var flags uint16
		if e.desc {
			flags |= flagDesc
		}
		c := cent{h: e, method: method, flags: flags, crc: crc32.ChecksumIEEE(e.body),
			csize: uint64(len(data)), usize: uint64(len(e.body)), offset: uint64(b.Len())}
		cds = append(cds, c)
		var extra []byte
		crc, cs, us := c.crc, uint32(c.csize), uint32(c.usize)
		if e.localZip64 {
			extra = le.AppendUint16(extra, zip64ID)
			extra = le.AppendUint16(extra, 16)
			if e.desc && e.deflate {
				// Info-ZIP streaming: sizes unknown yet. (It repeats the
				// sizes of stored entries, which it knows.)
				extra = append(extra, make([]byte, 16)...)
			} else {
				extra = le.AppendUint64(extra, c.usize)
				extra = le.AppendUint64(extra, c.csize)
			}
			cs, us = max32, max32
		}
		if e.desc {
			crc = 0
			if !e.localZip64 && !e.keepCsize {
				cs = 0
			}
			if !e.localZip64 && !e.keepUsize {
				us = 0
			}
		}
		extra = append(extra, e.extra...)
		h := le.AppendUint32(nil, localSig)
		h = le.AppendUint16(h, 45)
		h = le.AppendUint16(h, flags)
		h = le.AppendUint16(h, method)
		h = le.AppendUint32(h, 0) // time, date
		h = le.AppendUint32(h, crc)
		h = le.AppendUint32(h, cs)
		h = le.AppendUint32(h, us)
		h = le.AppendUint16(h, uint16(len(e.name)))
		h = le.AppendUint16(h, uint16(len(extra)))
		b.Write(h)
		b.WriteString(e.name)
		b.Write(extra)
		b.Write(data)
		if e.desc {
			var d []byte
			if e.descSig {
				d = le.AppendUint32(d, descSig)
			}
			d = le.AppendUint32(d, c.crc)
			if e.descWide {
				d = le.AppendUint64(d, c.csize)
				d = le.AppendUint64(d, c.usize)
			} else {
				d = le.AppendUint32(d, uint32(c.csize))
				d = le.AppendUint32(d, uint32(c.usize))
			}
			b.Write(d)
		}
	}
	dirOff := uint64(b.Len())
	for _, c := range cds {
		var extra []byte
		cs, us, off := uint32(c.csize), uint32(c.usize), uint32(c.offset)
		if c.h.central64 {
			extra = le.AppendUint16(extra, zip64ID)
			extra = le.AppendUint16(extra, 24)
			extra = le.AppendUint64(extra, c.usize)
			extra = le.AppendUint64(extra, c.csize)
			extra = le.AppendUint64(extra, c.offset)
			cs, us, off = max32, max32, max32
		}
		extra = append(extra, c.h.extra...)
		mode := c.h.mode
		if mode == 0 {
			mode = 0o644
		}
		h := le.AppendUint32(nil, centralSig)
		h = le.AppendUint16(h, 3<<8|45) // made by Unix
		h = le.AppendUint16(h, 45)
		h = le.AppendUint16(h, c.flags)
		h = le.AppendUint16(h, c.method)
		h = le.AppendUint32(h, 0)
		h = le.AppendUint32(h, c.crc)
		h = le.AppendUint32(h, cs)
		h = le.AppendUint32(h, us)
		h = le.AppendUint16(h, uint16(len(c.h.name)))
		h = le.AppendUint16(h, uint16(len(extra)))
		h = le.AppendUint16(h, 0) // comment
		h = le.AppendUint16(h, 0) // disk
		h = le.AppendUint16(h, 0) // internal attributes
		h = le.AppendUint32(h, stMode(mode)<<16)
		h = le.AppendUint32(h, off)
		b.Write(h)
		b.WriteString(c.h.name)
		b.Write(extra)
	}
	dirSize := uint64(b.Len()) - dirOff
	n := uint64(len(cds))
	e16, e32size, e32off := uint16(n), uint32(dirSize), uint32(dirOff)
	switch end {
	case endBroken64:
		e32off = max32
	case endZip64:
		recOff := uint64(b.Len())
		h := le.AppendUint32(nil, end64Sig)
		h = le.AppendUint64(h, end64Len-12)
		h = le.AppendUint16(h, 45)
		h = le.AppendUint16(h, 45)
		h = le.AppendUint32(h, 0)
		h = le.AppendUint32(h, 0)
		h = le.AppendUint64(h, n)
		h = le.AppendUint64(h, n)
		h = le.AppendUint64(h, dirSize)
		h = le.AppendUint64(h, dirOff)
		h = le.AppendUint32(h, loc64Sig)
		h = le.AppendUint32(h, 0)
		h = le.AppendUint64(h, recOff)
		h = le.AppendUint32(h, 1)
		b.Write(h)
		e16, e32size, e32off = max16, max32, max32
	}
	h := le.AppendUint32(nil, endSig)
	h = le.AppendUint32(h, 0)
	h = le.AppendUint16(h, e16)
	h = le.AppendUint16(h, e16)
	h = le.AppendUint32(h, e32size)
	h = le.AppendUint32(h, e32off)
	h = le.AppendUint16(h, 0)
	b.Write(h)
	return b.Bytes()
}

// TestZipStreamHandBuilt reads hand-built archives in layouts archive/zip
// does not write: zip64 extra fields in local and central headers, zip64
// end records, and data descriptors in every layout found in the wild.
func TestZipStreamHandBuilt(t *testing.T) {
	text := genText(40000, 8)
	tests := []struct {
		name string
		ents []handEntry
		end  endKind
	}{
		{name: "zip64 everywhere", end: endZip64, ents: []handEntry{
			{name: "stored", body: text[:3000], localZip64: true, central64: true},
			{name: "deflated", body: text, deflate: true, localZip64: true, central64: true},
			{name: "streamed", body: text[100:], deflate: true, desc: true, descSig: true, descWide: true, localZip64: true, central64: true},
			{name: "streamed-stored", body: text[:10], desc: true, descSig: true, descWide: true, localZip64: true, central64: true},
		}},
		{name: "descriptor without signature", ents: []handEntry{
			{name: "a", body: text, deflate: true, desc: true},
			{name: "b", body: text[:500], deflate: true, desc: true},
		}},
		{name: "8-byte descriptor without zip64 extra", ents: []handEntry{
			{name: "a", body: text, deflate: true, desc: true, descSig: true, descWide: true},
			{name: "empty", deflate: true, desc: true, descSig: true, descWide: true},
			{name: "b", body: text[:7], deflate: true, desc: true, descWide: true},
		}},
		{name: "4-byte descriptor with zip64 extra", end: endZip64, ents: []handEntry{
			{name: "a", body: text, deflate: true, desc: true, descSig: true, localZip64: true},
			{name: "b", body: text[:9], deflate: true, desc: true, localZip64: true, central64: true},
		}},
		{name: "empty stored entries with descriptors", ents: []handEntry{
			{name: "e1", desc: true, descSig: true},
			{name: "e2", desc: true, descSig: true, descWide: true, localZip64: true},
			{name: "f", body: []byte("after")},
		}},
		{name: "zip64 end record of an empty archive", end: endZip64},
		{name: "deflated directory without compressed bytes", ents: []handEntry{
			{name: "dir/", noData: true},
			{name: "dir/f", body: []byte("f"), deflate: true},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := build(t, tt.ents, tt.end)
			got, central, err := readAll(bytes.NewReader(data))
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.ents) {
				t.Fatalf("%d entries, want %d", len(got), len(tt.ents))
			}
			for i, e := range tt.ents {
				if got[i].loc.Name != e.name || !bytes.Equal(got[i].content, e.body) {
					t.Errorf("entry %d: %q %d bytes, want %q %d", i, got[i].loc.Name, len(got[i].content), e.name, len(e.body))
				}
				want := int64(len(e.body))
				if e.desc {
					want = -1
				}
				if got[i].loc.DeclaredSize != want {
					t.Errorf("entry %q: DeclaredSize %d, want %d", e.name, got[i].loc.DeclaredSize, want)
				}
				wantMode := fs.FileMode(0o644) // the builder writes Unix mode 0100644
				if strings.HasSuffix(e.name, "/") {
					wantMode |= fs.ModeDir
				}
				if central[i].Mode != wantMode {
					t.Errorf("entry %q: mode %v, want %v", e.name, central[i].Mode, wantMode)
				}
			}
			checkStd(t, data, got, central)
		})
	}
}

// split splits an archive written by archive/zip (no comment, no zip64)
// into its entries, central directory headers and end record.
func split(t *testing.T, data []byte) (body []byte, cds [][]byte) {
	t.Helper()
	end := data[len(data)-endLen:]
	if binary.LittleEndian.Uint32(end) != endSig {
		t.Fatal("no end record at the end")
	}
	off := binary.LittleEndian.Uint32(end[16:])
	n := int(binary.LittleEndian.Uint16(end[10:]))
	body = data[:off]
	rest := data[off : len(data)-endLen]
	for range n {
		l := centralLen + int(binary.LittleEndian.Uint16(rest[28:])) + int(binary.LittleEndian.Uint16(rest[30:])) + int(binary.LittleEndian.Uint16(rest[32:]))
		cds = append(cds, bytes.Clone(rest[:l]))
		rest = rest[l:]
	}
	return bytes.Clone(body), cds
}

// join assembles entries, central headers and a consistent end record.
func join(body []byte, cds [][]byte) []byte {
	out := bytes.Clone(body)
	for _, c := range cds {
		out = append(out, c...)
	}
	le := binary.LittleEndian
	out = le.AppendUint32(out, endSig)
	out = le.AppendUint32(out, 0)
	out = le.AppendUint16(out, uint16(len(cds)))
	out = le.AppendUint16(out, uint16(len(cds)))
	out = le.AppendUint32(out, uint32(len(out)-len(body)-12))
	out = le.AppendUint32(out, uint32(len(body)))
	return le.AppendUint16(out, 0)
}

// TestZipStreamCorrupt damages archives in many ways; each must fail with
// the right code and a message naming the problem.
func TestZipStreamCorrupt(t *testing.T) {
	text := genText(60000, 9)
	base := goZip(t, []goFile{
		{name: "a.txt", body: text, method: zip.Deflate},
		{name: "s.bin", body: text[:10000], method: zip.Store, raw: true},
		{name: "k.txt", body: text[:30000], method: zip.Deflate, raw: true},
	}, "")
	zr, err := zip.NewReader(bytes.NewReader(base), int64(len(base)))
	if err != nil {
		t.Fatal(err)
	}
	dataOff := func(i int) int {
		o, err := zr.File[i].DataOffset()
		if err != nil {
			t.Fatal(err)
		}
		return int(o)
	}
	localOff := func(i int) int { // the entry's local header
		f := zr.File[i]
		return dataOff(i) - localLen - len(f.Name) - len(f.Extra)
	}
	descOff := dataOff(0) + int(zr.File[0].CompressedSize64) // a.txt's data descriptor
	body, cds := split(t, base)
	dirOff := len(body)
	le := binary.LittleEndian
	patch := func(data []byte, f func(b []byte)) []byte {
		b := bytes.Clone(data)
		f(b)
		return b
	}
	spooled := goZip(t, []goFile{
		{name: "first", body: text[:100], method: zip.Deflate},
		{name: "stored-streamed", body: text[:1000], method: zip.Store},
	}, "")

	tests := []struct {
		name  string
		data  []byte
		kind  error
		msg   string
		trunc bool // errors.Is(err, io.ErrUnexpectedEOF)
	}{
		{name: "flipped byte in deflate data", data: patch(base, func(b []byte) { b[dataOff(0)+2000] ^= 0x10 }), kind: ErrCorrupt, msg: `"a.txt"`},
		{name: "flipped byte in stored data", data: patch(base, func(b []byte) { b[dataOff(1)+5000] ^= 0x01 }), kind: ErrCorrupt, msg: `zip entry "s.bin" fails its CRC check`},
		{name: "wrong CRC in data descriptor", data: patch(base, func(b []byte) { b[descOff+4]++ }), kind: ErrCorrupt, msg: `zip entry "a.txt" fails its CRC check`},
		{name: "wrong size in data descriptor", data: patch(base, func(b []byte) { b[descOff+12]++ }), kind: ErrCorrupt, msg: "its data descriptor says"},
		{name: "wrong size in local header", data: patch(base, func(b []byte) { b[localOff(2)+22]++ }), kind: ErrCorrupt, msg: `zip entry "k.txt" inflates to`},
		{name: "compressed size too small in local header", data: patch(base, func(b []byte) { le.PutUint32(b[localOff(2)+18:], 100) }), kind: ErrCorrupt, msg: `"k.txt" has more than the 100 compressed bytes`},
		{name: "uncompressed size too small in local header", data: patch(base, func(b []byte) { le.PutUint32(b[localOff(2)+22:], 100) }), kind: ErrCorrupt, msg: `zip entry "k.txt" inflates to more than the 100 bytes its header says`},
		{name: "compressed size too large in local header", data: patch(base, func(b []byte) { b[localOff(2)+18]++ }), kind: ErrCorrupt, msg: `compressed bytes, its header says`},
		{name: "wrong CRC in local header", data: patch(base, func(b []byte) { b[localOff(1)+14]++ }), kind: ErrCorrupt, msg: `"s.bin" fails its CRC check`},
		{name: "stored sizes differ", data: patch(base, func(b []byte) { b[localOff(1)+22]++ }), kind: ErrCorrupt, msg: "is stored but"},
		{name: "truncated in deflate data", data: base[:dataOff(0)+3000], kind: ErrCorrupt, msg: `truncated in the data of entry "a.txt"`, trunc: true},
		{name: "truncated in stored data", data: base[:dataOff(1)+3000], kind: ErrCorrupt, msg: `truncated in the data of entry "s.bin"`, trunc: true},
		{name: "truncated in data descriptor", data: base[:descOff+10], kind: ErrCorrupt, msg: `truncated in the data descriptor of entry "a.txt"`, trunc: true},
		{name: "truncated in a local header", data: base[:localOff(1)+20], kind: ErrCorrupt, msg: `truncated in a local file header after entry "a.txt"`, trunc: true},
		{name: "truncated before the central directory", data: base[:dirOff], kind: ErrCorrupt, msg: "truncated", trunc: true},
		{name: "truncated in the central directory", data: base[:dirOff+60], kind: ErrCorrupt, msg: "truncated in the central directory", trunc: true},
		{name: "truncated in the end record", data: base[:len(base)-5], kind: ErrCorrupt, msg: "truncated in the end record", trunc: true},
		{name: "empty input", data: nil, kind: ErrCorrupt, msg: "truncated", trunc: true},
		{name: "central directory names another entry", data: join(body, [][]byte{cds[0], patch(cds[1], func(b []byte) { b[centralLen] = 'x' }), cds[2]}), kind: ErrCorrupt, msg: `entry 1 is named "x.bin", the archive's entry "s.bin"`},
		{name: "central directory misses an entry", data: join(body, cds[:2]), kind: ErrCorrupt, msg: `entry "k.txt" is missing`},
		{name: "central directory has an extra entry", data: join(body, append(cds[:3:3], cds[0])), kind: ErrCorrupt, msg: `more entries than the archive has: "a.txt"`},
		{name: "central directory in another order", data: join(body, [][]byte{cds[1], cds[0], cds[2]}), kind: ErrCorrupt, msg: "is named"},
		{name: "central CRC differs", data: join(body, [][]byte{cds[0], patch(cds[1], func(b []byte) { b[16]++ }), cds[2]}), kind: ErrCorrupt, msg: `disagrees with entry "s.bin": CRC-32`},
		{name: "central size differs", data: join(body, [][]byte{cds[0], cds[1], patch(cds[2], func(b []byte) { b[24]++ })}), kind: ErrCorrupt, msg: `disagrees with entry "k.txt": uncompressed size`},
		{name: "central method differs", data: join(body, [][]byte{patch(cds[0], func(b []byte) { b[10] = 0 }), cds[1], cds[2]}), kind: ErrCorrupt, msg: `disagrees with entry "a.txt": method 0`},
		{name: "central offset differs", data: join(body, [][]byte{cds[0], patch(cds[1], func(b []byte) { b[42]++ }), cds[2]}), kind: ErrCorrupt, msg: `disagrees with entry "s.bin": local header offset`},
		{name: "central encryption flag differs", data: join(body, [][]byte{cds[0], patch(cds[1], func(b []byte) { b[8] |= 1 }), cds[2]}), kind: ErrCorrupt, msg: "encryption flag"},
		{name: "directory offset points elsewhere", data: patch(base, func(b []byte) { le.PutUint32(b[len(b)-6:], uint32(dirOff-1)) }), kind: ErrCorrupt, msg: "places the central directory at offset"},
		{name: "directory size wrong", data: patch(base, func(b []byte) { b[len(b)-10]++ }), kind: ErrCorrupt, msg: "gives a central directory of"},
		{name: "entry count wrong", data: patch(base, func(b []byte) { b[len(b)-12]++ }), kind: ErrCorrupt, msg: "end record counts 4 entries"},
		{name: "multi-disk", data: patch(base, func(b []byte) { b[len(b)-18] = 1 }), kind: ErrUnsupported, msg: "multi-disk"},
		{name: "junk between two entries", data: slicesConcat(base[:localOff(1)], []byte("JUNKJUNK"), base[localOff(1):]), kind: ErrCorrupt, msg: `unexpected bytes "JUNK" at offset ` + fmt.Sprint(localOff(1)) + `, after entry "a.txt"`},
		{name: "junk after the end record", data: slicesConcat(base, []byte{0}), kind: ErrCorrupt, msg: "data after its end record"},
		{name: "junk instead of the end record", data: slicesConcat(base[:len(base)-endLen], []byte("garbage garbage garbage")), kind: ErrCorrupt, msg: "after its central directory"},
		{name: "not a zip", data: []byte("#!/bin/sh\necho this is no zip archive\n"), kind: ErrCorrupt, msg: "at the start of the archive"},
		{name: "end record signature in the comment", data: goZip(t, []goFile{{name: "f", body: []byte("x"), method: zip.Deflate}}, "fake PK\x05\x06"), kind: ErrCorrupt, msg: "comment"},
		{name: "encrypted central directory", data: []byte("PK\x06\x08\x10\x00\x00\x00encrypted stuff!"), kind: ErrUnsupported, msg: "encrypted central directory"},
		{name: "encrypted entry", data: patch(base, func(b []byte) { b[localOff(1)+6] |= 1 }), kind: ErrUnsupported, msg: `zip entry "s.bin" is encrypted`},
		{name: "bzip2 entry", data: patch(base, func(b []byte) { b[localOff(0)+8] = 12 }), kind: ErrUnsupported, msg: `zip entry "a.txt" uses unsupported compression method 12 (bzip2)`},
		{name: "stored entry with data descriptor", data: spooled, kind: ErrNeedsSpool, msg: `"stored-streamed"`},
		{name: "stored entry with size only in the central directory", data: patch(base, func(b []byte) { le.PutUint32(b[localOff(1)+18:], max32) }), kind: ErrNeedsSpool, msg: `"s.bin"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := readAll(bytes.NewReader(tt.data))
			wantErr(t, err, tt.kind, tt.msg)
			if errors.Is(err, io.ErrUnexpectedEOF) != tt.trunc {
				t.Errorf("errors.Is(err, io.ErrUnexpectedEOF) = %v, want %v: %v", !tt.trunc, tt.trunc, err)
			}
		})
	}
}

func slicesConcat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// TestZipStreamZip64Corrupt damages the zip64 records of a hand-built
// archive.
func TestZipStreamZip64Corrupt(t *testing.T) {
	good := build(t, []handEntry{
		{name: "a", body: genText(5000, 10), deflate: true, localZip64: true, central64: true},
		{name: "b", body: []byte("b"), localZip64: true, central64: true},
		{name: "c", body: genText(3000, 11), deflate: true, desc: true, descSig: true, descWide: true, localZip64: true, central64: true},
	}, endZip64)
	le := binary.LittleEndian
	rec := bytes.Index(good, []byte("PK\x06\x06"))
	loc := bytes.Index(good, []byte("PK\x06\x07"))
	cd := bytes.Index(good, []byte("PK\x01\x02"))
	desc := bytes.Index(good, []byte("PK\x07\x08"))
	patch := func(f func(b []byte)) []byte {
		b := bytes.Clone(good)
		f(b)
		return b
	}
	tests := []struct {
		name, msg string
		data      []byte
	}{
		{name: "record count", msg: "zip64 end record counts 4 entries", data: patch(func(b []byte) { b[rec+32]++ })},
		{name: "record directory size", msg: "zip64 end record gives a central directory of", data: patch(func(b []byte) { b[rec+40]++ })},
		{name: "record directory offset", msg: "zip64 end record places the central directory", data: patch(func(b []byte) { b[rec+48]++ })},
		{name: "8-byte descriptor CRC", msg: `zip entry "c" fails its CRC check`, data: patch(func(b []byte) { b[desc+4]++ })},
		{name: "8-byte descriptor size", msg: fmt.Sprintf("has %[1]d compressed and 3000 uncompressed bytes, its data descriptor says %[1]d and 4294970296", len(deflateBytes(t, genText(3000, 11)))), data: patch(func(b []byte) { b[desc+20] = 1 })},
		{name: "locator offset", msg: "zip64 end locator points at offset", data: patch(func(b []byte) { b[loc+8]++ })},
		{name: "no locator", msg: "not followed by its locator", data: slicesConcat(good[:loc], good[loc+loc64Len:])},
		{name: "locator without record", msg: "locator without a zip64 end record", data: slicesConcat(good[:rec], good[loc:])},
		{name: "central zip64 offset", msg: `disagrees with entry "b": local header offset`, data: patch(func(b []byte) {
			second := cd + bytes.Index(good[cd+4:], []byte("PK\x01\x02")) + 4
			le.PutUint64(b[second+centralLen+1+4+16:], 1)
		})},
		{name: "short central zip64 extra", msg: "short zip64 extra field", data: patch(func(b []byte) {
			le.PutUint16(b[cd+centralLen+1+2:], 8) // the field claims 8 bytes, the rest becomes a bogus field
		})},
	}
	if _, _, err := readAll(bytes.NewReader(good)); err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := readAll(bytes.NewReader(tt.data))
			wantErr(t, err, ErrCorrupt, tt.msg)
		})
	}
}

// failingReader returns the first n bytes of data, then err.
type failingReader struct {
	data []byte
	n    int
	err  error
}

func (r *failingReader) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, r.err
	}
	k := copy(p[:min(len(p), r.n)], r.data)
	r.data, r.n = r.data[k:], r.n-k
	return k, nil
}

// TestZipStreamSourceError checks that a failing source is reported as
// itself (wrapped), wherever it fails, and not as a corrupt archive.
func TestZipStreamSourceError(t *testing.T) {
	data := goZip(t, []goFile{
		{name: "a", body: genText(400<<10, 11), method: zip.Deflate},
		{name: "b", body: genText(300<<10, 12), method: zip.Store, raw: true},
	}, "")
	boom := errors.New("connection reset by peer")
	download := fmt.Errorf("image server failed: %w", boom)
	for _, at := range []int{0, 10, 40, 100 << 10, 300 << 10, len(data) - 40, len(data) - 5, len(data)} {
		for _, cause := range []error{boom, download} {
			t.Run(fmt.Sprintf("%d/%v", at, cause), func(t *testing.T) {
				_, _, err := readAll(&failingReader{data: data, n: at, err: cause})
				if !errors.Is(err, cause) {
					t.Fatalf("got %v, want the source's error", err)
				}
				if ze := (*Error)(nil); errors.As(err, &ze) {
					t.Fatalf("a failing source is reported as a bad archive: %v", err)
				}
			})
		}
	}
}

// seedArchives are small archives of many layouts, for the fuzz target.
func seedArchives(t testing.TB) [][]byte {
	text := genText(3000, 13)
	return [][]byte{
		goZip(t, []goFile{
			{name: "a", body: text, method: zip.Deflate},
			{name: "d/"},
			{name: "l", body: []byte("a"), method: zip.Deflate, mode: fs.ModeSymlink | 0o777},
		}, ""),
		goZip(t, []goFile{
			{name: "s", body: text[:200], method: zip.Store, raw: true},
			{name: "k", body: text[:900], method: zip.Deflate, raw: true},
		}, "comment"),
		goZip(t, nil, ""),
		build(t, []handEntry{
			{name: "z", body: text[:300], deflate: true, desc: true, descSig: true, descWide: true, localZip64: true, central64: true},
			{name: "y", body: text[:50], localZip64: true, central64: true},
		}, endZip64),
		build(t, []handEntry{
			{name: "e", desc: true, descSig: true},
			{name: "n", body: text[:70], deflate: true, desc: true},
		}, endPlain),
	}
}

// FuzzZipStream feeds arbitrary bytes to the streaming reader: it must
// not panic, and when it accepts an archive, archive/zip must read the
// same entries, metadata and contents from the same bytes.
func FuzzZipStream(f *testing.F) {
	for _, s := range seedArchives(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) { differential(t, data) })
}

// TestZipStreamMutations runs the differential check of FuzzZipStream on
// every single-byte change (several values per byte) of small archives,
// which reaches the header checks far more often than random fuzzing.
func TestZipStreamMutations(t *testing.T) {
	seeds := seedArchives(t)
	if testing.Short() {
		seeds = seeds[:2]
	}
	runs, accepted := 0, 0
	for _, seed := range seeds {
		if len(seed) > 4096 {
			continue
		}
		data := bytes.Clone(seed)
		for i := range data {
			orig := data[i]
			for _, v := range []byte{orig ^ 0x01, orig ^ 0x80, orig + 1, orig - 1, 0, 0xff} {
				if v == orig {
					continue
				}
				data[i] = v
				if differential(t, data) {
					accepted++
				}
				runs++
			}
			data[i] = orig
		}
	}
	// Changes to names, times, attributes and other unchecked fields are
	// accepted, so the differential check really ran.
	t.Logf("%d mutations, %d accepted", runs, accepted)
	if runs < 5000 || accepted < 100 {
		t.Fatalf("only %d mutations ran, %d accepted", runs, accepted)
	}
}

// differential reads data with Reader; if it accepts the archive,
// archive/zip must read the same entries, metadata and contents. It
// reports whether Reader accepted the archive.
func differential(t *testing.T, data []byte) bool {
	const limit = 8 << 20 // per entry; a small input may inflate a lot
	type entry struct {
		loc Local
		sum [sha256.Size]byte
	}
	var ents []entry
	z := NewReader(bytes.NewReader(data))
	buf := make([]byte, 32<<10)
	for {
		loc, r, err := z.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return false
		}
		h := sha256.New()
		n, err := io.CopyBuffer(h, io.LimitReader(r, limit+1), buf)
		if err != nil || n > limit {
			return false
		}
		if _, err := r.Read(buf); err != io.EOF {
			t.Fatalf("entry %q: read after io.EOF: %v", loc.Name, err)
		}
		ents = append(ents, entry{*loc, [sha256.Size]byte(h.Sum(nil))})
	}
	central, err := z.Finish()
	if err != nil {
		return false
	}
	zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil && !errors.Is(err, zip.ErrInsecurePath) {
		t.Fatalf("accepted an archive archive/zip rejects: %v", err)
	}
	if len(zr.File) != len(ents) || len(central) != len(ents) {
		t.Fatalf("%d entries (%d central), archive/zip %d", len(ents), len(central), len(zr.File))
	}
	for i, f := range zr.File {
		g := ents[i].loc
		if g.Name != f.Name || central[i].Name != f.Name || g.Method != f.Method || g.Flags&1 != f.Flags&1 ||
			g.CRC32 != f.CRC32 || g.CompressedSize != f.CompressedSize64 || g.UncompressedSize != f.UncompressedSize64 {
			t.Fatalf("entry %d: %+v, archive/zip %+v", i, g, f.FileHeader)
		}
		if central[i].Mode != f.Mode() {
			t.Fatalf("entry %q: mode %v, archive/zip %v", f.Name, central[i].Mode, f.Mode())
		}
		h := data[g.Offset:]
		want := g.Offset + localLen + int64(binary.LittleEndian.Uint16(h[26:])) + int64(binary.LittleEndian.Uint16(h[28:]))
		if off, err := f.DataOffset(); err != nil || off != want {
			t.Fatalf("entry %q: local header at %d says data at %d, archive/zip's data at %d (%v)", f.Name, g.Offset, want, off, err)
		}
		if strings.HasSuffix(f.Name, "/") && f.UncompressedSize64 != 0 ||
			f.Method == zip.Deflate && f.CompressedSize64 == 0 {
			// archive/zip refuses to read a directory's data, and an
			// entry without even an empty deflate stream; the stream
			// reader reads the first and takes the second as empty.
			continue
		}
		rc, err := f.Open()
		if err != nil {
			t.Fatalf("archive/zip cannot open %q: %v", f.Name, err)
		}
		sum := sha256.New()
		_, err = io.CopyBuffer(sum, rc, buf)
		rc.Close()
		if err != nil {
			t.Fatalf("archive/zip fails reading %q, the stream reader accepted it: %v", f.Name, err)
		}
		if [sha256.Size]byte(sum.Sum(nil)) != ents[i].sum {
			t.Fatalf("entry %q: content differs from archive/zip's", f.Name)
		}
	}
	return true
}

// benchArchive is the benchmark archive: ~64 MiB of disk-like data (random,
// text and zero blocks) deflated into one entry, plus a few small ones.
var benchArchive = sync.OnceValues(func() ([]byte, int64) {
	const size = 64 << 20
	disk := make([]byte, size)
	text := genText(64<<10, 14)
	rnd := rand.NewChaCha8([32]byte{14})
	for off := 0; off < size; off += 64 << 10 {
		blk := disk[off : off+64<<10]
		switch off / (64 << 10) % 4 {
		case 0:
			rnd.Read(blk)
		case 1, 3:
			copy(blk, text)
		}
	}
	var buf bytes.Buffer
	w := zip.NewWriter(&buf)
	w.RegisterCompressor(zip.Deflate, func(out io.Writer) (io.WriteCloser, error) {
		return flate.NewWriter(out, flate.DefaultCompression)
	})
	total := int64(0)
	for i, body := range [][]byte{text[:1000], disk, text} {
		fw, err := w.Create(fmt.Sprintf("file%d", i))
		if err != nil {
			panic(err)
		}
		fw.Write(body)
		total += int64(len(body))
	}
	if err := w.Close(); err != nil {
		panic(err)
	}
	return buf.Bytes(), total
})

// BenchmarkZipStream reads the benchmark archive with Reader.
func BenchmarkZipStream(b *testing.B) {
	arch, total := benchArchive()
	b.SetBytes(total)
	buf := make([]byte, 1<<20)
	for b.Loop() {
		z := NewReader(bytes.NewReader(arch))
		var n int64
		for {
			_, r, err := z.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
			for {
				k, err := r.Read(buf)
				n += int64(k)
				if err == io.EOF {
					break
				}
				if err != nil {
					b.Fatal(err)
				}
			}
		}
		if _, err := z.Finish(); err != nil || n != total {
			b.Fatal(err, n)
		}
	}
}

// BenchmarkZipRandomAccess reads the same archive as the extractor does
// today: archive/zip for the directory, klauspost's inflater over a 1 MiB
// bufio.Reader for each entry, with the CRC check.
func BenchmarkZipRandomAccess(b *testing.B) {
	arch, total := benchArchive()
	b.SetBytes(total)
	buf := make([]byte, 1<<20)
	for b.Loop() {
		zr, err := zip.NewReader(bytes.NewReader(arch), int64(len(arch)))
		if err != nil {
			b.Fatal(err)
		}
		var n int64
		for _, f := range zr.File {
			raw, err := f.OpenRaw()
			if err != nil {
				b.Fatal(err)
			}
			fr := flate.NewReader(bufio.NewReaderSize(raw, 1<<20))
			var sum uint32
			var fn uint64
			for {
				k, err := fr.Read(buf)
				sum = crc32.Update(sum, crc32.IEEETable, buf[:k])
				fn += uint64(k)
				if err == io.EOF {
					break
				}
				if err != nil {
					b.Fatal(err)
				}
			}
			if sum != f.CRC32 || fn != f.UncompressedSize64 {
				b.Fatal("CRC or size mismatch")
			}
			n += int64(fn)
		}
		if n != total {
			b.Fatal(n)
		}
	}
}
