package vmware

import (
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"

	"github.com/goldvm/goldvm/internal/cloudinit"
	"github.com/goldvm/goldvm/internal/hypervisor"
	"github.com/goldvm/goldvm/internal/hypervisor/vmware/vmx"
)

// seedName is the clone's cloud-init seed file in spec.Dir (named after
// the VM, so removeLeftovers takes it away with the clone).
func seedName(spec hypervisor.Spec) string { return spec.ID + "-seed.iso" }

// cdSlots are the places a seed CD-ROM may go, in order of preference:
// VMware's IDE controllers are PIIX4, which every Linux cloud kernel
// drives (Debian's cloud kernel has no AHCI, so SATA comes last).
var cdSlots = []string{"ide1:0", "ide1:1", "ide0:1", "ide0:0", "sata0:1", "sata0:2", "sata0:3"}

// addSeed writes the VM's cloud-init NoCloud seed next to its .vmx and
// attaches it as a CD-ROM in the first free slot; it also sets the
// guestinfo keys cloud-init's VMware datasource reads (metadata and
// userdata, base64). Nothing is done when spec has no cloud-init.
func addSeed(f *vmx.File, spec hypervisor.Spec) error {
	if spec.CloudInit == nil {
		return nil
	}
	c := cloudinit.Config{CloudInit: *spec.CloudInit}
	iso, err := cloudinit.Seed(c)
	if err != nil {
		return err
	}
	slot := ""
	for _, s := range cdSlots {
		if v, _ := f.Get(s + ".present"); !isTrue(v) {
			slot = s
			break
		}
	}
	if slot == "" {
		return fmt.Errorf("no free IDE or SATA slot for the cloud-init seed CD-ROM")
	}
	path := filepath.Join(spec.Dir, seedName(spec))
	if err := os.WriteFile(path, iso, 0o600); err != nil {
		return fmt.Errorf("writing the cloud-init seed: %w", err)
	}
	ctrl := slot[:len(slot)-2]
	b64 := base64.StdEncoding.EncodeToString
	for _, kv := range [][2]string{
		{ctrl + ".present", "TRUE"},
		{slot + ".present", "TRUE"},
		{slot + ".deviceType", "cdrom-image"},
		{slot + ".fileName", seedName(spec)},
		{slot + ".startConnected", "TRUE"},
		{"guestinfo.metadata", b64(cloudinit.MetaData(c))},
		{"guestinfo.metadata.encoding", "base64"},
		{"guestinfo.userdata", b64([]byte(c.UserData))},
		{"guestinfo.userdata.encoding", "base64"},
	} {
		if err := f.Set(kv[0], kv[1]); err != nil {
			return err
		}
	}
	return nil
}

func isTrue(v string) bool { return v == "TRUE" || v == "true" || v == "True" }
