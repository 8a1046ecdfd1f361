// Package websocket is the small part of RFC 6455 goldvm needs to relay a
// byte stream (a VM's VNC console) over HTTP: the server's upgrade, a
// client's dial, and a connection whose Read and Write carry the bytes of
// binary messages. Text messages are read as bytes too; pings are
// answered; a close is answered and ends Read with io.EOF.
package websocket

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// acceptGUID is the RFC 6455 key suffix.
const acceptGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// MaxFrame bounds one frame's payload.
const MaxFrame = 16 << 20

// Frame opcodes.
const (
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xa
)

// Conn is a WebSocket connection.
type Conn struct {
	c      net.Conn
	br     *bufio.Reader
	client bool // client frames are masked

	// Protocol is the subprotocol agreed on ("" when none).
	Protocol string

	rmu    sync.Mutex
	remain int64 // bytes left of the current data frame
	mask   [4]byte
	masked bool
	pos    int64 // position in the current frame, for unmasking
	closed bool  // a close frame was read

	wmu sync.Mutex
}

// accept is the Sec-WebSocket-Accept of key.
func accept(key string) string {
	h := sha1.Sum([]byte(key + acceptGUID))
	return base64.StdEncoding.EncodeToString(h[:])
}

func headerHas(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// IsUpgrade reports whether r asks for a WebSocket.
func IsUpgrade(r *http.Request) bool {
	return headerHas(r.Header, "Connection", "upgrade") && headerHas(r.Header, "Upgrade", "websocket")
}

// Upgrade answers r with 101 and takes over its connection. Of the
// subprotocols the client offers, the first of protocols it offers is
// agreed on (noVNC's older versions ask for "binary"). It writes an HTTP
// error itself and returns an error when r is not a valid upgrade.
func Upgrade(w http.ResponseWriter, r *http.Request, protocols ...string) (*Conn, error) {
	key := r.Header.Get("Sec-WebSocket-Key")
	if r.Method != http.MethodGet || !IsUpgrade(r) || key == "" {
		http.Error(w, "a WebSocket upgrade is required", http.StatusUpgradeRequired)
		return nil, errors.New("not a WebSocket upgrade")
	}
	if r.Header.Get("Sec-WebSocket-Version") != "13" {
		w.Header().Set("Sec-WebSocket-Version", "13")
		http.Error(w, "WebSocket version 13 is required", http.StatusUpgradeRequired)
		return nil, errors.New("WebSocket version is not 13")
	}
	var proto string
	for _, p := range protocols {
		if headerHas(r.Header, "Sec-WebSocket-Protocol", p) {
			proto = p
			break
		}
	}
	nc, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		http.Error(w, "cannot take over the connection", http.StatusInternalServerError)
		return nil, fmt.Errorf("hijack: %w", err)
	}
	// The server's read and write timeouts were for the request.
	nc.SetDeadline(time.Time{})
	resp := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + accept(key) + "\r\n"
	if proto != "" {
		resp += "Sec-WebSocket-Protocol: " + proto + "\r\n"
	}
	if _, err := io.WriteString(nc, resp+"\r\n"); err != nil {
		nc.Close()
		return nil, err
	}
	return &Conn{c: nc, br: brw.Reader, Protocol: proto}, nil
}

// Dial opens a WebSocket to rawURL (ws://, wss:// is not supported;
// http:// is taken as ws://), sending header (e.g. Authorization) and
// offering protocols.
func Dial(ctx context.Context, rawURL string, header http.Header, protocols ...string) (*Conn, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	switch u.Scheme {
	case "ws", "http":
	default:
		return nil, fmt.Errorf("websocket: scheme %q is not supported (ws or http)", u.Scheme)
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "80")
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	var kb [16]byte
	rand.Read(kb[:])
	key := base64.StdEncoding.EncodeToString(kb[:])
	req := &http.Request{Method: http.MethodGet, URL: u, Host: u.Host, Header: http.Header{}, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1}
	for k, v := range header {
		req.Header[k] = v
	}
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Sec-WebSocket-Key", key)
	req.Header.Set("Sec-WebSocket-Version", "13")
	if len(protocols) > 0 {
		req.Header.Set("Sec-WebSocket-Protocol", strings.Join(protocols, ", "))
	}
	if err := req.Write(nc); err != nil {
		nc.Close()
		return nil, err
	}
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		nc.Close()
		return nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		nc.Close()
		return nil, &HandshakeError{Status: resp.StatusCode, Body: body}
	}
	if resp.Header.Get("Sec-WebSocket-Accept") != accept(key) {
		nc.Close()
		return nil, errors.New("websocket: the server's Sec-WebSocket-Accept is wrong")
	}
	nc.SetDeadline(time.Time{})
	return &Conn{c: nc, br: br, client: true, Protocol: resp.Header.Get("Sec-WebSocket-Protocol")}, nil
}

