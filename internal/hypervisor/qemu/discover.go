package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/hypervisor"
)

var _ hypervisor.GuestOSProber = (*Driver)(nil)

// DefaultAgentWait is Config.AgentWait's default. The test guest's agent
// answers within about a second of its DHCP lease (it starts before the
// network), so a guest with an agent is not slowed down by it.
const DefaultAgentWait = 3 * time.Second

// discoverPoll is the pause between two looks at the lease file, the
// neighbour table and the agent's answers. Every pause adds to the time
// until the VM is reported running (bench/boot.sh; with 1s,
// create-to-running took 4.55s, with 200ms 3.8-4.1s).
const discoverPoll = 200 * time.Millisecond

// userNetGuestIP is the address QEMU's user-mode networking gives the guest.
const userNetGuestIP = "10.0.2.15"

// agentAnswers collects what the guest agent has said so far.
type agentAnswers struct {
	mu       sync.Mutex
	ip, os   string
	err      error
	attempts int
	// told gets a value (without blocking) when the agent told something
	// new, so Discover need not wait out its poll interval.
	told chan struct{}
}

func (a *agentAnswers) get() (ip, os string, err error, attempts int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ip, a.os, a.err, a.attempts
}

// ask asks the agent on sock until it has told both the address and the OS,
// or ctx ends. A question to an agent that does not run waits up to 3s.
func (a *agentAnswers) ask(ctx context.Context, sock, mac string) {
	for ctx.Err() == nil {
		qctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		ip, osName, err := queryGuest(qctx, sock, mac)
		cancel()
		a.mu.Lock()
		a.attempts++
		a.err = err
		if ip != "" {
			a.ip = ip
		}
		if osName != "" {
			a.os = osName
		}
		done := a.ip != "" && a.os != ""
		a.mu.Unlock()
		if ip != "" || osName != "" {
			select {
			case a.told <- struct{}{}:
			default:
			}
		}
		if done {
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(discoverPoll):
		}
	}
}

// Discover learns the guest's address and OS. The address comes from the
// first that knows it of: the guest agent; goldvm's own DHCP lease for the
// VM's MAC (nat, hostonly); the host's neighbour entry for the VM's MAC
// (bridged); with user-mode networking the guest's fixed address once a
// connection to the forwarded SSH port reaches the guest (answered or
// refused by it). The OS name comes from the agent. Once the address is
// known Discover waits at most Config.AgentWait for the agent, then
// returns with the OS the gold disk's os-release names
// (spec.GoldDisk.GuestOS, source "image"), or none, and ProbeGuestOS keeps
// asking the agent. On timeout it
// returns what it learned with an error with code "discovery-timeout".
func (d *Driver) Discover(ctx context.Context, spec hypervisor.Spec) (hypervisor.GuestInfo, error) {
	var info hypervisor.GuestInfo
	if err := checkSpec(spec); err != nil {
		return info, err
	}
	np, err := d.plan(spec)
	if err != nil {
		return info, err
	}
	if info, ok := d.takeStarted(spec.ID); ok {
		if _, live := d.livePID(spec); live {
			return info, nil
		}
	}
	mac := macOf(spec)
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	agent := agentAnswers{told: make(chan struct{}, 1)}
	go agent.ask(actx, p(spec.Dir, fileQGA), mac)
	var forwarded chan struct{} // closed once the forwarded port reaches the guest
	if np.User {
		forwarded = make(chan struct{})
		go d.probeForward(actx, spec, forwarded)
	}
	// A VM started from a template (and goldvm restarted since) has its
	// address reserved; reservations are made before Discover, so one look
	// at the directory is enough.
	reserved := ""
	if np.DHCP {
		reserved = d.reservedAddress(np.Bridge, spec.ID)
	}
	dhcpChecked := time.Now()
	var addrAt time.Time
	for {
		if _, ok := d.livePID(spec); !ok {
			return info, errdefs.New(errdefs.ErrConflict, "vm-not-running", "the VM stopped during discovery", hypervisor.ErrNotRunning)
		}
		aip, aos, aerr, attempts := agent.get()
		if aos != "" {
			info.GuestOS, info.GuestOSSource = aos, api.SourceGuestAgent
		}
		if info.IPAddress == "" && aip != "" {
			info.IPAddress, info.IPSource = aip, api.SourceGuestAgent
		}
		if info.IPAddress == "" && np.DHCP {
			if ip := d.leasedIP(np.Bridge, mac); ip != "" {
				info.IPAddress, info.IPSource = ip, api.SourceDHCPLease
			} else if reserved != "" {
				info.IPAddress, info.IPSource = reserved, api.SourceReserved
			} else if time.Since(dhcpChecked) >= 5*time.Second {
				// The guest has no address yet: make sure the bridge still
				// has a DHCP server (it may have died, or been another
				// daemon's), so a lost dnsmasq heals instead of timing the
				// VM out.
				dhcpChecked = time.Now()
				d.netMu.Lock()
				if err := d.ensureDnsmasq(ctx, np.Bridge, np.Subnet, np.Masquerade); err != nil {
					d.log.Warn("restarting the bridge's DHCP server", "bridge", np.Bridge, "err", err)
				}
				d.netMu.Unlock()
			}
		}
		if info.IPAddress == "" && !np.User && !np.DHCP && d.ip != "" {
			if ip := d.neighbourIP(ctx, np.Bridge, mac); ip != "" {
				info.IPAddress, info.IPSource = ip, api.SourceNeighbour
			}
		}
		if info.IPAddress == "" && forwarded != nil {
			select {
			case <-forwarded:
				info.IPAddress, info.IPSource = userNetGuestIP, api.SourceUserNet
			default:
			}
		}
		if info.IPAddress != "" && addrAt.IsZero() {
			addrAt = time.Now()
		}
		if info.IPAddress != "" && (info.GuestOS != "" || time.Since(addrAt) >= d.cfg.AgentWait) {
			if info.GuestOS == "" {
				d.log.Info("the guest agent did not answer; reporting the VM with the OS of its image", "vm", spec.ID, "ip_source", info.IPSource,
					"image_os", spec.GoldDisk.GuestOS, "last_agent_error", aerr)
				if spec.GoldDisk.GuestOS != "" {
					info.GuestOS, info.GuestOSSource = spec.GoldDisk.GuestOS, api.SourceImage
				}
			}
			if np.User {
				port, err := SSHForwardPort(spec.Dir)
				if err != nil {
					return info, fmt.Errorf("reading the forwarded SSH port: %w", err)
				}
				info.SSHAddress = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
			}
			return info, nil
		}
		select {
		case <-ctx.Done():
			return info, errdefs.New(errdefs.ErrUnavailable, "discovery-timeout",
				fmt.Sprintf("the guest did not report its address in time (after %d questions to its agent: ip=%q os=%q, last guest agent error: %v)",
					attempts, info.IPAddress, info.GuestOS, aerr), ctx.Err())
		case <-agent.told:
		case <-time.After(discoverPoll):
		}
	}
}

