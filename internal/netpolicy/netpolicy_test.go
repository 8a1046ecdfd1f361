package netpolicy

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
)

func TestCheck(t *testing.T) {
	def, err := Parse("", DefaultDeny)
	if err != nil {
		t.Fatal(err)
	}
	lan, err := Parse("10.0.0.0/8, 192.168.1.20", "10.9.0.0/16")
	if err != nil {
		t.Fatal(err)
	}
	// A deny list adds to the default; it never reopens link-local.
	more, err := Parse("", "203.0.113.0/24")
	if err != nil {
		t.Fatal(err)
	}
	// Allowing link-local does not override the default deny either.
	allowMeta, err := Parse("169.254.0.0/16", "")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		p    *Policy
		addr string
		ok   bool
	}{
		{nil, "169.254.169.254", true},
		{def, "169.254.169.254", false},
		{def, "::ffff:169.254.169.254", false}, // v4-mapped is the same address
		{def, "fe80::1", false},
		{def, "127.0.0.1", true},
		{def, "203.0.113.9", true},
		{lan, "10.1.2.3", true},
		{lan, "192.168.1.20", true},
		{lan, "192.168.1.21", false},
		{lan, "10.9.1.1", false}, // denied inside an allowed network
		{lan, "127.0.0.1", false},
		{lan, "169.254.169.254", false},
		{more, "203.0.113.9", false},
		{more, "169.254.169.254", false},
		{more, "fe80::1", false},
		{more, "127.0.0.1", true},
		{allowMeta, "169.254.169.254", false},
	} {
		err := tt.p.Check(netip.MustParseAddr(tt.addr))
		if (err == nil) != tt.ok || (err != nil && !errors.Is(err, ErrNotAllowed)) {
			t.Errorf("Check(%s) = %v, want allowed %v", tt.addr, err, tt.ok)
		}
	}
	for _, bad := range []string{"10.0.0.0/33", "example.com", "10.0.0"} {
		if _, err := Parse(bad, ""); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}

// TestTransport makes real connections to a loopback server through a
// policy's transport: allowed, and refused before any byte is sent.
func TestTransport(t *testing.T) {
	hits := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits++
		io.WriteString(w, "ok")
	}))
	defer srv.Close()

	allow, _ := Parse("127.0.0.0/8", "")
	resp, err := (&http.Client{Transport: allow.Transport()}).Get(srv.URL)
	if err != nil {
		t.Fatalf("allowed: %v", err)
	}
	resp.Body.Close()

	deny, _ := Parse("", "127.0.0.0/8")
	_, err = (&http.Client{Transport: deny.Transport()}).Get(srv.URL)
	if !errors.Is(err, ErrNotAllowed) {
		t.Fatalf("denied: got %v, want ErrNotAllowed", err)
	}
	if hits != 1 {
		t.Errorf("server saw %d requests, want 1 (the allowed one)", hits)
	}
}
