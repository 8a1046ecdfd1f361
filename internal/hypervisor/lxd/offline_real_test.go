package lxd

import (
	"context"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/hypervisor"
)

// daemonPID is the process that serves the unix socket sock (its peer
// credentials): the LXD daemon of one member, started by the test's
// script.
func daemonPID(t *testing.T, sock string) int {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	raw, err := c.(*net.UnixConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var cred *syscall.Ucred
	var cerr error
	raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	})
	if cerr != nil || cred.Pid <= 1 {
		t.Fatalf("peer of %s: %+v, %v", sock, cred, cerr)
	}
	return int(cred.Pid)
}

// TestMemberOfflineReal: a real member going offline in the three-member
// cluster on this host. member3's LXD daemon is stopped (SIGSTOP: its
// containers keep running, it answers nothing, as a member cut off the
// network); after LXD's offline threshold the cluster lists it Offline.
// The VM on it: Watch ends with the member's status as the reason, State
// is stopped, GET /capacity's view shows the member offline and counts
// the others only. SIGCONT brings it back: State is running again and the
// VM can be destroyed; the VM on member2 was never touched.
func TestMemberOfflineReal(t *testing.T) {
	url := requireLXDCluster(t, 3)
	gold, key := goldFromPackage(t, containerPackage(t))
	project := testProjectAt(t, url)
	d := newTestDriverAt(t, url, project)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	suffix := project[len(project)-8:]
	spec := func(id, member string) hypervisor.Spec {
		return hypervisor.Spec{ID: id + "-" + suffix, GoldDir: gold, ImageKey: key, CPUs: 1, MemoryMiB: 64, Network: api.NetworkNAT,
			Placement: &api.Placement{Member: member}}
	}
	lost, kept := spec("lost", "member3"), spec("kept", "member2")
	for _, s := range []hypervisor.Spec{lost, kept} {
		if err := d.Clone(ctx, s); err != nil {
			t.Fatal(err)
		}
		if err := d.Start(ctx, s); err != nil {
			t.Fatal(err)
		}
		dctx, dcancel := context.WithTimeout(ctx, time.Minute)
		info, err := d.Discover(dctx, s)
		dcancel()
		if err != nil || info.Location != s.Placement.Member {
			t.Fatalf("Discover %s: %+v, %v", s.ID, info, err)
		}
	}
	defer d.Destroy(context.Background(), kept)

	pid := daemonPID(t, cluster3Dir+"-3/unix.socket")
	watched := make(chan string, 1)
	go func() {
		reason, err := d.Watch(ctx, lost)
		if err != nil {
			reason = "error: " + err.Error()
		}
		watched <- reason
	}()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
				t.Errorf("SIGCONT member3's LXD (pid %d): %v", pid, err)
			}
		}
	}
	defer resume()
	reason := <-watched
	t.Logf("Watch: %s", reason)
	if !strings.HasPrefix(reason, "cluster member member3 is offline: No heartbeat for") {
		t.Errorf("Watch ended with %q", reason)
	}
	if st, err := d.State(ctx, lost); st != hypervisor.StateStopped || err != nil {
		t.Errorf("State: %s, %v; want stopped", st, err)
	}
	bc, err := d.BackendCapacity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("capacity with member3 offline: %+v", bc)
	if len(bc.Members) != 3 || bc.Members[2].Status != "Offline" || bc.Members[2].Total.CPUs != 0 || bc.Members[2].Instances != 1 ||
		bc.Total.CPUs != bc.Members[0].Total.CPUs+bc.Members[1].Total.CPUs {
		t.Errorf("capacity %+v, want member3 offline and not counted", bc)
	}
	if st, err := d.State(ctx, kept); st != hypervisor.StateRunning || err != nil {
		t.Errorf("the VM on member2: %s, %v", st, err)
	}
	// A restarted daemon's Reap (no VM known) leaves the instance it
	// cannot see the settings of; it does remove the stray on member2.
	if err := d.Reap(ctx, func(string) bool { return false }); err != nil {
		t.Errorf("Reap with member3 offline: %v", err)
	}
	if _, ok, _ := d.state(ctx, namePrefix+kept.ID); ok {
		t.Error("Reap left the stray on member2")
	}

	resume()
	for ctx.Err() == nil {
		ms, _, err := d.members(ctx)
		if err == nil && ms[2].Status == "Online" {
			break
		}
		time.Sleep(time.Second)
	}
	if st, err := d.State(ctx, lost); st != hypervisor.StateRunning || err != nil {
		t.Errorf("State with member3 back: %s, %v; want running", st, err)
	}
	if err := d.Destroy(ctx, lost); err != nil {
		t.Fatal(err)
	}
}
