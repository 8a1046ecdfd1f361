package lxd

import (
	"context"
	"net/http"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/cloudinit"
	"github.com/goldvm/goldvm/internal/hypervisor"
)

// TestUserData: a VM's user_data, with its ssh_authorized_keys folded in
// (cloudinit.UserData), is the instance's cloud-init.user-data, as LXD
// keeps it and as LXD serves it inside the running container on
// /dev/lxd/sock, which is where cloud-init's LXD datasource reads it. The
// test container has no cloud-init of its own (busybox only), so the
// devlxd answer is read with the host's curl run in the container's PID
// and user namespaces (devlxd tells its caller's instance by its PID
// namespace and answers the instance's root only).
func TestUserData(t *testing.T) {
	requireLXD(t)
	gold, key := goldFromPackage(t, containerPackage(t))
	project := testProject(t)
	d := newTestDriver(t, project)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	suffix := project[len(project)-8:]
	ci := hypervisor.CloudInit{
		UserData:          "#cloud-config\nruncmd:\n  - [sh, -c, 'echo \"a: b\" > /run/x']\n",
		SSHAuthorizedKeys: []string{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEexample k1"},
	}
	plain := hypervisor.Spec{ID: "plain-" + suffix, GoldDir: gold, ImageKey: key, CPUs: 1, MemoryMiB: 64, Network: api.NetworkNAT,
		CloudInit: &hypervisor.CloudInit{InstanceID: "plain-" + suffix, Hostname: "plain-" + suffix, UserData: ci.UserData}}
	withKeys := plain
	withKeys.ID = "keys-" + suffix
	withKeys.CloudInit = &ci
	none := plain
	none.ID = "none-" + suffix
	none.CloudInit = &hypervisor.CloudInit{InstanceID: none.ID, Hostname: none.ID}

	for _, c := range []struct {
		spec hypervisor.Spec
		want string
	}{
		{plain, ci.UserData},
		{withKeys, cloudinit.UserData(cloudinit.Config{CloudInit: ci})},
		{none, ""},
	} {
		if err := d.Clone(ctx, c.spec); err != nil {
			t.Fatal(err)
		}
		defer d.Destroy(context.Background(), c.spec)
		in, err := d.get(ctx, namePrefix+c.spec.ID)
		if err != nil {
			t.Fatal(err)
		}
		got, set := in.Config["cloud-init.user-data"]
		if got != c.want || set != (c.want != "") {
			t.Errorf("%s: cloud-init.user-data %q (set %v), want %q", c.spec.ID, got, set, c.want)
		}
	}

	// Inside the running container: what cloud-init would read.
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Fatal("curl not installed (scripts/deps.sh --test)")
	}
	if err := d.Start(ctx, withKeys); err != nil {
		t.Fatal(err)
	}
	var st struct {
		Pid int `json:"pid"`
	}
	if err := d.c.do(ctx, http.MethodGet, "/1.0/instances/"+namePrefix+withKeys.ID+"/state", nil, &st); err != nil || st.Pid <= 0 {
		t.Fatalf("instance state: pid %d, %v", st.Pid, err)
	}
	out, err := exec.CommandContext(ctx, "nsenter", "--target", strconv.Itoa(st.Pid), "--pid", "--user", "--",
		curl, "-s", "--unix-socket", "/var/lib/lxd/devlxd/sock", "http://lxd/1.0/config/cloud-init.user-data").Output()
	if err != nil {
		t.Fatalf("devlxd: %v", err)
	}
	if want := cloudinit.UserData(cloudinit.Config{CloudInit: ci}); string(out) != want {
		t.Errorf("devlxd serves the container\n%q\nwant\n%q", out, want)
	}
}
