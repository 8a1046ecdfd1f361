package api

import "time"

// Tag limits (POST /vms "tags", PATCH /vms/{id}).
const (
	// MaxTags is the most tags one VM may carry, the daemon's own included.
	MaxTags = 32
	// MaxTagKeyLen is the longest tag key.
	MaxTagKeyLen = 63
	// MaxTagValueBytes is the longest tag value, in bytes.
	MaxTagValueBytes = 255
	// TagPrefixReserved starts the keys of the tags goldvm sets itself;
	// a request may not set or remove them.
	TagPrefixReserved = "goldvm."
	// TagGroup names the group a VM belongs to.
	TagGroup = "goldvm.group"
	// TagTemplate is the hash of the group template a VM was made from.
	TagTemplate = "goldvm.template"
	// TagWarm marks a group's warm VM (value "true"): booted, unassigned,
	// waiting to be handed out by a create with from_group.
	TagWarm = "goldvm.warm"
)

// ValidTagKey reports whether k is a tag key: 1 to MaxTagKeyLen characters
// from a-z, 0-9, '.', '_', '/' and '-'.
func ValidTagKey(k string) bool {
	if len(k) < 1 || len(k) > MaxTagKeyLen {
		return false
	}
	for _, c := range []byte(k) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '/' || c == '-') {
			return false
		}
	}
	return true
}

// PatchVMRequest is the body of PATCH /vms/{id}.
type PatchVMRequest struct {
	// Tags sets each key given to its value; a null value removes the key.
	// Keys not named are left as they are.
	Tags map[string]*string `json:"tags"`
}

// GroupSpec is the body of PUT /groups/{name}: the desired state of a group.
type GroupSpec struct {
	// Size is how many VMs the group keeps (suspended ones count, stopped
	// or failed ones do not).
	Size int `json:"size"`
	// Template is the POST /vms body each of the group's VMs is made from.
	Template CreateVMRequest `json:"template"`
	// MaxSurge bounds the group's creations in flight (default 1).
	MaxSurge int `json:"max_surge,omitempty"`
	// MaxUnavailable is how many fewer than Size running VMs a rolling
	// template change may leave (default 0: old VMs go only once their
	// replacements run).
	MaxUnavailable int `json:"max_unavailable,omitempty"`
	// Warm is how many extra VMs the group keeps booted and unassigned,
	// besides Size, for creates with from_group (or with a template equal
	// to this one) to take at once. A VM handed out leaves the group.
	Warm int `json:"warm,omitempty"`
}

// HandOut says how a create from a group was served (VM.FromGroup).
type HandOut struct {
	// Group is the group whose template made the VM.
	Group string `json:"group"`
	// Warm is true when a warm VM of the group was handed out, false when
	// the VM was created cold from the group's template.
	Warm bool `json:"warm"`
	// Reason says why a create with from_group was served cold.
	Reason string `json:"reason,omitempty"`
}

// Group states.
const (
	// GroupOK: the group is at its size or on its way there.
	GroupOK = "ok"
	// GroupDegraded: creations from the template keep failing; the group
	// retries slowly (see Group.Error) instead of creating VMs in a loop.
	GroupDegraded = "degraded"
	// GroupDeleting: DELETE /groups/{name} is destroying (or detaching)
	// the group's VMs.
	GroupDeleting = "deleting"
)

// GroupVM is one of a group's VMs, as GET /groups/{name} lists it.
type GroupVM struct {
	ID       string `json:"id"`
	Status   Status `json:"status"`
	Template string `json:"template"`
	// Warm is true for a VM of the group's warm pool.
	Warm bool `json:"warm,omitempty"`
	// Current is false for a VM of an earlier template, removed as the
	// group rolls over.
	Current bool `json:"current"`
}

// Group is a group as GET /groups/{name} shows it.
type Group struct {
	Name string    `json:"name"`
	Spec GroupSpec `json:"spec"`
	// TemplateHash is the hash of the template that new VMs carry in
	// their goldvm.template tag.
	TemplateHash string    `json:"template_hash"`
	State        string    `json:"state"`
	VMs          []GroupVM `json:"vms"`
	// Running counts the group's VMs in status running, the warm pool's
	// not included.
	Running int `json:"running"`
	// WarmReady counts the warm VMs ready to be handed out (running, of
	// the current template).
	WarmReady int `json:"warm_ready"`
	// Failures counts creations from this template that failed in a row.
	Failures int `json:"failures,omitempty"`
	// NextRetry is when a creation is tried again after failures.
	NextRetry time.Time `json:"next_retry,omitzero"`
	// Error is the last creation failure (or reconcile error).
	Error *Error `json:"error,omitempty"`
	// LastReconcile is when the reconcile loop last looked at the group.
	LastReconcile time.Time `json:"last_reconcile,omitzero"`
	CreatedAt     time.Time `json:"created_at"`
	UpdatedAt     time.Time `json:"updated_at"`
}

// GroupList is the reply of GET /groups.
type GroupList struct {
	Groups []Group `json:"groups"`
}
