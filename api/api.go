// Package api holds the wire types of goldvm's HTTP API, shared by the
// server, the Go client and the CLI. It has no logic beyond (un)marshalling.
package api

import (
	"time"
)

// Status is the lifecycle state of a VM.
type Status string

// VM statuses.
const (
	StatusCreating Status = "creating"
	StatusRunning  Status = "running"
	StatusStopped  Status = "stopped"
	StatusError    Status = "error"
	StatusDeleting Status = "deleting"
	// StatusSuspended is a VM paused by POST /vms/{id}/suspend: its
	// machine keeps its memory but runs no guest code until resumed.
	StatusSuspended Status = "suspended"
)

// IsFinal reports whether creation has ended in this status (successfully or not).
func (s Status) IsFinal() bool {
	return s == StatusRunning || s == StatusStopped || s == StatusError || s == StatusSuspended
}

// Phase names the step a VM in StatusCreating is at.
type Phase string

// Creation phases, in order.
const (
	PhasePending Phase = "pending"
	// PhaseQueued: the image is ready and the VM waits for capacity
	// (GET /capacity); queue_position says where it stands.
	PhaseQueued      Phase = "queued"
	PhaseDownloading Phase = "downloading"
	PhaseVerifying   Phase = "verifying"
	PhaseUnpacking   Phase = "unpacking"
	PhaseCloning     Phase = "cloning"
	PhaseBooting     Phase = "booting"
	PhaseDiscovering Phase = "discovering"
)

// Network types.
const (
	NetworkNAT      = "nat"
	NetworkBridged  = "bridged"
	NetworkHostOnly = "hostonly"
)

// Checksum types.
const (
	ChecksumMD5    = "md5"
	ChecksumSHA1   = "sha1"
	ChecksumSHA256 = "sha256"
	ChecksumSHA512 = "sha512"
)

// Image names a base image by URL and checksum. In a create request it
// may instead name an image already on the host by its Key (a captured
// image, say), or ask for an EmptyDisk of a size (an IEC string such as
// "20gib") to install onto from a CD-ROM.
type Image struct {
	URL          string `json:"url"`
	Checksum     string `json:"checksum"`
	ChecksumType string `json:"checksum_type"`
	// Key is a store key ("sha256-…", GET /images): the image on this
	// host, never fetched. Checksum and checksum_type follow from it.
	Key string `json:"key,omitempty"`
	// EmptyDisk is the size of a fresh, empty disk: the VM has no image
	// and boots from its cdroms (or boot). Given alone.
	EmptyDisk string `json:"empty_disk,omitempty"`
}

// Error is the body of every error reply, and the error of a failed VM.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Progress tells how far an image fetch has come.
type Progress struct {
	BytesDone  int64 `json:"bytes_done"`
	BytesTotal int64 `json:"bytes_total,omitempty"` // 0 when the server did not say
}

// CallbackDelivery records the delivery of the completion callback.
type CallbackDelivery struct {
	State       string    `json:"state"` // "pending", "delivered", "failed"
	Attempts    int       `json:"attempts"`
	LastError   string    `json:"last_error,omitempty"`
	LastAttempt time.Time `json:"last_attempt,omitzero"`
	DeliveredAt time.Time `json:"delivered_at,omitzero"`
	StatusCode  int       `json:"status_code,omitempty"`
}

// Callback delivery states.
const (
	CallbackPending   = "pending"
	CallbackDelivered = "delivered"
	CallbackFailed    = "failed"
)

