// Package cloudinit makes what a stock cloud image's cloud-init reads about
// its VM: a NoCloud seed volume (an ISO 9660 CD-ROM labelled "cidata" with
// meta-data, user-data and network-config), which every hypervisor backend
// can attach, and the documents of the metadata service (metadata.go).
//
// meta-data and network-config are written as JSON, which is YAML too
// (cloud-init reads both with a YAML parser): no YAML quoting rules to get
// wrong with values a caller chose.
package cloudinit

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/goldvm/goldvm/internal/hypervisor"
	"github.com/goldvm/goldvm/internal/iso9660"
)

// SeedLabel is the volume label cloud-init's NoCloud datasource looks for.
const SeedLabel = "cidata"

// Config is one VM's cloud-init configuration.
type Config struct {
	hypervisor.CloudInit
	// MAC is the VM's NIC address, matched by network-config ("": DHCP on
	// whatever NIC the guest has).
	MAC string
	// MetadataURL, when set, is the VM's metadata service where the guest
	// cannot reach it at 169.254.169.254 (QEMU user-mode networking); it
	// goes into the meta-data as goldvm-metadata-url.
	MetadataURL string
}

// MetaData is NoCloud's meta-data document.
func MetaData(c Config) []byte {
	md := map[string]any{
		"instance-id":    c.InstanceID,
		"local-hostname": c.Hostname,
	}
	if len(c.SSHAuthorizedKeys) > 0 {
		md["public-keys"] = c.SSHAuthorizedKeys
	}
	if c.MetadataURL != "" {
		md["goldvm-metadata-url"] = c.MetadataURL
	}
	return mustJSON(md)
}

// NetworkConfig is a network-config (version 2) that asks for DHCPv4 on the
// VM's NIC: the one with c.MAC, or without a MAC (VMware generates it at
// power-on) every interface named e* (eth0, ens33, enp0s3).
func NetworkConfig(c Config) []byte {
	nic := map[string]any{"dhcp4": true, "match": map[string]string{"name": "e*"}}
	if c.MAC != "" {
		nic["match"] = map[string]string{"macaddress": c.MAC}
	}
	return mustJSON(map[string]any{"version": 2, "ethernets": map[string]any{"nic0": nic}})
}

// Seed returns the NoCloud seed volume of c.
func Seed(c Config) ([]byte, error) {
	if c.InstanceID == "" {
		return nil, fmt.Errorf("cloud-init seed: no instance id")
	}
	var b bytes.Buffer
	err := iso9660.Write(&b, iso9660.Options{VolumeID: SeedLabel}, []iso9660.File{
		{Name: "meta-data", Data: MetaData(c)},
		{Name: "user-data", Data: []byte(c.UserData)},
		{Name: "network-config", Data: NetworkConfig(c)},
	})
	if err != nil {
		return nil, fmt.Errorf("cloud-init seed: %w", err)
	}
	return b.Bytes(), nil
}

func mustJSON(v any) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		panic(err) // maps of strings, bools and string slices always encode
	}
	return b.Bytes()
}

// userDataBoundary separates the parts of UserData's multipart document;
// both parts are base64, whose alphabet has no '-', so it cannot occur in
// them.
const userDataBoundary = "goldvm-user-data-part"

// keysMergeHow makes cloud-init append the keys part's lists to those of
// the caller's cloud-config (ssh_authorized_keys of its own are kept)
// instead of replacing them.
var keysMergeHow = []map[string]any{
	{"name": "list", "settings": []string{"append"}},
	{"name": "dict", "settings": []string{"no_replace", "recurse_list"}},
}

// UserData is the user-data of a datasource whose meta-data goldvm does
// not write (LXD's cloud-init.user-data: LXD makes the meta-data itself),
// so the VM's ssh_authorized_keys, which the NoCloud seed and the metadata
// service give as meta-data public-keys, are folded into it:
//   - no keys: c.UserData as it is ("" for none);
//   - keys and no user-data: a #cloud-config with ssh_authorized_keys;
//   - both: a MIME multipart document (which cloud-init reads part by
//     part) of the caller's user-data, typed by its first line as cloud-init
//     types any text/plain part, then that #cloud-config, whose merge_how
//     appends the keys to any ssh_authorized_keys of the caller's.
//
// Either way cloud-init installs the keys for the image's default user,
// as it does with meta-data public-keys.
func UserData(c Config) string {
	if len(c.SSHAuthorizedKeys) == 0 {
		return c.UserData
	}
	keys := map[string]any{"ssh_authorized_keys": c.SSHAuthorizedKeys}
	if c.UserData == "" {
		return "#cloud-config\n" + string(mustJSON(keys))
	}
	keys["merge_how"] = keysMergeHow
	var b strings.Builder
	b.WriteString("Content-Type: multipart/mixed; boundary=\"" + userDataBoundary + "\"\r\nMIME-Version: 1.0\r\n")
	part := func(ctype, body string) {
		b.WriteString("\r\n--" + userDataBoundary + "\r\n")
		b.WriteString("Content-Type: " + ctype + "; charset=\"utf-8\"\r\nMIME-Version: 1.0\r\nContent-Transfer-Encoding: base64\r\n\r\n")
		enc := base64.StdEncoding.EncodeToString([]byte(body))
		for len(enc) > 76 {
			b.WriteString(enc[:76] + "\r\n")
			enc = enc[76:]
		}
		b.WriteString(enc)
	}
	part("text/plain", c.UserData)
	part("text/cloud-config", "#cloud-config\n"+string(mustJSON(keys)))
	b.WriteString("\r\n--" + userDataBoundary + "--\r\n")
	return b.String()
}
