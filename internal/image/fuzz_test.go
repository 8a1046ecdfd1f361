package image

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzExtract feeds arbitrary bytes (tar, zip, compressed or not) to the
// extractor: it must never panic, never write outside its directory, and
// when it succeeds every symlink it left must resolve inside the tree.
// Seeds live in testdata/fuzz/FuzzExtract.
func FuzzExtract(f *testing.F) {
	for _, seed := range fuzzSeeds(f) {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		base := t.TempDir()
		out := filepath.Join(base, "out")
		if err := os.Mkdir(out, 0o755); err != nil {
			t.Fatal(err)
		}
		root, err := os.OpenRoot(out)
		if err != nil {
			t.Fatal(err)
		}
		defer root.Close()
		x := newExtractor(context.Background(), root, limits{maxBytes: 4 << 20, maxEntries: 200})
		needsSpool, err := x.extractStream(bytes.NewReader(data), "/fuzz.img")
		if err == nil && needsSpool {
			// As the store does: a fresh directory, the whole package.
			if err := os.RemoveAll(out); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(out, 0o755); err != nil {
				t.Fatal(err)
			}
			root, err = os.OpenRoot(out)
			if err != nil {
				t.Fatal(err)
			}
			defer root.Close()
			x = newExtractor(context.Background(), root, x.lim)
			err = x.extractZip(bytes.NewReader(data), int64(len(data)))
		}
		ents, rerr := os.ReadDir(base)
		if rerr != nil {
			t.Fatal(rerr)
		}
		if len(ents) != 1 || ents[0].Name() != "out" {
			t.Fatalf("wrote outside its directory: %v", ents)
		}
		if err != nil {
			return
		}
		// Every symlink must stay inside after full resolution.
		filepath.Walk(out, func(p string, fi os.FileInfo, werr error) error {
			if werr != nil || fi.Mode()&os.ModeSymlink == 0 {
				return nil
			}
			rel, _ := filepath.Rel(out, p)
			if err := x.resolveInside(filepath.ToSlash(rel)); err != nil {
				t.Fatalf("accepted an escaping symlink %s: %v", rel, err)
			}
			real, err := filepath.EvalSymlinks(p)
			if err == nil && !strings.HasPrefix(real+"/", out+"/") {
				t.Fatalf("symlink %s resolves to %s, outside %s", rel, real, out)
			}
			return nil
		})
	})
}

// fuzzSeeds are the in-code seeds; TestWriteFuzzCorpus writes them to
// testdata/fuzz/FuzzExtract.
func fuzzSeeds(tb testing.TB) [][]byte {
	body := []byte("hello")
	good := buildTar(tb, []entry{
		{name: "./", typ: tar.TypeDir},
		{name: "./disk.qcow2", body: append([]byte("QFI\xfb"), make([]byte, 600)...)},
		{name: "./conf/meta.json", body: []byte(`{"os":"debian"}`)},
		{name: "./current", typ: tar.TypeSymlink, link: "disk.qcow2"},
	})
	return [][]byte{
		good,
		gz(tb, good),
		zst(tb, good),
		buildZip(tb, []entry{{name: "d/", typ: tar.TypeDir}, {name: "d/f", body: body}, {name: "l", typ: tar.TypeSymlink, link: "d/f"}}),
		buildZip(tb, []entry{{name: "../x", body: body}}),
		buildTar(tb, []entry{{name: "../x", body: body}}),
		buildTar(tb, []entry{{name: "c", typ: tar.TypeSymlink, link: "."}, {name: "l", typ: tar.TypeSymlink, link: "c/../x"}}),
		buildTar(tb, []entry{{name: "f", body: body}, {name: "h", typ: tar.TypeLink, link: "f"}, {name: "s", typ: tar.TypeSymlink, link: "f"}}),
		append([]byte("QFI\xfb"), make([]byte, 1024)...),
		qcow2Header("../outside.qcow2", ""),
		buildTar(tb, []entry{{name: "b.qcow2", body: qcow2Header("", "")}, {name: "t.qcow2", body: qcow2Header("b.qcow2", "data")}}),
		[]byte("# Disk DescriptorFile\nRW 8 FLAT \"/dev/sda\" 0\n"),
	}
}

// TestWriteFuzzCorpus regenerates the seed corpus when
// GOLDVM_WRITE_FUZZ_CORPUS=1.
func TestWriteFuzzCorpus(t *testing.T) {
	if os.Getenv("GOLDVM_WRITE_FUZZ_CORPUS") != "1" {
		return // a generator, not a check: nothing to do (and nothing skipped under CI)
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzExtract")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, seed := range fuzzSeeds(t) {
		content := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", seed)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%02d", i)), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
