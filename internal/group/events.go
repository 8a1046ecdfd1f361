package group

import (
	"context"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/records"
)

// publish sends a "group" event (Config.Events; none when nil). view is
// the group after the change, read now when nil.
func (g *Manager) publish(ctx context.Context, e api.Event, view *api.Group) {
	if g.cfg.Events == nil {
		return
	}
	if view == nil {
		view, _ = g.Get(context.WithoutCancel(ctx), e.GroupName) // a group deleted meanwhile: no view
	}
	e.Type, e.Group = api.EventGroup, view
	g.cfg.Events.Publish(e)
}

// publishFailures publishes what a change of a group's failure count
// means: "degraded" when it reaches Config.DegradedAfter, "recovered" when
// a degraded group's count starts again.
func (g *Manager) publishFailures(ctx context.Context, before int, after *records.Group) {
	if after == nil {
		return
	}
	was, is := before >= g.cfg.DegradedAfter, after.Failures >= g.cfg.DegradedAfter
	switch {
	case !was && is:
		msg := "creations from the group's template keep failing"
		if after.LastError != nil {
			msg = after.LastError.Code + ": " + after.LastError.Message
		}
		g.publish(ctx, api.Event{Action: api.ActionDegraded, GroupName: after.Name, Message: msg}, nil)
	case was && !is:
		g.publish(ctx, api.Event{Action: api.ActionRecovered, GroupName: after.Name}, nil)
	}
}

// publishReconciled publishes a "reconciled" event when a pass did
// something: created or deleted VMs, or found failed ones.
func (g *Manager) publishReconciled(ctx context.Context, name string, did api.Reconcile) {
	if len(did.Created)+len(did.Deleted)+len(did.Failed) == 0 {
		return
	}
	g.publish(ctx, api.Event{Action: api.ActionReconciled, GroupName: name, Reconcile: &did}, nil)
}

// publishHandedOut publishes that a warm VM of group was handed out.
func (g *Manager) publishHandedOut(ctx context.Context, group string, v *api.VM) {
	g.publish(ctx, api.Event{Action: api.ActionHandedOut, GroupName: group, VMID: v.ID}, nil)
}
