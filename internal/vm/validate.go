package vm

import (
	"encoding/hex"
	"fmt"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/machine"
)

// Limits bound what one create request may ask for. They stand for the
// machine definition of this host (max CPUs, max memory).
type Limits struct {
	MaxCPUs      int
	MaxMemoryMiB int64
	// MinMemoryMiB is the least RAM a guest is given (QEMU guests need ~80 MiB to boot).
	MinMemoryMiB int64
	// MaxToolsInitTimeout caps tools_init_timeout.
	MaxToolsInitTimeout time.Duration
	// DefaultThreads is the threads per core of a topology goldvm makes
	// up for a number of vCPUs (--default-threads; default 1), and the
	// vCPUs of a VM whose request and image do not say.
	DefaultThreads int
	// DefaultMemoryMiB is the memory of a VM whose request and image do
	// not say (--default-memory; default 1 GiB, at most MaxMemoryMiB).
	DefaultMemoryMiB int64
}

// machineLimits are the limits as internal/machine applies them.
func (l Limits) machineLimits() machine.Limits {
	l = l.withDefaults()
	return machine.Limits{MaxCPUs: l.MaxCPUs, MaxMemoryMiB: l.MaxMemoryMiB, DefaultThreads: l.DefaultThreads, DefaultMemoryMiB: l.DefaultMemoryMiB}
}

// withDefaults fills the zero fields from DefaultLimits.
func (l Limits) withDefaults() Limits {
	if l.MaxCPUs == 0 {
		l.MaxCPUs = DefaultLimits.MaxCPUs
	}
	if l.MaxMemoryMiB == 0 {
		l.MaxMemoryMiB = DefaultLimits.MaxMemoryMiB
	}
	if l.MinMemoryMiB == 0 {
		l.MinMemoryMiB = DefaultLimits.MinMemoryMiB
	}
	if l.MaxToolsInitTimeout == 0 {
		l.MaxToolsInitTimeout = DefaultLimits.MaxToolsInitTimeout
	}
	if l.DefaultThreads == 0 {
		l.DefaultThreads = 1
	}
	if l.DefaultMemoryMiB == 0 {
		l.DefaultMemoryMiB = min(1024, l.MaxMemoryMiB)
	}
	return l
}

// DefaultLimits are used for zero fields of Limits.
var DefaultLimits = Limits{MaxCPUs: 64, MaxMemoryMiB: 1 << 20, MinMemoryMiB: 16, MaxToolsInitTimeout: time.Hour}

// DefaultToolsInitTimeout bounds discovery when the request does not say.
const DefaultToolsInitTimeout = 5 * time.Minute

var checksumHexLen = map[string]int{
	api.ChecksumMD5:    32,
	api.ChecksumSHA1:   40,
	api.ChecksumSHA256: 64,
	api.ChecksumSHA512: 128,
}

func invalid(format string, args ...any) error {
	return errdefs.Newf(errdefs.ErrInvalid, api.CodeInvalidRequest, format, args...)
}

// Validated is a create request after validation, with defaults applied.
type Validated struct {
	CPUs             int
	MemoryMiB        int64
	NetworkType      string
	Image            api.Image
	Headless         bool
	CallbackURL      string
	ToolsInitTimeout time.Duration
	Tags             map[string]string
	UserData         string
	SSHKeys          []string
	// Machine is the hardware the request asks for (its machine object,
	// cpus as a topology and memory); the image's definition and the
	// host's defaults fill the rest at creation.
	Machine api.Machine
	// CDROMs and Boot are the boot media, normalised.
	CDROMs []api.Image
	Boot   *api.Boot
	// Peers names the set of VMs the VM may reach ("" for none).
	Peers string
	// Placement is the request's placement (nil: the backend's choice).
	Placement *api.Placement
}

// MaxSSHKeys bounds ssh_authorized_keys; maxSSHKeyBytes bounds one key.
const (
	MaxSSHKeys     = 100
	maxSSHKeyBytes = 16 << 10
)

// validateCloudInit checks user_data and ssh_authorized_keys.
func validateCloudInit(req api.CreateVMRequest) error {
	if err := api.CheckUserData(string(req.UserData)); err != nil {
		return invalid("%v", err)
	}
	if len(req.SSHAuthorizedKeys) > MaxSSHKeys {
		return invalid("ssh_authorized_keys has %d keys, more than the limit of %d", len(req.SSHAuthorizedKeys), MaxSSHKeys)
	}
	for i, k := range req.SSHAuthorizedKeys {
		switch {
		case strings.TrimSpace(k) == "":
			return invalid("ssh_authorized_keys[%d] is empty", i)
		case len(k) > maxSSHKeyBytes:
			return invalid("ssh_authorized_keys[%d] is longer than %d bytes", i, maxSSHKeyBytes)
		case strings.ContainsAny(k, "\r\n\x00") || !utf8.ValidString(k):
			return invalid("ssh_authorized_keys[%d] must be one line of UTF-8 text (an authorized_keys line)", i)
		}
	}
	return nil
}