// HandshakeError is a refused upgrade: the HTTP status and body.
type HandshakeError struct {
	Status int
	Body   []byte
}

func (e *HandshakeError) Error() string {
	return fmt.Sprintf("websocket: upgrade refused: %d %s", e.Status, strings.TrimSpace(string(e.Body)))
}

// readHeader reads frame headers until a data frame starts, answering
// control frames; rmu held.
func (c *Conn) readHeader() error {
	for {
		var h [2]byte
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			return err
		}
		op := h[0] & 0x0f
		masked := h[1]&0x80 != 0
		n := int64(h[1] & 0x7f)
		switch n {
		case 126:
			var b [2]byte
			if _, err := io.ReadFull(c.br, b[:]); err != nil {
				return err
			}
			n = int64(binary.BigEndian.Uint16(b[:]))
		case 127:
			var b [8]byte
			if _, err := io.ReadFull(c.br, b[:]); err != nil {
				return err
			}
			n = int64(binary.BigEndian.Uint64(b[:]))
		}
		if n < 0 || n > MaxFrame {
			return fmt.Errorf("websocket: frame of %d bytes", n)
		}
		if masked == c.client {
			return errors.New("websocket: frame masking is wrong for this side")
		}
		var mask [4]byte
		if masked {
			if _, err := io.ReadFull(c.br, mask[:]); err != nil {
				return err
			}
		}
		switch op {
		case opContinuation, opText, opBinary:
			c.remain, c.mask, c.masked, c.pos = n, mask, masked, 0
			if n == 0 {
				continue
			}
			return nil
		case opClose, opPing, opPong:
			if n > 125 {
				return errors.New("websocket: control frame too long")
			}
			payload := make([]byte, n)
			if _, err := io.ReadFull(c.br, payload); err != nil {
				return err
			}
			if masked {
				for i := range payload {
					payload[i] ^= mask[i%4]
				}
			}
			switch op {
			case opClose:
				c.closed = true
				c.writeFrame(opClose, payload[:min(len(payload), 2)])
				return io.EOF
			case opPing:
				if err := c.writeFrame(opPong, payload); err != nil {
					return err
				}
			}
		default:
			return fmt.Errorf("websocket: unknown opcode %d", op)
		}
	}
}

// Read reads the bytes of data messages.
func (c *Conn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if c.closed {
		return 0, io.EOF
	}
	if c.remain == 0 {
		if err := c.readHeader(); err != nil {
			return 0, err
		}
	}
	if int64(len(p)) > c.remain {
		p = p[:c.remain]
	}
	n, err := c.br.Read(p)
	if c.masked {
		for i := range p[:n] {
			p[i] ^= c.mask[(c.pos+int64(i))%4]
		}
	}
	c.pos += int64(n)
	c.remain -= int64(n)
	return n, err
}

// Write sends p as one binary message.
func (c *Conn) Write(p []byte) (int, error) {
	if err := c.writeFrame(opBinary, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *Conn) writeFrame(op byte, p []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	hdr := make([]byte, 2, 14)
	hdr[0] = 0x80 | op
	switch n := len(p); {
	case n < 126:
		hdr[1] = byte(n)
	case n <= 0xffff:
		hdr[1] = 126
		hdr = binary.BigEndian.AppendUint16(hdr, uint16(n))
	default:
		hdr[1] = 127
		hdr = binary.BigEndian.AppendUint64(hdr, uint64(n))
	}
	payload := p
	if c.client {
		hdr[1] |= 0x80
		var mask [4]byte
		rand.Read(mask[:])
		hdr = append(hdr, mask[:]...)
		payload = make([]byte, len(p))
		for i := range p {
			payload[i] = p[i] ^ mask[i%4]
		}
	}
	if _, err := c.c.Write(append(hdr, payload...)); err != nil {
		return err
	}
	return nil
}

// Close sends a close frame (normal closure) and closes the connection.
func (c *Conn) Close() error {
	c.writeFrame(opClose, []byte{0x03, 0xe8})
	return c.c.Close()
}

// Relay copies between the WebSocket and a byte stream until either ends,
// then closes both.
func Relay(ws *Conn, other io.ReadWriteCloser) {
	done := make(chan struct{}, 2)
	go func() { io.Copy(other, ws); done <- struct{}{} }()
	go func() { io.Copy(ws, other); done <- struct{}{} }()
	<-done
	ws.Close()
	other.Close()
	<-done
}
