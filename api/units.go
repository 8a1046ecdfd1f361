package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// iecUnits maps the accepted IEC suffixes (lower case) to their size in bytes.
var iecUnits = map[string]int64{
	"b":   1,
	"kib": 1 << 10,
	"mib": 1 << 20,
	"gib": 1 << 30,
	"tib": 1 << 40,
}

// siUnits are decimal suffixes, refused with a message that names the IEC form.
var siUnits = map[string]string{
	"kb": "kib", "mb": "mib", "gb": "gib", "tb": "tib",
	"k": "kib", "m": "mib", "g": "gib", "t": "tib",
}

// ParseIEC parses a size such as "1gib", "1024MiB" or "1048576 kib" into
// bytes. Only IEC binary units are accepted: "1gb" is refused with an error
// that says so, since it is ambiguous (10^9 or 2^30).
func ParseIEC(s string) (int64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	if t == "" {
		return 0, errors.New("empty size")
	}
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9') {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("size %q must start with a whole number", s)
	}
	num, unit := t[:i], strings.TrimSpace(t[i:])
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: number out of range", s)
	}
	if unit == "" {
		return 0, fmt.Errorf("size %q has no unit: use an IEC unit such as kib, mib or gib", s)
	}
	mult, ok := iecUnits[unit]
	if !ok {
		if iec, si := siUnits[unit]; si {
			return 0, fmt.Errorf("size %q uses %q, which is not an IEC unit: write %s%s", s, unit, num, iec)
		}
		return 0, fmt.Errorf("size %q has unknown unit %q: use b, kib, mib, gib or tib", s, unit)
	}
	if n > math.MaxInt64/mult {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return n * mult, nil
}

// Memory is a guest memory size in MiB. In JSON it is either an integer
// (MiB) or an IEC string ("1gib", "1024mib", "1048576kib"); it is always
// written back as an integer number of MiB.
type Memory int64

// UnmarshalJSON accepts an integer MiB or an IEC string that is a whole number of MiB.
func (m *Memory) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		n, err := ParseIEC(s)
		if err != nil {
			return err
		}
		if n%(1<<20) != 0 {
			return fmt.Errorf("memory %q is not a whole number of MiB", s)
		}
		*m = Memory(n >> 20)
		return nil
	}
	var n json.Number
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&n); err != nil {
		return fmt.Errorf("memory must be an integer number of MiB or an IEC string such as \"1gib\"")
	}
	v, err := n.Int64()
	if err != nil {
		return fmt.Errorf("memory %s must be an integer number of MiB", n)
	}
	*m = Memory(v)
	return nil
}

// Duration is a time span. In JSON it is either an integer number of seconds
// or a Go duration string ("90s", "5m"); it is written as a duration string.
type Duration time.Duration

// UnmarshalJSON accepts seconds or a Go duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		v, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("duration %q: use seconds or a form such as \"90s\" or \"5m\"", s)
		}
		*d = Duration(v)
		return nil
	}
	var secs int64
	if err := json.Unmarshal(b, &secs); err != nil {
		return fmt.Errorf("duration must be whole seconds or a string such as \"5m\"")
	}
	if secs > math.MaxInt64/int64(time.Second) || secs < 0 {
		return fmt.Errorf("duration %d seconds is out of range", secs)
	}
	*d = Duration(time.Duration(secs) * time.Second)
	return nil
}

// MarshalJSON writes the duration as a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// CreateVMRequest is the body of POST /vms.
type CreateVMRequest struct {
	CPUs        int    `json:"cpus"`
	Memory      Memory `json:"memory"`
	NetworkType string `json:"network_type"`
	Image       Image  `json:"image"`
	// Headless and LaunchGUI are inverses; give at most one (default headless).
	Headless         *bool    `json:"headless,omitempty"`
	LaunchGUI        *bool    `json:"launch_gui,omitempty"`
	CallbackURL      string   `json:"callback_url,omitempty"`
	ToolsInitTimeout Duration `json:"tools_init_timeout,omitempty"`
}
