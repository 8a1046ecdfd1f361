package api

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestUserDataUnmarshal(t *testing.T) {
	for _, tc := range []struct {
		desc, in, want string
		wantErr        bool
	}{
		{desc: "cloud-config", in: `"#cloud-config\nruncmd: [ls]"`, want: "#cloud-config\nruncmd: [ls]"},
		{desc: "the replacement character given as itself", in: "\"a \uFFFD b\"", want: "a \uFFFD b"},
		{desc: "the replacement character escaped", in: `"a \ufffd b"`, want: "a \uFFFD b"},
		{desc: "a surrogate pair", in: `"\ud83d\ude00"`, want: "😀"},
		{desc: "exactly 64 KiB", in: `"` + strings.Repeat("y", MaxUserDataBytes) + `"`, want: strings.Repeat("y", MaxUserDataBytes)},
		{desc: "an unpaired surrogate", in: `"\udc00"`, wantErr: true},
		{desc: "invalid UTF-8", in: "\"\xc3\x28\"", wantErr: true},
		{desc: "over 64 KiB", in: `"` + strings.Repeat("y", MaxUserDataBytes+1) + `"`, wantErr: true},
		{desc: "a number", in: `42`, wantErr: true},
	} {
		var u UserData
		err := json.Unmarshal([]byte(tc.in), &u)
		if (err != nil) != tc.wantErr {
			t.Errorf("%s: err = %v, want error %v", tc.desc, err, tc.wantErr)
			continue
		}
		if err != nil && !strings.Contains(err.Error(), "user_data") {
			t.Errorf("%s: error %q does not name user_data", tc.desc, err)
		}
		if !tc.wantErr && string(u) != tc.want {
			t.Errorf("%s: got %q, want %q", tc.desc, u, tc.want)
		}
	}
}
