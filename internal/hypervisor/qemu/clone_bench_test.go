package qemu

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/goldvm/goldvm/internal/hypervisor"
)

// makeGoldDisk writes a raw disk of size bytes with 64 MiB of random data
// spread over it (the rest sparse), the shape of a real, mostly empty image.
func makeGoldDisk(b *testing.B, dir string, size int64) string {
	b.Helper()
	gold := filepath.Join(dir, "gold")
	os.MkdirAll(gold, 0o755)
	path := filepath.Join(gold, "disk.raw")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		b.Fatal(err)
	}
	chunk := make([]byte, 4<<20)
	const chunks = 16 // 64 MiB of data
	for i := range int64(chunks) {
		rand.Read(chunk)
		if _, err := f.WriteAt(chunk, i*(size/chunks)); err != nil {
			b.Fatal(err)
		}
	}
	return gold
}

// fullCopy is the baseline a naive backend would do: copy every byte of the
// gold disk (holes included: a disk image copied by a generic tool loses them).
func fullCopy(b *testing.B, from, to string) {
	src, err := os.Open(from)
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	dst, err := os.Create(to)
	if err != nil {
		b.Fatal(err)
	}
	defer dst.Close()
	// A plain buffer copy: io.Copy would use copy_file_range and share extents.
	buf := make([]byte, 1<<20)
	if _, err := io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, buf); err != nil {
		b.Fatal(err)
	}
	if err := dst.Sync(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkClone compares the driver's linked clone with a full copy of the
// gold disk for a 1 GiB and a 10 GiB (sparse) image. Linked-clone time must
// not grow with the image size; compare with
//
//	go test -run XXX -bench Clone -benchtime 5x ./internal/hypervisor/qemu/
func BenchmarkClone(b *testing.B) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		b.Skip("qemu-img is not installed")
	}
	d, err := New(Config{Accel: "tcg", RunDir: b.TempDir(), UserNet: true})
	if err != nil {
		b.Fatal(err)
	}
	for _, size := range []int64{1 << 30, 10 << 30} {
		dir := b.TempDir()
		gold := makeGoldDisk(b, dir, size)
		name := fmt.Sprintf("%dGiB", size>>30)
		goldDisk := preparedGold(b, gold)
		b.Run("linked-"+name, func(b *testing.B) {
			for i := range b.N {
				spec := hypervisor.Spec{ID: fmt.Sprintf("bench%d", i), Dir: filepath.Join(dir, fmt.Sprintf("vm-l%d", i)), GoldDir: gold, GoldDisk: goldDisk, CPUs: 1, MemoryMiB: 128, Network: "nat", Headless: true}
				os.MkdirAll(spec.Dir, 0o700)
				if err := d.Clone(context.Background(), spec); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				os.RemoveAll(spec.Dir)
				b.StartTimer()
			}
		})
		b.Run("fullcopy-"+name, func(b *testing.B) {
			for i := range b.N {
				to := filepath.Join(dir, fmt.Sprintf("copy%d.raw", i))
				fullCopy(b, filepath.Join(gold, "disk.raw"), to)
				b.StopTimer()
				os.Remove(to)
				b.StartTimer()
			}
		})
	}
}
