package qemu

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/hypervisor"
)

// macOf is the VM's MAC: its machine definition's, or one derived from its id.
func macOf(spec hypervisor.Spec) string {
	if spec.Machine != nil && spec.Machine.MAC != "" {
		return spec.Machine.MAC
	}
	return macFor(spec.ID)
}

// OVMF is where Debian's ovmf package puts the UEFI firmware: the code
// (read-only, shared) and the template of each VM's variable store.
var OVMF = struct{ Code, Vars []string }{
	Code: []string{"/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_CODE.fd"},
	Vars: []string{"/usr/share/OVMF/OVMF_VARS_4M.fd", "/usr/share/OVMF/OVMF_VARS.fd"},
}

// firmware returns the UEFI code and the VM's variable store (copied from
// the template at the first start, then kept: the guest's boot entries
// live there) when hw asks for UEFI; "" for BIOS.
func (d *Driver) firmware(spec hypervisor.Spec, hw api.Machine, cred *syscall.Credential) (code, vars string, err error) {
	if hw.Firmware != "uefi" {
		return "", "", nil
	}
	for i, c := range OVMF.Code {
		if _, err := os.Stat(c); err != nil {
			continue
		}
		vars = p(spec.Dir, fileEFIVars)
		if _, err := os.Stat(vars); os.IsNotExist(err) {
			if err := copyFile(OVMF.Vars[i], vars); err != nil {
				return "", "", fmt.Errorf("UEFI variable store: %w", err)
			}
		}
		if err := giveTo(cred, vars); err != nil {
			return "", "", err
		}
		return c, vars, nil
	}
	return "", "", errdefs.Newf(errdefs.ErrUnavailable, api.CodeHypervisorNotInstalled,
		"the machine asks for UEFI firmware, which is not installed: apt-get install -y --no-install-recommends ovmf")
}

// copyFile copies src to a new file dst (mode 0600), synced.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

// VNCSocket is the path of the VM's VNC server's unix socket (QEMU's
// -vnc unix:…), there while the VM runs.
func (d *Driver) VNCSocket(spec hypervisor.Spec) string { return p(spec.Dir, fileVNC) }

// DialVNC connects to the running VM's VNC server.
func (d *Driver) DialVNC(ctx context.Context, spec hypervisor.Spec) (net.Conn, error) {
	if err := checkSpec(spec); err != nil {
		return nil, err
	}
	if _, ok := d.livePID(spec); !ok {
		return nil, errdefs.New(errdefs.ErrConflict, api.CodeVMNotRunning, "the VM is not running", hypervisor.ErrNotRunning)
	}
	c, err := dialUnix(ctx, d.VNCSocket(spec))
	if err != nil {
		return nil, errdefs.New(errdefs.ErrUnavailable, api.CodeQMPUnavailable, "cannot reach the VM's VNC server", err)
	}
	return c, nil
}
