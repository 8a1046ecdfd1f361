package api

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"
)

func TestParseIEC(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr string
	}{
		{in: "1gib", want: 1 << 30},
		{in: "1GiB", want: 1 << 30},
		{in: "1024mib", want: 1 << 30},
		{in: "1048576kib", want: 1 << 30},
		{in: " 2 gib ", want: 2 << 30},
		{in: "512b", want: 512},
		{in: "1tib", want: 1 << 40},
		{in: "1gb", wantErr: "not an IEC unit: write 1gib"},
		{in: "1mb", wantErr: "not an IEC unit"},
		{in: "1g", wantErr: "not an IEC unit"},
		{in: "1024", wantErr: "no unit"},
		{in: "1.5gib", want: 3 << 29},
		{in: "1.0gib", want: 1 << 30},
		{in: "0.5kib", want: 512},
		{in: "1.25 MiB", want: 5 << 18},
		{in: "0.3b", wantErr: "is 0.3 bytes, not a whole number of bytes"},
		{in: "1.0000001gib", wantErr: "1073741931.3741824 bytes"},
		{in: "1.gib", wantErr: "followed by digits"},
		{in: ".5gib", wantErr: "must start with a number"},
		{in: "1,5gib", wantErr: "unknown unit"},
		{in: "1e3mib", wantErr: "unknown unit"},
		{in: "1.5.1gib", wantErr: "unknown unit"},
		{in: "1.5gb", wantErr: "not an IEC unit: write 1.5gib"},
		{in: "gib", wantErr: "must start with a number"},
		{in: "-1gib", wantErr: "must start with a number"},
		{in: "", wantErr: "empty"},
		{in: "99999999999999999999gib", wantErr: "too large"},
		{in: "9999999999tib", wantErr: "too large"},
		{in: "8388608tib", wantErr: "too large"},              // 2^63 bytes
		{in: "8388607.5tib", want: math.MaxInt64 - 1<<39 + 1}, // 2^63 - 2^39
		{in: strings.Repeat("1", 41) + "b", wantErr: "out of range"},
	}
	for _, tt := range tests {
		got, err := ParseIEC(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseIEC(%q) = %d, %v; want error containing %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseIEC(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
		}
	}
}

func TestMemoryJSON(t *testing.T) {
	tests := []struct {
		in      string
		want    Memory
		wantErr string
	}{
		{in: `512`, want: 512},
		{in: `"1gib"`, want: 1024},
		{in: `"1024mib"`, want: 1024},
		{in: `"1048576kib"`, want: 1024},
		{in: `"1.0gib"`, want: 1024},  // the original service's documented reply
		{in: `"1.0 gib"`, want: 1024}, // what its code wrote (go-humanize's IBytes, lower-cased)
		{in: `"1.5gib"`, want: 1536},
		{in: `"0.5GiB"`, want: 512},
		{in: `"2.25gib"`, want: 2304},
		{in: `"1536.0mib"`, want: 1536},
		{in: `"1gb"`, wantErr: "not an IEC unit"},
		{in: `"1536kib"`, wantErr: `memory "1536kib" is 1.5 MiB, not a whole number of MiB`},
		{in: `"1.001gib"`, wantErr: `memory "1.001gib" is 1025.024 MiB, not a whole number of MiB`},
		{in: `"0.3b"`, wantErr: "not a whole number of MiB"},
		{in: `"1.gib"`, wantErr: "followed by digits"},
		{in: `1.5`, wantErr: "integer number of MiB"},
		{in: `true`, wantErr: "integer number of MiB"},
		{in: `"lots"`, wantErr: "must start with a number"},
	}
	for _, tt := range tests {
		var m Memory
		err := json.Unmarshal([]byte(tt.in), &m)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Memory(%s) = %d, %v; want error containing %q", tt.in, m, err, tt.wantErr)
			}
			continue
		}
		if err != nil || m != tt.want {
			t.Errorf("Memory(%s) = %d, %v; want %d", tt.in, m, err, tt.want)
		}
	}
	b, _ := json.Marshal(struct{ M Memory }{1024})
	if string(b) != `{"M":1024}` {
		t.Errorf("marshal = %s, want integer MiB", b)
	}
}

func TestDurationJSON(t *testing.T) {
	tests := []struct {
		in      string
		want    time.Duration
		wantErr bool
	}{
		{in: `90`, want: 90 * time.Second},
		{in: `"5m"`, want: 5 * time.Minute},
		{in: `"soon"`, wantErr: true},
		{in: `-3`, wantErr: true},
		{in: `1.5`, wantErr: true},
	}
	for _, tt := range tests {
		var d Duration
		err := json.Unmarshal([]byte(tt.in), &d)
		if (err != nil) != tt.wantErr || (!tt.wantErr && time.Duration(d) != tt.want) {
			t.Errorf("Duration(%s) = %v, %v; want %v, err=%v", tt.in, time.Duration(d), err, tt.want, tt.wantErr)
		}
	}
	// Written as integer seconds, which clients with an integer field
	// decode, and read back to the same value.
	for _, tt := range []struct {
		d    time.Duration
		want string
	}{
		{5 * time.Minute, `300`},
		{0, `0`},
		{90 * time.Second, `90`},
		{1500 * time.Millisecond, `2`}, // rounded up, never to 0
	} {
		b, err := json.Marshal(Duration(tt.d))
		if err != nil || string(b) != tt.want {
			t.Errorf("marshal %v = %s, %v; want %s", tt.d, b, err, tt.want)
		}
		var back Duration
		if err := json.Unmarshal(b, &back); err != nil || tt.d%time.Second == 0 && time.Duration(back) != tt.d {
			t.Errorf("%s read back as %v, %v; want %v", b, time.Duration(back), err, tt.d)
		}
	}
}

// FuzzParseIEC checks that the parser never panics and that what it accepts
// is a non-negative multiple of its unit that formats back consistently.
func FuzzParseIEC(f *testing.F) {
	for _, s := range []string{"1gib", "1024mib", "1048576kib", "1gb", "", "0b", "9223372036854775807b", "1 TiB"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseIEC(s)
		if err == nil && n < 0 {
			t.Fatalf("ParseIEC(%q) = %d, negative", s, n)
		}
		var m Memory
		b, _ := json.Marshal(s)
		if json.Unmarshal(b, &m) == nil && (int64(m) < 0 || int64(m) != n>>20) {
			t.Fatalf("Memory(%q) = %d, ParseIEC = %d", s, m, n)
		}
	})
}
