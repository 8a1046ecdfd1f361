// Package server is goldvm's HTTP API: routes on net/http's pattern mux,
// JSON in and out, and the one place where error categories become HTTP
// status codes and stable error codes.
package server

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/dashboard"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/events"
	"github.com/goldvm/goldvm/internal/group"
	"github.com/goldvm/goldvm/internal/image"
	"github.com/goldvm/goldvm/internal/metrics"
	"github.com/goldvm/goldvm/internal/records"
	"github.com/goldvm/goldvm/internal/vm"
)

// MaxBodyBytes bounds a request body.
const MaxBodyBytes = 1 << 20

// Server serves the API.
type Server struct {
	vms    *vm.Manager
	groups *group.Manager
	images *image.Store
	token  string
	redact *errdefs.Redactor
	log    *slog.Logger
	mux    *routeMux

	prefetch *image.Prefetcher

	bus         *events.Bus
	metrics     *metrics.Metrics
	streamsDone chan struct{}
	stopOnce    sync.Once
}

// Config wires a Server.
type Config struct {
	VMs *vm.Manager
	// Groups serves /groups (nil: no groups).
	Groups *group.Manager
	Images *image.Store
	// Prefetcher runs the pre-fetches of POST /images (Images' own).
	Prefetcher *image.Prefetcher
	// Redactor hides host directories in error messages (nil: shown).
	Redactor *errdefs.Redactor
	// Token, when set, is required as "Authorization: Bearer <token>".
	Token  string
	Logger *slog.Logger
	// Events is the bus GET /events streams (nil: a bus of its own, with
	// no publishers).
	Events *events.Bus
	// Metrics, when set, is served at GET /metrics and counts requests.
	Metrics *metrics.Metrics
}

// New returns a Server with its routes.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Server{vms: cfg.VMs, groups: cfg.Groups, images: cfg.Images, prefetch: cfg.Prefetcher, token: cfg.Token, redact: cfg.Redactor, log: cfg.Logger, mux: &routeMux{ServeMux: http.NewServeMux()}}
	s.mux.HandleFunc("POST /vms", s.createVM)
	s.mux.HandleFunc("GET /vms", s.listVMs)
	s.mux.HandleFunc("GET /vms/{id}", s.getVM)
	s.mux.HandleFunc("DELETE /vms/{id}", s.deleteVM)
	s.mux.HandleFunc("PATCH /vms/{id}", s.patchVM)
	for _, a := range vmActions {
		s.mux.HandleFunc("POST /vms/{id}/"+a, s.vmAction(a))
	}
	s.mux.HandleFunc("POST /vms/{id}/capture", s.captureVM)
	s.mux.HandleFunc("GET /vms/{id}/screenshot", s.screenshot)
	s.mux.HandleFunc("GET /vms/{id}/console", s.console)
	if s.groups != nil {
		s.mux.HandleFunc("GET /groups", s.listGroups)
		s.mux.HandleFunc("GET /groups/{name}", s.getGroup)
		s.mux.HandleFunc("PUT /groups/{name}", s.putGroup)
		s.mux.HandleFunc("DELETE /groups/{name}", s.deleteGroup)
	}
	s.mux.HandleFunc("GET /vms/{id}/vnc", s.vnc)
	s.mux.HandleFunc("GET /capacity", s.capacity)
	s.mux.HandleFunc("GET /images", s.listImages)
	s.mux.HandleFunc("GET /images/{key}", s.getImage)
	s.mux.HandleFunc("POST /images", s.prefetchImage)
	s.mux.HandleFunc("DELETE /images/{key}", s.deleteImage)
	s.mux.HandleFunc("POST /images/{key}/templates", s.makeTemplate)
	s.mux.HandleFunc("GET /images/{key}/templates", s.listTemplates)
	s.mux.HandleFunc("GET /images/{key}/package", s.imagePackage)
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok", "backend": s.vms.DriverName()})
	})
	s.mux.HandleFunc("/", s.noRoute)
	s.opsRoutes(cfg)
	s.addDashboard()
	return s
}

// routeMethods are the methods the routes above use.
var routeMethods = []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete}

