package image

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/goldvm/goldvm/internal/netpolicy"
)

// errRestart means the server can no longer continue the byte stream where
// it broke off (it ignored Range, or the range it sent does not fit): the
// whole fetch must start again with a fresh hash and a fresh temp dir.
var errRestart = errors.New("server cannot resume the download")

// errReconnect makes open connect again at once (a resumed download the
// server cannot continue starts over from byte 0).
var errReconnect = errors.New("reconnect from the beginning")

// refusedError marks a final refusal by the server (a 4xx other than 408
// and 429).
type refusedError struct{ err error }

func (e *refusedError) Error() string { return e.err.Error() }
func (e *refusedError) Unwrap() error { return e.err }

// errStalled is the cause when no byte arrived within the stall timeout.
var errStalled = errors.New("download stalled")

// maxBackoff caps the exponential retry backoff.
const maxBackoff = 30 * time.Second

// resetAfterBytes is how much a connection must deliver before a later
// failure counts as the first one again (so a long download over a flaky
// link keeps going, but a server that drops every connection at once does
// not loop forever).
const resetAfterBytes = 1 << 20

// retryableError marks a failure worth another attempt (network error, 5xx).
type retryableError struct{ err error }

func (e *retryableError) Error() string { return e.err.Error() }
func (e *retryableError) Unwrap() error { return e.err }

// remote is an io.Reader over an HTTP(S) resource that survives dropped
// connections: when the body breaks off it reconnects with
// "Range: bytes=<n>-" (and If-Range with the validator of the first answer)
// and, if the server answers 206 with the matching Content-Range, keeps
// delivering the same byte stream, so the readers above it (hash,
// decompressor, tar) never notice. If the server answers 200 to a ranged
// request the stream cannot continue and Read returns errRestart.
//
// Network errors, stalls and 5xx/408/429 answers are retried with
// exponential backoff; other 4xx answers, redirect loops, redirects to
// anything but http(s) and other client-side errors (a bad certificate, a
// malformed answer) are final (classifyRequestError).
type remote struct {
	ctx         context.Context
	client      *http.Client
	url         string
	display     string // URL without query or credentials, for messages
	log         *slog.Logger
	retries     int
	backoff     time.Duration
	stall       time.Duration
	maxDownload int64
	counters    Counters

	body      io.ReadCloser
	cancel    context.CancelFunc
	timer     *time.Timer
	stalled   atomic.Bool
	offset    int64 // bytes delivered so far
	total     int64 // full size, -1 when unknown
	validator string
	failures  int   // consecutive failed attempts
	connBytes int64 // bytes delivered by the current connection
	requests  int
	mu        sync.Mutex // guards cancel against the stall timer

	// fresh: the offset came from an earlier run (resumeFrom) and no byte
	// has come from the network since, so an answer that does not continue
	// the stream can be taken as a new start from byte 0; restarted then
	// tells so. complete: the server confirmed (416 for the range just
	// past the end) that the earlier run has every byte.
	fresh     bool
	restarted bool
	complete  bool
}

// maxRedirects is how many redirects one request follows (as net/http's
// default policy).
const maxRedirects = 10

// redirectError is a redirect the download does not follow: final.
type redirectError struct{ msg string }

func (e *redirectError) Error() string { return e.msg }

// checkRedirect follows at most maxRedirects redirects, and only to http
// and https URLs (net/http would try a file:// or ftp:// redirect and fail
// with an error that looks like a network error).
func checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= maxRedirects {
		return &redirectError{fmt.Sprintf("stopped after %d redirects (a redirect loop?)", maxRedirects)}
	}
	if req.URL.Scheme != "http" && req.URL.Scheme != "https" {
		return &redirectError{fmt.Sprintf("redirected to a %s URL; only http and https are fetched", quoteScheme(req.URL.Scheme))}
	}
	return nil
}

// quoteScheme quotes a URL scheme for a message, cut short.
func quoteScheme(s string) string {
	if len(s) > 16 {
		s = s[:16] + "…"
	}
	return strconv.Quote(s)
}

