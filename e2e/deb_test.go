package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/client"
)

// debVersion is the version TestDebPackage builds the package as.
const debVersion = "9.8.7~e2e"

// TestDebPackage builds the .deb with scripts/deb.sh, checks its metadata
// and files, installs it with dpkg into a scratch root (--root, the
// maintainer scripts run outside it: --force-script-chrootless), and starts
// the installed daemon exactly as the installed unit's ExecStart and
// Environment say, within the unit's CapabilityBoundingSet and
// NoNewPrivileges (setpriv), with the installed configuration file edited to
// a scratch data directory and address. It answers /healthz and GET /vms,
// and, given the test guest, runs a VM with NAT networking under per-VM
// user ids: the capabilities the unit grants are enough. The maintainer
// scripts are run once with systemd present (a private /run with
// /run/systemd/system and a systemctl that records its arguments, since
// this machine's PID 1 is not systemd) and once without. Nothing is
// installed on the host: upgrade, remove and purge run in the scratch root.
func TestDebPackage(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("dpkg --root installs files owned by root: run as root")
	}
	for _, tool := range []string{"dpkg-deb", "dpkg", "setpriv", "unshare"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is missing", tool)
			}
			t.Skipf("%s is missing", tool)
		}
	}
	repo := repoRoot()
	head := strings.TrimSpace(output(t, "git", "-C", repo, "rev-parse", "HEAD"))
	outDir := t.TempDir()
	build := exec.Command("bash", filepath.Join(repo, "scripts", "deb.sh"), outDir)
	build.Env = append(os.Environ(), "VERSION="+debVersion)
	out, err := build.Output()
	if err != nil {
		t.Fatalf("scripts/deb.sh: %v\n%s", err, exitStderr(err))
	}
	deb := strings.TrimSpace(string(out))
	if filepath.Base(deb) != "goldvm_"+debVersion+"_"+goarch(t)+".deb" {
		t.Fatalf("scripts/deb.sh made %s", deb)
	}

	// Metadata and contents.
	info := output(t, "dpkg-deb", "-I", deb)
	for _, want := range []string{
		"Package: goldvm", "Version: " + debVersion, "Architecture: " + goarch(t),
		"qemu-utils", "dnsmasq-base", "iproute2", "nftables", " postinst", " prerm", " postrm", " conffiles",
	} {
		if !strings.Contains(info, want) {
			t.Errorf("dpkg-deb -I lacks %q:\n%s", want, info)
		}
	}
	if c := output(t, "dpkg-deb", "-I", deb, "conffiles"); strings.TrimSpace(c) != "/etc/goldvm/goldvm.toml" {
		t.Errorf("conffiles: %q", c)
	}
	contents := output(t, "dpkg-deb", "-c", deb)
	for _, re := range []string{
		`(?m)^-rwxr-xr-x root/root +\d+ .* \./usr/bin/goldvm$`,
		`(?m)^-rw-r--r-- root/root +\d+ .* \./lib/systemd/system/goldvm\.service$`,
		`(?m)^-rw-r----- root/root +\d+ .* \./etc/goldvm/goldvm\.toml$`,
	} {
		if !regexp.MustCompile(re).MatchString(contents) {
			t.Errorf("dpkg-deb -c lacks %s:\n%s", re, contents)
		}
	}

	// Install into a scratch root, with systemd "running".
	root := t.TempDir()
	for _, d := range []string{"var/lib/dpkg/info", "var/lib/dpkg/updates"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "var/lib/dpkg/status"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	calls := dpkgRoot(t, root, true, "-i", deb)
	if want := "daemon-reload\nenable goldvm.service\nstart goldvm.service\n"; calls != want {
		t.Errorf("postinst of a new install ran systemctl:\n%s\nwant:\n%s", calls, want)
	}
	status := output(t, "dpkg", "--root="+root, "-s", "goldvm")
	if !strings.Contains(status, "Status: install ok installed") || !strings.Contains(status, "Version: "+debVersion) {
		t.Errorf("dpkg -s goldvm:\n%s", status)
	}
	listed := output(t, "dpkg", "--root="+root, "-L", "goldvm")
	for _, f := range []string{"/usr/bin/goldvm", "/lib/systemd/system/goldvm.service", "/etc/goldvm/goldvm.toml"} {
		if !strings.Contains(listed, f+"\n") {
			t.Errorf("dpkg -L goldvm lacks %s:\n%s", f, listed)
		}
	}
	bin := filepath.Join(root, "usr/bin/goldvm")
	if v := output(t, bin, "version"); !strings.HasPrefix(v, "goldvm "+debVersion+" (commit "+head[:12]) {
		t.Errorf("goldvm version: %q, want %s at commit %s", v, debVersion, head[:12])
	}

	unitPath := filepath.Join(root, "lib/systemd/system/goldvm.service")
	unitText, err := os.ReadFile(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	unit := parseUnit(string(unitText))
	if analyze, err := exec.LookPath("systemd-analyze"); err == nil {
		// verify wants ExecStart's program where the unit says: point it
		// at the installed one.
		vu := filepath.Join(t.TempDir(), "goldvm.service")
		os.WriteFile(vu, []byte(strings.ReplaceAll(string(unitText), "/usr/bin/goldvm", bin)), 0o644)
		if out, err := exec.Command(analyze, "verify", vu).CombinedOutput(); err != nil || len(strings.TrimSpace(string(out))) > 0 {
			t.Errorf("systemd-analyze verify of the installed unit: %v\n%s", err, out)
		}
	}

	// The administrator's edit of the installed configuration file.
	dataDir := filepath.Join(t.TempDir(), "data")
	searchableParents(t, dataDir)
	addr := freeAddr(t)
	conf := filepath.Join(root, "etc/goldvm/goldvm.toml")
	edited := editConfig(t, conf, map[string]string{"listen": addr, "data-dir": dataDir})

	// ExecStart as the unit says, /etc/goldvm/goldvm.toml being the
	// installed one, within the unit's capabilities.
	argv := unit.execStart
	if len(argv) < 2 || argv[0] != "/usr/bin/goldvm" || argv[1] != "serve" {
		t.Fatalf("ExecStart=%v", argv)
	}
	argv[0] = bin
	for i, a := range argv {
		if a == "/etc/goldvm/goldvm.toml" {
			argv[i] = conf
		}
	}
	if unit.service["NoNewPrivileges"] != "yes" || unit.service["CapabilityBoundingSet"] == "" {
		t.Fatalf("the unit lacks NoNewPrivileges or CapabilityBoundingSet: %v", unit.service)
	}
	bounding := "-all"
	for _, c := range strings.Fields(unit.service["CapabilityBoundingSet"]) {
		bounding += ",+" + strings.ToLower(strings.TrimPrefix(c, "CAP_"))
	}
	logPath := filepath.Join(filepath.Dir(dataDir), "daemon.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("setpriv", append([]string{"--bounding-set", bounding, "--no-new-privs", "--"}, argv...)...)
	cmd.Env = append([]string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, unit.env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		killStrays(t, dataDir)
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("installed daemon's log:\n%s", lastLines(string(b), 60))
		}
	})
	d := &daemon{t: t, dataDir: dataDir, addr: addr, logPath: logPath, client: client.New(addr, "")}
	waitHealthy(t, addr, exited)
	resp, err := http.Get("http://" + addr + "/vms")
	if err != nil {
		t.Fatal(err)
	}
	var list api.VMList
	err = json.NewDecoder(resp.Body).Decode(&list)
	resp.Body.Close()
	if resp.StatusCode != 200 || err != nil || len(list.VMs) != 0 {
		t.Errorf("GET /vms: %d, %+v, %v; want 200 and no VM", resp.StatusCode, list, err)
	}
	// Environment=GOLDVM_LOG_FORMAT=json reached it: the journal gets JSON.
	if line := firstLine(t, logPath); !json.Valid([]byte(line)) {
		t.Errorf("the daemon's first log line is not JSON: %q", line)
	}
	if caps := procStatus(t, cmd.Process.Pid, "CapBnd"); caps != boundingMask(t, bounding) {
		t.Errorf("the daemon's CapBnd %s, want %s", caps, boundingMask(t, bounding))
	}

	t.Run("vm", func(t *testing.T) {
		requireEnv(t)
		srv := newImageServer(t)
		req := createReq(publish(t, srv, "qcow2"), "")
		v := mustCreate(t, d, req)
		got := waitVM(t, d, v.ID, 5*time.Minute)
		if got.Status != api.StatusRunning || got.IPAddress == "" {
			t.Fatalf("VM under the unit's capabilities: %s", fmtVM(got))
		}
		if err := pingGuest(got.IPAddress); err != nil {
			t.Errorf("ping %s: %v", got.IPAddress, err)
		}
		if err := d.client.DeleteVM(context.Background(), v.ID); err != nil {
			t.Fatalf("delete: %v", err)
		}
		assertGone(t, d, v.ID)
	})

	// Reinstalling (an upgrade) keeps the edited configuration and
	// restarts the service; without systemd the scripts do nothing.
	if calls := dpkgRoot(t, root, true, "-i", deb); calls != "daemon-reload\nenable goldvm.service\ntry-restart goldvm.service\n" {
		t.Errorf("postinst of an upgrade ran systemctl:\n%s", calls)
	}
	if b, _ := os.ReadFile(conf); string(b) != edited {
		t.Errorf("the upgrade replaced the edited configuration file:\n%s", b)
	}
	if calls := dpkgRoot(t, root, false, "-i", deb); calls != "" {
		t.Errorf("without systemd, postinst ran systemctl:\n%s", calls)
	}
	if calls := dpkgRoot(t, root, true, "-r", "goldvm"); calls != "stop goldvm.service\ndisable goldvm.service\ndaemon-reload\n" {
		t.Errorf("prerm and postrm of a removal ran systemctl:\n%s", calls)
	}
	if _, err := os.Stat(bin); !os.IsNotExist(err) {
		t.Errorf("removed, the binary is still there: %v", err)
	}
	if _, err := os.Stat(conf); err != nil {
		t.Errorf("removed (not purged), the configuration file is gone: %v", err)
	}
	if calls := dpkgRoot(t, root, false, "--purge", "goldvm"); calls != "" {
		t.Errorf("without systemd, postrm ran systemctl:\n%s", calls)
	}
	if _, err := os.Stat(conf); !os.IsNotExist(err) {
		t.Errorf("purged, the configuration file is still there: %v", err)
	}
}