// noRoute answers a request no route takes: 405 method-not-allowed, with
// an Allow header, when the path has routes for other methods, else 404.
func (s *Server) noRoute(w http.ResponseWriter, r *http.Request) {
	var allow []string
	for _, m := range routeMethods {
		probe := r.Clone(r.Context())
		probe.Method = m
		if _, pattern := s.mux.Handler(probe); pattern != "" && pattern != "/" {
			allow = append(allow, m)
		}
	}
	if len(allow) > 0 {
		w.Header().Set("Allow", strings.Join(allow, ", "))
		writeJSON(w, http.StatusMethodNotAllowed, api.Error{Code: "method-not-allowed",
			Message: fmt.Sprintf("%s is not allowed on %s; use %s", quote(r.Method), quote(r.URL.Path), strings.Join(allow, ", "))})
		return
	}
	s.writeError(w, errdefs.Newf(errdefs.ErrNotFound, "not-found", "no such endpoint: %s %s", quote(r.Method), quote(r.URL.Path)))
}

// ServeHTTP authenticates, logs and routes a request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
	defer func() { s.observe(rec, r, start) }()
	// The web page and its files hold no data (dashboard.Public).
	if s.token != "" && r.URL.Path != "/healthz" && !dashboard.Public(r) {
		got, ok := bearerToken(r.Header.Get("Authorization"))
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(s.token)) != 1 {
			rec.Header().Set("WWW-Authenticate", `Bearer realm="goldvm"`)
			writeJSON(rec, http.StatusUnauthorized, api.Error{Code: "unauthorized", Message: "a valid bearer token is required"})
			return
		}
	}
	s.mux.ServeHTTP(rec, r)
}

// MinTokenBytes is the shortest bearer token the daemon accepts.
const MinTokenBytes = 16

// CheckToken refuses a bearer token the daemon should not start with:
// shorter than MinTokenBytes, or with characters a client cannot send in
// an Authorization header (spaces, control characters). "" (no token) is
// allowed.
func CheckToken(token string) error {
	if token == "" {
		return nil
	}
	if len(token) < MinTokenBytes {
		return fmt.Errorf("the bearer token has %d bytes; use at least %d (e.g. openssl rand -hex 32)", len(token), MinTokenBytes)
	}
	for _, c := range []byte(token) {
		if c <= ' ' || c == 0x7f {
			return fmt.Errorf("the bearer token contains a space or control character")
		}
	}
	return nil
}

