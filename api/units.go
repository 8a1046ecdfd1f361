package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
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

// maxSizeDigits bounds the number part of a size, so that a hostile value
// cannot make the exact decimal arithmetic below expensive.
const maxSizeDigits = 40

// parseSize parses a size such as "1gib", "1.5GiB" or "1048576 kib" into an
// exact number of bytes (a fraction when the decimal does not come to whole
// bytes). Only IEC binary units are accepted: "1gb" is refused with an error
// that says so, since it is ambiguous (10^9 or 2^30).
func parseSize(s string) (*big.Rat, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	if t == "" {
		return nil, errors.New("empty size")
	}
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9') {
		i++
	}
	if i == 0 {
		return nil, fmt.Errorf("size %q must start with a number such as 1 or 1.5", s)
	}
	if i < len(t) && t[i] == '.' {
		j := i + 1
		for j < len(t) && (t[j] >= '0' && t[j] <= '9') {
			j++
		}
		if j == i+1 {
			return nil, fmt.Errorf("size %q: a decimal point must be followed by digits", s)
		}
		i = j
	}
	num, unit := t[:i], strings.TrimSpace(t[i:])
	if len(num) > maxSizeDigits {
		return nil, fmt.Errorf("size %q: number out of range", s)
	}
	if unit == "" {
		return nil, fmt.Errorf("size %q has no unit: use an IEC unit such as kib, mib or gib", s)
	}
	mult, ok := iecUnits[unit]
	if !ok {
		if iec, si := siUnits[unit]; si {
			return nil, fmt.Errorf("size %q uses %q, which is not an IEC unit: write %s%s", s, unit, num, iec)
		}
		return nil, fmt.Errorf("size %q has unknown unit %q: use b, kib, mib, gib or tib", s, unit)
	}
	r, ok := new(big.Rat).SetString(num)
	if !ok {
		return nil, fmt.Errorf("size %q: %q is not a number", s, num)
	}
	r.Mul(r, new(big.Rat).SetInt64(mult))
	if r.Cmp(new(big.Rat).SetInt64(math.MaxInt64)) > 0 {
		return nil, fmt.Errorf("size %q is too large", s)
	}
	return r, nil
}

// ParseIEC parses a size such as "1gib", "1024MiB", "1.5gib" or
// "1048576 kib" into bytes. Only IEC binary units are accepted: "1gb" is
// refused with an error that says so, since it is ambiguous (10^9 or 2^30).
// A decimal number is accepted when it comes to a whole number of bytes.
func ParseIEC(s string) (int64, error) {
	r, err := parseSize(s)
	if err != nil {
		return 0, err
	}
	if !r.IsInt() {
		return 0, fmt.Errorf("size %q is %s bytes, not a whole number of bytes", s, exactDecimal(r))
	}
	return r.Num().Int64(), nil
}

// exactDecimal writes r in decimal without rounding (r is a decimal number
// times a power of two, so its expansion ends), or with 12 places if longer.
func exactDecimal(r *big.Rat) string {
	for prec := 1; prec <= 12; prec++ {
		s := r.FloatString(prec)
		if back, ok := new(big.Rat).SetString(s); ok && back.Cmp(r) == 0 {
			return s
		}
	}
	return r.FloatString(12) + "…"
}

// Memory is a guest memory size in MiB. In JSON it is either an integer
// (MiB) or an IEC string ("1gib", "1024mib", "1048576kib", and decimals
// that come to a whole number of MiB such as "1.0gib" or "1.5gib"); it is
// always written back as an integer number of MiB.
type Memory int64

// UnmarshalJSON accepts an integer MiB or an IEC string that is a whole number of MiB.
func (m *Memory) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		r, err := parseSize(s)
		if err != nil {
			return fmt.Errorf("memory: %w", err)
		}
		mib := r.Quo(r, big.NewRat(1<<20, 1))
		if !mib.IsInt() {
			return fmt.Errorf("memory %q is %s MiB, not a whole number of MiB", s, exactDecimal(mib))
		}
		*m = Memory(mib.Num().Int64())
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

// Duration is a time span. In JSON it is read from an integer number of
// seconds or a Go duration string ("90s", "5m") and written as an integer
// number of seconds, as the original service's clients expect.
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

// MarshalJSON writes the duration as an integer number of seconds, rounded
// up (a request's duration is validated to be whole seconds).
func (d Duration) MarshalJSON() ([]byte, error) {
	secs := time.Duration(d) / time.Second
	if time.Duration(d)%time.Second > 0 {
		secs++
	}
	return strconv.AppendInt(nil, int64(secs), 10), nil
}

// CreateVMRequest is the body of POST /vms.
type CreateVMRequest struct {
	CPUs        int    `json:"cpus"`
	Memory      Memory `json:"memory"`
	NetworkType string `json:"network_type"`
	// Image is left out when empty (a create with FromGroup has none).
	Image Image `json:"image,omitzero"`
	// Headless and LaunchGUI are inverses; give at most one (default headless).
	Headless         *bool    `json:"headless,omitempty"`
	LaunchGUI        *bool    `json:"launch_gui,omitempty"`
	CallbackURL      string   `json:"callback_url,omitempty"`
	ToolsInitTimeout Duration `json:"tools_init_timeout,omitempty"`
	// Tags label the VM: at most MaxTags, keys of 1-63 characters from
	// [a-z0-9._/-], values of at most MaxTagValueBytes bytes. Keys that
	// start with "goldvm." are the daemon's own.
	Tags map[string]string `json:"tags,omitempty"`
	// UserData is cloud-init user-data for the guest (at most 64 KiB of
	// UTF-8), served on its NoCloud seed CD-ROM and by the metadata service.
	UserData UserData `json:"user_data,omitempty"`
	// SSHAuthorizedKeys are public keys cloud-init installs for the
	// image's default user.
	SSHAuthorizedKeys []string `json:"ssh_authorized_keys,omitempty"`
	// Machine asks for hardware (every field optional); it wins over the
	// image's machine.json. cpus and memory, when given too, must agree
	// with it.
	Machine *Machine `json:"machine,omitempty"`
	// CDROMs are up to MaxCDROMs CD-ROM images (an installer, a driver
	// disk), fetched and verified like disks but kept as they are.
	CDROMs []Image `json:"cdroms,omitempty"`
	// Boot boots a Linux kernel directly (for building images).
	Boot *Boot `json:"boot,omitempty"`
	// FromGroup takes one of the named group's warm VMs (see
	// GroupSpec.Warm): the group's template gives the VM; the request may
	// add only tags and callback_url. With no warm VM ready the VM is
	// created cold from the template (VM.FromGroup says which).
	FromGroup string `json:"from_group,omitempty"`
	// Peers opts the VM into a set of VMs that may reach each other on
	// their bridge (QEMU nat and hostonly, where VMs are otherwise
	// isolated): VMs created with the same peers name exchange traffic.
	// A name is 1-63 characters from [a-z0-9._/-] (as a tag key); a
	// group's template gives it to all the group's VMs.
	Peers string `json:"peers,omitempty"`
	// Placement pins the VM to a cluster member or group (lxd backend on
	// an LXD cluster only).
	Placement *Placement `json:"placement,omitempty"`
}
