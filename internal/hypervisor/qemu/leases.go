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
	first, last, bits, err := dhcpPool(hostCIDR)
	if err != nil {
		return "", err
	}
	mask := ^uint32(0) << (32 - bits)
	return fmt.Sprintf("%s,%s,%s,1h", u32ip(first), u32ip(last), u32ip(mask)), nil
}

// dhcpPool is the first and last address dnsmasq hands out on a bridge with
// host address hostCIDR (see dhcpRange), and the prefix length.
func dhcpPool(hostCIDR string) (first, last uint32, bits int, err error) {
	pfx, err := netip.ParsePrefix(hostCIDR)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("subnet %q: %w", hostCIDR, err)
	}
	host := pfx.Addr()
	if !host.Is4() || pfx.Bits() > 29 || pfx.Bits() < 8 {
		return 0, 0, 0, fmt.Errorf("subnet %q: want an IPv4 host address with a prefix of /8../29", hostCIDR)
	}
	n := ipU32(pfx.Masked().Addr())
	size := uint32(1) << (32 - pfx.Bits())
	first, last = n+1, n+size-2
	h := ipU32(host)
	if h == first {
		first++
	} else if h == last {
		last--
	}
	if h <= n || h >= n+size-1 {
		return 0, 0, 0, fmt.Errorf("subnet %q: the host address must not be the network or broadcast address", hostCIDR)
	}
	return first, last, pfx.Bits(), nil
}

// ipU32 is an IPv4 address as a number.
func ipU32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func u32ip(v uint32) string {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}).String()
}
