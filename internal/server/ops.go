package server

import (
	"log/slog"
	"net/http"
	"time"

	"github.com/goldvm/goldvm/internal/events"
)

// opsRoutes adds the operator's routes: the event stream, the OpenAPI
// document and, when configured, the metrics.
func (s *Server) opsRoutes(cfg Config) {
	s.bus = cfg.Events
	if s.bus == nil {
		s.bus = events.New(events.Options{})
	}
	s.streamsDone = make(chan struct{})
	s.mux.HandleFunc("GET /events", s.streamEvents)
	s.mux.HandleFunc("GET /openapi.json", s.openAPI)
	if cfg.Metrics != nil {
		s.metrics = cfg.Metrics
		s.mux.Handle("GET /metrics", cfg.Metrics.Handler())
	}
}

// quietRoutes are logged at debug level only: probes and scrapers call
// them all the time.
var quietRoutes = map[string]bool{"GET /healthz": true, "GET /metrics": true}

// observe logs an answered request (method, route, status, duration, and
// the VM or image it was about) and counts it in the metrics.
func (s *Server) observe(rec *statusRecorder, r *http.Request, start time.Time) {
	d := time.Since(start)
	route := r.Pattern // set by the mux; empty when authentication failed first
	if route == "" {
		_, route = s.mux.Handler(r)
	}
	if route == "/" || route == "" {
		route = "unmatched" // noRoute: one series for every unknown path
	}
	if s.metrics != nil {
		s.metrics.Request(route, r.Method, rec.status, d)
	}
	level := slog.LevelInfo
	if quietRoutes[route] {
		level = slog.LevelDebug
	}
	if !s.log.Enabled(r.Context(), level) {
		return
	}
	attrs := []slog.Attr{slog.String("method", r.Method), slog.String("route", route), slog.String("path", r.URL.Path),
		slog.Int("status", rec.status), slog.Duration("dur", d)}
	if id := r.PathValue("id"); id != "" {
		attrs = append(attrs, slog.String("vm", id))
	} else if loc := rec.Header().Get("Location"); len(loc) > len("/vms/") && loc[:len("/vms/")] == "/vms/" {
		attrs = append(attrs, slog.String("vm", loc[len("/vms/"):]))
	}
	if key := r.PathValue("key"); key != "" {
		attrs = append(attrs, slog.String("image", key))
	}
	s.log.LogAttrs(r.Context(), level, "http", attrs...)
}
