package server

import (
	"errors"
	"strings"
	"testing"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
)

func TestDecodeStrict(t *testing.T) {
	tests := []struct {
		desc     string
		body     string
		wantCode string
		wantMsg  string
	}{
		{desc: "valid", body: `{"cpus": 1, "memory": "1gib"}`},
		{desc: "trailing comma names the position", body: "{\n  \"cpus\": 1,\n  \"memory\": 512,\n}", wantCode: "invalid-json", wantMsg: "line 4, column 1"},
		{desc: "empty", body: ``, wantCode: "invalid-json", wantMsg: "empty"},
		{desc: "truncated", body: `{"cpus": 1`, wantCode: "invalid-json", wantMsg: "ends early"},
		{desc: "two values", body: `{"cpus":1} {"cpus":2}`, wantCode: "invalid-json", wantMsg: "unexpected data"},
		{desc: "unknown field", body: `{"cpu": 1}`, wantCode: "invalid-request", wantMsg: `unknown field "cpu"`},
		{desc: "wrong type", body: `{"cpus": "two"}`, wantCode: "invalid-request", wantMsg: `"cpus" must be int`},
		{desc: "not IEC", body: `{"memory": "1gb"}`, wantCode: "invalid-request", wantMsg: "not an IEC unit"},
		{desc: "array", body: `[]`, wantCode: "invalid-request"},
		// encoding/json takes the last of two equal keys, and matches keys
		// in any case: another parser would read these bodies otherwise.
		{desc: "duplicate key", body: `{"cpus":999,"cpus":1}`, wantCode: "invalid-json", wantMsg: `key "cpus" appears twice`},
		{desc: "duplicate key, escaped", body: `{"cpus":1,"cpu\u0073":2}`, wantCode: "invalid-json", wantMsg: `key "cpus" appears twice`},
		{desc: "duplicate nested key", body: `{"image":{"url":"http://a/x","url":"http://b/x"}}`, wantCode: "invalid-json", wantMsg: `key "url" appears twice`},
		{desc: "duplicate key, position", body: "{\"cpus\":1,\n\"memory\":1,\n\"cpus\":2}", wantCode: "invalid-json", wantMsg: "line 3"},
		{desc: "key in capitals", body: `{"CPUS":1}`, wantCode: "invalid-request", wantMsg: `did you mean "cpus"`},
		{desc: "key in mixed case", body: `{"Memory":"1gib"}`, wantCode: "invalid-request", wantMsg: `unknown field "Memory"`},
		{desc: "both cases", body: `{"cpus":1,"CPUS":999}`, wantCode: "invalid-request", wantMsg: `unknown field "CPUS"`},
		{desc: "nested key in capitals", body: `{"image":{"URL":"http://a/x"}}`, wantCode: "invalid-request", wantMsg: `did you mean "url"`},
		{desc: "long unknown key is cut", body: `{"` + strings.Repeat("k", 5000) + `":1}`, wantCode: "invalid-request", wantMsg: `"… (5000 bytes)`},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			var req api.CreateVMRequest
			err := DecodeStrict([]byte(tt.body), &req)
			if tt.wantCode == "" {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			code, msg := errdefs.CodeOf(err)
			if code != tt.wantCode || !strings.Contains(msg, tt.wantMsg) {
				t.Fatalf("got %s: %s; want %s containing %q", code, msg, tt.wantCode, tt.wantMsg)
			}
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Errorf("%v is not ErrInvalid", err)
			}
		})
	}
}

// TestDecodeStrictImage: the body of POST /images gets the same key checks.
func TestDecodeStrictImage(t *testing.T) {
	for _, tt := range []struct{ body, wantCode string }{
		{`{"url":"http://a/x","checksum":"00","checksum_type":"md5"}`, ""},
		{`{"url":"http://a/x","url":"http://b/x"}`, "invalid-json"},
		{`{"Checksum":"00"}`, "invalid-request"},
		{`{"checksum_TYPE":"md5"}`, "invalid-request"},
	} {
		var img api.Image
		err := DecodeStrict([]byte(tt.body), &img)
		if code, _ := errdefs.CodeOf(err); (err == nil) != (tt.wantCode == "") || (err != nil && code != tt.wantCode) {
			t.Errorf("%s: %v, want %q", tt.body, err, tt.wantCode)
		}
	}
}

// FuzzDecodeCreate feeds arbitrary bodies through the decoder and validator:
// they must never panic, and whatever is accepted must validate consistently.
func FuzzDecodeCreate(f *testing.F) {
	f.Add(`{"cpus":1,"memory":"1gib","image":{"url":"http://127.0.0.1/x","checksum":"00","checksum_type":"md5"}}`)
	f.Add("{\n\"cpus\": 1,\n}")
	f.Add(`{"memory": 99999999999999999999}`)
	f.Add(`{"tools_init_timeout": "1h"}`)
	f.Fuzz(func(t *testing.T, body string) {
		var req api.CreateVMRequest
		err := DecodeStrict([]byte(body), &req)
		if err != nil {
			if code, _ := errdefs.CodeOf(err); code == "internal-error" {
				t.Fatalf("decode error without a code: %v", err)
			}
		}
	})
}
