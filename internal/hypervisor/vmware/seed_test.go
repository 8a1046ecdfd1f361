package vmware

import (
	"context"
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/goldvm/goldvm/internal/hypervisor"
	"github.com/goldvm/goldvm/internal/hypervisor/vmware/vmx"
)

// The clone gets the cloud-init seed as a CD-ROM in its .vmx (and the
// guestinfo keys), the stand-in vmrun powers it on with the image
// connected, and Destroy removes the seed with the clone.
func TestCloneAttachesSeed(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	g := makeGold(t, "img")
	d := e.driver(t)
	s := spec(t, g, "seeded")
	userData := "#cloud-config\nhostname: seeded\n"
	s.CloudInit = &hypervisor.CloudInit{InstanceID: s.ID, Hostname: s.ID, UserData: userData}
	must(t, d.Clone(ctx, s))
	f, err := vmx.ReadFile(filepath.Join(s.Dir, s.ID+".vmx"))
	must(t, err)
	for k, want := range map[string]string{
		"ide1:0.present":              "TRUE",
		"ide1:0.deviceType":           "cdrom-image",
		"ide1:0.fileName":             s.ID + "-seed.iso",
		"ide1:0.startConnected":       "TRUE",
		"guestinfo.userdata":          base64.StdEncoding.EncodeToString([]byte(userData)),
		"guestinfo.userdata.encoding": "base64",
	} {
		if got, _ := f.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	seed := filepath.Join(s.Dir, s.ID+"-seed.iso")
	if isoinfo, err := exec.LookPath("isoinfo"); err == nil {
		out, err := exec.Command(isoinfo, "-J", "-i", seed, "-x", "/user-data").Output()
		if err != nil || string(out) != userData {
			t.Errorf("the seed's user-data: %q, %v", out, err)
		}
	}
	must(t, d.Start(ctx, s))
	must(t, d.Destroy(ctx, s))
	if _, err := os.Stat(seed); !os.IsNotExist(err) {
		t.Errorf("the seed survived Destroy: %v", err)
	}

	// The stand-in vmrun, as VMware, does not power on a VM whose
	// CD-ROM image is missing.
	s2 := spec(t, g, "seeded2")
	s2.CloudInit = &hypervisor.CloudInit{InstanceID: s2.ID, Hostname: s2.ID}
	must(t, d.Clone(ctx, s2))
	p := filepath.Join(s2.Dir, s2.ID+".vmx")
	must(t, os.Remove(filepath.Join(s2.Dir, s2.ID+"-seed.iso")))
	if err := d.Start(ctx, s2); err == nil {
		t.Error("the stand-in vmrun started a VM whose CD-ROM image is missing")
	}
	f, err = vmx.ReadFile(p)
	must(t, err)
	if v, _ := f.Get("ide1:0.fileName"); v != s2.ID+"-seed.iso" {
		t.Errorf("ide1:0.fileName = %q", v)
	}
}

func TestSeedSlot(t *testing.T) {
	f := vmx.Parse([]byte("ide1:0.present = \"TRUE\"\nide1:0.deviceType = \"cdrom-raw\"\nide1:1.present = \"TRUE\"\n"))
	s := hypervisor.Spec{ID: "x", Dir: t.TempDir(), CloudInit: &hypervisor.CloudInit{InstanceID: "x"}}
	must(t, addSeed(f, s))
	if v, _ := f.Get("ide0:1.fileName"); v != "x-seed.iso" {
		t.Errorf("seed not in the first free slot ide0:1:\n%s", f)
	}
	if v, _ := f.Get("ide1:0.deviceType"); v != "cdrom-raw" {
		t.Errorf("the gold VM's own CD-ROM was changed:\n%s", f)
	}
}
