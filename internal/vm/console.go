package vm

import (
	"context"
	"fmt"
	"net"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/hypervisor"
)

// Console returns at most the last limit bytes of the VM's serial console
// (see hypervisor.ConsoleReader). A backend that keeps none answers
// errdefs.ErrInvalid with code "not-supported".
func (m *Manager) Console(ctx context.Context, id string, limit int64) ([]byte, error) {
	cr, ok := m.cfg.Driver.(hypervisor.ConsoleReader)
	if !ok {
		return nil, errdefs.Newf(errdefs.ErrInvalid, "not-supported", "the %s backend keeps no console output", m.cfg.Driver.Name())
	}
	r, err := m.get(id)
	if err != nil {
		return nil, err
	}
	out, err := cr.Console(ctx, m.spec(r), limit)
	if err != nil {
		return nil, fmt.Errorf("console: %w", err)
	}
	return out, nil
}

// Screenshot returns a PNG of the running VM's display (see
// hypervisor.Screenshotter). A backend that cannot take one answers
// errdefs.ErrInvalid with code "not-supported"; a VM that is not running,
// errdefs.ErrConflict with code "vm-not-running".
func (m *Manager) Screenshot(ctx context.Context, id string) ([]byte, error) {
	shot, ok := m.cfg.Driver.(hypervisor.Screenshotter)
	if !ok {
		return nil, errdefs.Newf(errdefs.ErrInvalid, "not-supported", "the %s backend cannot take screenshots", m.cfg.Driver.Name())
	}
	r, err := m.get(id)
	if err != nil {
		return nil, err
	}
	if r.Status != api.StatusRunning {
		return nil, errdefs.Newf(errdefs.ErrConflict, "vm-not-running", "VM %s is %s, not running", r.ID, r.Status)
	}
	png, err := shot.Screenshot(ctx, m.spec(r))
	if err != nil {
		return nil, fmt.Errorf("screenshot: %w", err)
	}
	return png, nil
}

// DialVNC connects to the running VM's VNC server (see hypervisor.VNCer).
// A backend without one answers errdefs.ErrInvalid with code
// "not-supported"; a VM that is not running, errdefs.ErrConflict with
// code "vm-not-running".
func (m *Manager) DialVNC(ctx context.Context, id string) (net.Conn, error) {
	vnc, ok := m.cfg.Driver.(hypervisor.VNCer)
	if !ok {
		return nil, errdefs.Newf(errdefs.ErrInvalid, "not-supported", "the %s backend has no VNC console", m.cfg.Driver.Name())
	}
	r, err := m.get(id)
	if err != nil {
		return nil, err
	}
	if r.Status != api.StatusRunning {
		return nil, errdefs.Newf(errdefs.ErrConflict, "vm-not-running", "VM %s is %s, not running", r.ID, r.Status)
	}
	return vnc.DialVNC(ctx, m.spec(r))
}
