// Package server is goldvm's HTTP API: routes on net/http's pattern mux,
// JSON in and out, and the one place where error categories become HTTP
// status codes and stable error codes.
package server

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/image"
	"github.com/goldvm/goldvm/internal/store"
	"github.com/goldvm/goldvm/internal/vm"
)

// MaxBodyBytes bounds a request body.
const MaxBodyBytes = 1 << 20

// Server serves the API.
type Server struct {
	vms    *vm.Manager
	images *image.Store
	token  string
	redact *errdefs.Redactor
	log    *slog.Logger
	mux    *http.ServeMux

	prefetch prefetches
}

// Config wires a Server.
type Config struct {
	VMs    *vm.Manager
	Images *image.Store
	// Redactor hides host directories in error messages (nil: shown).
	Redactor *errdefs.Redactor
	// Token, when set, is required as "Authorization: Bearer <token>".
	Token  string
	Logger *slog.Logger
}

// New returns a Server with its routes.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Server{vms: cfg.VMs, images: cfg.Images, token: cfg.Token, redact: cfg.Redactor, log: cfg.Logger, mux: http.NewServeMux()}
	s.mux.HandleFunc("POST /vms", s.createVM)
	s.mux.HandleFunc("GET /vms", s.listVMs)
	s.mux.HandleFunc("GET /vms/{id}", s.getVM)
	s.mux.HandleFunc("DELETE /vms/{id}", s.deleteVM)
	s.mux.HandleFunc("GET /vms/{id}/screenshot", s.screenshot)
	s.mux.HandleFunc("GET /vms/{id}/console", s.console)
	s.mux.HandleFunc("GET /images", s.listImages)
	s.mux.HandleFunc("GET /images/{key}", s.getImage)
	s.mux.HandleFunc("POST /images", s.prefetchImage)
	s.mux.HandleFunc("DELETE /images/{key}", s.deleteImage)
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok", "backend": s.vms.DriverName()})
	})
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.writeError(w, errdefs.Newf(errdefs.ErrNotFound, "not-found", "no such endpoint: %s %s", r.Method, r.URL.Path))
	})
	return s
}

// ServeHTTP authenticates, logs and routes a request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	if s.token != "" && r.URL.Path != "/healthz" {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(s.token)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="goldvm"`)
			writeJSON(w, http.StatusUnauthorized, api.Error{Code: "unauthorized", Message: "a valid bearer token is required"})
			return
		}
	}
	rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
	s.mux.ServeHTTP(rec, r)
	s.log.Debug("http", "method", r.Method, "path", r.URL.Path, "status", rec.status, "dur", time.Since(start))
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

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
	writeJSON(w, status, api.Error{Code: code, Message: msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// decodeJSON reads a JSON request body into v, strictly: the media type must
// be application/json, the body at most MaxBodyBytes, no unknown fields, one
// value only. Syntax errors name the line and column.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/json" {
		return errdefs.Newf(errdefs.ErrUnsupportedMedia, "unsupported-media-type",
			"request body must be application/json (Content-Type was %q)", r.Header.Get("Content-Type"))
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return errdefs.Newf(errdefs.ErrInvalid, "request-too-large", "request body is larger than %d bytes", MaxBodyBytes)
		}
		return errdefs.New(errdefs.ErrInvalid, "invalid-json", "could not read request body", err)
	}
	return DecodeStrict(data, v)
}

