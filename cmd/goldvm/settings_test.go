package main

import (
	"strings"
	"testing"
	"time"
)

// TestServeRefusesOutOfRangeSettings: for every numeric setting, a flag
// below its smallest meaningful value, and a malformed environment value
// (which the flag's default used to hide), stop `goldvm serve` at start
// with the setting's name.
func TestServeRefusesOutOfRangeSettings(t *testing.T) {
	below := map[string]string{
		"max-cpus": "0", "max-memory": "1kib", "max-image-size": "0b", "image-max-idle": "-1s",
		"image-stall-timeout": "0s", "image-retries": "-1", "image-retry-backoff": "-1s",
		"callback-attempts": "0", "callback-backoff": "-1ms", "callback-timeout": "0s", "warm-templates": "-1",
	}
	for _, s := range numSettings {
		t.Run(s.flag, func(t *testing.T) {
			dir := t.TempDir()
			if v, ok := below[s.flag]; ok {
				err := runServe([]string{"--data-dir", dir, "--" + s.flag, v})
				if err == nil || !strings.Contains(err.Error(), "--"+s.flag) {
					t.Errorf("--%s %s: %v, want an error naming it", s.flag, v, err)
				}
			} else if s.min != 0 || s.kind != "iec" {
				t.Errorf("no below-range value to try for --%s", s.flag)
			}
			t.Setenv(s.env, "bogus")
			err := runServe([]string{"--data-dir", dir})
			if err == nil || !strings.Contains(err.Error(), "$"+s.env) {
				t.Errorf("$%s=bogus: %v, want an error naming it", s.env, err)
			}
		})
	}
}

// TestZeroIsUsed: an explicit 0 of a setting whose components read 0 as
// "default" reaches them as "none".
func TestZeroIsUsed(t *testing.T) {
	if none(0) != -1 || none(3) != 3 {
		t.Errorf("none(0) = %d, none(3) = %d", none(0), none(3))
	}
	if noneDur(0) >= 0 || noneDur(time.Second) != time.Second {
		t.Errorf("noneDur(0) = %v", noneDur(0))
	}
	if n, err := budgetBytes("0gib"); err != nil || n != 1 {
		t.Errorf("budget 0gib: %d, %v; want 1 byte (no unused image kept)", n, err)
	}
	if n, err := budgetBytes("1gib"); err != nil || n != 1<<30 {
		t.Errorf("budget 1gib: %d, %v", n, err)
	}
}
