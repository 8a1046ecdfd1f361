package api

import (
	"encoding/json"
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
		{in: "gib", wantErr: "whole number"},
		{in: "-1gib", wantErr: "whole number"},
		{in: "1.5gib", wantErr: "unknown unit"},
		{in: "", wantErr: "empty"},
		{in: "99999999999999999999gib", wantErr: "out of range"},
		{in: "9999999999tib", wantErr: "too large"},
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
		wantErr bool
	}{
		{in: `512`, want: 512},
		{in: `"1gib"`, want: 1024},
		{in: `"1024mib"`, want: 1024},
		{in: `"1048576kib"`, want: 1024},
		{in: `"1gb"`, wantErr: true},
		{in: `"1536kib"`, wantErr: true}, // not a whole MiB
		{in: `1.5`, wantErr: true},
		{in: `true`, wantErr: true},
		{in: `"lots"`, wantErr: true},
	}
	for _, tt := range tests {
		var m Memory
		err := json.Unmarshal([]byte(tt.in), &m)
		if (err != nil) != tt.wantErr || (!tt.wantErr && m != tt.want) {
			t.Errorf("Memory(%s) = %d, %v; want %d, err=%v", tt.in, m, err, tt.want, tt.wantErr)
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
