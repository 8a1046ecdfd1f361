package websocket

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// An echo server over a real HTTP server: the handshake (RFC 6455's
// sample key and accept), messages both ways of every length class,
// a ping answered with a pong, and a close.
func TestEcho(t *testing.T) {
	if got := accept("dGhlIHNhbXBsZSBub25jZQ=="); got != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Fatalf("accept = %q", got)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := Upgrade(w, r, "binary")
		if err != nil {
			return
		}
		io.Copy(ws, ws)
		ws.Close()
	}))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, err := Dial(ctx, srv.URL, nil, "binary")
	if err != nil {
		t.Fatal(err)
	}
	if ws.Protocol != "binary" {
		t.Errorf("protocol %q", ws.Protocol)
	}
	for _, n := range []int{1, 125, 126, 65535, 65536, 200000} {
		msg := bytes.Repeat([]byte{byte(n)}, n)
		if _, err := ws.Write(msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, n)
		if _, err := io.ReadFull(ws, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("echo of %d bytes: %v", n, err)
		}
	}
	// A ping from the client (masked, as clients must) gets a pong; the
	// pong's payload is what the client reads next off the wire.
	ws.writeFrame(opPing, []byte("hi"))
	var h [2]byte
	io.ReadFull(ws.br, h[:])
	if h[0] != 0x80|opPong || h[1] != 2 {
		t.Fatalf("pong header %x", h)
	}
	pl := make([]byte, 2)
	io.ReadFull(ws.br, pl)
	if string(pl) != "hi" {
		t.Fatalf("pong payload %q", pl)
	}
	ws.Close()

	// Not an upgrade: 426.
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUpgradeRequired {
		t.Errorf("plain GET: %d", resp.StatusCode)
	}
	if _, err := Dial(ctx, "wss://example.invalid/", nil); err == nil {
		t.Error("wss accepted")
	}
}

// A client frame that is not masked, or one over MaxFrame, ends the
// connection.
func TestBadFrames(t *testing.T) {
	for _, frame := range [][]byte{
		{0x82, 0x01, 'x'}, // unmasked from a client
		binary.BigEndian.AppendUint64([]byte{0x82, 0xff}, MaxFrame+1),
	} {
		a, b := net.Pipe()
		srv := &Conn{c: a, br: newReader(a)}
		go func() { b.Write(frame); b.Close() }()
		if _, err := srv.Read(make([]byte, 10)); err == nil || err == io.EOF {
			t.Errorf("frame %x: %v", frame[:2], err)
		}
		a.Close()
	}
}

func newReader(c net.Conn) *bufio.Reader { return bufio.NewReader(c) }
