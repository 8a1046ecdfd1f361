package qemu

import "github.com/goldvm/goldvm/internal/hypervisor"

// The contract and every optional capability the QEMU driver has; the
// conformance suite (internal/hypervisor/drivertest) checks the contract.
var (
	_ hypervisor.Driver         = (*Driver)(nil)
	_ hypervisor.Watcher        = (*Driver)(nil)
	_ hypervisor.ConsoleReader  = (*Driver)(nil)
	_ hypervisor.Screenshotter  = (*Driver)(nil)
	_ hypervisor.Reaper         = (*Driver)(nil)
	_ hypervisor.NetworkChecker = (*Driver)(nil)
)