// withRedirectPolicy returns a copy of c that applies checkRedirect before
// c's own policy, if any.
func withRedirectPolicy(c *http.Client) *http.Client {
	cc := *c
	own := c.CheckRedirect
	cc.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if err := checkRedirect(req, via); err != nil {
			return err
		}
		if own != nil {
			return own(req, via)
		}
		return nil
	}
	return &cc
}

// classifyRequestError sorts an error of http.Client.Do (the request got no
// answer) into a final refusal and a transient failure worth a retry.
// stalled: the stall timer cut the request; connected: a connection to the
// server was made. Only network errors (a net.Error below the url.Error:
// timeouts, refused or reset connections, DNS failures), a connection
// closed early (also on HTTP/2) and stalls are transient; the network
// policy's refusal, redirect loops, redirects to other schemes,
// certificate errors and malformed answers are final. A failure to
// connect is told without its cause: the message must not tell a closed
// port from a filtered one (the cause goes to the log).
func (r *remote) classifyRequestError(err error, stalled, connected bool) error {
	if errors.Is(err, netpolicy.ErrNotAllowed) {
		return errDownload("the image server's address is not allowed", &refusedError{fmt.Errorf("GET %s: %w", r.display, err)})
	}
	var rerr *redirectError
	if errors.As(err, &rerr) {
		return errDownload("the image server's redirect was not followed", &refusedError{fmt.Errorf("GET %s: %w", r.display, rerr)})
	}
	var dns *net.DNSError
	if !connected && !errors.As(err, &dns) {
		r.log.Warn("cannot connect to the image server", "url", r.display, "stalled", stalled, "err", err)
		return &retryableError{fmt.Errorf("GET %s: cannot connect to %s (closed, filtered or unreachable)", r.display, hostOf(r.url))}
	}
	if stalled {
		return &retryableError{fmt.Errorf("GET %s: no answer for %s: %w", r.display, r.stall, errStalled)}
	}
	inner := err
	var ue *url.Error
	if errors.As(err, &ue) {
		inner = ue.Err
	}
	var ne net.Error
	// HTTP/2's connection-level failures (GOAWAY, a lost connection) have
	// unexported types; they are transient too.
	if errors.As(inner, &ne) || errors.Is(inner, io.EOF) || errors.Is(inner, io.ErrUnexpectedEOF) ||
		errors.Is(inner, syscall.ECONNRESET) || strings.HasPrefix(inner.Error(), "http2: ") {
		return &retryableError{fmt.Errorf("GET %s: %w", r.display, err)}
	}
	return errDownload("the image request failed", &refusedError{fmt.Errorf("GET %s: %w", r.display, err)})
}

// hostOf returns the host:port a URL connects to (without credentials).
func hostOf(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "the server"
	}
	if u.Port() != "" {
		return u.Host
	}
	if u.Scheme == "https" {
		return u.Host + ":443"
	}
	return u.Host + ":80"
}

func newRemote(ctx context.Context, rawURL string, o *Options, log *slog.Logger) *remote {
	return &remote{
		ctx: ctx, client: withRedirectPolicy(o.HTTPClient), url: rawURL, display: displayURL(rawURL), log: log,
		retries: o.Retries, backoff: o.RetryBackoff, stall: o.StallTimeout,
		maxDownload: o.MaxDownloadBytes, total: -1, counters: o.Counters,
	}
}

// resumeFrom makes the remote continue a download that an earlier run
// broke off at offset, under validator and total (-1: unknown).
func (r *remote) resumeFrom(offset int64, validator string, total int64) {
	r.offset, r.validator, r.total, r.fresh = offset, validator, total, true
}

// open connects if there is no connection, retrying as Read does.
func (r *remote) open() error {
	for r.body == nil && !r.complete {
		err := r.connect()
		if err == nil || errors.Is(err, errReconnect) {
			continue
		}
		var re *retryableError
		if !errors.As(err, &re) {
			return err
		}
		if ferr := r.fail(err); ferr != nil {
			return ferr
		}
	}
	return nil
}

// displayURL strips credentials and query from u for logs and messages.
func displayURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "<invalid url>"
	}
	u.User = nil
	u.RawQuery = ""
	u.Fragment = ""
	return u.String()
}

