package server

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/group"
	"github.com/goldvm/goldvm/internal/image"
	"github.com/goldvm/goldvm/internal/records"
	"github.com/goldvm/goldvm/internal/vm"
)

const testToken = "0123456789abcdef-test"

// newTestServer returns a Server on a real record store, image store and
// pre-fetcher in a temporary directory (no hypervisor: the tests here do
// not reach one).
func newTestServer(t *testing.T, token string) *Server {
	t.Helper()
	dir := t.TempDir()
	db, images, pf := openStores(t, dir, image.Options{RetryBackoff: time.Millisecond})
	mgr := vm.New(vm.Config{VMDir: filepath.Join(dir, "vms"), Store: db, Images: images})
	t.Cleanup(mgr.Close)
	groups := group.New(group.Config{Store: db, VMs: mgr, MaxSize: 10, Logger: slog.New(slog.DiscardHandler)})
	return New(Config{VMs: mgr, Groups: groups, Images: images, Prefetcher: pf, Token: token, Logger: slog.New(slog.DiscardHandler)})
}

// openStores opens a record store, an image store with opts and its
// pre-fetcher in dir, closed when the test ends.
func openStores(t *testing.T, dir string, opts image.Options) (*records.DB, *image.Store, *image.Prefetcher) {
	t.Helper()
	db, err := records.Open(filepath.Join(dir, "goldvm.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	images, err := image.NewStore(filepath.Join(dir, "images"), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { images.Close() })
	pf, err := image.NewPrefetcher(images, image.PrefetchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pf.Close() })
	return db, images, pf
}

// do sends a request through s and returns the status, headers and body.
func do(t *testing.T, s *Server, method, target, auth, body string) (int, http.Header, string) {
	t.Helper()
	r := httptest.NewRequest(method, "/", strings.NewReader(body))
	r.URL.Path, r.URL.RawQuery, _ = strings.Cut(target, "?")
	r.RequestURI = target
	if body != "" {
		r.Header.Set("Content-Type", "application/json")
	}
	if auth != "" {
		r.Header.Set("Authorization", auth)
	}
	w := httptest.NewRecorder()
	s.ServeHTTP(w, r)
	return w.Code, w.Header(), w.Body.String()
}

// apiError decodes an error body, failing the test if it is not one.
func apiError(t *testing.T, body string) api.Error {
	t.Helper()
	var e api.Error
	if err := json.Unmarshal([]byte(body), &e); err != nil || e.Code == "" || e.Message == "" {
		t.Fatalf("not an API error body: %q (%v)", body, err)
	}
	return e
}

// TestMethodNotAllowed: a known path with a method it has no route for
// answers 405 method-not-allowed with an Allow header and the JSON error
// body; an unknown path stays 404. Before, both answered 404 not-found.
func TestMethodNotAllowed(t *testing.T) {
	s := newTestServer(t, "")
	for _, tt := range []struct {
		method, path string
		want         int
		allow        string
	}{
		{"DELETE", "/vms", 405, "GET, HEAD, POST"},
		{"PUT", "/vms/vm-0000000000000000000a", 405, "GET, HEAD, PATCH, DELETE"},
		{"POST", "/vms/vm-0000000000000000000a/console", 405, "GET, HEAD"},
		{"PATCH", "/images", 405, "GET, HEAD, POST"},
		{"POST", "/images/sha256-00", 405, "GET, HEAD, DELETE"},
		{"POST", "/healthz", 405, "GET, HEAD"},
		{"GET", "/nope", 404, ""},
		{"DELETE", "/vms/a/b/c", 404, ""},
	} {
		status, h, body := do(t, s, tt.method, tt.path, "", "")
		if status != tt.want || h.Get("Allow") != tt.allow {
			t.Errorf("%s %s: %d Allow %q; want %d Allow %q", tt.method, tt.path, status, h.Get("Allow"), tt.want, tt.allow)
			continue
		}
		e := apiError(t, body)
		if want := map[int]string{404: "not-found", 405: "method-not-allowed"}[tt.want]; e.Code != want {
			t.Errorf("%s %s: code %q, want %q", tt.method, tt.path, e.Code, want)
		}
	}
}

// TestBearerToken: the scheme name is matched in any case (RFC 7235) and
// the token exactly; a token is refused at start-up when it is shorter
// than 16 bytes.
func TestBearerToken(t *testing.T) {
	s := newTestServer(t, testToken)
	for _, tt := range []struct {
		auth string
		want int
	}{
		{"Bearer " + testToken, 200},
		{"bearer " + testToken, 200},
		{"BEARER " + testToken, 200},
		{"bEaReR  " + testToken, 200},
		{"", 401},
		{"Bearer", 401},
		{"Bearer " + strings.ToUpper(testToken), 401},
		{"Bearer " + testToken[:15], 401},
		{"Bearer " + testToken + "x", 401},
		{"Basic " + testToken, 401},
		{"Bearer" + testToken, 401},
	} {
		status, h, body := do(t, s, "GET", "/vms", tt.auth, "")
		if status != tt.want {
			t.Errorf("Authorization %q: %d %s, want %d", tt.auth, status, body, tt.want)
		}
		if status == 401 && (apiError(t, body).Code != "unauthorized" || h.Get("WWW-Authenticate") == "") {
			t.Errorf("Authorization %q: 401 without the unauthorized body or WWW-Authenticate", tt.auth)
		}
	}

	for _, tt := range []struct {
		token string
		ok    bool
	}{
		{"", true},
		{testToken, true},
		{strings.Repeat("x", MinTokenBytes), true},
		{strings.Repeat("x", MinTokenBytes-1), false},
		{"short", false},
		{"0123456789 abcdef", false},
		{"0123456789abcdef\n", false},
	} {
		if err := CheckToken(tt.token); (err == nil) != tt.ok {
			t.Errorf("CheckToken(%q) = %v, want ok %v", tt.token, err, tt.ok)
		}
	}
}

// TestEchoedInputIsCut: error messages quote what the caller sent (ids,
// keys, query values, field names and values, the method, the path, the
// Content-Type) cut to a short prefix. Before, a 1 MB id came back whole.
func TestEchoedInputIsCut(t *testing.T) {
	s := newTestServer(t, "")
	long := strings.Repeat("a", 1<<20)
	for _, tt := range []struct {
		desc, method, target, body, contentType string
	}{
		{desc: "vm id", method: "GET", target: "/vms/vm-" + long},
		{desc: "vm id on delete", method: "DELETE", target: "/vms/" + long},
		{desc: "image key", method: "GET", target: "/images/sha256-" + long},
		{desc: "image key on delete", method: "DELETE", target: "/images/" + long},
		{desc: "status query", method: "GET", target: "/vms?status=" + long},
		{desc: "after query", method: "GET", target: "/vms?after=" + long},
		{desc: "limit query", method: "GET", target: "/vms?limit=" + long},
		{desc: "unknown path", method: "GET", target: "/" + long},
		{desc: "method", method: strings.ToUpper(long[:4000]), target: "/vms"},
		{desc: "unknown field", method: "POST", target: "/vms", body: `{"` + long[:900000] + `":1}`},
		{desc: "field value", method: "POST", target: "/vms", body: `{"network_type":"` + long[:900000] + `"}`},
		{desc: "memory value", method: "POST", target: "/vms", body: `{"memory":"` + long[:900000] + `"}`},
		{desc: "image url", method: "POST", target: "/images", body: `{"url":"ftp://` + long[:900000] + `","checksum":"00","checksum_type":"md5"}`},
		{desc: "content type", method: "POST", target: "/vms", body: "{}", contentType: "text/" + long[:500000]},
	} {
		t.Run(tt.desc, func(t *testing.T) {
			r := httptest.NewRequest(tt.method, "/", strings.NewReader(tt.body))
			r.URL.Path, r.URL.RawQuery, _ = strings.Cut(tt.target, "?")
			r.Header.Set("Content-Type", "application/json")
			if tt.contentType != "" {
				r.Header.Set("Content-Type", tt.contentType)
			}
			w := httptest.NewRecorder()
			s.ServeHTTP(w, r)
			e := apiError(t, w.Body.String())
			if w.Code < 400 || len(e.Message) > maxMessage+8 || strings.Contains(e.Message, strings.Repeat("a", maxEcho+1)) {
				t.Errorf("%d %s: message of %d bytes echoes too much: %.200s", w.Code, e.Code, len(e.Message), e.Message)
			}
		})
	}
}

// TestClipMessage: quoted strings longer than maxEcho are cut on a
// character boundary and say their length; short ones and the rest of the
// message stay as they are.
func TestClipMessage(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{`no VM with id "vm-1"`, `no VM with id "vm-1"`},
		{`no image "` + strings.Repeat("b", 100) + `" here`, `no image "` + strings.Repeat("b", 64) + `"… (100 bytes) here`},
		{`key "` + strings.Repeat("é", 40) + `"`, `key "` + strings.Repeat("é", 32) + `"… (80 bytes)`},
		{`unbalanced "quote`, `unbalanced "quote`},
		{`two "` + strings.Repeat("c", 70) + `" and "d"`, `two "` + strings.Repeat("c", 64) + `"… (70 bytes) and "d"`},
	} {
		if got := clipMessage(tt.in); got != tt.want {
			t.Errorf("clipMessage(%.40q…) = %q, want %q", tt.in, got, tt.want)
		}
	}
	if got := clipMessage(strings.Repeat("z", 5000)); len(got) > maxMessage+len("…") {
		t.Errorf("a 5000-byte message is cut to %d bytes", len(got))
	}
}

