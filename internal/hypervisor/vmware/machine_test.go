package vmware

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/hypervisor/vmware/vmx"
)

// A machine definition reaches the clone's .vmx where it maps: cores per
// socket, an e1000 NIC, UEFI firmware.
func TestMachineToVMX(t *testing.T) {
	e := newEnv(t)
	d := e.driver(t)
	g := makeGold(t, "debian 12 (ci)")
	s := spec(t, g, "vm-hw")
	s.CPUs = 4
	s.Machine = &api.Machine{Threads: 2, Cores: 1, Sockets: 2, Network: "e1000", Firmware: "uefi"}
	must(t, d.Clone(context.Background(), s))
	f, err := vmx.ReadFile(filepath.Join(s.Dir, "vm-hw.vmx"))
	must(t, err)
	for k, v := range map[string]string{"numvcpus": "4", "cpuid.coresPerSocket": "2", "ethernet0.virtualDev": "e1000", "firmware": "efi"} {
		if got, ok := f.Get(k); !ok || got != v {
			t.Errorf("%s = %q, %v; want %q", k, got, ok, v)
		}
	}
	must(t, d.Destroy(context.Background(), s))
}
