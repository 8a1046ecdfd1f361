package cloudinit

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/goldvm/goldvm/internal/hypervisor"
)

func TestSeed(t *testing.T) {
	isoinfo, err := exec.LookPath("isoinfo")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("isoinfo not installed (apt-get install genisoimage)")
		}
		t.Skip("isoinfo not installed (apt-get install genisoimage)")
	}
	c := Config{CloudInit: hypervisor.CloudInit{
		InstanceID: "vm-01", Hostname: "vm-01", UserData: "#!/bin/sh\necho 'a: \"b\"' <x>\n",
		SSHAuthorizedKeys: []string{"ssh-ed25519 AAAA k1", "ssh-rsa BBBB k2: with colon"},
	}, MAC: "52:54:00:12:34:56"}
	iso, err := Seed(c)
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "seed.iso")
	if err := os.WriteFile(img, iso, 0o600); err != nil {
		t.Fatal(err)
	}
	read := func(name string) []byte {
		out, err := exec.Command(isoinfo, "-J", "-i", img, "-x", "/"+name).Output()
		if err != nil {
			t.Fatalf("isoinfo -x %s: %v", name, err)
		}
		return out
	}
	if got := string(read("user-data")); got != c.UserData {
		t.Errorf("user-data = %q, want %q", got, c.UserData)
	}
	var md struct {
		InstanceID string   `json:"instance-id"`
		Hostname   string   `json:"local-hostname"`
		Keys       []string `json:"public-keys"`
	}
	if err := json.Unmarshal(read("meta-data"), &md); err != nil {
		t.Fatal(err)
	}
	if md.InstanceID != "vm-01" || md.Hostname != "vm-01" || !reflect.DeepEqual(md.Keys, c.SSHAuthorizedKeys) {
		t.Errorf("meta-data = %+v", md)
	}
	var nc struct {
		Version   int `json:"version"`
		Ethernets map[string]struct {
			Match map[string]string `json:"match"`
			DHCP4 bool              `json:"dhcp4"`
		} `json:"ethernets"`
	}
	if err := json.Unmarshal(read("network-config"), &nc); err != nil {
		t.Fatal(err)
	}
	if nc.Version != 2 || !nc.Ethernets["nic0"].DHCP4 || nc.Ethernets["nic0"].Match["macaddress"] != c.MAC {
		t.Errorf("network-config = %+v", nc)
	}
	if _, err := Seed(Config{}); err == nil {
		t.Error("a seed without an instance id was made")
	}
}
