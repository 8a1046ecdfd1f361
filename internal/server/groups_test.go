package server

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/records"
)

// seedVMs stores VM records with the given tags straight in s's store,
// oldest first, and returns their ids.
func seedVMs(t *testing.T, s *Server, status api.Status, tags ...map[string]string) []string {
	t.Helper()
	var ids []string
	for _, tg := range tags {
		id := records.NewID()
		time.Sleep(2 * time.Millisecond) // ids sort by millisecond
		r := &records.Record{VM: api.VM{ID: id, Status: status, Tags: tg}, Dir: t.TempDir()}
		if err := s.vms.StoreForTest(r); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

func listIDs(t *testing.T, s *Server, query string) []string {
	t.Helper()
	code, _, body := do(t, s, "GET", "/vms"+query, "", "")
	if code != http.StatusOK {
		t.Fatalf("GET /vms%s: %d %s", query, code, body)
	}
	var l api.VMList
	if err := json.Unmarshal([]byte(body), &l); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, v := range l.VMs {
		ids = append(ids, v.ID)
	}
	slices.Sort(ids)
	return ids
}

// TestTagFilter: ?tag=k=v repeated keeps the VMs with all the tags, and
// combines with status and limit.
func TestTagFilter(t *testing.T) {
	s := newTestServer(t, "")
	ids := seedVMs(t, s, api.StatusRunning,
		map[string]string{"env": "dev", "team": "ci"},
		map[string]string{"env": "dev"},
		map[string]string{"env": "prod", "team": "ci"},
		nil)
	stopped := seedVMs(t, s, api.StatusStopped, map[string]string{"env": "dev", "team": "ci"})
	tests := []struct {
		query string
		want  []string
	}{
		{"?tag=env=dev", []string{ids[0], ids[1], stopped[0]}},
		{"?tag=env=dev&tag=team=ci", []string{ids[0], stopped[0]}},
		{"?tag=team=ci&tag=env=dev&status=running", []string{ids[0]}},
		{"?tag=team=ci", []string{ids[0], ids[2], stopped[0]}},
		{"?tag=env=", nil},
		{"?tag=team=ci&limit=1", []string{stopped[0]}}, // newest first
	}
	for _, tt := range tests {
		if got := listIDs(t, s, tt.query); !slices.Equal(got, tt.want) {
			t.Errorf("GET /vms%s = %v, want %v", tt.query, got, tt.want)
		}
	}
	for _, q := range []string{"?tag=env", "?tag=Env=dev", "?tag=a=1&tag=a=2"} {
		code, _, body := do(t, s, "GET", "/vms"+q, "", "")
		if code != http.StatusBadRequest || apiError(t, body).Code != api.CodeInvalidQuery {
			t.Errorf("GET /vms%s = %d %s, want 400 invalid-query", q, code, body)
		}
	}
}

// TestPatchTags: PATCH sets and removes tags, refuses goldvm's own and
// bad keys without changing anything.
func TestPatchTags(t *testing.T) {
	s := newTestServer(t, "")
	id := seedVMs(t, s, api.StatusRunning, map[string]string{"env": "dev", "gone": "x", api.TagGroup: "g"})[0]
	code, _, body := do(t, s, "PATCH", "/vms/"+id, "", `{"tags": {"team": "ci", "gone": null}}`)
	if code != http.StatusOK {
		t.Fatalf("PATCH: %d %s", code, body)
	}
	var v api.VM
	json.Unmarshal([]byte(body), &v)
	want := map[string]string{"env": "dev", "team": "ci", api.TagGroup: "g"}
	if len(v.Tags) != len(want) || v.Tags["team"] != "ci" || v.Tags["env"] != "dev" || v.Tags[api.TagGroup] != "g" {
		t.Errorf("tags after PATCH = %v, want %v", v.Tags, want)
	}
	for _, tc := range []struct{ body, field string }{
		{`{"tags": {"goldvm.group": null}}`, "goldvm."},
		{`{"tags": {"Bad": "x"}}`, "Bad"},
		{`{"tags": {"ok": "x", "v": "` + strings.Repeat("a", 256) + `"}}`, "256 bytes"},
	} {
		code, _, body := do(t, s, "PATCH", "/vms/"+id, "", tc.body)
		if e := apiError(t, body); code != http.StatusBadRequest || !strings.Contains(e.Message, tc.field) {
			t.Errorf("PATCH %s = %d %s, want 400 naming %s", tc.body, code, body, tc.field)
		}
	}
	_, _, body = do(t, s, "GET", "/vms", "", "")
	var l api.VMList
	json.Unmarshal([]byte(body), &l)
	if v = l.VMs[0]; len(v.Tags) != 3 || v.Tags["ok"] != "" {
		t.Errorf("a refused PATCH changed the tags: %v", v.Tags)
	}
	if code, _, body := do(t, s, "POST", "/vms/"+id+"/resume", "", `{}`); code != http.StatusConflict || apiError(t, body).Code != api.CodeVMInvalidState {
		t.Errorf("resume of a running VM = %d %s, want 409 vm-invalid-state", code, body)
	}
}

// TestGroupBadInput: each bad group is a 400 naming the field, and no
// group is created.
func TestGroupBadInput(t *testing.T) {
	s := newTestServer(t, "")
	tpl := `{"cpus": 1, "memory": 128, "image": {"url": "http://127.0.0.1:1/i.qcow2", "checksum_type": "sha256", "checksum": "` + strings.Repeat("a", 64) + `"}}`
	tests := []struct{ name, body, field string }{
		{"Bad_Name", `{"size": 1, "template": ` + tpl + `}`, "name"},
		{strings.Repeat("a", 64), `{"size": 1, "template": ` + tpl + `}`, "name"},
		{"g", `{"size": -1, "template": ` + tpl + `}`, "size"},
		{"g", `{"size": 11, "template": ` + tpl + `}`, "size"},
		{"g", `{"size": 1, "max_surge": -1, "template": ` + tpl + `}`, "max_surge"},
		{"g", `{"size": 1, "warm": -1, "template": ` + tpl + `}`, "warm"},
		{"g", `{"size": 1, "warm": 21, "template": ` + tpl + `}`, "warm 21"},
		{"g", `{"size": 1, "template": ` + strings.Replace(tpl, `"cpus": 1`, `"cpus": 1, "from_group": "g"`, 1) + `}`, "template.from_group"},
		{"g", `{"size": 1, "max_unavailable": 2, "template": ` + tpl + `}`, "max_unavailable"},
		{"g", `{"size": 1, "template": {"cpus": -1, "memory": 128}}`, "template.cpus"},
		{"g", `{"size": 1, "template": ` + strings.Replace(tpl, `"checksum_type": "sha256"`, `"checksum_type": "crc"`, 1) + `}`, "template.image.checksum_type"},
		{"g", `{"size": 1, "template": ` + strings.Replace(tpl, `"cpus": 1`, `"cpus": 1, "tags": {"goldvm.group": "x"}`, 1) + `}`, "template.tags"},
		{"g", `{"size": 1, "tempate": ` + tpl + `}`, "tempate"},
	}
	for _, tt := range tests {
		code, _, body := do(t, s, "PUT", "/groups/"+tt.name, "", tt.body)
		if code != http.StatusBadRequest || !strings.Contains(apiError(t, body).Message, tt.field) {
			t.Errorf("PUT /groups/%s %s = %d %s, want 400 naming %s", tt.name, tt.body, code, body, tt.field)
		}
	}
	code, _, body := do(t, s, "GET", "/groups", "", "")
	if code != http.StatusOK || !strings.Contains(body, `"groups": []`) {
		t.Errorf("GET /groups after bad input = %d %s, want no group", code, body)
	}
	if code, _, body := do(t, s, "GET", "/groups/g", "", ""); code != http.StatusNotFound || apiError(t, body).Code != api.CodeGroupNotFound {
		t.Errorf("GET /groups/g = %d %s, want 404 group-not-found", code, body)
	}
	if code, _, body := do(t, s, "PUT", "/groups/g", "", `{"size": 0, "template": `+tpl+`}`); code != http.StatusOK {
		t.Errorf("PUT of a good group = %d %s", code, body)
	}
}
