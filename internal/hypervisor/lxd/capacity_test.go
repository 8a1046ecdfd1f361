package lxd

import (
	"bufio"
	"context"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/hypervisor"
)

// hostMemTotalMiB is /proc/meminfo's MemTotal in MiB.
func hostMemTotalMiB(t *testing.T) int64 {
	t.Helper()
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb >> 10
		}
	}
	t.Fatal("no MemTotal in /proc/meminfo")
	return 0
}

// TestBackendCapacity: GET /capacity's backend view against the real
// LXDs here, the host's standalone one and the one-member test cluster
// (members listed by /1.0/cluster/members, resources asked with
// ?target=member1): one online member with this host's CPU threads and
// at least its memory, goldvm's running instance's limits as used, the
// stopped one counted but not used.
func TestBackendCapacity(t *testing.T) {
	requireLXD(t)
	gold, key := goldFromPackage(t, containerPackage(t))
	for _, c := range []struct{ name, url, member string }{
		{"standalone", "", ""},
		{"cluster", requireLXDCluster(t, 1), "member1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			project := testProjectAt(t, c.url)
			d := newTestDriverAt(t, c.url, project)
			if c.member == "" {
				c.member = d.server.Load().Environment.ServerName
			}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			suffix := project[len(project)-8:]
			run := hypervisor.Spec{ID: "run-" + suffix, GoldDir: gold, ImageKey: key, CPUs: 1, MemoryMiB: 96, Network: api.NetworkNAT}
			idle := run
			idle.ID, idle.CPUs, idle.MemoryMiB = "idle-"+suffix, 2, 128
			for _, s := range []hypervisor.Spec{run, idle} {
				if err := d.Clone(ctx, s); err != nil {
					t.Fatal(err)
				}
				defer d.Destroy(context.Background(), s)
			}
			if err := d.Start(ctx, run); err != nil {
				t.Fatal(err)
			}
			bc, err := d.BackendCapacity(ctx)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%+v", bc)
			if len(bc.Members) != 1 {
				t.Fatalf("members %+v, want one", bc.Members)
			}
			m := bc.Members[0]
			want := api.Resources{CPUs: 1, MemoryMiB: 96}
			if m.Name != c.member || m.Status != "Online" || m.Instances != 2 || m.Used != want || bc.Used != want || bc.Total != m.Total {
				t.Errorf("member %+v (total %+v, used %+v), want %s online with 2 instances using %+v", m, bc.Total, bc.Used, c.member, want)
			}
			if mem := hostMemTotalMiB(t); m.Total.CPUs != runtime.NumCPU() || m.Total.MemoryMiB < mem || m.MemoryUsedMiB <= 0 || m.MemoryUsedMiB > m.Total.MemoryMiB {
				t.Errorf("member resources %+v, memory used %d MiB; the host has %d CPUs, %d MiB", m.Total, m.MemoryUsedMiB, runtime.NumCPU(), mem)
			}
		})
	}
}

// TestMemoryMiB: the limits.memory values LXD takes.
func TestMemoryMiB(t *testing.T) {
	for v, want := range map[string]int64{"96MiB": 96, "2GiB": 2048, "1048576KiB": 1024, "2000MB": 1907, "1073741824": 1024, "50%": 0, "": 0, "-1MiB": 0} {
		if got := memoryMiB(v); got != want {
			t.Errorf("memoryMiB(%q) = %d, want %d", v, got, want)
		}
	}
}
