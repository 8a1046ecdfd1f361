package openapicheck

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// reports collects what a Transport reports.
type reports struct {
	mu  sync.Mutex
	got []string
}

func (r *reports) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, fmt.Sprintf(format, args...))
}

func (r *reports) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.got
	r.got = nil
	return out
}

// TestTransport sends requests through a Transport to a loopback server
// that answers as each case says, and checks what breaks api/openapi.yaml
// is reported, and only that.
func TestTransport(t *testing.T) {
	answers := map[string]struct {
		status int
		ct     string
		body   string
	}{
		"GET /healthz":        {200, "application/json", `{"status": "ok", "backend": "fake"}`},
		"GET /capacity":       {200, "application/json", `{"total": {"cpus": "four"}}`},
		"GET /vms/vm-x":       {418, "application/json", `{"code": "teapot", "message": "no"}`},
		"GET /events":         {200, "text/html", `<p>not a stream</p>`},
		"GET /metrics":        {200, "text/plain; version=0.0.4", "goldvm_vms 0\n"},
		"GET /undocumented":   {200, "application/json", `{}`},
		"GET /":               {200, "text/html", `<html></html>`},
		"POST /vms":           {400, "application/json", `{"code": "invalid-request", "message": "cpus"}`},
		"PUT /groups/web":     {200, "application/json", `{}`},
		"GET /images/nothere": {404, "application/json", `{"code": "image-not-found", "message": "no"}`},
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a, ok := answers[r.Method+" "+r.URL.Path]
		if !ok {
			a.status, a.ct, a.body = 500, "text/plain", "no answer for "+r.URL.Path
		}
		w.Header().Set("Content-Type", a.ct)
		w.WriteHeader(a.status)
		io.WriteString(w, a.body)
	}))
	defer srv.Close()
	v, err := New(srv.Client().Transport)
	if err != nil {
		t.Fatal(err)
	}
	r := &reports{}
	unwatch := v.Watch(strings.TrimPrefix(srv.URL, "http://"), r)
	c := &http.Client{Transport: v}
	send := func(ctx context.Context, method, path, body string) {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, method, srv.URL+path, strings.NewReader(body))
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := answers[method+" "+strings.SplitN(path, "?", 2)[0]].body; string(got) != want {
			t.Errorf("%s %s: the caller read %q, want the answer %q", method, path, got, want)
		}
	}
	ctx := context.Background()
	for _, tc := range []struct {
		method, path, body string
		bad                bool
		want               string // a part of the report, "" for none
	}{
		{"GET", "/healthz", "", false, ""},
		{"GET", "/capacity", "", false, "breaks api/openapi.yaml"},
		{"GET", "/vms/vm-x", "", false, "status is not supported"},
		{"GET", "/events", "", false, `content type "text/html"`},
		{"GET", "/metrics", "", false, ""},
		{"GET", "/undocumented", "", false, "not in api/openapi.yaml"},
		{"GET", "/", "", false, ""}, // the dashboard's page: HTML, left out on purpose
		// A request that breaks the document, refused: the two agree.
		{"POST", "/vms", `{"cpus": "many"}`, false, ""},
		// One the daemon took: the document is too strict, or the daemon lax.
		{"PUT", "/groups/web", `{"size": "two"}`, false, "the request breaks api/openapi.yaml (answered 200)"},
		{"GET", "/images/nothere", "", false, ""},
	} {
		send(ctx, tc.method, tc.path, tc.body)
		got := strings.Join(r.take(), "\n")
		if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("%s %s: reported %q, want %q", tc.method, tc.path, got, tc.want)
		}
	}

	// Strict: a request that breaks the document is reported whatever the
	// answer, unless marked Bad.
	v.Strict = true
	send(ctx, "POST", "/vms", `{"cpus": "many"}`)
	if got := r.take(); len(got) != 1 || !strings.Contains(got[0], "the request breaks") {
		t.Errorf("strict, a bad request: reported %q", got)
	}
	send(Bad(ctx), "POST", "/vms", `{"cpus": "many"}`)
	if got := r.take(); len(got) != 0 {
		t.Errorf("strict, a request marked bad: reported %q", got)
	}

	// A host nobody watches passes unchecked.
	unwatch()
	send(ctx, "GET", "/capacity", "")
	if got := r.take(); len(got) != 0 {
		t.Errorf("after unwatch: reported %q", got)
	}
	seen := v.Seen()
	if len(seen["GET /capacity"]) != 1 || len(seen["POST /vms"]) != 3 || seen["GET /vms/{id}"][0] != 418 {
		t.Errorf("seen: %v", seen)
	}
	if s := v.Summary(); !strings.HasPrefix(s, "10 requests to 8 operations validated") {
		t.Errorf("summary: %s", s)
	}
}