// VM is a virtual machine as the API shows it.
type VM struct {
	ID          string `json:"id"`
	Status      Status `json:"status"`
	Phase       Phase  `json:"phase,omitempty"`
	Backend     string `json:"backend"`
	CPUs        int    `json:"cpus"`
	MemoryMiB   int64  `json:"memory"` // MiB
	NetworkType string `json:"network_type"`
	Image       Image  `json:"image"`
	Headless    bool   `json:"headless"`
	// LaunchGUI is the inverse of Headless, answered too because the
	// original service's clients read it.
	LaunchGUI   bool   `json:"launch_gui"`
	CallbackURL string `json:"callback_url,omitempty"`
	// ToolsInitTimeout is written as integer seconds.
	ToolsInitTimeout Duration `json:"tools_init_timeout"`
	// IPAddress and GuestOS are "" until creation has learnt them.
	IPAddress string `json:"ip_address"`
	// GuestOS identifies the guest's OS for programs: with the vmware
	// backend the .vmx guestOS identifier ("other26xlinux-64",
	// "darwin23-64"), as VMware and the original service give it; with
	// the qemu backend the guest agent's OS name (os-release PRETTY_NAME).
	GuestOS string `json:"guest_os"`
	// GuestOSName is a readable name of the guest's OS ("Linux (64-bit)",
	// "Debian GNU/Linux 12 (bookworm)").
	GuestOSName string `json:"guest_os_name,omitempty"`
	// SSHAddress is a host:port on the goldvm host forwarded to the
	// guest's SSH port (22), set when ip_address is the guest's own address
	// and not reachable from the host (user-mode networking, when goldvm
	// does not run as root).
	SSHAddress string `json:"ssh_address,omitempty"`
	// Sources says where ip_address and guest_os came from (see the
	// Source* constants); nil until discovery has learnt something.
	Sources *Sources `json:"sources,omitempty"`
	// SSHAuthorizedKeys are the public keys given at creation, which
	// cloud-init installs. (The user_data given is kept but never shown.)
	SSHAuthorizedKeys []string `json:"ssh_authorized_keys,omitempty"`
	// Peers is the set of VMs this VM may reach on its bridge, as created
	// (see CreateVMRequest.Peers); "" for none: isolated.
	Peers string `json:"peers,omitempty"`
	Error *Error `json:"error,omitempty"`
	// StopReason says why a VM that was running stopped.
	StopReason string `json:"stop_reason,omitempty"`
	// Tags are the VM's labels (see ValidTagKey); a group's VMs carry
	// TagGroup and TagTemplate.
	Tags     map[string]string `json:"tags,omitempty"`
	Progress *Progress         `json:"progress,omitempty"`
	Callback *CallbackDelivery `json:"callback,omitempty"`
	// QueuePosition is the VM's place (1 first) in the queue for
	// capacity while its phase is "queued".
	QueuePosition int `json:"queue_position,omitempty"`
	// Machine is the VM's hardware: the request's machine, cpus and
	// memory over the image's machine.json over the host's defaults,
	// within its limits. Set once the image is known.
	Machine *Machine `json:"machine,omitempty"`
	// CDROMs and Boot are the request's boot media.
	CDROMs []Image `json:"cdroms,omitempty"`
	Boot   *Boot   `json:"boot,omitempty"`
	// Placement is the request's placement; Location is the cluster
	// member the VM was made on (lxd backend on a cluster).
	Placement *Placement `json:"placement,omitempty"`
	Location  string     `json:"location,omitempty"`
	// StartedFrom is StartedFromTemplate for a VM restored from a
	// template, StartedFromBoot for one booted ("" before it started);
	// WarmStartError says why a matching template was not used.
	StartedFrom    string `json:"started_from,omitempty"`
	WarmStartError string `json:"warm_start_error,omitempty"`
	// FromGroup is set on a VM handed out for a create with from_group,
	// or for a create whose template equals a warm group's.
	FromGroup *HandOut `json:"from_group,omitempty"`
	// PhaseTimes are the phases the creation went through, in order, with
	// the time each took (the last one ends when the VM is running or
	// failed).
	PhaseTimes []PhaseTime `json:"phase_times,omitempty"`
	CreatedAt  time.Time   `json:"created_at"`
	UpdatedAt  time.Time   `json:"updated_at"`
}

// PhaseTime is how long a creation spent in one phase.
type PhaseTime struct {
	Phase Phase `json:"phase"`
	// Seconds is the time spent, to the millisecond.
	Seconds float64 `json:"seconds"`
}

