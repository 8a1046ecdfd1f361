package e2e

import (
	"encoding/json"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/goldvm/goldvm/api"
)

// TestListPagesAndFilters: GET /vms?limit=N pages through the VMs newest
// first, following "next" in "after"; status filters; bad queries are 400.
func TestListPagesAndFilters(t *testing.T) {
	requireEnv(t)
	dataDir := filepath.Join(t.TempDir(), "data")
	ids := seedErrorRecords(t, dataDir, 25)
	// Newest first is descending id order (ids made in the same
	// millisecond order by their random part).
	slices.Sort(ids)
	slices.Reverse(ids)
	d := startDaemon(t, dataDir)

	get := func(query string) (int, api.VMList, api.Error) {
		t.Helper()
		resp, err := http.Get("http://" + d.addr + "/vms" + query)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var l api.VMList
		var e api.Error
		if resp.StatusCode == http.StatusOK {
			err = json.NewDecoder(resp.Body).Decode(&l)
		} else {
			err = json.NewDecoder(resp.Body).Decode(&e)
		}
		if err != nil {
			t.Fatalf("GET /vms%s: %v", query, err)
		}
		return resp.StatusCode, l, e
	}

	var got []string
	var sizes []int
	for query := "?limit=10"; ; {
		code, l, _ := get(query)
		if code != http.StatusOK {
			t.Fatalf("GET /vms%s: %d", query, code)
		}
		sizes = append(sizes, len(l.VMs))
		for _, v := range l.VMs {
			got = append(got, v.ID)
		}
		if l.Next == "" {
			break
		}
		query = "?limit=10&after=" + l.Next
	}
	if !slices.Equal(sizes, []int{10, 10, 5}) || !slices.Equal(got, ids) {
		t.Errorf("pages of %v, ids %v; want pages of [10 10 5] and the 25 seeded ids in descending order", sizes, got)
	}

	if code, l, _ := get("?status=error"); code != http.StatusOK || len(l.VMs) != 25 || l.Next != "" {
		t.Errorf("status=error: %d, %d VMs, next %q; want all 25", code, len(l.VMs), l.Next)
	}
	if code, l, _ := get("?status=running,creating"); code != http.StatusOK || len(l.VMs) != 0 || l.VMs == nil {
		t.Errorf("status=running,creating: %d, %v; want an empty list", code, l.VMs)
	}
	if code, l, _ := get("?status=error&limit=5&after=" + ids[20]); code != http.StatusOK || len(l.VMs) != 4 || l.VMs[0].ID != ids[21] || l.Next != "" {
		t.Errorf("the last page after %s: %d, %d VMs, next %q; want the 4 oldest", ids[20], code, len(l.VMs), l.Next)
	}
	for _, q := range []string{"?status=sleeping", "?limit=0", "?limit=1001", "?limit=ten", "?after=../../etc"} {
		if code, _, e := get(q); code != http.StatusBadRequest || e.Code != "invalid-query" {
			t.Errorf("GET /vms%s: %d %q, want 400 invalid-query", q, code, e.Code)
		}
	}

	// The same through the CLI.
	cli := func(args ...string) (stdout, stderr string, err error) {
		t.Helper()
		cmd := exec.Command(goldvmBin, append([]string{"ls", "--addr", d.addr}, args...)...)
		var out, errOut strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errOut
		err = cmd.Run()
		return out.String(), errOut.String(), err
	}
	out, _, err := cli("--status", "error", "--limit", "10", "--after", ids[9], "--json")
	var page api.VMList
	if err == nil {
		err = json.Unmarshal([]byte(out), &page)
	}
	if err != nil || len(page.VMs) != 10 || page.VMs[0].ID != ids[10] || page.Next != ids[19] {
		t.Errorf("goldvm ls --status error --limit 10 --after <10th> --json: %v; got %d VMs, next %q; want ids 11-20 and next %s\n%s", err, len(page.VMs), page.Next, ids[19], out)
	}
	out, errOut, err := cli("--limit", "20")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if err != nil || len(lines) != 21 || !strings.HasPrefix(lines[1], ids[0]+" ") || !strings.HasPrefix(lines[20], ids[19]+" ") ||
		!strings.Contains(errOut, "--after "+ids[19]) {
		t.Errorf("goldvm ls --limit 20: %v; want a header, the 20 newest and a hint to continue after %s\nstdout:\n%s\nstderr:\n%s", err, ids[19], out, errOut)
	}
	out, _, err = cli("--status", "running", "--json")
	if err != nil || strings.TrimSpace(out) != "[]" {
		t.Errorf("goldvm ls --status running --json: %v, %q; want []", err, out)
	}
	if _, errOut, err := cli("--status", "sleeping"); err == nil || !strings.Contains(errOut, "invalid-query") {
		t.Errorf("goldvm ls --status sleeping: %v, %q; want a failure naming invalid-query", err, errOut)
	}
}
