package qemu

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path/filepath"

	"github.com/goldvm/goldvm/internal/machine"
)

// Files in spec.Dir.
const (
	fileDisk       = "disk.qcow2"
	fileDiskTmp    = "disk.qcow2.tmp"
	fileQMP        = "qmp.sock"
	fileQMPWatch   = "qmp-watch.sock"
	fileVNC        = "vnc.sock"
	fileEFIVars    = "efivars.fd"
	fileQGA        = "qga.sock"
	fileIdentity   = "identity.sock" // a template VM's identity port
	filePID        = "qemu.pid"
	fileConsole    = "console.log"
	fileConsoleEnd = "console-last.log" // the tail of console.log, kept by Destroy
	fileStderr     = "qemu-stderr.log"
	fileSSHPort    = "ssh-port"
	fileSeed       = "seed.iso" // cloud-init NoCloud seed, the VM's CD-ROM
	screendumpGlob = "screendump-*.png"
)

// qemuName is the -name of a VM's QEMU process, also how we recognise it.
func qemuName(id string) string { return "goldvm-" + id }

// macFor derives a stable locally administered MAC in QEMU's 52:54:00 range
// (machine.DerivedMACPrefix, where machine definitions may not put theirs).
func macFor(id string) string {
	h := sha256.Sum256([]byte("goldvm-mac:" + id))
	return fmt.Sprintf("%s%02x:%02x:%02x", machine.DerivedMACPrefix, h[0], h[1], h[2])
}

// tapFor is the tap device name of a VM: "gv" and 12 hex digits of a hash of
// the id (ids are time-sortable and share prefixes, and IFNAMSIZ is 16). The
// owner's id is also stored in the device's alias (see tapAlias).
func tapFor(id string) string {
	h := sha256.Sum256([]byte("goldvm-tap:" + id))
	return "gv" + hex.EncodeToString(h[:6])
}

// tapAliasPrefix precedes the VM id in a tap's ifalias; tapAliasRoot
// precedes the tag of the goldvm instance (its VMRoot) that made it.
const (
	tapAliasPrefix = "goldvm:"
	tapAliasRoot   = " in:"
)

// rootTag names a VMRoot in tap aliases ("" for none).
func rootTag(vmRoot string) string {
	if vmRoot == "" {
		return ""
	}
	h := sha256.Sum256([]byte(filepath.Clean(vmRoot)))
	return hex.EncodeToString(h[:6])
}

// tapAlias is the ifalias of VM id's tap made by the instance of vmRoot.
func tapAlias(id, vmRoot string) string {
	if t := rootTag(vmRoot); t != "" {
		return tapAliasPrefix + id + tapAliasRoot + t
	}
	return tapAliasPrefix + id
}

func p(dir, name string) string { return filepath.Join(dir, name) }
