package qemu

// A minimal client of the QEMU guest agent (qemu-ga) over the host side of
// its virtio-serial port (a unix socket chardev).
//
// The channel is a byte stream that survives our connections: replies to a
// previous client that gave up (or to nobody) can still be queued in it. The
// QGA documentation therefore asks a client to begin with guest-sync and a
// random id and to discard everything up to the reply that carries that id.
// We also send a 0xFF byte first, which makes the agent's JSON parser drop any
// half-received request from an earlier client.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
)

// qgaClient is one connection to a guest agent.
type qgaClient struct {
	conn net.Conn
	r    *bufio.Reader
}

func dialQGA(ctx context.Context, path string) (*qgaClient, error) {
	c, err := dialUnix(ctx, path)
	if err != nil {
		return nil, err
	}
	return &qgaClient{conn: c, r: bufio.NewReaderSize(c, 64<<10)}, nil
}

func (c *qgaClient) Close() error { return c.conn.Close() }

// dialSyncedQGA dials the agent on path and syncs with it; an agent that
// does not answer gives an error wrapping errQGANoReply.
func dialSyncedQGA(ctx context.Context, path string) (*qgaClient, error) {
	c, err := dialQGA(ctx, path)
	if err != nil {
		return nil, err
	}
	if err := c.Sync(ctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("%w: %w", errQGANoReply, err)
	}
	return c, nil
}

type qgaReply struct {
	Return json.RawMessage `json:"return"`
	Error  *qmpError       `json:"error"`
}

// readReply reads lines until one is a JSON reply object. Lines that are not
// JSON (the tail of a stale reply, a parser-error notice) are skipped.
func (c *qgaClient) readReply() (qgaReply, error) {
	for {
		line, err := c.r.ReadBytes('\n')
		if err != nil {
			return qgaReply{}, err
		}
		// The agent may answer 0xFF with a bare 0xFF (guest-sync-delimited
		// style); strip such bytes.
		line = []byte(strings.Trim(string(line), "\xff \r\n\t"))
		if len(line) == 0 || line[0] != '{' {
			continue
		}
		var r qgaReply
		if json.Unmarshal(line, &r) != nil {
			continue
		}
		if r.Return == nil && r.Error == nil {
			continue
		}
		return r, nil
	}
}

// Sync performs guest-sync with a random id, discarding stale replies.
func (c *qgaClient) Sync(ctx context.Context) error {
	defer bindDeadline(ctx, c.conn)()
	id := rand.Int64N(1<<31-1) + 1
	req := fmt.Sprintf("\xff{\"execute\":\"guest-sync\",\"arguments\":{\"id\":%d}}\n", id)
	if _, err := c.conn.Write([]byte(req)); err != nil {
		return fmt.Errorf("qga guest-sync: %w", err)
	}
	for {
		r, err := c.readReply()
		if err != nil {
			return fmt.Errorf("qga guest-sync: %w", err)
		}
		var got int64
		if r.Error == nil && json.Unmarshal(r.Return, &got) == nil && got == id {
			return nil
		}
		// A stale reply (or the agent's complaint about the 0xFF): skip it.
	}
}

// Execute runs one command after Sync and decodes its return value into out.
func (c *qgaClient) Execute(ctx context.Context, cmd string, out any) error {
	return c.ExecuteArgs(ctx, cmd, nil, out)
}

// ExecuteArgs is Execute with arguments (nil: none).
func (c *qgaClient) ExecuteArgs(ctx context.Context, cmd string, args, out any) error {
	defer bindDeadline(ctx, c.conn)()
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	if _, err := c.conn.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("qga %s: %w", cmd, err)
	}
	r, err := c.readReply()
	if err != nil {
		return fmt.Errorf("qga %s: %w", cmd, err)
	}
	if r.Error != nil {
		return fmt.Errorf("qga %s: %w", cmd, r.Error)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(r.Return, out); err != nil {
		return fmt.Errorf("qga %s: decode reply: %w", cmd, err)
	}
	return nil
}

// qgaInterface is one element of guest-network-get-interfaces.
type qgaInterface struct {
	Name            string `json:"name"`
	HardwareAddress string `json:"hardware-address"`
	IPAddresses     []struct {
		Type    string `json:"ip-address-type"`
		Address string `json:"ip-address"`
		Prefix  int    `json:"prefix"`
	} `json:"ip-addresses"`
}

// qgaOSInfo is the reply of guest-get-osinfo.
type qgaOSInfo struct {
	ID         string `json:"id"`
	Name       string `json:"name"`
	PrettyName string `json:"pretty-name"`
	Version    string `json:"version"`
	VersionID  string `json:"version-id"`
	KernelRel  string `json:"kernel-release"`
}

// osName is the pretty name, else name and version.
func (o qgaOSInfo) osName() string {
	if s := strings.TrimSpace(o.PrettyName); s != "" {
		return s
	}
	s := strings.TrimSpace(o.Name + " " + o.Version)
	if s == "" {
		s = strings.TrimSpace(o.ID + " " + o.VersionID)
	}
	return s
}

// pickIPv4 returns the first non-loopback, non-link-local IPv4 address,
// preferring the interface whose MAC is mac.
func pickIPv4(ifs []qgaInterface, mac string) string {
	pick := func(match func(qgaInterface) bool) string {
		for _, i := range ifs {
			if !match(i) {
				continue
			}
			for _, a := range i.IPAddresses {
				if a.Type != "ipv4" {
					continue
				}
				ip := net.ParseIP(a.Address)
				if ip == nil || ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsUnspecified() {
					continue
				}
				return ip.String()
			}
		}
		return ""
	}
	if mac != "" {
		if ip := pick(func(i qgaInterface) bool { return strings.EqualFold(i.HardwareAddress, mac) }); ip != "" {
			return ip
		}
	}
	return pick(func(qgaInterface) bool { return true })
}

// errQGANoReply marks an agent that did not answer (not yet started).
var errQGANoReply = errors.New("guest agent did not answer")

// queryGuest asks the agent for interfaces and OS info on one connection.
// It returns whatever it learned, also on error.
func queryGuest(ctx context.Context, sock, mac string) (ip, osName string, err error) {
	c, err := dialSyncedQGA(ctx, sock)
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	var ifs []qgaInterface
	if err := c.Execute(ctx, "guest-network-get-interfaces", &ifs); err != nil {
		return "", "", err
	}
	ip = pickIPv4(ifs, mac)
	var osi qgaOSInfo
	if err := c.Execute(ctx, "guest-get-osinfo", &osi); err != nil {
		return ip, "", err
	}
	return ip, osi.osName(), nil
}
