package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
)

// TestFaultImageReferencesHostFiles serves disk images that are valid but
// point outside their own package at a file of the host: a qcow2 whose
// backing file is an absolute host path, and a VMDK descriptor whose FLAT
// extent is an absolute host path. Both files are copies of the test guest,
// so if goldvm accepts such an image the VM boots from the host file and
// reaches "running": proof that an image author can make QEMU (root) read
// any host file or block device into the guest. goldvm must refuse these
// images (status "error") and never start QEMU on them. (Both booted before
// bc58f12.)
func TestFaultImageReferencesHostFiles(t *testing.T) {
	requireEnv(t)
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
			if got.Status != api.StatusError || got.Error == nil || got.Error.Code != "image-unsafe-disk" {
				t.Errorf("an image whose disk reads a host file in %s was not refused as image-unsafe-disk: %s", host, fmtVM(got))
			} else {
				t.Logf("refused: %s", got.Error.Message)
			}
			if pids := processesMatching("goldvm-" + v.ID); len(pids) != 0 {
				t.Errorf("QEMU runs for the refused image: %v", pids)
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

// TestSecurityBearerToken: the daemon refuses to listen beyond loopback
// without a token; with a token every endpoint but /healthz answers 401
// unless the exact bearer token is sent.
func TestSecurityBearerToken(t *testing.T) {
	requireEnv(t)
	if os.Getenv(netnsMarker) != "" {
		// 0.0.0.0 in the test's own network namespace reaches nothing else.
		cmd := exec.Command(goldvmBin, "serve", "--listen", "0.0.0.0:"+strings.Split(freeAddr(t), ":")[1],
			"--data-dir", filepath.Join(t.TempDir(), "data"), "--accel", "tcg")
		cmd.Env = append(os.Environ(), "GOLDVM_TOKEN=")
		out, err := runBounded(cmd, time.Minute)
		if err == nil || !strings.Contains(out, "token") {
			t.Errorf("serve on 0.0.0.0 without a token: err %v, output %q; want a refusal naming the token", err, out)
		}
	}

	const token = "e2e-s3cret-token"
	d := startDaemon(t, filepath.Join(t.TempDir(), "data"), "--token", token)
	for _, tc := range []struct {
		desc, path, auth string
		want             int
	}{
		{"no header", "/vms", "", 401},
		{"wrong token", "/vms", "Bearer nope", 401},
		{"token prefix", "/vms", "Bearer " + token[:5], 401},
		{"basic auth", "/vms", "Basic " + token, 401},
		{"unknown id without token", "/vms/vm-0000000000000000000a", "", 401},
		{"images without token", "/images", "", 401},
		{"right token", "/vms", "Bearer " + token, 200},
		{"healthz needs none", "/healthz", "", 200},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			req, _ := http.NewRequest("GET", "http://"+d.addr+tc.path, nil)
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("GET %s with %q: %d %s, want %d", tc.path, tc.auth, resp.StatusCode, body, tc.want)
			}
			if tc.want == 401 && (!strings.Contains(string(body), `"unauthorized"`) || resp.Header.Get("WWW-Authenticate") == "") {
				t.Errorf("401 body %s, WWW-Authenticate %q", body, resp.Header.Get("WWW-Authenticate"))
			}
		})
	}
	// A create without the token is refused before anything is stored.
	status, _, body := postRaw(t, d, "POST", "/vms", "application/json", `{"cpus":1,"memory":128}`)
	if status != 401 {
		t.Errorf("POST /vms without token: %d %s", status, body)
	}
	if n := len(processesMatching(filepath.Join(d.dataDir, "vms"))); n != 0 {
		t.Errorf("%d processes started for an unauthenticated request", n)
	}
}

// runBounded runs cmd and returns its combined output; it is killed after
// timeout.
func runBounded(cmd *exec.Cmd, timeout time.Duration) (string, error) {
	var buf strings.Builder
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Start(); err != nil {
		return "", err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return buf.String(), err
	case <-time.After(timeout):
		cmd.Process.Kill()
		<-done
		return buf.String(), fmt.Errorf("still running after %s", timeout)
	}
}
