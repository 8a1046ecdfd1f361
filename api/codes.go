package api

import "net/http"

// Stable error codes: the "code" of an error reply and of a failed VM's or
// image's "error". Codes never change meaning; new ones are added to Codes
// and to the README's error-code table (TestREADMEListsEveryCode checks it,
// TestCodesInSource that every code the daemon's source uses is here).
const (
	// Errors of the request itself.
	CodeUnsupportedMediaType = "unsupported-media-type"
	CodeInvalidJSON          = "invalid-json"
	CodeInvalidQuery         = "invalid-query"
	CodeInvalidEventID       = "invalid-event-id"
	CodeInvalidRequest       = "invalid-request"
	CodeRequestTooLarge      = "request-too-large"
	CodeInvalidChecksum      = "invalid-checksum"
	CodeInvalidImageURL      = "invalid-image-url"
	CodeNetworkNeedsRoot     = "network-needs-root"
	CodeBridgedNotConfigured = "bridged-not-configured"
	CodeInvalidNetworkType   = "invalid-network-type"
	CodeNotSupported         = "not-supported"
	CodePlacementUnsupported = "placement-not-supported"
	CodeUnauthorized         = "unauthorized"
	CodeNotFound             = "not-found"
	CodeMethodNotAllowed     = "method-not-allowed"
	CodeVMNotFound           = "vm-not-found"
	CodeImageNotFound        = "image-not-found"
	CodeImageInUse           = "image-in-use"
	CodeGroupNotFound        = "group-not-found"
	CodeInternalError        = "internal-error"

	// Errors of a VM: in a reply about it, or in its record when creation
	// failed.
	CodeVMLocked           = "vm-locked"
	CodeVMNotRunning       = "vm-not-running"
	CodeVMInvalidState     = "vm-invalid-state"
	CodeVMNotStopped       = "vm-not-stopped"
	CodeMACInUse           = "mac-in-use"
	CodeVMExists           = "vm-exists"
	CodeVMNotCloned        = "vm-not-cloned"
	CodeVMDiskMissing      = "vm-disk-missing"
	CodeVMCleanupFailed    = "vm-cleanup-failed"
	CodeVMStopFailed       = "vm-stop-failed"
	CodeDiskFull           = "disk-full"
	CodeCloneFailed        = "clone-failed"
	CodeCaptureFailed      = "capture-failed"
	CodeNetworkSetup       = "network-setup-failed"
	CodeNetworkCleanup     = "network-cleanup-failed"
	CodeQEMUStartFailed    = "qemu-start-failed"
	CodeQEMUStartTimeout   = "qemu-start-timeout"
	CodeQEMUUIDsExhausted  = "qemu-uids-exhausted"
	CodeQMPUnavailable     = "qmp-unavailable"
	CodeScreenshotFailed   = "screenshot-failed"
	CodeDiscoveryTimeout   = "discovery-timeout"
	CodeTemplateNoAgent    = "template-no-agent"
	CodeVMXEditFailed      = "vmx-edit-failed"
	CodeVmrunFailed        = "vmrun-failed"
	CodeBackendUnavailable = "backend-unavailable"
	CodeLXDFailed          = "lxd-failed"

	// Errors of an image (a VM's creation or a pre-fetch).
	CodeChecksumMismatch    = "checksum-mismatch"
	CodeImageDownloadFailed = "image-download-failed"
	CodeImageCorrupt        = "image-corrupt"
	CodeImageUnsafeArchive  = "image-unsafe-archive"
	CodeImageUnsafeDisk     = "image-unsafe-disk"
	CodeImageTooLarge       = "image-too-large"
	CodeImageUnsupported    = "image-unsupported"
	CodeImageNoDisk         = "image-no-disk"
	CodeImageManyDisks      = "image-many-disks"
	CodeImageBadDisk        = "image-bad-disk"
	CodeImageNoVMX          = "image-no-vmx"
	CodeImageManyVMX        = "image-many-vmx"
	CodeImageBadVMX         = "image-bad-vmx"
	CodeImageDamaged        = "image-damaged"
	CodeInvalidImageKey     = "invalid-image-key"
	CodeImageNoRootfs       = "image-no-rootfs"
	CodeImageBadMachine     = "image-bad-machine"

	// Errors of the host's capacity.
	CodeInsufficientCapacity = "insufficient-capacity"

	// Errors of the daemon's set-up, which stop `goldvm serve` at start
	// (or a driver given an impossible VM); no request causes them.
	CodeHypervisorNotInstalled = "hypervisor-not-installed"
	CodeSandboxUnsupported     = "sandbox-unsupported"
	CodeInvalidAccel           = "invalid-accel"
	CodeVMwareNoStateDir       = "vmware-no-state-dir"
	CodeInvalidHostType        = "invalid-host-type"
	CodeInvalidQEMUUser        = "invalid-qemu-user"
	CodeInvalidSize            = "invalid-size"
	CodeInvalidVMDir           = "invalid-vm-dir"
	CodeInvalidVMID            = "invalid-vm-id"
	CodeInvalidLXDSetting      = "invalid-lxd-setting"
)