// validateMedia checks the request's CD-ROMs and kernel boot.
func validateMedia(req api.CreateVMRequest) ([]api.Image, *api.Boot, error) {
	media := func(name string, img api.Image) (api.Image, error) {
		out, err := ValidateImage(img)
		if err != nil {
			_, msg := errdefs.CodeOf(err)
			return out, invalid("%s: %s", name, strings.Replace(msg, "image.", "", 1))
		}
		return out, nil
	}
	if len(req.CDROMs) > api.MaxCDROMs {
		return nil, nil, invalid("cdroms: %d given, at most %d", len(req.CDROMs), api.MaxCDROMs)
	}
	var cdroms []api.Image
	for i, c := range req.CDROMs {
		c, err := media(fmt.Sprintf("cdroms[%d]", i), c)
		if err != nil {
			return nil, nil, err
		}
		cdroms = append(cdroms, c)
	}
	if req.Boot == nil {
		return cdroms, nil, nil
	}
	b := *req.Boot
	var err error
	if b.Kernel, err = media("boot.kernel", b.Kernel); err != nil {
		return nil, nil, err
	}
	if b.Initrd != nil {
		i, err := media("boot.initrd", *b.Initrd)
		if err != nil {
			return nil, nil, err
		}
		b.Initrd = &i
	}
	if len(b.Append) > 4096 || strings.ContainsAny(b.Append, "\x00\n\r") {
		return nil, nil, invalid("boot.append must be one line of at most 4096 bytes")
	}
	return cdroms, &b, nil
}

// requestMachine is the hardware a request asks for: its machine object
// with cpus and memory folded in (they must agree when both are given).
func requestMachine(req api.CreateVMRequest, lim Limits) (api.Machine, error) {
	var hw api.Machine
	if req.Machine != nil {
		hw = *req.Machine
		if err := machine.Validate(hw, "machine."); err != nil {
			return hw, err
		}
		if err := machine.CheckMAC(hw.MAC, "machine.mac"); err != nil {
			return hw, err
		}
		hw.Version = 0
	}
	if n := hw.CPUs(); hw.Threads != 0 || hw.Cores != 0 || hw.Sockets != 0 {
		hw.Threads, hw.Cores, hw.Sockets = max(hw.Threads, 1), max(hw.Cores, 1), max(hw.Sockets, 1)
		n = hw.CPUs()
		if req.CPUs != 0 && req.CPUs != n {
			return hw, invalid("cpus %d and the machine's topology (threads %d × cores %d × sockets %d = %d) disagree; give one of them",
				req.CPUs, hw.Threads, hw.Cores, hw.Sockets, n)
		}
		if n > lim.MaxCPUs {
			return hw, invalid("machine: %d vCPUs (threads %d × cores %d × sockets %d) is more than --max-cpus %d", n, hw.Threads, hw.Cores, hw.Sockets, lim.MaxCPUs)
		}
	} else if req.CPUs != 0 {
		hw.Threads, hw.Cores, hw.Sockets = lim.machineLimits().Topology(req.CPUs)
	}
	if mem := int64(req.Memory); mem != 0 {
		if hw.MemoryMiB != 0 && hw.MemoryMiB != mem {
			return hw, invalid("memory %d MiB and machine.memory %d MiB disagree; give one of them", mem, hw.MemoryMiB)
		}
		hw.MemoryMiB = mem
	}
	if hw.MemoryMiB != 0 && hw.MemoryMiB < lim.MinMemoryMiB {
		return hw, invalid("machine.memory %d MiB is less than the minimum of %d MiB", hw.MemoryMiB, lim.MinMemoryMiB)
	}
	if hw.MemoryMiB > lim.MaxMemoryMiB {
		return hw, invalid("machine.memory %d MiB is more than this host allows (--max-memory %d MiB)", hw.MemoryMiB, lim.MaxMemoryMiB)
	}
	return hw, nil
}

