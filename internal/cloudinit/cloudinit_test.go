package cloudinit

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
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

// TestUserData: the keys folded into user-data for LXD, read back as
// cloud-init reads them (a MIME multipart message of base64 parts).
func TestUserData(t *testing.T) {
	script := "#!/bin/sh\necho '--goldvm-user-data-part' <x>\n"
	keys := []string{"ssh-ed25519 AAAA k1", `ssh-rsa BBBB "k2": with colon`}
	if got := UserData(Config{CloudInit: hypervisor.CloudInit{UserData: script}}); got != script {
		t.Errorf("no keys: %q, want the user-data as given", got)
	}
	if got := UserData(Config{}); got != "" {
		t.Errorf("nothing: %q", got)
	}
	keysOnly := UserData(Config{CloudInit: hypervisor.CloudInit{SSHAuthorizedKeys: keys}})
	body, ok := strings.CutPrefix(keysOnly, "#cloud-config\n")
	var doc struct {
		Keys     []string         `json:"ssh_authorized_keys"`
		MergeHow []map[string]any `json:"merge_how"`
	}
	if !ok || json.Unmarshal([]byte(body), &doc) != nil || !reflect.DeepEqual(doc.Keys, keys) {
		t.Fatalf("keys only: %q", keysOnly)
	}

	both := UserData(Config{CloudInit: hypervisor.CloudInit{UserData: script, SSHAuthorizedKeys: keys}})
	msg, err := mail.ReadMessage(strings.NewReader(both))
	if err != nil {
		t.Fatal(err)
	}
	mt, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/mixed" {
		t.Fatalf("Content-Type %q: %v", msg.Header.Get("Content-Type"), err)
	}
	mr := multipart.NewReader(msg.Body, params["boundary"])
	var types, bodies []string
	for {
		p, err := mr.NextRawPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if enc := p.Header.Get("Content-Transfer-Encoding"); enc != "base64" {
			t.Errorf("part encoding %q", enc)
		}
		b, err := io.ReadAll(base64.NewDecoder(base64.StdEncoding, p))
		if err != nil {
			t.Fatal(err)
		}
		ct, _, _ := mime.ParseMediaType(p.Header.Get("Content-Type"))
		types, bodies = append(types, ct), append(bodies, string(b))
	}
	if !reflect.DeepEqual(types, []string{"text/plain", "text/cloud-config"}) || bodies[0] != script {
		t.Fatalf("parts %q %q", types, bodies)
	}
	body, ok = strings.CutPrefix(bodies[1], "#cloud-config\n")
	if !ok || json.Unmarshal([]byte(body), &doc) != nil || !reflect.DeepEqual(doc.Keys, keys) || len(doc.MergeHow) != 2 {
		t.Fatalf("keys part %q", bodies[1])
	}
	if again := UserData(Config{CloudInit: hypervisor.CloudInit{UserData: script, SSHAuthorizedKeys: keys}}); again != both {
		t.Error("two documents of one VM differ")
	}
}
