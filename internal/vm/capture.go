package vm

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/hypervisor"
	"github.com/goldvm/goldvm/internal/image"
	"github.com/goldvm/goldvm/internal/machine"
	"github.com/goldvm/goldvm/internal/records"
)

// StopReasonCapture is the stop_reason of a VM stopped for a capture.
const StopReasonCapture = "stopped for capture"

// Capture writes a new gold image from the VM id (POST /vms/{id}/capture):
// its disk flattened onto its gold disk by the driver, and its machine
// definition as the image's machine.json, published by the image store
// under the sha256 of the image's package. A running or suspended VM is
// stopped first when stop is set, and refused with vm-not-stopped
// otherwise; a VM being created, deleted or failed is refused with
// vm-invalid-state. The VM stays stopped.
func (m *Manager) Capture(ctx context.Context, id string, stop bool) (*image.Gold, error) {
	r, unlock, err := m.lockedRecord(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	running := r.Status == api.StatusRunning || r.Status == api.StatusSuspended
	switch {
	case running && !stop:
		return nil, errdefs.Newf(errdefs.ErrConflict, api.CodeVMNotStopped,
			"VM %s is %s: stop it first, or ask the capture to stop it ({\"stop\": true})", id, r.Status)
	case !running && r.Status != api.StatusStopped:
		return nil, errdefs.Newf(errdefs.ErrConflict, api.CodeVMInvalidState, "cannot capture VM %s: it is %s (capture needs a VM that is running, suspended or stopped)", id, r.Status)
	}
	cp, ok := m.cfg.Driver.(hypervisor.Capturer)
	if !ok {
		return nil, notSupported(m.cfg.Driver.Name(), "capture")
	}
	if running {
		if err := m.powerOff(ctx, r, StopReasonCapture); err != nil {
			return nil, err
		}
		if r, err = m.get(id); err != nil {
			return nil, err
		}
	}
	parent := api.ImageParent{VM: id}
	if key, err := image.Key(imageSpec(r)); err == nil {
		parent.Key = key
	}
	spec := m.spec(r)
	g, err := m.cfg.Images.Capture(ctx, parent, func(ctx context.Context, files string) error {
		if _, err := cp.Capture(ctx, spec, files); err != nil {
			return err
		}
		return writeCapturedMachine(files, r.Machine)
	})
	if err != nil {
		return nil, fmt.Errorf("capture vm %s: %w", id, err)
	}
	m.log.Info("vm captured", "vm", id, "image", g.Key)
	return g, nil
}

// writeCapturedMachine writes the VM's merged machine definition as the
// captured image's machine.json, without what is one VM's own (its MAC
// and UUID): every VM made from the image gets its own.
func writeCapturedMachine(files string, hw *api.Machine) error {
	if hw == nil {
		return nil
	}
	out := *hw
	out.Version, out.MAC, out.UUID = api.MachineVersion, "", ""
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return fmt.Errorf("encode machine.json: %w", err)
	}
	if err := os.WriteFile(filepath.Join(files, machine.FileName), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write machine.json: %w", err)
	}
	return nil
}

// ensureImage returns the VM's gold image: fetched (or found) by URL and
// checksum, taken from the store by key, or none (a zero Gold) for a VM
// on an empty disk.
func (m *Manager) ensureImage(ctx context.Context, r *records.Record, progress func(image.Progress)) (*image.Gold, error) {
	switch {
	case r.Image.EmptyDisk != "":
		return &image.Gold{}, nil
	case r.Image.Key != "":
		g, err := m.cfg.Images.Get(r.Image.Key)
		if err != nil {
			return nil, err
		}
		m.cfg.Images.Touch(g.Key)
		return g, nil
	}
	return m.cfg.Images.Ensure(ctx, imageSpec(r), progress)
}

// maxEmptyDisk bounds image.empty_disk (qcow2's own limit is 64 TiB).
const maxEmptyDisk = 64 << 40

// emptyDiskBytes is the size of an image.empty_disk ("20gib").
func emptyDiskBytes(s string) (int64, error) {
	n, err := api.ParseIEC(s)
	switch {
	case err != nil:
		return 0, invalid("image.empty_disk: %v", err)
	case n < 1<<20:
		return 0, invalid("image.empty_disk %q is less than 1 MiB", s)
	case n > maxEmptyDisk:
		return 0, invalid("image.empty_disk %q is more than 64 TiB", s)
	}
	return n, nil
}

// validateCreateImage checks a create request's image: by URL and
// checksum (ValidateImage), by key alone, or an empty disk alone (which
// needs cdroms or boot to install from).
func validateCreateImage(req api.CreateVMRequest) (api.Image, error) {
	img := req.Image
	switch {
	case img.EmptyDisk != "":
		if img.URL != "" || img.Checksum != "" || img.ChecksumType != "" || img.Key != "" {
			return img, invalid("image.empty_disk is given alone: no url, checksum or key with it")
		}
		if _, err := emptyDiskBytes(img.EmptyDisk); err != nil {
			return img, err
		}
		if len(req.CDROMs) == 0 && req.Boot == nil {
			return img, invalid("image.empty_disk needs cdroms (or boot) to install from")
		}
		return api.Image{EmptyDisk: strings.TrimSpace(img.EmptyDisk)}, nil
	case img.Key != "":
		if img.URL != "" {
			return img, invalid("image.key names an image on this host: give it without image.url")
		}
		kind, sum, ok := strings.Cut(strings.ToLower(strings.TrimSpace(img.Key)), "-")
		if !ok || (img.Checksum != "" && !strings.EqualFold(img.Checksum, sum)) || (img.ChecksumType != "" && !strings.EqualFold(img.ChecksumType, kind)) {
			return img, invalid("image.key %q is not a key of GET /images (\"sha256-<hex>\") or disagrees with image.checksum", truncate(img.Key, 140))
		}
		if _, err := image.Key(image.Spec{Checksum: sum, ChecksumType: kind}); err != nil {
			_, msg := errdefs.CodeOf(err)
			return img, invalid("image.key %q: %s", truncate(img.Key, 140), msg)
		}
		return api.Image{Key: kind + "-" + sum, Checksum: sum, ChecksumType: kind}, nil
	}
	return ValidateImage(img)
}