// TestDeleteImageDuringPrefetch: DELETE /images/{key} while POST /images
// fetches it answers 204 and stops the download (the image server sees
// goldvm hang up); the image is then neither listed nor published. Before,
// the fetch went on and published the image.
func TestDeleteImageDuringPrefetch(t *testing.T) {
	disk := make([]byte, 4<<20) // a raw disk (the URL ends in .img)
	for i := 0; i < len(disk); i += 4096 {
		disk[i] = byte(i >> 12)
	}
	sum := sha256.Sum256(disk)
	sent, hungUp := make(chan struct{}), make(chan struct{})
	var requests atomic.Int64
	img := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if requests.Add(1) != 1 {
			http.Error(w, "one request only", http.StatusGone)
			return
		}
		w.Header().Set("ETag", `"v1"`)
		w.Header().Set("Content-Length", fmt.Sprint(len(disk)))
		w.Write(disk[:len(disk)/2])
		w.(http.Flusher).Flush()
		close(sent)
		<-r.Context().Done() // the rest never comes: only goldvm can end this
		close(hungUp)
	}))
	defer img.Close()

	s := newTestServer(t, "")
	body := fmt.Sprintf(`{"url":"%s/disk.img","checksum":"%s","checksum_type":"sha256"}`, img.URL, hex.EncodeToString(sum[:]))
	status, h, out := do(t, s, "POST", "/images", "", body)
	if status != 202 {
		t.Fatalf("POST /images: %d %s", status, out)
	}
	key := strings.TrimPrefix(h.Get("Location"), "/images/")
	<-sent
	if status, _, out := do(t, s, "DELETE", "/images/"+key, "", ""); status != 204 {
		t.Fatalf("DELETE during the pre-fetch: %d %s", status, out)
	}
	select {
	case <-hungUp:
	case <-time.After(time.Minute):
		t.Fatal("the download goes on after the delete")
	}
	if status, _, out := do(t, s, "GET", "/images/"+key, "", ""); status != 404 || apiError(t, out).Code != "image-not-found" {
		t.Errorf("GET after the delete: %d %s, want 404 image-not-found", status, out)
	}
	_, _, out = do(t, s, "GET", "/images", "", "")
	var list api.ImageList
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list.Images) != 0 {
		t.Errorf("GET /images after the delete: %s (%v), want no images", out, err)
	}
	if _, err := s.images.Get(key); err == nil {
		t.Error("the image was published after its pre-fetch was deleted")
	}
	if n := requests.Load(); n != 1 {
		t.Errorf("image server saw %d requests, want 1", n)
	}
}
