package vm

import (
	"context"
	"encoding/json"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/hypervisor"
	"github.com/goldvm/goldvm/internal/image"
	"github.com/goldvm/goldvm/internal/records"
)

// Templater is a driver that saves a booted guest as a template and starts
// VMs from it instead of booting them (the QEMU driver).
type Templater interface {
	// MakeTemplateFor makes (or finds) the template of the VM spec's gold
	// image and shape; spec's ID and Dir are not used.
	MakeTemplateFor(ctx context.Context, spec hypervisor.Spec) (api.Template, error)
	// Templates lists the templates of an image ("": of all).
	Templates(imageKey string) ([]api.Template, error)
	// WarmStart starts spec from its template: false when there is none
	// (nothing done); true and an error when the restore failed (the VM
	// is then left as before Clone, to boot cold).
	WarmStart(ctx context.Context, spec hypervisor.Spec) (bool, error)
}

// goldGetter finds a published image by key (*image.Store).
type goldGetter interface {
	Get(key string) (*image.Gold, error)
}

// MakeTemplate makes the template of the image key in the shape req asks
// for (defaults as a create's). It returns when the template is published.
func (m *Manager) MakeTemplate(ctx context.Context, key string, req api.TemplateRequest) (api.Template, error) {
	t, ok := m.cfg.Driver.(Templater)
	if !ok {
		return api.Template{}, errdefs.Newf(errdefs.ErrInvalid, api.CodeNotSupported, "the %s backend has no templates", m.cfg.Driver.Name())
	}
	gg, ok := m.cfg.Images.(goldGetter)
	if !ok {
		return api.Template{}, errdefs.Newf(errdefs.ErrInvalid, api.CodeNotSupported, "this image store cannot look images up by key")
	}
	gold, err := gg.Get(key)
	if err != nil {
		return api.Template{}, err
	}
	v, err := m.ValidateRequest(api.CreateVMRequest{
		CPUs: req.CPUs, Memory: req.Memory, NetworkType: req.NetworkType, Machine: req.Machine,
		Image: api.Image{Key: gold.Key}, // also a captured image, which has no URL
	})
	if err != nil {
		return api.Template{}, err
	}
	hw, err := m.machineFor(v.Machine, gold)
	if err != nil {
		return api.Template{}, err
	}
	m.cfg.Images.Touch(gold.Key)
	return t.MakeTemplateFor(ctx, m.templateSpec(gold, v.Image, v.NetworkType, hw))
}

// templateSpec is the spec of the VM a template of gold is booted from.
func (m *Manager) templateSpec(gold *image.Gold, img api.Image, network string, hw api.Machine) hypervisor.Spec {
	r := &records.Record{VM: api.VM{
		ID: "template", CPUs: hw.CPUs(), MemoryMiB: hw.MemoryMiB, NetworkType: network, Image: img, Headless: true, Machine: &hw,
	}}
	return m.goldSpec(r, gold)
}

// Templates lists the templates of the image key ("": of all images).
func (m *Manager) Templates(key string) ([]api.Template, error) {
	t, ok := m.cfg.Driver.(Templater)
	if !ok {
		return []api.Template{}, nil
	}
	return t.Templates(key)
}

// warmStart starts the VM r from a template when the driver has one for
// its image and shape, and records where it started from. It answers false
// when the VM is to boot cold (no template, or the restore failed: then
// the reason is in the record).
func (m *Manager) warmStart(ctx context.Context, r *records.Record, spec hypervisor.Spec) (bool, error) {
	t, ok := m.cfg.Driver.(Templater)
	if !ok {
		return false, nil
	}
	found, err := t.WarmStart(ctx, spec)
	if !found {
		return false, nil
	}
	if err != nil {
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		m.log.Warn("warm start failed; booting", "vm", r.ID, "err", err)
		_, msg := m.cfg.Redactor.CodeOf(err)
		_, uerr := m.update(r.ID, func(r *records.Record) error { r.WarmStartError = msg; return nil })
		return false, uerr
	}
	_, err = m.update(r.ID, func(r *records.Record) error { r.StartedFrom = api.StartedFromTemplate; return nil })
	return true, err
}

// startedFrom records a cold boot.
func (m *Manager) startedFrom(r *records.Record) {
	m.update(r.ID, func(r *records.Record) error { r.StartedFrom = api.StartedFromBoot; return nil })
}

// noteColdBoot counts a VM that booted cold and became running. When its
// image and hardware have booted cold Config.WarmTemplatesAfter times
// since the daemon started, their template is made in the background, so
// that later creates of that shape start warm. A failed attempt is logged
// and tried again after as many cold boots more.
func (m *Manager) noteColdBoot(r *records.Record) {
	after := m.cfg.WarmTemplatesAfter
	t, ok := m.cfg.Driver.(Templater)
	gg, ok2 := m.cfg.Images.(goldGetter)
	if after <= 0 || !ok || !ok2 || r.StartedFrom != api.StartedFromBoot || r.Machine == nil {
		return
	}
	key, err := image.Key(imageSpec(r))
	if err != nil {
		return
	}
	hw, _ := json.Marshal(r.Machine)
	shape := key + "\x00" + r.NetworkType + "\x00" + string(hw)
	m.mu.Lock()
	m.coldBoots[shape]++
	due := m.coldBoots[shape] >= after
	if due {
		delete(m.coldBoots, shape)
	}
	m.mu.Unlock()
	if !due {
		return
	}
	gold, err := gg.Get(key)
	if err != nil {
		return
	}
	spec := m.templateSpec(gold, r.Image, r.NetworkType, *r.Machine)
	log := m.log.With("image", key, "vm", r.ID)
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		log.Info("making a template: its shape booted cold often enough", "cold_boots", after)
		tpl, err := t.MakeTemplateFor(m.ctx, spec)
		if err != nil {
			log.Warn("automatic template failed; later creates of this shape boot cold", "err", err)
			return
		}
		log.Info("template ready", "template", tpl.Key, "size", tpl.SizeBytes)
	}()
}
