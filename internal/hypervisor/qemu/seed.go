package qemu

import (
	"fmt"

	"github.com/goldvm/goldvm/internal/cloudinit"
	"github.com/goldvm/goldvm/internal/hypervisor"
)

// writeSeed writes the VM's cloud-init NoCloud seed (seed.iso in its
// directory) and returns its path, or "" when spec has no cloud-init
// configuration. On user-mode networking its meta-data names the VM's
// metadata service (see serveUserNetMetadata).
func (d *Driver) writeSeed(spec hypervisor.Spec, np netPlan) (string, error) {
	if spec.CloudInit == nil {
		return "", nil
	}
	c := cloudinit.Config{CloudInit: *spec.CloudInit, MAC: macOf(spec)}
	if np.User && d.metadataEnabled(np) {
		c.MetadataURL = userNetMetadataURL(spec)
	}
	iso, err := cloudinit.Seed(c)
	if err != nil {
		return "", err
	}
	path := p(spec.Dir, fileSeed)
	if err := writeFileAtomic(path, iso); err != nil {
		return "", fmt.Errorf("writing the cloud-init seed: %w", err)
	}
	return path, nil
}
