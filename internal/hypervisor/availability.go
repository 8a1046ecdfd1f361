package hypervisor

import "context"

// AvailabilityChecker is implemented by drivers whose hypervisor is a
// daemon that may be away (LXD). The manager asks it before it accepts a
// create request, so that nothing is made while the hypervisor is down.
type AvailabilityChecker interface {
	// CheckAvailable returns an error with code "backend-unavailable"
	// (errdefs.ErrUnavailable, HTTP 503) when the hypervisor does not
	// answer, nil when it does.
	CheckAvailable(ctx context.Context) error
}
