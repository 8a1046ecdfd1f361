package qemu

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/hypervisor"
)

// Two VMs on the nat bridge created with the same peers name ping each
// other; a third, without it, reaches neither (nor do they reach it), also
// when it takes one peer's MAC and address; each still pings the host.
func TestE2EPeers(t *testing.T) {
	guest := testGuest(t)
	if !inNetns(t, guest) {
		return
	}
	if _, err := lookPath("nft"); err != nil {
		unavailable(t, "nft not installed (apt-get install nftables)")
	}
	gold := goldDir(t, guest)
	// The agent runs the pings: wait for it however slow the host is.
	d, err := New(Config{RunDir: t.TempDir(), Sandbox: true, AgentWait: bootTimeout, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.StopNetwork(context.Background()) })
	var specs [3]hypervisor.Spec
	var ips [3]string
	for i := range specs {
		specs[i] = newSpec(t, fmt.Sprintf("peer%d", i), gold, api.NetworkNAT)
		if i < 2 {
			specs[i].Peers = "team-a"
		}
		ips[i] = bootAndDiscover(t, d, specs[i]).IPAddress
	}
	// pingTries reports whether VM from gets an answer from ip within
	// tries of 3 seconds (a loaded host's guests are slow to answer, never
	// quick to answer what they cannot reach); reaches gives the answers
	// that must come 12 tries (once, in the full suite on a loaded host, 5
	// were not enough for a guest's first ping of the host), ping the ones
	// that must not 5.
	pingTries := func(from int, ip string, tries int) bool {
		t.Helper()
		out := guestRun(t, specs[from], "rc=1; i=0; while [ $i -lt "+strconv.Itoa(tries)+" ]; do ping -c 1 -W 3 "+ip+" >/dev/null 2>&1 && { rc=0; break; }; i=$((i+1)); done; echo rc=$rc")
		return strings.Contains(out, "rc=0")
	}
	reaches := func(from int, ip string) bool { return pingTries(from, ip, 12) }
	ping := func(from int, ip string) bool { return pingTries(from, ip, 5) }
	host, _, _ := strings.Cut(d.cfg.NATSubnet, "/")
	for i := range specs {
		if !reaches(i, host) {
			t.Errorf("VM %d cannot ping the host %s", i, host)
		}
	}
	if !reaches(0, ips[1]) || !reaches(1, ips[0]) {
		t.Errorf("the peers %s and %s do not ping each other", ips[0], ips[1])
	}
	for _, p := range []int{0, 1} {
		if ping(2, ips[p]) {
			t.Errorf("VM 2 (no peers) pings peer VM %d (%s)", p, ips[p])
		}
		if ping(p, ips[2]) {
			t.Errorf("peer VM %d pings VM 2 (%s), which has no peers", p, ips[2])
		}
	}
	// VM 2 takes VM 0's MAC and address: its frames are dropped at its
	// tap, it reaches VM 1 no more than before.
	out := guestRun(t, specs[2], "ip link set eth0 address "+macFor(specs[0].ID)+"; ip addr add "+ips[0]+"/32 dev eth0; "+
		"ping -c 3 -W 3 -I "+ips[0]+" "+ips[1]+" >/dev/null 2>&1; echo rc=$?")
	if strings.Contains(out, "rc=0") {
		t.Errorf("VM 2 with VM 0's MAC and address pings VM 1: %q", out)
	}
}
