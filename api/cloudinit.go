package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"unicode/utf8"
)

// MaxUserDataBytes is the most user_data a create request may carry (64 KiB).
const MaxUserDataBytes = 64 << 10

// UserData is cloud-init user-data (a "#cloud-config" document or a script):
// UTF-8 text of at most MaxUserDataBytes.
type UserData string

// UnmarshalJSON accepts a JSON string that is valid UTF-8 once decoded:
// encoding/json would silently turn invalid bytes and unpaired surrogate
// escapes ("\ud800") into U+FFFD, changing what the guest receives.
func (u *UserData) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if !utf8.Valid(b) {
		return fmt.Errorf("user_data is not valid UTF-8")
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("user_data must be a string")
	}
	// Every U+FFFD in the result must have been in the input, as the
	// character itself or as the escape \ufffd.
	given := bytes.Count(b, []byte("\uFFFD")) + strings.Count(strings.ToLower(string(b)), `\ufffd`)
	if strings.Count(s, "\uFFFD") > given {
		return fmt.Errorf("user_data is not valid UTF-8 (it escapes an unpaired UTF-16 surrogate)")
	}
	if err := CheckUserData(s); err != nil {
		return err
	}
	*u = UserData(s)
	return nil
}

// CheckUserData reports why s cannot be a VM's user_data (too long or not
// UTF-8), or nil.
func CheckUserData(s string) error {
	if len(s) > MaxUserDataBytes {
		return fmt.Errorf("user_data is %d bytes, more than the limit of %d (64 KiB)", len(s), MaxUserDataBytes)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("user_data is not valid UTF-8")
	}
	return nil
}

// Value sources: where discovery learnt a VM's ip_address or guest_os
// (VM.Sources).
const (
	SourceGuestAgent = "guest-agent" // the QEMU guest agent or VMware Tools
	SourceDHCPLease  = "dhcp-lease"  // the lease goldvm's own DHCP server gave the VM's MAC
	SourceReserved   = "reserved"    // the address goldvm reserved on its DHCP server and set in the guest (a VM started from a template)
	SourceNeighbour  = "neighbour"   // the host's neighbour (ARP) entry for the VM's MAC
	SourceUserNet    = "user-net"    // QEMU user-mode networking's fixed guest address, once the forwarded port reaches the guest
	SourceVMX        = "vmx"         // the VM's .vmx (guestOS)
	SourceImage      = "image"       // the gold image
)

// Sources says where discovery learnt a VM's values; an empty field means
// the value is empty or was not discovered.
type Sources struct {
	IPAddress string `json:"ip_address,omitempty"`
	GuestOS   string `json:"guest_os,omitempty"`
}
