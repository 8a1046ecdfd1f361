package hypervisor

import (
	"context"

	"github.com/goldvm/goldvm/api"
)

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

// CapacityReporter is implemented by drivers whose backend has hosts of
// its own to report (LXD: the members of a cluster, or its one server);
// GET /capacity shows their resources beside goldvm's budget.
type CapacityReporter interface {
	// BackendCapacity sums the backend's hosts' resources and the limits
	// of goldvm's instances on them.
	BackendCapacity(ctx context.Context) (api.BackendCapacity, error)
}
