package server

import (
	"os"
	"strings"
	"testing"
)

// TestDashboard: the web page and its files are served without the token
// (they are the same embedded bytes whatever the daemon holds, so they
// show nothing of it), with a content security policy; every request for
// data, and every other path, still needs the token: the page gets 401
// and asks for it. A daemon without a token serves everything openly.
func TestDashboard(t *testing.T) {
	page, err := os.ReadFile("../dashboard/assets/index.html")
	if err != nil {
		t.Fatal(err)
	}
	s := newTestServer(t, testToken)
	bearer := "Bearer " + testToken
	for _, tt := range []struct {
		method, path, auth string
		want               int
		contentType        string
	}{
		{"GET", "/", "", 200, "text/html; charset=utf-8"},
		{"HEAD", "/", "", 200, "text/html; charset=utf-8"},
		{"GET", "/?from=bookmark", "", 200, "text/html; charset=utf-8"},
		{"GET", "/dashboard/app.js", "", 200, "text/javascript; charset=utf-8"},
		{"GET", "/dashboard/style.css", "", 200, "text/css; charset=utf-8"},
		{"GET", "/", bearer, 200, "text/html; charset=utf-8"},
		// What the page asks for needs the token.
		{"GET", "/vms", "", 401, "application/json"},
		{"GET", "/images", "", 401, "application/json"},
		{"GET", "/events", "", 401, "application/json"},
		{"GET", "/vms/vm-0000000000000000000a/console", "", 401, "application/json"},
		{"GET", "/vms/vm-0000000000000000000a/screenshot", "", 401, "application/json"},
		{"DELETE", "/vms/vm-0000000000000000000a", "", 401, "application/json"},
		{"GET", "/vms", "Bearer wrong-token-0123456789", 401, "application/json"},
		// Only the embedded files are public, and only to GET and HEAD.
		{"GET", "/dashboard/nope.js", "", 401, "application/json"},
		{"GET", "/dashboard/nope.js", bearer, 404, "text/plain; charset=utf-8"},
		{"GET", "/dashboard/index.html", "", 401, "application/json"},
		{"GET", "/dashboard/", "", 401, "application/json"},
		{"GET", "/dashboard/../vms", "", 401, "application/json"},
		{"GET", "/index.html", "", 401, "application/json"},
		{"POST", "/", "", 401, "application/json"},
		{"POST", "/", bearer, 405, "application/json"},
		{"POST", "/dashboard/app.js", "", 401, "application/json"},
	} {
		status, h, body := do(t, s, tt.method, tt.path, tt.auth, "")
		if status != tt.want || h.Get("Content-Type") != tt.contentType {
			t.Errorf("%s %s (auth %q): %d %s %q; want %d %s", tt.method, tt.path, tt.auth, status, h.Get("Content-Type"), truncate([]byte(body)), tt.want, tt.contentType)
			continue
		}
		switch {
		case status == 401:
			if e := apiError(t, body); e.Code != "unauthorized" || h.Get("WWW-Authenticate") == "" {
				t.Errorf("%s %s: %s, WWW-Authenticate %q; want unauthorized with the header", tt.method, tt.path, body, h.Get("WWW-Authenticate"))
			}
		case status == 200:
			if csp := h.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || !strings.Contains(csp, "connect-src 'self'") {
				t.Errorf("%s %s: Content-Security-Policy %q, want the page's own scripts and connections only", tt.method, tt.path, csp)
			}
			if h.Get("X-Content-Type-Options") != "nosniff" || h.Get("Referrer-Policy") != "no-referrer" {
				t.Errorf("%s %s: headers %v, want nosniff and no-referrer", tt.method, tt.path, h)
			}
			if tt.path == "/" && tt.method == "GET" && body != string(page) {
				t.Errorf("GET /: not the embedded page:\n%s", truncate([]byte(body)))
			}
		}
	}
	if status, h, _ := do(t, s, "POST", "/", bearer, ""); h.Get("Allow") != "GET, HEAD" {
		t.Errorf("POST /: %d Allow %q, want GET, HEAD", status, h.Get("Allow"))
	}

	// Without a token the page and the data are open alike.
	open := newTestServer(t, "")
	for _, path := range []string{"/", "/dashboard/app.js", "/vms", "/images"} {
		if status, _, body := do(t, open, "GET", path, "", ""); status != 200 {
			t.Errorf("GET %s of a daemon without a token: %d %s", path, status, truncate([]byte(body)))
		}
	}
}