// dpkgRoot runs dpkg --root=root args (the maintainer scripts outside the
// root) in a mount namespace of its own with a fresh /run, which holds
// /run/systemd/system if systemd (as if systemd ran this machine, whether
// or not it does), and with a systemctl on PATH that records its arguments
// instead of reaching the host's systemd. It returns those, one call a line.
func dpkgRoot(t *testing.T, root string, systemd bool, args ...string) string {
	t.Helper()
	dir := t.TempDir()
	log := filepath.Join(dir, "systemctl.log")
	fake := filepath.Join(dir, "bin", "systemctl")
	os.MkdirAll(filepath.Dir(fake), 0o755)
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho \"$*\" >>"+log+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	dpkg := "dpkg --root=" + root + " --force-script-chrootless --force-depends " + strings.Join(args, " ")
	script := "mount -t tmpfs tmpfs /run\n"
	if systemd {
		script += "mkdir -p /run/systemd/system\n"
	}
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-ec", script+dpkg)
	cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(fake)+":"+os.Getenv("PATH"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", dpkg, err, out)
	}
	b, _ := os.ReadFile(log)
	return string(b)
}

// unitFile is what TestDebPackage reads of a systemd unit.
type unitFile struct {
	execStart []string          // ExecStart, split at spaces (goldvm's quotes nothing)
	env       []string          // Environment= assignments
	service   map[string]string // the [Service] section's other settings
}