// Validate checks a create request field by field and returns it normalised
// (lower-case checksum, defaults filled in). Errors are errdefs.ErrInvalid
// with code "invalid-request" and a message naming the field.
func Validate(req api.CreateVMRequest, lim Limits) (Validated, error) {
	lim = lim.withDefaults()
	var v Validated
	if req.FromGroup != "" {
		// A create from a group goes through the group manager, which
		// validates the group's template instead.
		return v, invalid("from_group %q: not allowed here (a group's template cannot take from another group)", truncate(req.FromGroup, 64))
	}
	if req.CPUs < 0 {
		return v, invalid("cpus must be at least 1, got %d", req.CPUs)
	}
	if req.CPUs > lim.MaxCPUs {
		return v, invalid("cpus %d is more than this host allows (--max-cpus %d)", req.CPUs, lim.MaxCPUs)
	}
	mem := int64(req.Memory)
	if mem < 0 {
		return v, invalid(`memory must be an integer number of MiB or an IEC string such as "1gib"`)
	}
	if mem != 0 && mem < lim.MinMemoryMiB {
		return v, invalid("memory %d MiB is less than the minimum of %d MiB", mem, lim.MinMemoryMiB)
	}
	if mem > lim.MaxMemoryMiB {
		return v, invalid("memory %d MiB is more than this host allows (--max-memory %d MiB)", mem, lim.MaxMemoryMiB)
	}
	hw, err := requestMachine(req, lim)
	if err != nil {
		return v, err
	}
	cdroms, boot, err := validateMedia(req)
	if err != nil {
		return v, err
	}
	nt := req.NetworkType
	if nt == "" {
		nt = api.NetworkNAT
	}
	switch nt {
	case api.NetworkNAT, api.NetworkBridged, api.NetworkHostOnly:
	default:
		return v, invalid("network_type %q is not one of nat, bridged, hostonly", req.NetworkType)
	}
	img, err := validateCreateImage(req)
	if err != nil {
		return v, err
	}
	headless := true
	switch {
	case req.Headless != nil && req.LaunchGUI != nil:
		if *req.Headless == *req.LaunchGUI {
			return v, invalid("headless and launch_gui contradict each other; give one of them")
		}
		headless = *req.Headless
	case req.Headless != nil:
		headless = *req.Headless
	case req.LaunchGUI != nil:
		headless = !*req.LaunchGUI
	}
	if req.CallbackURL != "" {
		cu, err := url.Parse(req.CallbackURL)
		if err != nil || (cu.Scheme != "http" && cu.Scheme != "https") || cu.Host == "" {
			return v, invalid("callback_url %q must be an http or https URL", req.CallbackURL)
		}
	}
	timeout := time.Duration(req.ToolsInitTimeout)
	switch {
	case timeout == 0:
		timeout = DefaultToolsInitTimeout
	case timeout < time.Second:
		return v, invalid("tools_init_timeout %s is too short (at least 1s)", timeout)
	case timeout%time.Second != 0:
		// Replies give it in integer seconds, as the original service did.
		return v, invalid("tools_init_timeout %s is not a whole number of seconds", timeout)
	case timeout > lim.MaxToolsInitTimeout:
		return v, invalid("tools_init_timeout %s is more than the maximum %s", timeout, lim.MaxToolsInitTimeout)
	}
	// What the VM gets if its image says nothing; the image may still
	// fill what the request leaves open.
	resolved, err := lim.machineLimits().Resolve(hw)
	if err != nil {
		return v, err
	}
	tags, err := ValidateTags(req.Tags)
	if err != nil {
		return v, err
	}
	if err := validateCloudInit(req); err != nil {
		return v, err
	}
	if req.Peers != "" && !api.ValidTagKey(req.Peers) {
		return v, invalid("peers %q is not a peer set name (1-%d characters from a-z, 0-9, '.', '_', '/', '-')", req.Peers, api.MaxTagKeyLen)
	}
	if p := req.Placement; p != nil {
		if err := p.Check(); err != nil {
			return v, invalid("%v", err)
		}
	}
	return Validated{
		Peers:            req.Peers,
		Tags:             tags,
		UserData:         string(req.UserData),
		SSHKeys:          req.SSHAuthorizedKeys,
		CPUs:             resolved.CPUs(),
		MemoryMiB:        resolved.MemoryMiB,
		Machine:          hw,
		CDROMs:           cdroms,
		Boot:             boot,
		NetworkType:      nt,
		Image:            img,
		Headless:         headless,
		CallbackURL:      req.CallbackURL,
		ToolsInitTimeout: timeout,
		Placement:        req.Placement,
	}, nil
}

// ValidateImage checks an image reference (URL, checksum type, checksum of
// the right hex length) as a create request's image is checked, and returns
// it normalised (lower-case checksum type and checksum).
func ValidateImage(img api.Image) (api.Image, error) {
	orig := img
	if img.URL == "" {
		return img, invalid("image.url is required")
	}
	u, err := url.Parse(img.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return img, invalid("image.url %q must be an http or https URL", img.URL)
	}
	img.ChecksumType = strings.ToLower(img.ChecksumType)
	want, ok := checksumHexLen[img.ChecksumType]
	if !ok {
		return img, invalid("image.checksum_type %q is not one of md5, sha1, sha256, sha512", orig.ChecksumType)
	}
	img.Checksum = strings.ToLower(strings.TrimSpace(img.Checksum))
	if _, err := hex.DecodeString(img.Checksum); err != nil || len(img.Checksum) != want {
		return img, invalid("image.checksum must be %d hex digits for %s, got %q", want, img.ChecksumType, truncate(orig.Checksum, 140))
	}
	return img, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// String summarises a validated request for logs.
func (v Validated) String() string {
	return fmt.Sprintf("%d cpus, %d MiB, %s, %s", v.CPUs, v.MemoryMiB, v.NetworkType, v.Image.URL)
}
