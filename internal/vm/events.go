package vm

import (
	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/records"
	"maps"
)

// publish sends a VM event to the bus (Config.Events; none when nil).
func (m *Manager) publish(action string, r *records.Record) {
	v := r.VM
	m.cfg.Events.Publish(api.Event{Type: api.EventVM, Action: action, VMID: r.ID, VM: &v})
}

// publishChange publishes what an update changed in a record, if anything
// an observer cares about: status, phase, progress or callback delivery.
func (m *Manager) publishChange(before, after *records.Record) {
	var action string
	switch {
	case before.Status != after.Status:
		switch after.Status {
		case api.StatusRunning:
			action = api.ActionRunning
		case api.StatusError:
			action = api.ActionError
		case api.StatusStopped:
			action = api.ActionStopped
		case api.StatusDeleting:
			action = api.ActionDeleting
		default:
			action = api.ActionUpdated
		}
	case before.Phase != after.Phase:
		action = api.ActionPhase
	case !sameProgress(before.Progress, after.Progress):
		action = api.ActionProgress
	case !sameCallback(before.Callback, after.Callback):
		action = api.ActionCallback
	case !maps.Equal(before.Tags, after.Tags):
		action = api.ActionUpdated
	default:
		return
	}
	m.publish(action, after)
}

func sameProgress(a, b *api.Progress) bool {
	return (a == nil) == (b == nil) && (a == nil || *a == *b)
}

func sameCallback(a, b *api.CallbackDelivery) bool {
	return (a == nil) == (b == nil) && (a == nil || (a.State == b.State && a.Attempts == b.Attempts))
}
