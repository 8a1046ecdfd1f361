package qemu

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
)

// lease is one line of a dnsmasq lease file: "expiry MAC IP hostname clientid".
type lease struct {
	Expiry int64
	MAC    string
	IP     string
	Host   string
}

// parseLeases reads a dnsmasq lease file. Malformed lines are skipped.
func parseLeases(r io.Reader) []lease {
	var out []lease
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 {
			continue
		}
		ts, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue
		}
		ip, err := netip.ParseAddr(f[2])
		if err != nil || !ip.Is4() {
			continue
		}
		l := lease{Expiry: ts, MAC: strings.ToLower(f[1]), IP: ip.String()}
		if len(f) > 3 && f[3] != "*" {
			l.Host = f[3]
		}
		out = append(out, l)
	}
	return out
}

// leaseIP returns the IPv4 address leased to mac, the newest lease winning
// (dnsmasq appends; a later line for a MAC replaces an earlier one).
func leaseIP(ls []lease, mac string) string {
	mac = strings.ToLower(mac)
	ip := ""
	var best int64 = -1
	for _, l := range ls {
		if l.MAC == mac && l.Expiry >= best {
			best, ip = l.Expiry, l.IP
		}
	}
	return ip
}

// dhcpRange computes dnsmasq's --dhcp-range for a host address with prefix
// such as "10.213.0.1/24": every address of the subnet after the host's own
// up to the one before broadcast, e.g. "10.213.0.2,10.213.0.254,255.255.255.0,1h".
func dhcpRange(hostCIDR string) (string, error) {
	pfx, err := netip.ParsePrefix(hostCIDR)
	if err != nil {
		return "", fmt.Errorf("subnet %q: %w", hostCIDR, err)
	}
	host := pfx.Addr()
	if !host.Is4() || pfx.Bits() > 29 || pfx.Bits() < 8 {
		return "", fmt.Errorf("subnet %q: want an IPv4 host address with a prefix of /8../29", hostCIDR)
	}
	netw := pfx.Masked().Addr().As4()
	n := uint32(netw[0])<<24 | uint32(netw[1])<<16 | uint32(netw[2])<<8 | uint32(netw[3])
	size := uint32(1) << (32 - pfx.Bits())
	first, last := n+1, n+size-2
	h4 := host.As4()
	h := uint32(h4[0])<<24 | uint32(h4[1])<<16 | uint32(h4[2])<<8 | uint32(h4[3])
	if h == first {
		first++
	} else if h == last {
		last--
	}
	if h <= n || h >= n+size-1 {
		return "", fmt.Errorf("subnet %q: the host address must not be the network or broadcast address", hostCIDR)
	}
	mask := ^uint32(0) << (32 - pfx.Bits())
	return fmt.Sprintf("%s,%s,%s,1h", u32ip(first), u32ip(last), u32ip(mask)), nil
}

func u32ip(v uint32) string {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}).String()
}
