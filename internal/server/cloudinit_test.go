package server

import (
	"net/http"
	"strings"
	"testing"

	"github.com/goldvm/goldvm/api"
)

// user_data over the limit or not UTF-8, and ssh_authorized_keys that are
// not one line each, get a 400 that names the field.
func TestCreateCloudInitErrors(t *testing.T) {
	s := newTestServer(t, "")
	base := `"cpus":1,"memory":128,"image":{"url":"http://127.0.0.1:1/g.qcow2","checksum_type":"md5","checksum":"00000000000000000000000000000000"}`
	for _, tc := range []struct {
		desc, fields, wantField string
	}{
		{"user_data one byte over 64 KiB", `"user_data":"` + strings.Repeat("x", api.MaxUserDataBytes+1) + `"`, "user_data"},
		{"user_data with a byte that is not UTF-8", "\"user_data\":\"#cloud-config\xff\"", "user_data"},
		{"user_data with an unpaired surrogate", `"user_data":"#cloud-config \ud800"`, "user_data"},
		{"user_data not a string", `"user_data":{"a":1}`, "user_data"},
		{"ssh key with a newline", `"ssh_authorized_keys":["ssh-ed25519 AAAA a\nssh-rsa BBBB b"]`, "ssh_authorized_keys[0]"},
		{"empty ssh key", `"ssh_authorized_keys":["ssh-ed25519 AAAA a",""]`, "ssh_authorized_keys[1]"},
	} {
		code, _, body := do(t, s, http.MethodPost, "/vms", "", "{"+base+","+tc.fields+"}")
		if code != http.StatusBadRequest {
			t.Errorf("%s: status %d, want 400 (%s)", tc.desc, code, body)
			continue
		}
		e := apiError(t, body)
		if e.Code != api.CodeInvalidRequest || !strings.Contains(e.Message, tc.wantField) {
			t.Errorf("%s: got %s %q, want %s naming %s", tc.desc, e.Code, e.Message, api.CodeInvalidRequest, tc.wantField)
		}
	}
}
