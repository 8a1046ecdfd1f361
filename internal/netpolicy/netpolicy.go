// Package netpolicy decides which addresses goldvm's own outgoing requests
// (image downloads, callbacks) may connect to. The check runs when a
// connection is made, on the address actually dialled, so redirects and
// names that resolve differently later (DNS rebinding) are covered too.
//
// Through an HTTP proxy (HTTP_PROXY and friends) the connection goes to the
// proxy, which then decides for itself.
package netpolicy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"time"
)

// DefaultDeny is denied by every Policy that Parse makes: link-local
// addresses, where clouds serve instance metadata and credentials
// (169.254.169.254). A deny list adds to it; no list removes it.
const DefaultDeny = "169.254.0.0/16,fe80::/10"

// ErrNotAllowed is wrapped by the error of a connection the policy refuses.
var ErrNotAllowed = errors.New("address not allowed by the outgoing network policy")

// Policy is a list of allowed and of denied networks. An address is
// allowed when no denied network contains it and, if any allowed networks
// are listed, one of them contains it. The zero Policy allows everything.
type Policy struct {
	allow, deny []netip.Prefix
}

// Parse makes a Policy from comma-separated lists of CIDR prefixes or
// addresses, e.g. "10.0.0.0/8,192.168.1.20". The denied networks are
// DefaultDeny and those of deny: an operator's list adds to the default
// instead of replacing it, so naming one more network cannot open the
// cloud's metadata service by accident.
func Parse(allow, deny string) (*Policy, error) {
	a, err := parseList(allow)
	if err != nil {
		return nil, fmt.Errorf("allowed networks: %w", err)
	}
	d, err := parseList(DefaultDeny + "," + deny)
	if err != nil {
		return nil, fmt.Errorf("denied networks: %w", err)
	}
	return &Policy{allow: a, deny: d}, nil
}

func parseList(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if p, err := netip.ParsePrefix(f); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(f)
		if err != nil {
			return nil, fmt.Errorf("%q is neither a network (10.0.0.0/8) nor an address", f)
		}
		out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	return out, nil
}

// Check returns an error wrapping ErrNotAllowed if a may not be reached.
func (p *Policy) Check(a netip.Addr) error {
	if p == nil {
		return nil
	}
	a = a.Unmap()
	for _, d := range p.deny {
		if d.Contains(a) {
			return fmt.Errorf("%s is in the denied network %s: %w", a, d, ErrNotAllowed)
		}
	}
	if len(p.allow) == 0 {
		return nil
	}
	for _, n := range p.allow {
		if n.Contains(a) {
			return nil
		}
	}
	return fmt.Errorf("%s is in none of the allowed networks: %w", a, ErrNotAllowed)
}

// control is a net.Dialer Control function that applies the policy to
// the address about to be connected to.
func (p *Policy) control(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("dialling %s: %w", address, err)
	}
	return p.Check(ap.Addr())
}

// Transport returns a clone of http.DefaultTransport whose connections
// obey the policy.
func (p *Policy) Transport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second, Control: p.control}
	t.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		return d.DialContext(ctx, network, addr)
	}
	return t
}
