package api

import "time"

// Event types: the "type" of an Event, and the SSE event name of GET /events.
const (
	EventVM    = "vm"    // a VM's state changed
	EventImage = "image" // a gold image's state changed
	// EventGroup: a group's desired or actual state changed.
	EventGroup = "group"
	// EventCapacity: a VM took, waited for or gave back its share of the
	// host's capacity.
	EventCapacity = "capacity"
	EventReset    = "reset" // the client missed events; read the state again
)

// Actions of "vm" events.
const (
	ActionAccepted = "accepted" // POST /vms took the request
	ActionPhase    = "phase"    // creation moved to another phase
	ActionProgress = "progress" // download progress (at most twice a second per VM)
	ActionRunning  = "running"  // creation finished; the VM has its address
	ActionError    = "error"    // creation failed (vm) or a fetch failed (image)
	ActionStopped  = "stopped"  // the machine ended on its own
	ActionDeleting = "deleting" // DELETE began
	ActionDeleted  = "deleted"  // the VM (or image) is gone
	ActionCallback = "callback" // a callback delivery changed state
	ActionUpdated  = "updated"  // another change of the record
)

// Actions of "image" events (with ActionError and ActionDeleted).
const (
	ActionFetching = "fetching" // a fetch of the image began
	ActionReady    = "ready"    // the image is published
	ActionEvicted  = "evicted"  // the eviction policy removed the image
)

// Actions of "group" events (with ActionUpdated and ActionDeleted).
const (
	ActionCreated    = "created"    // PUT /groups/{name} made the group
	ActionReconciled = "reconciled" // a reconcile pass created or deleted VMs, or found failed ones (Event.Reconcile)
	ActionDegraded   = "degraded"   // creations keep failing (Event.Message, Group.Error)
	ActionRecovered  = "recovered"  // a degraded group's VM ran again
	ActionHandedOut  = "handed_out" // a warm VM of the group was handed out (Event.VMID)
)

// Actions of "capacity" events. Each carries the VM (VMID) and the
// capacity after the change (Event.Capacity, as GET /capacity shows it).
const (
	ActionAdmitted = "admitted" // the VM holds its share
	ActionQueued   = "queued"   // the VM waits for capacity (Event.Position)
	ActionReleased = "released" // the VM gave its share back
	ActionDequeued = "dequeued" // the VM left the queue without its share (timeout, delete, shutdown; Event.Message)
)

// Reconcile is what one reconcile pass of a group did.
type Reconcile struct {
	// Created are the VMs it created (warm ones included).
	Created []string `json:"created,omitempty"`
	// Deleted are the VMs it began to delete.
	Deleted []string `json:"deleted,omitempty"`
	// Failed are the failed VMs it found (failures of the template, unless
	// the template changed meanwhile); they are replaced.
	Failed []string `json:"failed,omitempty"`
}

// Event is one state change, as GET /events streams it (the SSE "data"
// line holds this object as JSON; "id" and "event" repeat ID and Type).
type Event struct {
	// ID increases with every event of a daemon's run; a later run starts
	// above every id of the earlier ones.
	ID uint64 `json:"id"`
	// Type is EventVM, EventImage, EventGroup, EventCapacity or EventReset.
	Type string `json:"type"`
	// Action says what happened (the Action* constants).
	Action string    `json:"action,omitempty"`
	Time   time.Time `json:"time"`
	// VMID, ImageKey and GroupName name what the event is about.
	VMID      string `json:"vm_id,omitempty"`
	ImageKey  string `json:"image_key,omitempty"`
	GroupName string `json:"group_name,omitempty"`
	// VM is the VM's record after the change (for "deleted": before it).
	VM *VM `json:"vm,omitempty"`
	// Image is the image after the change.
	Image *ImageInfo `json:"image,omitempty"`
	// Group is the group after the change (for "deleted": before it).
	Group *Group `json:"group,omitempty"`
	// Reconcile is what a "reconciled" group event's pass did.
	Reconcile *Reconcile `json:"reconcile,omitempty"`
	// Capacity is the host's capacity after a "capacity" event.
	Capacity *Capacity `json:"capacity,omitempty"`
	// Position is a queued VM's place in the capacity queue (1 first).
	Position int `json:"position,omitempty"`
	// Message explains a reset, an image's failure, a group's
	// degradation or a VM's leaving the capacity queue.
	Message string `json:"message,omitempty"`
}
