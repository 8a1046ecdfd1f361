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
	"encoding/json"
	"fmt"

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