// Read implements io.Reader.
func (r *remote) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if err := r.open(); err != nil {
			return 0, err
		}
		if r.complete {
			return 0, io.EOF
		}
		// The stall clock runs only while waiting for the server, not while
		// the consumer is busy (a slow disk must not look like a stall).
		r.timer.Reset(r.stall)
		n, err := r.body.Read(p)
		r.timer.Stop()
		if n > 0 {
			r.fresh = false
			r.offset += int64(n)
			r.connBytes += int64(n)
			if r.counters != nil {
				r.counters.Downloaded(int64(n))
			}
			if r.maxDownload > 0 && r.offset > r.maxDownload {
				r.closeBody()
				return n, errTooLarge("download exceeds the limit of %d bytes", r.maxDownload)
			}
		}
		if err == nil {
			return n, nil
		}
		if err == io.EOF && (r.total < 0 || r.offset >= r.total) {
			r.closeBody()
			return n, io.EOF
		}
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		stalled := r.stalled.Load()
		r.closeBody()
		if cerr := r.ctx.Err(); cerr != nil {
			return n, cerr
		}
		if stalled {
			err = fmt.Errorf("no data for %s: %w", r.stall, errStalled)
		}
		r.log.Warn("image download interrupted; resuming", "url", r.display, "offset", r.offset, "err", err)
		if ferr := r.fail(&retryableError{err}); ferr != nil {
			return n, ferr
		}
		if n > 0 {
			return n, nil
		}
	}
}

// fail records a failed attempt and waits the backoff, or returns the final
// error when the retries are used up or the context ends.
func (r *remote) fail(err error) error {
	if r.connBytes >= resetAfterBytes {
		r.failures = 0
	}
	r.connBytes = 0
	r.failures++
	if r.failures > r.retries {
		return errDownload(fmt.Sprintf("downloading %s failed after %d attempts", r.display, r.failures), err)
	}
	d := r.backoff << (r.failures - 1)
	if d > maxBackoff || (d <= 0 && r.backoff > 0) { // d <= 0: the shift overflowed
		d = maxBackoff
	}
	r.log.Warn("image download attempt failed; retrying", "url", r.display, "attempt", r.failures, "backoff", d, "err", err)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-r.ctx.Done():
		return r.ctx.Err()
	case <-t.C:
		return nil
	}
}

func (r *remote) closeBody() {
	if r.timer != nil {
		r.timer.Stop()
	}
	if r.body != nil {
		r.body.Close()
		r.body = nil
	}
	r.mu.Lock()
	if r.cancel != nil {
		r.cancel()
		r.cancel = nil
	}
	r.mu.Unlock()
}

// Close releases the current connection.
func (r *remote) Close() error {
	r.closeBody()
	return nil
}

