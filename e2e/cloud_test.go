package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
)

// Two VMs created through the API with user_data and ssh_authorized_keys:
// each guest finds its own user-data on the cidata CD-ROM and reads its
// own record from the metadata service, and its console (GET
// /vms/{id}/console) shows its own id and not the other's. The record
// echoes the keys and where its values came from, never the user-data.
func TestCloudInit(t *testing.T) {
	requireEnv(t)
	srv := newImageServer(t)
	d := startDaemon(t, filepath.Join(t.TempDir(), "data"))
	img := publish(t, srv, "qcow2")
	ctx := context.Background()
	var vms [2]*api.VM
	for i := range vms {
		req := createReq(img, "")
		req.UserData = api.UserData(fmt.Sprintf("#cloud-config\n# user-data of VM %d\n", i))
		req.SSHAuthorizedKeys = []string{fmt.Sprintf("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI%d vm%d@test", i, i)}
		vms[i] = mustCreate(t, d, req)
	}
	for i, v := range vms {
		got := waitVM(t, d, v.ID, bootTimeout)
		if got.Status != api.StatusRunning {
			t.Fatalf("VM %d: %s", i, fmtVM(got))
		}
		if got.Sources == nil || got.Sources.IPAddress == "" || got.Sources.GuestOS != api.SourceGuestAgent {
			t.Errorf("VM %d: sources %+v, want an address source and guest_os from the guest agent", i, got.Sources)
		}
		if want := []string{fmt.Sprintf("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI%d vm%d@test", i, i)}; !reflect.DeepEqual(got.SSHAuthorizedKeys, want) {
			t.Errorf("VM %d: ssh_authorized_keys %q, want %q", i, got.SSHAuthorizedKeys, want)
		}
		resp, err := http.Get("http://" + d.addr + "/vms/" + v.ID)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(body), "user_data") || strings.Contains(string(body), "user-data of") {
			t.Errorf("VM %d: the record shows the user-data: %s", i, body)
		}
	}
	for i, v := range vms {
		other := vms[1-i].ID
		seed := fmt.Sprintf("goldvm-guest: cidata /dev/sr0 user-data begin\n#cloud-config\n# user-data of VM %d\n", i)
		md := `goldvm-guest: metadata {"id":"` + v.ID + `"`
		var console string
		waitFor(t, fmt.Sprintf("VM %d's console to show its seed's user-data and its metadata", i), 60*time.Second, func() bool {
			out, err := d.client.Console(ctx, v.ID, 0)
			console = strings.ReplaceAll(string(out), "\r\n", "\n")
			return err == nil && strings.Contains(console, seed) && strings.Contains(console, md)
		})
		if strings.Contains(console, other) {
			t.Errorf("VM %d's console shows the other VM's id %s:\n%s", i, other, console)
		}
	}
}

// With --agent-wait that short, a VM is reported running from its DHCP
// lease before its agent has said what OS it runs; the daemon keeps asking
// and the record gets guest_os from the agent a moment later.
func TestGuestOSLearntLater(t *testing.T) {
	requireEnv(t)
	srv := newImageServer(t)
	d := startDaemon(t, filepath.Join(t.TempDir(), "data"), "--agent-wait", "1ms")
	v := mustCreate(t, d, createReq(publish(t, srv, "qcow2"), ""))
	got := waitVM(t, d, v.ID, bootTimeout)
	if got.Status != api.StatusRunning || got.IPAddress == "" {
		t.Fatalf("VM: %s", fmtVM(got))
	}
	t.Logf("running with guest_os %q, sources %+v", got.GuestOS, got.Sources)
	waitFor(t, "guest_os from the guest agent", 60*time.Second, func() bool {
		g, err := d.client.GetVM(context.Background(), v.ID)
		if err == nil {
			got = g
		}
		return err == nil && got.GuestOS != "" && got.Sources != nil && got.Sources.GuestOS == api.SourceGuestAgent
	})
	if !strings.HasPrefix(got.GuestOS, "goldvm test guest") || got.GuestOSName != got.GuestOS {
		t.Errorf("guest_os %q, guest_os_name %q", got.GuestOS, got.GuestOSName)
	}
}