func parseUnit(text string) unitFile {
	u := unitFile{service: map[string]string{}}
	section := ""
	for _, l := range strings.Split(text, "\n") {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "[") {
			section = l
			continue
		}
		k, v, ok := strings.Cut(l, "=")
		if section != "[Service]" || !ok || strings.HasPrefix(l, "#") {
			continue
		}
		switch k {
		case "ExecStart":
			u.execStart = strings.Fields(v)
		case "Environment":
			u.env = append(u.env, strings.Fields(v)...)
		default:
			u.service[k] = v
		}
	}
	return u
}

// editConfig sets keys of a TOML configuration file (each must be there,
// set, on a line of its own) and returns the new text.
func editConfig(t *testing.T, path string, set map[string]string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	for k, v := range set {
		re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(k) + ` = .*$`)
		if !re.MatchString(text) {
			t.Fatalf("%s sets no %s", path, k)
		}
		text = re.ReplaceAllLiteralString(text, k+" = "+strconv.Quote(v))
	}
	if err := os.WriteFile(path, []byte(text), 0o640); err != nil {
		t.Fatal(err)
	}
	return text
}

// waitHealthy waits until a daemon answers /healthz, failing if it exits.
func waitHealthy(t *testing.T, addr string, exited <-chan struct{}) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		select {
		case <-exited:
			t.Fatal("the installed daemon exited at start")
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the installed daemon does not answer on %s: %v", addr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func output(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, exitStderr(err))
	}
	return string(out)
}

func exitStderr(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}

func goarch(t *testing.T) string {
	return strings.TrimSpace(output(t, "go", "env", "GOARCH"))
}

func firstLine(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	s.Scan()
	return s.Text()
}

// procStatus is a field of /proc/PID/status.
func procStatus(t *testing.T, pid int, field string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// boundingMask is the CapBnd that setpriv --bounding-set spec gives.
func boundingMask(t *testing.T, spec string) string {
	t.Helper()
	out := output(t, "setpriv", "--bounding-set", spec, "--", "grep", "^CapBnd:", "/proc/self/status")
	return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(out), "CapBnd:"))
}