// connect issues the GET (ranged when resuming) and checks the answer.
func (r *remote) connect() error {
	if err := r.ctx.Err(); err != nil {
		return err
	}
	rctx, cancel := context.WithCancel(r.ctx)
	// connected: the last connection attempt (of this request or of a
	// redirect) reached the server.
	var connected atomic.Bool
	rctx = httptrace.WithClientTrace(rctx, &httptrace.ClientTrace{
		ConnectStart: func(string, string) { connected.Store(false) },
		ConnectDone:  func(_, _ string, err error) { connected.Store(err == nil) },
		GotConn:      func(httptrace.GotConnInfo) { connected.Store(true) },
	})
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, r.url, nil)
	if err != nil {
		cancel()
		return errdefs400URL(err)
	}
	if r.offset > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", r.offset))
		if r.validator != "" {
			req.Header.Set("If-Range", r.validator)
		}
	}
	// Identity encoding: the checksum is over the bytes as served.
	req.Header.Set("Accept-Encoding", "identity")
	r.stalled.Store(false)
	r.mu.Lock()
	r.cancel = cancel
	r.mu.Unlock()
	r.timer = time.AfterFunc(r.stall, func() {
		r.stalled.Store(true)
		r.mu.Lock()
		if r.cancel != nil {
			r.cancel()
		}
		r.mu.Unlock()
	})
	r.requests++
	resp, err := r.client.Do(req)
	if err != nil {
		stalled := r.stalled.Load()
		r.closeBody()
		if cerr := r.ctx.Err(); cerr != nil {
			return cerr
		}
		return r.classifyRequestError(err, stalled, connected.Load())
	}
	r.body = resp.Body
	statusErr := fmt.Errorf("GET %s: HTTP %s", r.display, resp.Status)
	switch {
	case resp.StatusCode == http.StatusOK:
		if r.offset > 0 {
			if !r.fresh {
				r.closeBody()
				r.log.Warn("image server ignored Range; restarting download", "url", r.display, "offset", r.offset)
				return errRestart
			}
			// Range ignored or If-Range failed: this answer is the whole
			// resource, a clean start from byte 0.
			r.log.Warn("image server did not resume the earlier download; starting from the beginning",
				"url", r.display, "offset", r.offset)
			r.offset, r.fresh, r.restarted = 0, false, true
		}
		r.total = resp.ContentLength
		r.validator = validatorOf(resp)
	case resp.StatusCode == http.StatusPartialContent:
		start, total, ok := parseContentRange(resp.Header.Get("Content-Range"))
		v := validatorOf(resp)
		if !ok || start != r.offset || (total >= 0 && r.total >= 0 && total != r.total) ||
			(v != "" && r.validator != "" && v != r.validator) {
			r.closeBody()
			r.log.Warn("image server sent an unusable range; restarting download", "url", r.display,
				"offset", r.offset, "content_range", resp.Header.Get("Content-Range"), "validator", v)
			return r.startOver()
		}
		if total >= 0 {
			r.total = total
		}
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable && r.offset > 0:
		r.closeBody()
		// "bytes */<our offset>": we already have every byte.
		if tot, ok := strings.CutPrefix(resp.Header.Get("Content-Range"), "bytes */"); ok && tot == strconv.FormatInt(r.offset, 10) {
			r.total, r.complete = r.offset, true
			r.timer.Stop()
			return nil
		}
		return r.startOver()
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusRequestTimeout || resp.StatusCode == http.StatusTooManyRequests:
		r.closeBody()
		return &retryableError{statusErr}
	default:
		r.closeBody()
		return errDownload("image server refused the download", &refusedError{statusErr})
	}
	if r.maxDownload > 0 && r.total > r.maxDownload {
		r.closeBody()
		return errTooLarge("download of %d bytes exceeds the limit of %d bytes", r.total, r.maxDownload)
	}
	r.timer.Stop()
	return nil
}

// startOver handles an answer that does not continue the stream: a fresh
// resume reconnects from byte 0 at once, anything else needs a new fetch.
func (r *remote) startOver() error {
	if !r.fresh {
		return errRestart
	}
	r.offset, r.total, r.validator, r.fresh, r.restarted = 0, -1, "", false, true
	return errReconnect
}

// validatorOf returns what to send in If-Range: a strong ETag, else
// Last-Modified, else "".
func validatorOf(resp *http.Response) string {
	if et := resp.Header.Get("ETag"); et != "" && !strings.HasPrefix(et, "W/") {
		return et
	}
	return resp.Header.Get("Last-Modified")
}

// parseContentRange parses "bytes <start>-<end>/<total|*>". total is -1 for "*".
func parseContentRange(v string) (start, total int64, ok bool) {
	rest, found := strings.CutPrefix(v, "bytes ")
	if !found {
		return 0, 0, false
	}
	rng, tot, found := strings.Cut(rest, "/")
	if !found {
		return 0, 0, false
	}
	s, e, found := strings.Cut(rng, "-")
	if !found {
		return 0, 0, false
	}
	start, err1 := strconv.ParseInt(s, 10, 64)
	end, err2 := strconv.ParseInt(e, 10, 64)
	if err1 != nil || err2 != nil || start < 0 || end < start {
		return 0, 0, false
	}
	total = -1
	if tot != "*" {
		t, err := strconv.ParseInt(tot, 10, 64)
		if err != nil || t <= end {
			return 0, 0, false
		}
		total = t
	}
	return start, total, true
}
