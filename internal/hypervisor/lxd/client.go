package lxd

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
)

// DefaultSocket is where Debian's LXD listens; the snap's socket
// (/var/snap/lxd/common/lxd/unix.socket) is tried when it is missing.
const DefaultSocket = "/var/lib/lxd/unix.socket"

var snapSocket = "/var/snap/lxd/common/lxd/unix.socket"

// client talks to LXD's REST API (https://documentation.ubuntu.com/lxd/en/latest/rest-api/)
// with net/http, over the local unix socket or https with a client
// certificate. Every request is made in one project.
type client struct {
	http    *http.Client
	base    string // "http://lxd" for the unix socket, "https://host:8443" otherwise
	where   string // the socket path or URL, for messages
	project string
}

// response is LXD's envelope of every answer.
type response struct {
	Type       string          `json:"type"` // sync, async, error
	Status     string          `json:"status"`
	StatusCode int             `json:"status_code"`
	Operation  string          `json:"operation"`
	ErrorCode  int             `json:"error_code"`
	Error      string          `json:"error"`
	Metadata   json.RawMessage `json:"metadata"`
}

// operation is the metadata of an async response and of /wait.
type operation struct {
	ID         string         `json:"id"`
	Status     string         `json:"status"`
	StatusCode int            `json:"status_code"`
	Err        string         `json:"err"`
	Resources  map[string]any `json:"resources"`
}

// apiError is an error LXD answered, with its HTTP status.
type apiError struct {
	Status  int
	Message string
}

func (e *apiError) Error() string { return fmt.Sprintf("LXD: %s (%d)", e.Message, e.Status) }

// isStatus reports whether err is an LXD answer with HTTP status code.
func isStatus(err error, code int) bool {
	var e *apiError
	return errors.As(err, &e) && e.Status == code
}

// newClient connects to rawURL: "" (the local socket), "unix:///path", or
// "https://host:8443" with certFile/keyFile (the client certificate LXD
// trusts) and serverCert (the server's certificate, when it is not signed
// by a CA the host trusts).
func newClient(rawURL, certFile, keyFile, serverCert, project string) (*client, error) {
	c := &client{project: project}
	socket := ""
	switch {
	case rawURL == "":
		socket = DefaultSocket
		if _, err := os.Stat(socket); err != nil {
			if _, err := os.Stat(snapSocket); err == nil {
				socket = snapSocket
			}
		}
	case strings.HasPrefix(rawURL, "unix://"):
		socket = strings.TrimPrefix(rawURL, "unix://")
	case strings.HasPrefix(rawURL, "https://"):
		u, err := url.Parse(rawURL)
		if err != nil || u.Host == "" || (u.Path != "" && u.Path != "/") {
			return nil, errdefs.Newf(errdefs.ErrInvalid, api.CodeInvalidLXDSetting, "--lxd-url %q: want https://host:port", rawURL)
		}
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if certFile == "" || keyFile == "" {
			return nil, errdefs.Newf(errdefs.ErrInvalid, api.CodeInvalidLXDSetting, "--lxd-url %s needs a client certificate LXD trusts: --lxd-cert and --lxd-key", rawURL)
		}
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, errdefs.New(errdefs.ErrInvalid, api.CodeInvalidLXDSetting, "--lxd-cert/--lxd-key", err)
		}
		tc.Certificates = []tls.Certificate{cert}
		if serverCert != "" {
			pem, err := os.ReadFile(serverCert)
			if err != nil {
				return nil, errdefs.New(errdefs.ErrInvalid, api.CodeInvalidLXDSetting, "--lxd-server-cert", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, errdefs.Newf(errdefs.ErrInvalid, api.CodeInvalidLXDSetting, "--lxd-server-cert %s holds no PEM certificate", serverCert)
			}
			tc.RootCAs = pool
		}
		c.base = "https://" + u.Host
		c.where = c.base
		c.http = &http.Client{Transport: &http.Transport{TLSClientConfig: tc, Proxy: nil, TLSHandshakeTimeout: 10 * time.Second, ResponseHeaderTimeout: time.Minute}}
		return c, nil
	default:
		return nil, errdefs.Newf(errdefs.ErrInvalid, api.CodeInvalidLXDSetting, "--lxd-url %q: want unix:///path/to/unix.socket or https://host:port", rawURL)
	}
	c.base = "http://lxd"
	c.where = socket
	var d net.Dialer
	c.http = &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", socket)
		},
		ResponseHeaderTimeout: time.Minute,
	}}
	return c, nil
}

