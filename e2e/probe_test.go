package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
)

// knownBugsEnv enables tests that assert behaviour the daemon does not have
// yet (each names the bug). They fail today; run them with
// GOLDVM_E2E_KNOWN_BUGS=1 and drop the gate once the fix lands.
const knownBugsEnv = "GOLDVM_E2E_KNOWN_BUGS"

// TestFaultImageReferencesHostFiles serves disk images that are valid but
// point outside their own package at a file of the host: a qcow2 whose
// backing file is an absolute host path, and a VMDK descriptor whose FLAT
// extent is an absolute host path. Both files are copies of the test guest,
// so if goldvm accepts such an image the VM boots from the host file and
// reaches "running": proof that an image author can make QEMU (root) read
// any host file or block device into the guest. goldvm must refuse these
// images (status "error") and never start QEMU on them.
func TestFaultImageReferencesHostFiles(t *testing.T) {
	requireEnv(t)
	if os.Getenv(knownBugsEnv) != "1" {
		t.Skipf("known bug: gold disks may reference host files (qcow2 backing file, VMDK extents); set %s=1 to run", knownBugsEnv)
	}
	srv := newImageServer(t)
	host := t.TempDir() // stands for any host path: /etc/shadow, /dev/vda…
	hostQcow2 := filepath.Join(host, "host-secret.qcow2")
	copyFile(t, guestDisk, hostQcow2)
	hostRaw := filepath.Join(host, "host-secret.raw")
	run(t, "", "qemu-img", "convert", "-O", "raw", guestDisk, hostRaw)
	fi, err := os.Stat(hostRaw)
	if err != nil {
		t.Fatal(err)
	}

	// A qcow2 of a few hundred KiB whose backing file is the host file.
	run(t, "", "qemu-img", "create", "-q", "-f", "qcow2", "-b", hostQcow2, "-F", "qcow2", filepath.Join(srv.dir, "backing.qcow2"))
	// A VMDK descriptor (the whole image) with a FLAT extent on the host file.
	desc := fmt.Sprintf("# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\n"+
		"RW %d FLAT \"%s\" 0\n\nddb.virtualHWVersion = \"4\"\nddb.adapterType = \"ide\"\n", fi.Size()/512, hostRaw)
	img := writeTarGz(t, srv.dir, "extent.tar.gz", []tarEntry{{name: "vm/disk.vmdk", body: strings.NewReader(desc)}})
	img.URL = srv.URL + img.URL

	d := startDaemon(t, filepath.Join(t.TempDir(), "data"))
	for _, tc := range []struct {
		desc string
		img  api.Image
	}{
		{"qcow2 backing file", api.Image{URL: srv.URL + "/backing.qcow2", Checksum: sha256File(t, filepath.Join(srv.dir, "backing.qcow2")), ChecksumType: "sha256"}},
		{"vmdk flat extent", img},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			v := mustCreate(t, d, createReq(tc.img, ""))
			got := waitVM(t, d, v.ID, bootTimeout)
			if got.Status != api.StatusError {
				t.Errorf("an image whose disk reads the host file %s was accepted: %s", host, fmtVM(got))
			} else {
				t.Logf("refused: %s", got.Error.Message)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			if err := d.client.DeleteVM(ctx, v.ID); err != nil {
				t.Fatalf("delete: %v", err)
			}
			assertGone(t, d, v.ID)
		})
	}
}
