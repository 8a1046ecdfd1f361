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

// Validate checks a create request field by field and returns it normalised
// (lower-case checksum, defaults filled in). Errors are errdefs.ErrInvalid
// with code "invalid-request" and a message naming the field.
func Validate(req api.CreateVMRequest, lim Limits) (Validated, error) {
	if lim.MaxCPUs == 0 {
		lim.MaxCPUs = DefaultLimits.MaxCPUs
	}
	if lim.MaxMemoryMiB == 0 {
		lim.MaxMemoryMiB = DefaultLimits.MaxMemoryMiB
	}
	if lim.MinMemoryMiB == 0 {
		lim.MinMemoryMiB = DefaultLimits.MinMemoryMiB
	}
	if lim.MaxToolsInitTimeout == 0 {
		lim.MaxToolsInitTimeout = DefaultLimits.MaxToolsInitTimeout
	}
	var v Validated
	if req.CPUs < 1 {
		return v, invalid("cpus must be at least 1, got %d", req.CPUs)
	}
	if req.CPUs > lim.MaxCPUs {
		return v, invalid("cpus %d is more than this host allows (%d)", req.CPUs, lim.MaxCPUs)
	}
	mem := int64(req.Memory)
	if mem == 0 {
		return v, invalid(`memory is required: an integer number of MiB or an IEC string such as "1gib"`)
	}
	if mem < lim.MinMemoryMiB {
		return v, invalid("memory %d MiB is less than the minimum of %d MiB", mem, lim.MinMemoryMiB)
	}
	if mem > lim.MaxMemoryMiB {
		return v, invalid("memory %d MiB is more than this host allows (%d MiB)", mem, lim.MaxMemoryMiB)
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
	img, err := ValidateImage(req.Image)
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
	tags, err := ValidateTags(req.Tags)
	if err != nil {
		return v, err
	}
	if err := validateCloudInit(req); err != nil {
		return v, err
	}
	return Validated{
		Tags:             tags,
		UserData:         string(req.UserData),
		SSHKeys:          req.SSHAuthorizedKeys,
		CPUs:             req.CPUs,
		MemoryMiB:        mem,
		NetworkType:      nt,
		Image:            img,
		Headless:         headless,
		CallbackURL:      req.CallbackURL,
		ToolsInitTimeout: timeout,
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