// url is the API URL of path (which may carry a query) in the client's
// project.
func (c *client) url(path string) string {
	sep := "?"
	if strings.Contains(path, "?") {
		sep = "&"
	}
	return c.base + path + sep + "project=" + url.QueryEscape(c.project)
}

// raw sends one request; body is JSON-encoded unless it is an io.Reader.
// It returns the answer's envelope, or an error made by classify.
func (c *client) raw(ctx context.Context, method, path string, body any, header http.Header) (*response, error) {
	var rd io.Reader
	ctype := "application/json"
	switch b := body.(type) {
	case nil:
	case io.Reader:
		rd = b
		ctype = "application/octet-stream"
	default:
		buf, err := json.Marshal(b)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(buf)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.url(path), rd)
	if err != nil {
		return nil, err
	}
	if rd != nil {
		req.Header.Set("Content-Type", ctype)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, c.classify(method, path, err)
	}
	defer resp.Body.Close()
	var r response
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&r); err != nil {
		return nil, c.classify(method, path, fmt.Errorf("reading LXD's answer (HTTP %d): %w", resp.StatusCode, err))
	}
	if r.Type == "error" || resp.StatusCode >= 400 {
		code := r.ErrorCode
		if code == 0 {
			code = resp.StatusCode
		}
		return nil, c.classify(method, path, &apiError{Status: code, Message: r.Error})
	}
	return &r, nil
}

// do sends one request and, for an async answer, waits for its operation.
// The sync answer's metadata (or the finished operation's) goes into out
// when out is not nil.
func (c *client) do(ctx context.Context, method, path string, body, out any) error {
	r, err := c.raw(ctx, method, path, body, nil)
	if err != nil {
		return err
	}
	return c.finish(ctx, method, path, r, out)
}

// finish waits for r's operation when r is async and decodes the result.
func (c *client) finish(ctx context.Context, method, path string, r *response, out any) error {
	meta := r.Metadata
	if r.Type == "async" {
		op, err := c.wait(ctx, r.Operation)
		if err != nil {
			return c.classify(method, path, err)
		}
		meta, _ = json.Marshal(op)
	}
	if out == nil || len(meta) == 0 || string(meta) == "null" {
		return nil
	}
	if err := json.Unmarshal(meta, out); err != nil {
		return c.classify(method, path, fmt.Errorf("decoding LXD's answer: %w", err))
	}
	return nil
}

// wait waits for the operation at opPath ("/1.0/operations/<id>") to end,
// in steps of at most 30 seconds so that ctx is honoured, and returns it;
// a failed or cancelled operation is an *apiError.
func (c *client) wait(ctx context.Context, opPath string) (*operation, error) {
	for {
		r, err := c.raw(ctx, http.MethodGet, opPath+"/wait?timeout=30", nil, nil)
		if err != nil {
			return nil, err
		}
		var op operation
		if err := json.Unmarshal(r.Metadata, &op); err != nil {
			return nil, fmt.Errorf("decoding LXD operation: %w", err)
		}
		switch op.Status {
		case "Success":
			return &op, nil
		case "Failure", "Cancelled":
			code := op.StatusCode
			if code < 400 {
				code = http.StatusInternalServerError
			}
			return nil, &apiError{Status: code, Message: op.Err}
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
}

// classify maps every failure of a request to goldvm's error codes, in one
// place: LXD not reachable (no socket, refused, TLS, a timeout of the
// connection) is backend-unavailable; anything LXD answered with an error
// is lxd-failed with LXD's message, its *apiError kept as the cause so
// that callers can tell "no such instance" (isStatus).
func (c *client) classify(method, path string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var ae *apiError
	if errors.As(err, &ae) {
		return errdefs.New(errdefs.ErrUnavailable, api.CodeLXDFailed, fmt.Sprintf("LXD refused %s %s", method, trimQuery(path)), err)
	}
	return errdefs.New(errdefs.ErrUnavailable, api.CodeBackendUnavailable, "LXD at "+c.where+" cannot be reached", err)
}

func trimQuery(p string) string {
	if i := strings.IndexByte(p, '?'); i >= 0 {
		return p[:i]
	}
	return p
}

// text GETs path and returns its body as it is (the console log is not
// JSON), at most limit bytes from its end.
func (c *client) text(ctx context.Context, path string, limit int64) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url(path), nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, c.classify(http.MethodGet, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 400 {
		var r response
		json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&r)
		return nil, c.classify(http.MethodGet, path, &apiError{Status: resp.StatusCode, Message: r.Error})
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, c.classify(http.MethodGet, path, err)
	}
	if int64(len(b)) > limit {
		b = b[int64(len(b))-limit:]
	}
	return b, nil
}
