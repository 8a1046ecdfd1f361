package api

import "time"

// TemplateRequest is the body of POST /images/{key}/templates: the shape of
// the VMs that are to start from the template, as in a create request
// (cpus, memory, network_type and machine; their defaults are a create's).
type TemplateRequest struct {
	CPUs        int      `json:"cpus,omitempty"`
	Memory      Memory   `json:"memory,omitempty"`
	NetworkType string   `json:"network_type,omitempty"`
	Machine     *Machine `json:"machine,omitempty"`
}

// Template is a saved, booted state of a gold image in one shape: a create
// of the same image and shape starts from it instead of booting.
type Template struct {
	// Key identifies the shape on this host.
	Key string `json:"key"`
	// ImageKey is the gold image's key.
	ImageKey    string `json:"image_key"`
	CPUs        int    `json:"cpus"`
	MemoryMiB   int64  `json:"memory"` // MiB
	NetworkType string `json:"network_type"`
	// Machine is the pinned machine type, e.g. "pc-q35-7.2".
	Machine string `json:"machine"`
	// SizeBytes is the disk space of its files (frozen disk layer, RAM,
	// device state).
	SizeBytes int64     `json:"size_bytes"`
	CreatedAt time.Time `json:"created_at"`
}

// TemplateList is the reply of GET /images/{key}/templates.
type TemplateList struct {
	Templates []Template `json:"templates"`
}

// StartedFromTemplate and StartedFromBoot are the values of VM.StartedFrom.
const (
	StartedFromTemplate = "template"
	StartedFromBoot     = "boot"
)