// CodeInfo describes one stable error code.
type CodeInfo struct {
	// Code is the stable code, e.g. "vm-not-found".
	Code string
	// Status is the HTTP status of a reply with this code.
	Status int
	// Meaning says when the code is given.
	Meaning string
}

// Codes is the catalogue of every stable error code, in the order the
// README's table lists them.
var Codes = []CodeInfo{
	{CodeUnsupportedMediaType, http.StatusUnsupportedMediaType, "the body is not `application/json`"},
	{CodeInvalidJSON, http.StatusBadRequest, "malformed JSON (with line and column)"},
	{CodeInvalidQuery, http.StatusBadRequest, "`GET /vms` with an unknown status, a limit outside 1–1000 or an `after` that is not an id; a console `tail` outside 1 B–1 MiB; `GET /events` with a `vm` that is not an id or an unknown `type`"},
	{CodeInvalidEventID, http.StatusBadRequest, "`GET /events` with a `Last-Event-ID` that is not an event id (a decimal number)"},
	{CodeInvalidRequest, http.StatusBadRequest, "a field is missing, wrong or out of limits (the message names it and says why)"},
	{CodeRequestTooLarge, http.StatusBadRequest, "the body is over 1 MiB"},
	{CodeInvalidChecksum, http.StatusBadRequest, "an image's `checksum_type` is unknown or its checksum is not hex of the right length"},
	{CodeInvalidImageURL, http.StatusBadRequest, "an image URL is not an absolute http(s) URL"},
	{CodeNetworkNeedsRoot, http.StatusBadRequest, "`hostonly`/`bridged` when the daemon is not root"},
	{CodeBridgedNotConfigured, http.StatusBadRequest, "`network_type: bridged` without `--bridge`"},
	{CodeInvalidNetworkType, http.StatusBadRequest, "the backend does not know the network type"},
	{CodeNotSupported, http.StatusBadRequest, "the backend has no console log or screenshots"},
	{CodePlacementUnsupported, http.StatusBadRequest, "`placement` with a backend that does not place VMs on a cluster (any but lxd) or a standalone LXD, which refuses every `?target=` (LXD 5.0: \"Target only allowed when clustered\")"},
	{CodeUnauthorized, http.StatusUnauthorized, "a missing or wrong bearer token"},
	{CodeNotFound, http.StatusNotFound, "no such endpoint"},
	{CodeMethodNotAllowed, http.StatusMethodNotAllowed, "the endpoint does not take this method"},
	{CodeVMNotFound, http.StatusNotFound, "no VM has this id"},
	{CodeImageNotFound, http.StatusNotFound, "no image has this key"},
	{CodeImageInUse, http.StatusConflict, "`DELETE /images/{key}` while a VM depends on the image"},
	{CodeGroupNotFound, http.StatusNotFound, "no group has this name"},
	{CodeInternalError, http.StatusInternalServerError, "an unexpected error; the daemon's log has the details"},

	{CodeVMLocked, http.StatusConflict, "the VM's files are locked by another process (or, with VMware, its .vmx is locked or corrupt)"},
	{CodeVMNotRunning, http.StatusConflict, "the VM is not running (a screenshot of a stopped VM; the guest stopped while booting)"},
	{CodeVMInvalidState, http.StatusConflict, "the VM's status does not allow the action (`/resume` of a running VM, `/start` of one being created, a change to one being deleted)"},
	{CodeVMNotStopped, http.StatusConflict, "`POST /vms/{id}/capture` of a running or suspended VM without `\"stop\": true`"},
	{CodeMACInUse, http.StatusConflict, "in a VM's error: the MAC its machine definition gives (the request's or the image's machine.json) is another VM's"},
	{CodeVMExists, http.StatusConflict, "the VM's directory already holds a clone (vmware)"},
	{CodeVMNotCloned, http.StatusConflict, "the VM has no .vmx to start (vmware)"},
	{CodeVMDiskMissing, http.StatusConflict, "the VM has no disk to start (qemu)"},
	{CodeVMCleanupFailed, http.StatusConflict, "the VM's files cannot be removed"},
	{CodeVMStopFailed, http.StatusServiceUnavailable, "QEMU did not exit after SIGKILL"},
	{CodeDiskFull, http.StatusServiceUnavailable, "the data directory's disk is full"},
	{CodeCloneFailed, http.StatusServiceUnavailable, "the linked clone could not be made"},
	{CodeCaptureFailed, http.StatusServiceUnavailable, "the VM's disk could not be flattened into a new image (`POST /vms/{id}/capture`)"},
	{CodeNetworkSetup, http.StatusServiceUnavailable, "the VM's bridge, tap or DHCP server could not be set up"},
	{CodeNetworkCleanup, http.StatusServiceUnavailable, "the VM's tap device could not be removed"},
	{CodeQEMUStartFailed, http.StatusServiceUnavailable, "QEMU could not be run or exited while starting"},
	{CodeQEMUStartTimeout, http.StatusServiceUnavailable, "QEMU started but did not answer on QMP in time"},
	{CodeQEMUUIDsExhausted, http.StatusServiceUnavailable, "every user id of `--qemu-uid-range` belongs to a VM"},
	{CodeQMPUnavailable, http.StatusServiceUnavailable, "QEMU runs but does not answer on QMP"},
	{CodeScreenshotFailed, http.StatusServiceUnavailable, "QEMU could not take a screenshot"},
	{CodeDiscoveryTimeout, http.StatusServiceUnavailable, "the guest did not report its address within `tools_init_timeout` (`GET /vms/{id}/console` shows how far it got)"},
	{CodeTemplateNoAgent, http.StatusConflict, "`POST /images/{key}/templates`: the image's guest got an address but its guest agent did not answer; a template needs one (its VMs boot cold)"},
	{CodeVMXEditFailed, http.StatusConflict, "the clone's .vmx could not be edited (vmware)"},
	{CodeVmrunFailed, http.StatusServiceUnavailable, "vmrun failed (vmware)"},
	{CodeBackendUnavailable, http.StatusServiceUnavailable, "the backend's daemon cannot be reached (lxd: no answer on its socket or URL); nothing was made"},
	{CodeLXDFailed, http.StatusServiceUnavailable, "LXD answered an error (the message has LXD's own)"},

	{CodeChecksumMismatch, http.StatusBadRequest, "the downloaded bytes do not hash to the checksum"},
	{CodeImageDownloadFailed, http.StatusServiceUnavailable, "the image server answered a final 4xx, or errors persisted after the retries (the message names the HTTP status)"},
	{CodeImageCorrupt, http.StatusBadRequest, "the package cannot be decompressed or read as an archive, or is truncated"},
	{CodeImageUnsafeArchive, http.StatusBadRequest, "an archive entry would land outside the image directory (`../`, an absolute path, a link pointing out) or is a device node or fifo"},
	{CodeImageUnsafeDisk, http.StatusBadRequest, "a disk image names a file outside the image (a backing file, data file, extent or parent), or is in a format goldvm does not open (only qcow2, VMDK and raw)"},
	{CodeImageTooLarge, http.StatusBadRequest, "the download or the unpacked image is over the limits"},
	{CodeImageUnsupported, http.StatusBadRequest, "neither a supported archive nor a disk image, or an archive that cannot be read (the message says why)"},
	{CodeImageNoDisk, http.StatusBadRequest, "the image holds no disk (qemu)"},
	{CodeImageManyDisks, http.StatusBadRequest, "the image holds more than one disk (qemu)"},
	{CodeImageBadDisk, http.StatusBadRequest, "the image's disk is not readable by qemu-img"},
	{CodeImageNoVMX, http.StatusBadRequest, "the image holds no .vmx (vmware)"},
	{CodeImageManyVMX, http.StatusBadRequest, "the image holds several .vmx files (vmware)"},
	{CodeImageBadVMX, http.StatusBadRequest, "the image's .vmx cannot be read or pointed at the gold disk (vmware)"},
	{CodeImageDamaged, http.StatusConflict, "the image failed its check at start-up and is kept for the VMs that depend on it; it is fetched again once they are deleted"},
	{CodeInvalidImageKey, http.StatusBadRequest, "a driver was given an image key it cannot use as a directory name"},
	{CodeImageNoRootfs, http.StatusBadRequest, "the image holds no container root file system: no `rootfs/` directory and no `sbin/init` at its top (lxd containers)"},
	{CodeImageBadMachine, http.StatusBadRequest, "the image's `machine.json` is not JSON, has an unknown version or an invalid field (named), or asks for more than the host's limits"},
	{CodeInsufficientCapacity, http.StatusServiceUnavailable, "the VM waited `--queue-timeout` for capacity (`GET /capacity`) and did not get it, or needs more than the host's whole capacity"},

	{CodeHypervisorNotInstalled, http.StatusServiceUnavailable, "QEMU or a tool it needs is not installed (the message names the package)"},
	{CodeSandboxUnsupported, http.StatusServiceUnavailable, "QEMU was built without `-sandbox` (seccomp) support"},
	{CodeInvalidAccel, http.StatusBadRequest, "`--accel` names an accelerator this host cannot use"},
	{CodeVMwareNoStateDir, http.StatusBadRequest, "the VMware driver was given no state directory"},
	{CodeInvalidHostType, http.StatusBadRequest, "an unknown VMware host type"},
	{CodeInvalidQEMUUser, http.StatusBadRequest, "`--qemu-user` and `--qemu-uid-range` given together, or unusable"},
	{CodeInvalidSize, http.StatusBadRequest, "a driver was given a VM of no CPUs or memory"},
	{CodeInvalidVMDir, http.StatusBadRequest, "a driver was given a VM directory that is not absolute"},
	{CodeInvalidVMID, http.StatusBadRequest, "a driver was given a VM id it cannot use as a name"},
	{CodeInvalidLXDSetting, http.StatusBadRequest, "`--lxd-url`, `--lxd-cert`/`--lxd-key`, `--lxd-instance-type` or `--lxd-project` is unusable"},
}

// LookupCode returns the catalogue entry of code.
func LookupCode(code string) (CodeInfo, bool) {
	for _, c := range Codes {
		if c.Code == code {
			return c, true
		}
	}
	return CodeInfo{}, false
}
