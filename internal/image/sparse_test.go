package image

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
)

func TestWriteFileSparse(t *testing.T) {
	tests := []struct {
		desc string
		data []byte
	}{
		{desc: "hole, data, hole", data: bytes.Join([][]byte{make([]byte, 1<<20), bytes.Repeat([]byte{7}, 5000), make([]byte, 3<<20+123)}, nil)},
		{desc: "all zero", data: make([]byte, 2<<20)},
		{desc: "no zero", data: bytes.Repeat([]byte{1, 2, 3}, 500000)},
		{desc: "empty", data: nil},
		{desc: "odd tail", data: append(bytes.Repeat([]byte{9}, 4097), 0, 0, 0)},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			dir := t.TempDir()
			root, err := os.OpenRoot(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer root.Close()
			x := newExtractor(context.Background(), root, limits{maxBytes: 1 << 30, maxEntries: 10})
			if err := x.writeFile("f", int64(len(tt.data)), bytes.NewReader(tt.data)); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(filepath.Join(dir, "f"))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tt.data) {
				t.Fatalf("content differs (len %d, want %d)", len(got), len(tt.data))
			}
			fi, _ := os.Stat(filepath.Join(dir, "f"))
			t.Logf("size %d, allocated %d", fi.Size(), allocated(fi))
		})
	}
}

func TestWriteFileDeclaredMismatch(t *testing.T) {
	root, err := os.OpenRoot(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	x := newExtractor(context.Background(), root, limits{maxBytes: 1 << 20, maxEntries: 10})
	wantCode(t, x.writeFile("f", 10, bytes.NewReader([]byte("short"))), CodeCorrupt, nil)
}
