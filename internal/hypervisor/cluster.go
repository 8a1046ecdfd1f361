package hypervisor

import "github.com/goldvm/goldvm/api"

// Placer is implemented by drivers whose backend places VMs on the members
// of a cluster (LXD). The manager refuses a request's placement with code
// placement-not-supported when the driver is not one.
type Placer interface {
	// CheckPlacement returns an error with code placement-not-supported
	// (errdefs.ErrInvalid, HTTP 400) naming the field when the backend
	// cannot honour p (a standalone LXD), nil when it can. It asks the
	// backend nothing: it is called while a request is validated.
	CheckPlacement(p api.Placement) error
}
