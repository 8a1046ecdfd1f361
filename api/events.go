package api

import "time"

// Event types: the "type" of an Event, and the SSE event name of GET /events.
const (
	EventVM    = "vm"    // a VM's state changed
	EventImage = "image" // a gold image's state changed
	EventReset = "reset" // the client missed events; read the state again
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

// Event is one state change, as GET /events streams it (the SSE "data"
// line holds this object as JSON; "id" and "event" repeat ID and Type).
type Event struct {
	// ID increases with every event of a daemon's run; a later run starts
	// above every id of the earlier ones.
	ID uint64 `json:"id"`
	// Type is EventVM, EventImage or EventReset.
	Type string `json:"type"`
	// Action says what happened (the Action* constants).
	Action string    `json:"action,omitempty"`
	Time   time.Time `json:"time"`
	// VMID and ImageKey name what the event is about.
	VMID     string `json:"vm_id,omitempty"`
	ImageKey string `json:"image_key,omitempty"`
	// VM is the VM's record after the change (for "deleted": before it).
	VM *VM `json:"vm,omitempty"`
	// Image is the image after the change.
	Image *ImageInfo `json:"image,omitempty"`
	// Message explains a reset, or an image's failure.
	Message string `json:"message,omitempty"`
}
