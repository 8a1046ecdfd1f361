package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/diskfmt/diskfmttest"
)

// TestHostileDisksNeverReachHostFiles sends the daemon every hostile disk
// of the table, each aimed at a file this test owns outside the data
// directory: each creation fails with image-unsafe-disk, nothing is
// published, and no process (goldvm, qemu-img, QEMU) ever opens or reads
// the target (inotify on the target, and the open files of every QEMU
// while the VMs would run).
func TestHostileDisksNeverReachHostFiles(t *testing.T) {
	requireEnv(t)
	srv := newImageServer(t)
	d := startDaemon(t, filepath.Join(t.TempDir(), "data"))
	target, opened := diskfmttest.Target(t, t.TempDir())

	var ids []string
	for i, c := range diskfmttest.Hostile(target) {
		data, err := c.Tar()
		if err != nil {
			t.Fatal(err)
		}
		name := fmt.Sprintf("hostile-%d.tar", i)
		if err := os.WriteFile(filepath.Join(srv.dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		img := api.Image{URL: srv.URL + "/" + name, Checksum: hex.EncodeToString(sum[:]), ChecksumType: "sha256"}
		v := mustCreate(t, d, createReq(img, ""))
		ids = append(ids, v.ID)
		t.Logf("%s: %s", v.ID, c.Name)
	}
	stop := make(chan struct{})
	seen := make(chan string, 1)
	go func() { // what any QEMU holds open while the creations run
		for {
			for _, pid := range processesMatching("qemu") {
				if diskfmttest.HasOpen(pid, target) {
					select {
					case seen <- strconv.Itoa(pid):
					default:
					}
				}
			}
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	cases := diskfmttest.Hostile(target)
	for i, id := range ids {
		got := waitVM(t, d, id, 2*time.Minute)
		if got.Status != api.StatusError || got.Error == nil || got.Error.Code != "image-unsafe-disk" {
			t.Errorf("%s: got %s, want error image-unsafe-disk", cases[i].Name, fmtVM(got))
		} else if strings.Contains(got.Error.Message, d.dataDir) {
			t.Errorf("%s: message names the data dir: %s", cases[i].Name, got.Error.Message)
		}
	}
	close(stop)
	select {
	case pid := <-seen:
		t.Errorf("QEMU process %s held the target open", pid)
	default:
	}
	if n := opened(); n != 0 {
		t.Errorf("the target was opened or read %d times", n)
	}
	entries, _ := os.ReadDir(filepath.Join(d.dataDir, "images"))
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".partial-") {
			t.Errorf("image store keeps %s after hostile images", e.Name())
		}
	}
}
