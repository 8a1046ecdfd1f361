package metadata

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/goldvm/goldvm/internal/hypervisor"
)

func get(t *testing.T, base, path string) (int, string) {
	t.Helper()
	resp, err := http.Get(base + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Two VMs, each on a listener of its own: each reads only its own data.
func TestServicePaths(t *testing.T) {
	record := func(_ context.Context, id string) (any, error) { return map[string]string{"id": id}, nil }
	s := New(record, nil)
	defer s.Close()
	serve := func(ci hypervisor.CloudInit) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s.Serve(ci.InstanceID, ci, ln)
		return "http://" + ln.Addr().String()
	}
	a := serve(hypervisor.CloudInit{InstanceID: "vm-a", Hostname: "vm-a", UserData: "#cloud-config\na: 1\n",
		SSHAuthorizedKeys: []string{"ssh-ed25519 AAAA a1", "ssh-rsa BBBB a2"}})
	b := serve(hypervisor.CloudInit{InstanceID: "vm-b", Hostname: "vm-b"})

	for _, tc := range []struct {
		base, path string
		code       int
		body       string
	}{
		{a, "/latest/meta-data/instance-id", 200, "vm-a"},
		{a, "/latest/meta-data/local-hostname", 200, "vm-a"},
		{a, "/latest/meta-data/public-keys", 200, "0=key0\n1=key1\n"},
		{a, "/latest/meta-data/public-keys/1/openssh-key", 200, "ssh-rsa BBBB a2\n"},
		{a, "/latest/meta-data/public-keys/2/openssh-key", 404, ""},
		{a, "/latest/meta-data/public-keys/01/openssh-key", 404, ""},
		{a, "/latest/user-data", 200, "#cloud-config\na: 1\n"},
		{a, "/openstack/latest/user_data", 200, "#cloud-config\na: 1\n"},
		{a, "/goldvm/v1/vm", 200, `{"id":"vm-a"}` + "\n"},
		{b, "/latest/meta-data/instance-id", 200, "vm-b"},
		{b, "/latest/user-data", 404, ""},
		{b, "/goldvm/v1/vm", 200, `{"id":"vm-b"}` + "\n"},
		{b, "/vms", 404, ""},
		{b, "/latest/meta-data/nothing", 404, ""},
	} {
		code, body := get(t, tc.base, tc.path)
		if code != tc.code || (tc.code == 200 && body != tc.body) {
			t.Errorf("%s%s: %d %q, want %d %q", tc.base, tc.path, code, body, tc.code, tc.body)
		}
	}
	_, md := get(t, a, "/openstack/latest/meta_data.json")
	var os struct {
		UUID       string            `json:"uuid"`
		PublicKeys map[string]string `json:"public_keys"`
	}
	if err := json.Unmarshal([]byte(md), &os); err != nil || os.UUID != "vm-a" || os.PublicKeys["key0"] != "ssh-ed25519 AAAA a1" {
		t.Errorf("meta_data.json = %s (%v)", md, err)
	}
	resp, err := http.Post(a+"/latest/api/token", "text/plain", strings.NewReader(""))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("PUT/POST token: %d, want 405", resp.StatusCode)
	}
	s.Stop("vm-b")
	if s.Serving("vm-b") || !s.Serving("vm-a") {
		t.Error("Stop stopped the wrong VM")
	}
	if _, err := http.Get(b + "/"); err == nil {
		t.Error("a stopped VM is still served")
	}
}
