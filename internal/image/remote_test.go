package image

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/goldvm/goldvm/internal/errdefs"
)

// TestRequestErrorsAreClassified: a request that gets no answer is retried
// only when the cause is transient (network errors, timeouts); a redirect
// loop, a redirect to a file:// or ftp:// URL and a bad certificate fail
// at the first attempt. Before, each was retried as a network error
// (Retries+1 attempts of up to 11 requests each).
func TestRequestErrorsAreClassified(t *testing.T) {
	data := gz(t, buildTar(t, sampleEntries()))
	tests := []struct {
		desc     string
		location string // where /img redirects to; "self": to itself
		wantMsg  string
		wantReqs int64
	}{
		{"redirect loop", "self", "stopped after 10 redirects", maxRedirects},
		{"redirect to file://", "file:///etc/passwd", `redirected to a "file" URL`, 1},
		{"redirect to ftp://", "ftp://127.0.0.1/img", `redirected to a "ftp" URL`, 1},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			var reqs atomic.Int64
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				reqs.Add(1)
				loc := tt.location
				if loc == "self" {
					loc = r.URL.Path
				}
				http.Redirect(w, r, loc, http.StatusFound)
			}))
			defer srv.Close()
			s := newStore(t, testOptions())
			_, err := ensure(t, s, specFor(srv.URL+"/img.tar.gz", data))
			wantCode(t, err, CodeDownloadFailed, errdefs.ErrUnavailable)
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %q does not say %q", err, tt.wantMsg)
			}
			if n := reqs.Load(); n != tt.wantReqs {
				t.Errorf("server saw %d requests, want %d (one attempt, no retry)", n, tt.wantReqs)
			}
			wantEmpty(t, s)
		})
	}

	t.Run("untrusted certificate", func(t *testing.T) {
		var conns atomic.Int64
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			t.Error("a request got through an untrusted TLS connection")
		}))
		srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
			if st == http.StateNew {
				conns.Add(1)
			}
		}
		srv.Config.ErrorLog = discardLog()
		srv.StartTLS()
		defer srv.Close()
		s := newStore(t, testOptions()) // the default client does not trust the test CA
		_, err := ensure(t, s, specFor(srv.URL+"/img.tar.gz", data))
		wantCode(t, err, CodeDownloadFailed, errdefs.ErrUnavailable)
		if !strings.Contains(err.Error(), "certificate") {
			t.Errorf("error %q does not name the certificate", err)
		}
		if n := conns.Load(); n != 1 {
			t.Errorf("%d connections, want 1 (no retry)", n)
		}
	})

	t.Run("5xx is still retried", func(t *testing.T) {
		var reqs atomic.Int64
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			reqs.Add(1)
			http.Error(w, "down", http.StatusBadGateway)
		}))
		defer srv.Close()
		opts := testOptions()
		opts.Retries = 2
		s := newStore(t, opts)
		_, err := ensure(t, s, specFor(srv.URL+"/img.tar.gz", data))
		wantCode(t, err, CodeDownloadFailed, errdefs.ErrUnavailable)
		if n := reqs.Load(); n != 3 {
			t.Errorf("server saw %d requests, want 3 (two retries)", n)
		}
	})
}

// TestClosedAndFilteredPortsLookAlike: an image URL aimed at a loopback
// port where nothing listens (connection refused) and at one that does
// not answer (a listener whose accept queue is full: the kernel drops the
// SYN, as a filtering firewall does) fail with the same message, so image
// URLs cannot be used to map which local ports are open. Connection
// failures are still retried.
func TestClosedAndFilteredPortsLookAlike(t *testing.T) {
	// Closed: a port that was just free.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()

	// Filtered: a socket listening with a backlog of 0 that never accepts,
	// its queue filled by one connection.
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	filtered := (&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: sa.(*syscall.SockaddrInet4).Port}).String()
	for range 2 {
		if c, err := net.DialTimeout("tcp", filtered, 200*time.Millisecond); err == nil {
			defer c.Close()
		}
	}

	data := []byte("never served")
	msgs := map[string]string{}
	for name, addr := range map[string]string{"closed": closed, "filtered": filtered} {
		opts := testOptions()
		opts.Retries = 1
		opts.StallTimeout = 500 * time.Millisecond // ends the hanging connect
		s := newStore(t, opts)
		_, err := ensure(t, s, specFor("http://"+addr+"/disk.img", data))
		wantCode(t, err, CodeDownloadFailed, errdefs.ErrUnavailable)
		if !strings.Contains(err.Error(), "after 2 attempts") {
			t.Errorf("%s: %q, want a retried failure", name, err)
		}
		msgs[name] = strings.ReplaceAll(err.Error(), addr, "ADDR")
	}
	if msgs["closed"] != msgs["filtered"] {
		t.Errorf("closed and filtered ports fail differently:\nclosed:   %s\nfiltered: %s", msgs["closed"], msgs["filtered"])
	}
	for _, word := range []string{"refused", "timeout", "canceled"} {
		if strings.Contains(msgs["closed"], word) {
			t.Errorf("message %q says %q", msgs["closed"], word)
		}
	}
}

// discardLog is a log.Logger that drops what the test server logs (TLS
// handshake errors the test causes on purpose).
func discardLog() *log.Logger { return log.New(io.Discard, "", 0) }

// TestRetriesAsConfigured: Retries -1 (what `--image-retries 0` passes)
// makes one attempt, and 2 three, against a server that keeps answering
// 503; RetryBackoff -1 waits not at all.
func TestRetriesAsConfigured(t *testing.T) {
	for _, tc := range []struct{ retries, attempts int }{{-1, 1}, {2, 3}} {
		var requests atomic.Int32
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			requests.Add(1)
			w.WriteHeader(http.StatusServiceUnavailable)
		}))
		s, err := NewStore(t.TempDir(), Options{Retries: tc.retries, RetryBackoff: -1})
		if err != nil {
			t.Fatal(err)
		}
		_, err = s.Ensure(context.Background(), Spec{URL: srv.URL + "/x.img", Checksum: strings.Repeat("0", 64), ChecksumType: "sha256"}, nil)
		s.Close()
		srv.Close()
		want := fmt.Sprintf("after %d attempts", tc.attempts)
		if err == nil || !strings.Contains(err.Error(), want) || int(requests.Load()) != tc.attempts {
			t.Errorf("Retries %d: %d requests, %v; want %d and %q", tc.retries, requests.Load(), err, tc.attempts, want)
		}
	}
}
