package group

import (
	"cmp"
	"slices"
	"time"

	"github.com/goldvm/goldvm/api"
)

// member is one of a group's VMs as the planner sees it.
type member struct {
	ID        string
	Status    api.Status
	Template  string
	CreatedAt time.Time
	Error     *api.Error
}

// want is the desired state the planner works towards.
type want struct {
	Size           int
	MaxSurge       int
	MaxUnavailable int
	Template       string
	// Hold is true while creations wait for a retry after failures.
	Hold bool
}

// plan is what one reconcile pass does.
type plan struct {
	// Create is how many VMs to create from the current template.
	Create int
	// InFlight is how many VMs are being created already.
	InFlight int
	// Delete lists the VMs to destroy, in order.
	Delete []string
	// Failed lists the VMs of the current template whose creation failed
	// (each counts as one failure, then is destroyed: it is in Delete).
	Failed []*member
	// Running is true when a VM of the current template runs (the
	// template works: failures are reset).
	Running bool
}

// planGroup decides one reconcile pass from the group's VMs:
//   - failed and stopped VMs are gone: destroyed (and replaced);
//   - creating, running and suspended VMs are present;
//   - VMs of the current template are created up to Size, never more
//     than MaxSurge creations in flight, none while Hold;
//   - current VMs beyond Size go, oldest first;
//   - VMs of an earlier template go when not running, and when running
//     only as far as the group keeps Size-MaxUnavailable running VMs,
//     oldest first: a template change rolls over new VMs first.
//
// Members whose status is deleting are skipped by the caller.
func planGroup(w want, members []*member) plan {
	var p plan
	members = slices.Clone(members)
	slices.SortStableFunc(members, func(a, b *member) int { return cmp.Or(a.CreatedAt.Compare(b.CreatedAt), cmp.Compare(a.ID, b.ID)) })
	var cur, oldRunning []*member
	inFlight, running := 0, 0
	for _, m := range members {
		switch m.Status {
		case api.StatusError, api.StatusStopped:
			if m.Status == api.StatusError && m.Template == w.Template {
				p.Failed = append(p.Failed, m)
			}
			p.Delete = append(p.Delete, m.ID)
			continue
		case api.StatusCreating:
			inFlight++
		case api.StatusRunning:
			running++
		}
		if m.Template == w.Template {
			cur = append(cur, m)
			if m.Status == api.StatusRunning {
				p.Running = true
			}
		} else if m.Status == api.StatusRunning {
			oldRunning = append(oldRunning, m)
		} else {
			p.Delete = append(p.Delete, m.ID) // old and not running: nothing to wait for
		}
	}
	if n := len(cur) - w.Size; n > 0 {
		for _, m := range cur[:n] {
			p.Delete = append(p.Delete, m.ID)
			if m.Status == api.StatusRunning {
				running--
			}
		}
	} else if n < 0 && !w.Hold {
		p.Create = min(-n, max(w.MaxSurge-inFlight, 0))
	}
	p.InFlight = inFlight
	// Old VMs that may go without the group falling under its floor.
	floor := max(w.Size-w.MaxUnavailable, 0)
	removable := min(len(oldRunning), max(running-floor, 0))
	for _, m := range oldRunning[:removable] {
		p.Delete = append(p.Delete, m.ID)
	}
	return p
}
