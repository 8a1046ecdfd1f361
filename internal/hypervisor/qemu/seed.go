package qemu

import (
	"fmt"

	"github.com/goldvm/goldvm/internal/cloudinit"
	"github.com/goldvm/goldvm/internal/hypervisor"
)

// writeSeed writes the VM's cloud-init NoCloud seed (seed.iso in its
// directory) and returns its path, or "" when spec has no cloud-init
// configuration.
func (d *Driver) writeSeed(spec hypervisor.Spec) (string, error) {
	if spec.CloudInit == nil {
		return "", nil
	}
	iso, err := cloudinit.Seed(cloudinit.Config{CloudInit: *spec.CloudInit, MAC: macOf(spec)})
	if err != nil {
		return "", err
	}
	path := p(spec.Dir, fileSeed)
	if err := writeFileAtomic(path, iso); err != nil {
		return "", fmt.Errorf("writing the cloud-init seed: %w", err)
	}
	return path, nil
}