// DecodeStrict decodes one JSON value from data into v with the API's rules
// and error codes: "invalid-json" for malformed JSON (with line and column),
// "invalid-request" for well-formed JSON with wrong or unknown fields.
func DecodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		if dec.More() {
			line, col := position(data, int(dec.InputOffset()))
			return errdefs.Newf(errdefs.ErrInvalid, "invalid-json", "unexpected data after the JSON object at line %d, column %d", line, col)
		}
		var extra json.RawMessage
		if dec.Decode(&extra) != io.EOF {
			line, col := position(data, int(dec.InputOffset()))
			return errdefs.Newf(errdefs.ErrInvalid, "invalid-json", "unexpected data after the JSON object at line %d, column %d", line, col)
		}
		return nil
	}
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		// Offset counts the bytes read including the offending one.
		line, col := position(data, max(int(syn.Offset)-1, 0))
		return errdefs.Newf(errdefs.ErrInvalid, "invalid-json", "malformed JSON at line %d, column %d: %s", line, col, syn.Error())
	case errors.Is(err, io.EOF):
		return errdefs.Newf(errdefs.ErrInvalid, "invalid-json", "request body is empty")
	case errors.Is(err, io.ErrUnexpectedEOF):
		line, col := position(data, len(data))
		return errdefs.Newf(errdefs.ErrInvalid, "invalid-json", "malformed JSON: body ends early at line %d, column %d", line, col)
	case errors.As(err, &typ):
		field := typ.Field
		if field == "" {
			field = "body"
		}
		return errdefs.Newf(errdefs.ErrInvalid, "invalid-request", "field %q must be %s, not JSON %s", field, typ.Type, typ.Value)
	case strings.HasPrefix(err.Error(), "json: unknown field"):
		return errdefs.Newf(errdefs.ErrInvalid, "invalid-request", "%s", strings.TrimPrefix(err.Error(), "json: "))
	default:
		// Errors from our own UnmarshalJSON methods (memory, durations).
		return errdefs.Newf(errdefs.ErrInvalid, "invalid-request", "%s", strings.TrimPrefix(err.Error(), "json: "))
	}
}

// position turns a byte offset into a 1-based line and column.
func position(data []byte, off int) (line, col int) {
	off = min(off, len(data))
	line, col = 1, 1
	for _, c := range data[:off] {
		if c == '\n' {
			line++
			col = 1
		} else {
			col++
		}
	}
	return line, col
}

func (s *Server) createVM(w http.ResponseWriter, r *http.Request) {
	var req api.CreateVMRequest
	if err := decodeJSON(w, r, &req); err != nil {
		s.writeError(w, err)
		return
	}
	v, err := s.vms.Create(r.Context(), req)
	if err != nil {
		s.writeError(w, err)
		return
	}
	w.Header().Set("Location", "/vms/"+v.ID)
	writeJSON(w, http.StatusAccepted, v)
}

// listVMs answers GET /vms, newest first. Query parameters, all optional:
// status (comma-separated statuses to keep), limit (1..api.MaxPageSize VMs
// per page; the reply's "next" then continues) and after (an id: only VMs
// created before it, i.e. the next page; the VM itself may be gone).
func (s *Server) listVMs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	want := map[api.Status]bool{}
	for _, st := range strings.Split(q.Get("status"), ",") {
		switch st := api.Status(strings.TrimSpace(st)); st {
		case "":
		case api.StatusCreating, api.StatusRunning, api.StatusStopped, api.StatusError, api.StatusDeleting:
			want[st] = true
		default:
			s.writeError(w, errdefs.Newf(errdefs.ErrInvalid, "invalid-query", "status %q: use creating, running, stopped, error or deleting", st))
			return
		}
	}
	limit, err := queryCount(q, "limit", 0, api.MaxPageSize)
	if err != nil {
		s.writeError(w, err)
		return
	}
	after := q.Get("after")
	if after != "" && !store.ValidID(after) {
		s.writeError(w, errdefs.Newf(errdefs.ErrInvalid, "invalid-query", "after %q is not a VM id", after))
		return
	}
	vms, err := s.vms.List(r.Context())
	if err != nil {
		s.writeError(w, err)
		return
	}
	out := api.VMList{VMs: []api.VM{}}
	for _, v := range vms { // newest first: ids sort by creation time
		if (after != "" && v.ID >= after) || (len(want) > 0 && !want[v.Status]) {
			continue
		}
		if limit > 0 && len(out.VMs) == limit {
			out.Next = out.VMs[limit-1].ID
			break
		}
		out.VMs = append(out.VMs, v)
	}
	writeJSON(w, http.StatusOK, out)
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
		return 0, errdefs.Newf(errdefs.ErrInvalid, "invalid-query", "%s %q: use a number from 1 to %d", name, v, max)
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
