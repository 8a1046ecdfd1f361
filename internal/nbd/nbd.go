// Package nbd is a minimal client of the Network Block Device protocol
// (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md):
// the fixed newstyle handshake, one export, and reads. goldvm uses it to
// read a disk image that a confined qemu-nbd serves read-only, without
// letting the kernel see the disk.
package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// Protocol constants.
const (
	magicInit        = "NBDMAGIC"
	magicOpt         = 0x49484156454F5054 // "IHAVEOPT"
	flagFixed        = 1 << 0
	flagNoZeroes     = 1 << 1
	optExportName    = 1
	requestMagic     = 0x25609513
	simpleReplyMagic = 0x67446698
	cmdRead          = 0
	cmdDisc          = 2
	// maxChunk is the largest read sent in one request (servers accept at
	// least 32 MiB; qemu-nbd does).
	maxChunk = 1 << 20
	// ioTimeout bounds each request's exchange.
	ioTimeout = 30 * time.Second
)

// Client is a connection to one export. Its ReadAt may be called from
// several goroutines; the requests are sent one at a time.
type Client struct {
	mu     sync.Mutex
	conn   net.Conn
	size   int64
	handle uint64
	err    error // the first error: the connection is unusable after it
}

// Dial connects to the NBD server at addr on network ("unix", "tcp") and
// opens its default export (the empty name).
func Dial(ctx context.Context, network, addr string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("nbd: %w", err)
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	} else {
		conn.SetDeadline(time.Now().Add(ioTimeout))
	}
	c := &Client{conn: conn}
	if err := c.handshake(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("nbd handshake: %w", err)
	}
	conn.SetDeadline(time.Time{})
	return c, nil
}

func (c *Client) handshake() error {
	var hello [18]byte
	if _, err := io.ReadFull(c.conn, hello[:]); err != nil {
		return err
	}
	be := binary.BigEndian
	if !bytes.Equal(hello[:8], []byte(magicInit)) || be.Uint64(hello[8:]) != magicOpt {
		return errors.New("not a newstyle NBD server")
	}
	flags := be.Uint16(hello[16:])
	if flags&flagFixed == 0 {
		return errors.New("the server does not speak fixed newstyle")
	}
	clientFlags := uint32(flagFixed)
	if flags&flagNoZeroes != 0 {
		clientFlags |= flagNoZeroes
	}
	var opt [4 + 8 + 4 + 4]byte
	be.PutUint32(opt[0:], clientFlags)
	be.PutUint64(opt[4:], magicOpt)
	be.PutUint32(opt[12:], optExportName)
	be.PutUint32(opt[16:], 0) // the empty export name
	if _, err := c.conn.Write(opt[:]); err != nil {
		return err
	}
	reply := make([]byte, 10, 10+124)
	if clientFlags&flagNoZeroes == 0 {
		reply = reply[:10+124]
	}
	if _, err := io.ReadFull(c.conn, reply); err != nil {
		return fmt.Errorf("the server refused the export: %w", err)
	}
	size := be.Uint64(reply[0:])
	if size > 1<<62 {
		return fmt.Errorf("export size %d", size)
	}
	c.size = int64(size)
	return nil
}

// Size is the export's size in bytes.
func (c *Client) Size() int64 { return c.size }

// ReadAt implements io.ReaderAt.
func (c *Client) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("nbd: negative offset")
	}
	if off >= c.size {
		return 0, io.EOF
	}
	want := p
	if int64(len(p)) > c.size-off {
		want = p[:c.size-off]
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for n < len(want) {
		chunk := want[n:min(len(want), n+maxChunk)]
		if err := c.read(chunk, off+int64(n)); err != nil {
			return n, err
		}
		n += len(chunk)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// read sends one read request and receives its simple reply into p.
func (c *Client) read(p []byte, off int64) error {
	if c.err != nil {
		return c.err
	}
	c.handle++
	be := binary.BigEndian
	var req [28]byte
	be.PutUint32(req[0:], requestMagic)
	be.PutUint16(req[6:], cmdRead)
	be.PutUint64(req[8:], c.handle)
	be.PutUint64(req[16:], uint64(off))
	be.PutUint32(req[24:], uint32(len(p)))
	c.conn.SetDeadline(time.Now().Add(ioTimeout))
	var hdr [16]byte
	_, err := c.conn.Write(req[:])
	if err == nil {
		_, err = io.ReadFull(c.conn, hdr[:])
	}
	switch {
	case err != nil:
	case be.Uint32(hdr[0:]) != simpleReplyMagic || be.Uint64(hdr[8:]) != c.handle:
		err = errors.New("unexpected reply")
	case be.Uint32(hdr[4:]) != 0:
		// An error reply carries no data: the connection stays usable.
		return fmt.Errorf("nbd: read of %d bytes at %d: server error %d", len(p), off, be.Uint32(hdr[4:]))
	default:
		_, err = io.ReadFull(c.conn, p)
	}
	if err != nil {
		c.err = fmt.Errorf("nbd: read at %d: %w", off, err)
		return c.err
	}
	return nil
}

// Close tells the server the client is done and closes the connection.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		var req [28]byte
		binary.BigEndian.PutUint32(req[0:], requestMagic)
		binary.BigEndian.PutUint16(req[6:], cmdDisc)
		c.conn.SetDeadline(time.Now().Add(time.Second))
		c.conn.Write(req[:])
		c.err = net.ErrClosed
	}
	return c.conn.Close()
}