// BackendCapacity is GET /capacity's view of the backend's own hosts (the
// lxd backend: the members of its LXD cluster, or its one server).
type BackendCapacity struct {
	// Total sums the online members' CPU threads and memory.
	Total Resources `json:"total"`
	// Used sums the limits (limits.cpu, limits.memory) of goldvm's
	// running instances.
	Used Resources `json:"used"`
	// Members are the hosts, in the backend's order.
	Members []MemberCapacity `json:"members,omitempty"`
	// Error says why the backend could not be asked (then nothing else
	// is set).
	Error string `json:"error,omitempty"`
}

// MemberCapacity is one host of the backend.
type MemberCapacity struct {
	Name string `json:"name"`
	// Status is the backend's word for it (LXD: Online, Offline,
	// Evacuated); an offline member's resources are unknown (zero).
	Status string `json:"status"`
	// Total is its CPU threads and memory; MemoryUsedMiB the memory its
	// kernel has in use, goldvm's or not.
	Total         Resources `json:"total"`
	MemoryUsedMiB int64     `json:"memory_used"`
	// Used sums the limits of goldvm's running instances on it;
	// Instances counts goldvm's instances on it, running or not.
	Used      Resources `json:"used"`
	Instances int       `json:"instances"`
}

// VMList is the reply of GET /vms.
type VMList struct {
	VMs []VM `json:"vms"`
	// Next, when set, is the query value of "after" that fetches the next
	// page (GET /vms?limit=N answers at most N VMs).
	Next string `json:"next,omitempty"`
}

// MaxPageSize is the largest "limit" GET /vms accepts.
const MaxPageSize = 1000

// ImageInfo describes a gold image on the host.
type ImageInfo struct {
	Key          string `json:"key"`
	URL          string `json:"url"`
	ChecksumType string `json:"checksum_type"`
	Checksum     string `json:"checksum"`
	SizeBytes    int64  `json:"size_bytes"`
	VMs          int    `json:"vms"`
	// GuestOS is the OS its disk's os-release names, read when it was
	// published: the guest_os of its VMs whose agent does not answer.
	GuestOS string `json:"guest_os,omitempty"`
	// State is "ready", "fetching", "error", or "damaged": the stored
	// image no longer matches what was published, and is kept (not given
	// to new VMs) until the VMs that depend on it are deleted.
	State string `json:"state"`
	// Phase and Progress show a fetch under way: "downloading",
	// "verifying" or "unpacking", and the bytes downloaded so far.
	Phase     Phase     `json:"phase,omitempty"`
	Progress  *Progress `json:"progress,omitempty"`
	CreatedAt time.Time `json:"created_at,omitzero"`
	LastUsed  time.Time `json:"last_used,omitzero"`
	Error     *Error    `json:"error,omitempty"`
	// Parent is what a captured image was made from (POST
	// /vms/{id}/capture); nil for a fetched image.
	Parent *ImageParent `json:"parent,omitempty"`
	// PackageSHA256 is the sha256 of the image's package (GET
	// /images/{key}/package), once known: recorded at capture (where it
	// is also the key's checksum), computed at the first package request
	// otherwise.
	PackageSHA256 string `json:"package_sha256,omitempty"`
}

// ImageParent is what a captured image was made from.
type ImageParent struct {
	// Key is the image the VM was made from ("" for a VM on an empty disk).
	Key string `json:"key,omitempty"`
	// VM is the id of the captured VM.
	VM string `json:"vm"`
}

// CaptureRequest is the body of POST /vms/{id}/capture.
type CaptureRequest struct {
	// Stop stops a running (or suspended) VM for the capture; without it
	// such a VM is refused with vm-not-stopped.
	Stop bool `json:"stop,omitempty"`
}

// PackageChecksumHeader is the header of GET /images/{key}/package giving
// the package's sha256 in hex (also given as Digest: sha-256=<base64>).
const PackageChecksumHeader = "X-Checksum-Sha256"

// ImageList is the reply of GET /images.
type ImageList struct {
	Images []ImageInfo `json:"images"`
}
