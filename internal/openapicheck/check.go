// Package openapicheck checks HTTP traffic against api/openapi.yaml: a
// Transport (an http.RoundTripper) validates every request to a watched
// daemon, and its answer, with kin-openapi, and reports what breaks the
// document to whoever watches that daemon (a test). The server's own tests
// and the e2e suite send their daemon traffic through one.
package openapicheck

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"

	"github.com/goldvm/goldvm/api"
)

// Reporter hears of what breaks the document; *testing.T is one.
type Reporter interface {
	Errorf(format string, args ...any)
}

// routeHost stands for every daemon's address: the router matches the
// document's one server, this, and each request is matched under it.
const routeHost = "goldvm.openapicheck"

// Transport validates the traffic to the daemons it watches and passes
// all traffic on to Next. Its methods are safe for concurrent use.
type Transport struct {
	// Next carries the requests; http.DefaultTransport when nil.
	Next http.RoundTripper
	// Token, when set, is sent as the bearer token of requests that
	// carry none.
	Token string
	// Strict treats a request that breaks the document as a mismatch
	// unless its context is marked with Bad. Otherwise (the e2e suite,
	// whose tests send bad input on purpose without saying so) such a
	// request is one only when the daemon accepted it (a 2xx answer): the
	// document refused what the daemon took.
	Strict bool

	doc    *openapi3.T
	router routers.Router

	mu    sync.Mutex
	hosts map[string]Reporter // "host:port" → who hears of mismatches
	seen  map[string][]int    // "GET /vms/{id}" → statuses answered
	n     int                 // requests validated
}

// Load parses and validates api/openapi.yaml.
func Load() (*openapi3.T, error) {
	doc, err := openapi3.NewLoader().LoadFromData(api.OpenAPIYAML)
	if err != nil {
		return nil, fmt.Errorf("load api/openapi.yaml: %w", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		return nil, fmt.Errorf("api/openapi.yaml is not a valid OpenAPI document: %w", err)
	}
	return doc, nil
}

// New returns a Transport checking against api/openapi.yaml, watching no
// daemon yet.
func New(next http.RoundTripper) (*Transport, error) {
	doc, err := Load()
	if err != nil {
		return nil, err
	}
	doc.Servers = openapi3.Servers{{URL: "http://" + routeHost}}
	router, err := legacy.NewRouter(doc)
	if err != nil {
		return nil, fmt.Errorf("router of api/openapi.yaml: %w", err)
	}
	// Screenshots are PNG: kin-openapi reads them as files.
	openapi3filter.RegisterBodyDecoder("image/png", openapi3filter.FileBodyDecoder)
	openapi3filter.RegisterBodyDecoder("application/zstd", openapi3filter.FileBodyDecoder)
	return &Transport{Next: next, doc: doc, router: router, hosts: map[string]Reporter{}, seen: map[string][]int{}}, nil
}

// Doc returns the document checked against.
func (v *Transport) Doc() *openapi3.T { return v.doc }

// Watch validates the traffic to host ("127.0.0.1:port") until the
// returned function is called; r hears of every mismatch. Traffic to a
// host nobody watches passes unchecked.
func (v *Transport) Watch(host string, r Reporter) (unwatch func()) {
	v.mu.Lock()
	v.hosts[host] = r
	v.mu.Unlock()
	return func() {
		v.mu.Lock()
		defer v.mu.Unlock()
		if v.hosts[host] == r {
			delete(v.hosts, host)
		}
	}
}

// Seen returns the operations answered ("GET /vms/{id}") with the
// statuses of their answers.
func (v *Transport) Seen() map[string][]int {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := make(map[string][]int, len(v.seen))
	for op, codes := range v.seen {
		out[op] = append([]int(nil), codes...)
	}
	return out
}

// Summary says how many requests were validated over how many operations.
func (v *Transport) Summary() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	ops := make([]string, 0, len(v.seen))
	for op := range v.seen {
		ops = append(ops, op)
	}
	sort.Strings(ops)
	return fmt.Sprintf("%d requests to %d operations validated against api/openapi.yaml: %s", v.n, len(ops), strings.Join(ops, ", "))
}

type badKey struct{}

// Bad marks ctx's request as breaking the document on purpose (a
// malformed body, a bad query): only its answer is checked.
func Bad(ctx context.Context) context.Context { return context.WithValue(ctx, badKey{}, true) }

