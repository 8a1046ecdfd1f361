package image

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/goldvm/goldvm/internal/errdefs"
)

// diskLike returns n bytes of random blocks, zero blocks and blocks that
// are zero but for one byte, so that every path of the hole detection is
// taken.
func diskLike(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for off := 0; off < n; off += blockSize {
		end := min(off+blockSize, n)
		switch r.IntN(3) {
		case 0: // zero block
		case 1:
			for i := off; i < end; i++ {
				b[i] = byte(r.Uint32())
			}
		default:
			b[off+r.IntN(end-off)] = 1
		}
	}
	return b
}

// TestCopySparse writes files of sizes around the buffer and block
// boundaries, ending in data and in zeros, and checks their content,
// length and holes.
func TestCopySparse(t *testing.T) {
	dir := t.TempDir()
	sizes := []int{0, 1, blockSize - 1, blockSize + 1, writerBufferSize, writerBufferSize + 5000, 5*writerBufferSize + 3*blockSize + 17}
	for _, size := range sizes {
		for _, zeroTail := range []bool{false, true} {
			data := diskLike(size, uint64(size))
			if size > 2*writerBufferSize {
				// A long zero run, so the file must have a hole.
				clear(data[writerBufferSize : 2*writerBufferSize])
			}
			if zeroTail {
				clear(data[size/2:])
			}
			name := filepath.Join(dir, "f")
			os.Remove(name)
			f, err := os.Create(name)
			if err != nil {
				t.Fatal(err)
			}
			x := newExtractor(context.Background(), nil, limits{maxBytes: 1 << 30})
			n, err := x.copySparse(f, bytes.NewReader(data))
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				t.Fatalf("size %d: %v", size, err)
			}
			got, err := os.ReadFile(name)
			if err != nil {
				t.Fatal(err)
			}
			if n != int64(size) || x.written != int64(size) || !bytes.Equal(got, data) {
				t.Fatalf("size %d, zero tail %v: copied %d, counted %d, file has %d bytes, same content: %v",
					size, zeroTail, n, x.written, len(got), bytes.Equal(got, data))
			}
			if size > 2*writerBufferSize {
				fi, err := os.Stat(name)
				if err != nil {
					t.Fatal(err)
				}
				if a := allocated(fi); a > int64(size)-writerBufferSize {
					t.Errorf("size %d: %d bytes allocated, want holes of at least %d bytes", size, a, writerBufferSize)
				}
			}
		}
	}
}

// TestCopySparseStopsAtTheLimit: the bytes actually produced count
// against the image limit while the file is written.
func TestCopySparseStopsAtTheLimit(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	x := newExtractor(context.Background(), nil, limits{maxBytes: 3 * writerBufferSize})
	_, err = x.copySparse(f, bytes.NewReader(diskLike(4*writerBufferSize, 1)))
	wantCode(t, err, CodeTooLarge, errdefs.ErrInvalid)
}
