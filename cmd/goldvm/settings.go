package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/goldvm/goldvm/api"
)

// numSetting is a numeric setting of `goldvm serve`: its flag, its
// environment variable and the smallest value that means something. A
// value given explicitly is used as given, 0 included (the components
// take 0 as "default", so zeroes that mean "none" are passed on as
// negative numbers: see none and noneDur).
type numSetting struct {
	flag, env string
	kind      string // "int", "duration" or "iec"
	min       int64  // smallest value allowed (durations in ns, sizes in bytes)
	why       string // what a value below min would mean, for the message
}

// numSettings lists every numeric setting of serve.
var numSettings = []numSetting{
	{"max-cpus", "GOLDVM_MAX_CPUS", "int", 1, "a VM needs a CPU"},
	{"max-memory", "GOLDVM_MAX_MEMORY", "iec", 1 << 20, "a VM needs memory"},
	{"max-image-size", "GOLDVM_MAX_IMAGE_SIZE", "iec", 1, "no image would fit"},
	{"image-budget", "GOLDVM_IMAGE_BUDGET", "iec", 0, "a size cannot be negative"},
	{"image-max-idle", "GOLDVM_IMAGE_MAX_IDLE", "duration", 0, "0 keeps images however long they are unused"},
	{"image-stall-timeout", "GOLDVM_IMAGE_STALL_TIMEOUT", "duration", 1, "every download would stall at once"},
	{"image-retries", "GOLDVM_IMAGE_RETRIES", "int", 0, "0 means no retry"},
	{"image-retry-backoff", "GOLDVM_IMAGE_RETRY_BACKOFF", "duration", 0, "0 retries at once"},
	{"callback-attempts", "GOLDVM_CALLBACK_ATTEMPTS", "int", 1, "a callback is tried at least once"},
	{"callback-backoff", "GOLDVM_CALLBACK_BACKOFF", "duration", 0, "0 retries at once"},
	{"callback-timeout", "GOLDVM_CALLBACK_TIMEOUT", "duration", 1, "every attempt would time out at once"},
	{"warm-templates", "GOLDVM_WARM_TEMPLATES", "int", 0, "0 makes templates only on request"},
}

// checkSettings refuses a numeric setting that is malformed in its
// environment variable (which the flag's default would otherwise hide) or
// out of range in its flag. An empty size means "none" and is allowed.
func checkSettings(fs *flag.FlagSet) error {
	for _, s := range numSettings {
		if v := os.Getenv(s.env); v != "" {
			if _, err := parseSetting(s.kind, v); err != nil {
				return fmt.Errorf("$%s %q: %w", s.env, v, err)
			}
		}
		f := fs.Lookup(s.flag)
		if f == nil {
			return fmt.Errorf("no flag --%s", s.flag)
		}
		v := f.Value.String()
		if s.kind == "iec" && v == "" {
			continue
		}
		n, err := parseSetting(s.kind, v)
		if err != nil {
			return fmt.Errorf("--%s %q: %w", s.flag, v, err)
		}
		if n < s.min {
			return fmt.Errorf("--%s %s: the smallest value is %s (%s)", s.flag, v, formatSetting(s.kind, s.min), s.why)
		}
	}
	return nil
}

func parseSetting(kind, v string) (int64, error) {
	switch kind {
	case "int":
		n, err := strconv.Atoi(v)
		return int64(n), err
	case "duration":
		d, err := time.ParseDuration(v)
		return int64(d), err
	default:
		return api.ParseIEC(v)
	}
}

func formatSetting(kind string, n int64) string {
	switch kind {
	case "duration":
		return time.Duration(n).String()
	default:
		return strconv.FormatInt(n, 10)
	}
}

// none passes a count whose 0 means "none" to a component that reads 0
// as "default" and a negative count as none.
func none(n int) int {
	if n == 0 {
		return -1
	}
	return n
}

// noneDur is none for durations: 0 (no wait) becomes negative.
func noneDur(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

// budgetBytes is the eviction budget for --image-budget: "" none, and 0
// keeps no unused image (EvictPolicy reads 0 as "no bound").
func budgetBytes(v string) (int64, error) {
	n, err := api.ParseIEC(v)
	if err == nil && n == 0 {
		n = 1
	}
	return n, err
}
