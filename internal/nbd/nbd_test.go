package nbd

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// serve runs a real qemu-nbd serving disk read-only as format on a unix
// socket and returns a client of it.
func serve(t *testing.T, disk, format string) *Client {
	t.Helper()
	bin, err := exec.LookPath("qemu-nbd")
	if err != nil {
		t.Skip("qemu-nbd (qemu-utils) is not installed")
	}
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	cmd := exec.Command(bin, "--read-only", "--format="+format, "--socket="+sock, disk)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		c, err := Dial(ctx, "unix", sock)
		if err == nil {
			t.Cleanup(func() { c.Close() })
			return c
		}
		if ctx.Err() != nil {
			t.Fatalf("qemu-nbd never answered: %v: %s", err, stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestQemuNBD reads a qcow2 disk through qemu-nbd and compares with the
// raw bytes it was made from.
func TestQemuNBD(t *testing.T) {
	dir := t.TempDir()
	raw := make([]byte, 3<<20+512)
	for i := range raw {
		raw[i] = byte(i*7 + i>>12)
	}
	rawPath, qcow := filepath.Join(dir, "d.raw"), filepath.Join(dir, "d.qcow2")
	if err := os.WriteFile(rawPath, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	img, err := exec.LookPath("qemu-img")
	if err != nil {
		t.Skip("qemu-img is not installed")
	}
	if out, err := exec.Command(img, "convert", "-f", "raw", "-O", "qcow2", rawPath, qcow).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v: %s", err, out)
	}
	c := serve(t, qcow, "qcow2")
	if c.Size() != int64(len(raw)) {
		t.Fatalf("Size = %d, want %d", c.Size(), len(raw))
	}
	for _, r := range []struct{ off, n int }{{0, 512}, {1, 3}, {4095, 2}, {1 << 20, 2<<20 + 7}, {len(raw) - 100, 100}} {
		p := make([]byte, r.n)
		if n, err := c.ReadAt(p, int64(r.off)); err != nil || n != r.n {
			t.Fatalf("ReadAt(%d, %d) = %d, %v", r.off, r.n, n, err)
		}
		if !bytes.Equal(p, raw[r.off:r.off+r.n]) {
			t.Errorf("ReadAt(%d, %d): wrong bytes", r.off, r.n)
		}
	}
	// Past the end: the bytes there and io.EOF, as io.ReaderAt says.
	p := make([]byte, 200)
	if n, err := c.ReadAt(p, int64(len(raw)-50)); n != 50 || err != io.EOF || !bytes.Equal(p[:50], raw[len(raw)-50:]) {
		t.Errorf("read across the end = %d, %v", n, err)
	}
	if n, err := c.ReadAt(p, int64(len(raw))); n != 0 || err != io.EOF {
		t.Errorf("read at the end = %d, %v", n, err)
	}
}

// TestNotNBD: a server that is not an NBD server fails the handshake.
func TestNotNBD(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			c.Write([]byte("HTTP/1.1 400 Bad Request\r\n\r\n"))
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := Dial(ctx, "unix", sock); err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Dial = %v, want a handshake error", err)
	}
}