// rememberStarted keeps what Discover is to answer for VM id, which
// StartFromTemplate knows: the address it set, the template's OS.
func (d *Driver) rememberStarted(id string, info hypervisor.GuestInfo) {
	d.warmMu.Lock()
	defer d.warmMu.Unlock()
	if d.warmInfo == nil {
		d.warmInfo = map[string]hypervisor.GuestInfo{}
	}
	d.warmInfo[id] = info
}

// takeStarted returns and forgets what rememberStarted kept for VM id.
func (d *Driver) takeStarted(id string) (hypervisor.GuestInfo, bool) {
	d.warmMu.Lock()
	defer d.warmMu.Unlock()
	info, ok := d.warmInfo[id]
	delete(d.warmInfo, id)
	return info, ok
}

// ProbeGuestOS asks the guest agent until it tells the OS name or ctx ends.
func (d *Driver) ProbeGuestOS(ctx context.Context, spec hypervisor.Spec) (string, error) {
	if err := checkSpec(spec); err != nil {
		return "", err
	}
	mac := macOf(spec)
	for {
		if _, ok := d.livePID(spec); !ok {
			return "", errdefs.New(errdefs.ErrConflict, "vm-not-running", "the VM is not running", hypervisor.ErrNotRunning)
		}
		qctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		_, osName, _ := queryGuest(qctx, p(spec.Dir, fileQGA), mac)
		cancel()
		if osName != "" {
			return osName, nil
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// leasedIP is the address goldvm's DHCP server on bridge br leased to mac.
func (d *Driver) leasedIP(br, mac string) string {
	f, err := os.Open(d.activeLeaseFile(br))
	if err != nil {
		return ""
	}
	defer f.Close()
	return leaseIP(parseLeases(f), mac)
}

// ipNeigh is the part of `ip -j neigh show` goldvm reads.
type ipNeigh struct {
	Dst    string   `json:"dst"`
	LLAddr string   `json:"lladdr"`
	State  []string `json:"state"`
}

// neighbourIP returns the IPv4 address the host's neighbour table has for
// mac on bridge br, "" when it has none.
func (d *Driver) neighbourIP(ctx context.Context, br, mac string) string {
	out, err := d.run(ctx, d.ip, "-j", "-4", "neigh", "show", "dev", br)
	if err != nil {
		return ""
	}
	return neighIP(out, mac)
}

// neighIP picks mac's usable IPv4 entry from `ip -j neigh` output.
func neighIP(out []byte, mac string) string {
	var ns []ipNeigh
	if json.Unmarshal(out, &ns) != nil {
		return ""
	}
	for _, n := range ns {
		if !strings.EqualFold(n.LLAddr, mac) {
			continue
		}
		usable := true
		for _, st := range n.State {
			if st == "FAILED" || st == "INCOMPLETE" || st == "NOARP" {
				usable = false
			}
		}
		if ip, err := netip.ParseAddr(n.Dst); usable && err == nil && ip.Is4() && !ip.IsLinkLocalUnicast() {
			return ip.String()
		}
	}
	return ""
}

// probeForward closes reached once a connection to the VM's forwarded SSH
// port (user-mode networking) reaches the guest. QEMU accepts the host side
// at once and then connects to the guest's port 22: when the guest answers
// (a banner) or refuses (a reset), QEMU sends data or closes the host side;
// while the guest has no network, the connection just waits. QEMU's retries
// of one connection back off (a first try made before the guest is up was
// answered ~20s after the guest was), so a new connection is opened every
// second, each given up after a few seconds.
func (d *Driver) probeForward(ctx context.Context, spec hypervisor.Spec, reached chan<- struct{}) {
	var once sync.Once
	var wg sync.WaitGroup
	defer wg.Wait()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		if port, err := SSHForwardPort(spec.Dir); err == nil {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if forwardReachesGuest(ctx, port, 4*time.Second) {
					once.Do(func() { close(reached) })
				}
			}()
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// forwardReachesGuest connects to the forwarded loopback port and reports
// whether QEMU answered for the guest (data, or the connection closed)
// within wait.
func forwardReachesGuest(ctx context.Context, port int, wait time.Duration) bool {
	var dialer net.Dialer
	c, err := dialer.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return false
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	c.SetReadDeadline(time.Now().Add(wait))
	var b [1]byte
	_, err = c.Read(b[:])
	var ne net.Error
	return ctx.Err() == nil && (err == nil || errors.Is(err, io.EOF) || !errors.As(err, &ne) || !ne.Timeout())
}