// RoundTrip validates req and its answer when req goes to a watched host.
func (v *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	next := v.Next
	if next == nil {
		next = http.DefaultTransport
	}
	v.mu.Lock()
	_, watched := v.hosts[req.URL.Host]
	v.mu.Unlock()
	if !watched {
		return next.RoundTrip(req)
	}
	var body []byte
	if req.Body != nil {
		var err error
		body, err = io.ReadAll(req.Body)
		req.Body.Close()
		if err != nil {
			return nil, err
		}
		req.Body = io.NopCloser(bytes.NewReader(body))
	}
	if v.Token != "" && req.Header.Get("Authorization") == "" {
		req = req.Clone(req.Context())
		req.Body = io.NopCloser(bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+v.Token)
	}
	// The request as the router sees it: under the document's server.
	vreq := req.Clone(req.Context())
	vreq.URL = &url.URL{Scheme: "http", Host: routeHost, Path: req.URL.Path, RawPath: req.URL.RawPath, RawQuery: req.URL.RawQuery}
	vreq.Host = routeHost
	vreq.Body = io.NopCloser(bytes.NewReader(body))
	route, params, routeErr := v.router.FindRoute(vreq)
	var in *openapi3filter.RequestValidationInput
	var reqErr error
	if routeErr == nil {
		in = &openapi3filter.RequestValidationInput{
			Request: vreq, PathParams: params, Route: route,
			Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc, IncludeResponseStatus: true},
		}
		reqErr = openapi3filter.ValidateRequest(req.Context(), in)
	}

	resp, err := next.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	var problems []string
	what := req.Method + " " + req.URL.RequestURI()
	ok2xx := resp.StatusCode >= 200 && resp.StatusCode < 300
	ct, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if routeErr != nil {
		// Not an operation of the document: the dashboard's page and
		// files are left out on purpose; a JSON answer is API.
		if ok2xx && ct == "application/json" {
			problems = append(problems, fmt.Sprintf("%s: answered %d with JSON, but is not in api/openapi.yaml: %v", what, resp.StatusCode, routeErr))
		}
		v.report(req.URL.Host, "", 0, problems)
		return resp, nil
	}
	if reqErr != nil && req.Context().Value(badKey{}) == nil && (v.Strict || ok2xx) {
		problems = append(problems, fmt.Sprintf("%s: the request breaks api/openapi.yaml (answered %d): %v", what, resp.StatusCode, reqErr))
	}

	// JSON answers are read and checked whole; streams (events, VNC),
	// screenshots and console text by status and content type only.
	opts := *in.Options
	var out []byte
	if ct == "application/json" {
		out, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return nil, err
		}
		resp.Body = io.NopCloser(bytes.NewReader(out))
	} else {
		opts.ExcludeResponseBody = true
		if p := v.contentTypeProblem(route, resp); p != "" {
			problems = append(problems, what+": "+p)
		}
	}
	err = openapi3filter.ValidateResponse(req.Context(), &openapi3filter.ResponseValidationInput{
		RequestValidationInput: in, Status: resp.StatusCode, Header: resp.Header,
		Body: io.NopCloser(bytes.NewReader(out)), Options: &opts,
	})
	if err != nil {
		problems = append(problems, fmt.Sprintf("%s: answer %d %s breaks api/openapi.yaml: %v", what, resp.StatusCode, Truncate(out), err))
	}
	v.report(req.URL.Host, route.Method+" "+route.Path, resp.StatusCode, problems)
	return resp, nil
}

// contentTypeProblem checks the content type of an answer whose body is
// not read against the documented ones of its status.
func (v *Transport) contentTypeProblem(route *routers.Route, resp *http.Response) string {
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return "" // a WebSocket: no body of HTTP's
	}
	ref := route.Operation.Responses.Status(resp.StatusCode)
	if ref == nil {
		ref = route.Operation.Responses.Default()
	}
	if ref == nil || ref.Value == nil || len(ref.Value.Content) == 0 {
		return "" // the status itself is checked by ValidateResponse
	}
	ct := resp.Header.Get("Content-Type")
	if ref.Value.Content.Get(ct) == nil {
		var want []string
		for k := range ref.Value.Content {
			want = append(want, k)
		}
		sort.Strings(want)
		return fmt.Sprintf("answer %d has content type %q, api/openapi.yaml says %s", resp.StatusCode, ct, strings.Join(want, " or "))
	}
	return ""
}

// report counts a validated request and tells its host's watcher of the
// problems, under the lock so that a watch ended meanwhile hears nothing.
func (v *Transport) report(host, op string, status int, problems []string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if op != "" {
		v.n++
		v.seen[op] = append(v.seen[op], status)
	}
	r := v.hosts[host]
	if r == nil {
		return
	}
	for _, p := range problems {
		r.Errorf("%s", p)
	}
}

// Truncate shortens a body for a message.
func Truncate(b []byte) string {
	if len(b) > 300 {
		return string(b[:300]) + "…"
	}
	return string(b)
}