// bearerToken returns the credentials of an Authorization header that uses
// the Bearer scheme. Scheme names are case-insensitive (RFC 7235 2.1), and
// one or more spaces may separate the scheme from the token.
func bearerToken(header string) (string, bool) {
	scheme, rest, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	return strings.TrimLeft(rest, " "), true
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the connection (flushes and
// deadlines of event streams).
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// statusOf maps an error to its HTTP status, by category.
func statusOf(err error) int {
	switch {
	case errors.Is(err, errdefs.ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, errdefs.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, errdefs.ErrConflict):
		return http.StatusConflict
	case errors.Is(err, errdefs.ErrUnsupportedMedia):
		return http.StatusUnsupportedMediaType
	case errors.Is(err, errdefs.ErrUnavailable):
		return http.StatusServiceUnavailable
	default:
		return http.StatusInternalServerError
	}
}

// writeError sends {"code","message"}; internal details go to the log only.
func (s *Server) writeError(w http.ResponseWriter, err error) {
	status := statusOf(err)
	code, msg := s.redact.CodeOf(err)
	if status == http.StatusInternalServerError {
		s.log.Error("internal error", "err", err)
		code, msg = "internal-error", "internal error; see the daemon's log"
	}
	writeJSON(w, status, api.Error{Code: code, Message: clipMessage(msg)})
}

// maxMessage bounds an error message sent to a client.
const maxMessage = 1024

// clipMessage cuts every quoted string in msg (where messages echo what
// the caller sent: ids, keys, field names, values) to maxEcho bytes, and
// the whole message to maxMessage bytes. The places that echo input quote
// it short already (quote); this also covers messages made elsewhere.
func clipMessage(msg string) string {
	var b strings.Builder
	for {
		i := strings.IndexByte(msg, '"')
		if i < 0 {
			b.WriteString(msg)
			break
		}
		b.WriteString(msg[:i])
		q, err := strconv.QuotedPrefix(msg[i:])
		if err != nil {
			b.WriteString(msg[i:])
			break
		}
		if u, err := strconv.Unquote(q); err == nil && len(u) > maxEcho {
			b.WriteString(quote(u))
		} else {
			b.WriteString(q)
		}
		msg = msg[i+len(q):]
	}
	out := b.String()
	if len(out) > maxMessage {
		cut := maxMessage
		for cut > 0 && !isRuneStart(out[cut]) {
			cut--
		}
		out = out[:cut] + "…"
	}
	return out
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func (s *Server) createVM(w http.ResponseWriter, r *http.Request) {
	var req api.CreateVMRequest
	if err := decodeJSON(w, r, &req); err != nil {
		s.writeError(w, err)
		return
	}
	create := s.vms.Create
	if s.groups != nil {
		create = s.groups.CreateVM // from_group and warm VMs
	}
	v, err := create(r.Context(), req)
	if err != nil {
		s.writeError(w, err)
		return
	}
	w.Header().Set("Location", "/vms/"+v.ID)
	writeJSON(w, http.StatusAccepted, v)
}

// listVMs answers GET /vms, newest first. Query parameters, all optional:
// status (comma-separated statuses to keep), tag (key=value, repeated: VMs
// with all of them), limit (1..api.MaxPageSize VMs
// per page; the reply's "next" then continues) and after (an id: only VMs
// created before it, i.e. the next page; the VM itself may be gone).
func (s *Server) listVMs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var want []api.Status
	for _, st := range strings.Split(q.Get("status"), ",") {
		switch st := api.Status(strings.TrimSpace(st)); st {
		case "":
		case api.StatusCreating, api.StatusRunning, api.StatusStopped, api.StatusError, api.StatusDeleting, api.StatusSuspended:
			want = append(want, st)
		default:
			s.writeError(w, errdefs.Newf(errdefs.ErrInvalid, "invalid-query", "status %s: use creating, running, suspended, stopped, error or deleting", quote(string(st))))
			return
		}
	}
	limit, err := queryCount(q, "limit", 0, api.MaxPageSize)
	if err != nil {
		s.writeError(w, err)
		return
	}
	tags, err := vm.ParseTagFilter(q["tag"])
	if err != nil {
		s.writeError(w, errdefs.New(errdefs.ErrInvalid, api.CodeInvalidQuery, clipMessage(err.Error()), err))
		return
	}
	after := q.Get("after")
	if after != "" && !records.ValidID(after) {
		s.writeError(w, errdefs.Newf(errdefs.ErrInvalid, "invalid-query", "after %s is not a VM id", quote(after)))
		return
	}
	// A page costs O(page): see records.Page.
	vms, next, err := s.vms.Page(r.Context(), records.Query{Statuses: want, Tags: tags, After: after, Limit: limit})
	if err != nil {
		s.writeError(w, err)
		return
	}
	// Compact: indenting would cost more than encoding the page.
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(api.VMList{VMs: vms, Next: next})
}

func (s *Server) getVM(w http.ResponseWriter, r *http.Request) {
	v, err := s.vms.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		s.writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (s *Server) deleteVM(w http.ResponseWriter, r *http.Request) {
	// A delete, once begun, finishes even if the client goes away.
	ctx := context.WithoutCancel(r.Context())
	if err := s.vms.Delete(ctx, r.PathValue("id")); err != nil {
		s.writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// queryCount returns the query parameter name as a number from 1 to max,
// def when it is absent, or an invalid-query error.
func queryCount(q url.Values, name string, def, max int) (int, error) {
	v := q.Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > max {
		return 0, errdefs.Newf(errdefs.ErrInvalid, "invalid-query", "%s %s: use a number from 1 to %d", name, quote(v), max)
	}
	return n, nil
}

// Console sizes: GET /vms/{id}/console answers the last DefaultConsoleTail
// bytes unless ?tail= asks for up to MaxConsoleTail.
const (
	DefaultConsoleTail = 64 << 10
	MaxConsoleTail     = 1 << 20
)

// console answers the end of a VM's serial console output as text: while it
// runs, and after it stopped or failed to come up (the tail of its last
// run) until the VM is deleted.
func (s *Server) console(w http.ResponseWriter, r *http.Request) {
	tail, err := queryCount(r.URL.Query(), "tail", DefaultConsoleTail, MaxConsoleTail)
	if err != nil {
		s.writeError(w, err)
		return
	}
	v, err := s.vms.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		s.writeError(w, err)
		return
	}
	out, err := s.vms.Console(r.Context(), v.ID, int64(tail))
	if err != nil {
		s.writeError(w, err)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Write(out)
}

func (s *Server) screenshot(w http.ResponseWriter, r *http.Request) {
	v, err := s.vms.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		s.writeError(w, err)
		return
	}
	png, err := s.vms.Screenshot(r.Context(), v.ID)
	if err != nil {
		s.writeError(w, err)
		return
	}
	w.Header().Set("Content-Type", "image/png")
	w.Write(png)
}
