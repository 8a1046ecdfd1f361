package e2e

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/client"
)

// daemon is a goldvm serve process under test.
type daemon struct {
	t       *testing.T
	dataDir string
	addr    string
	logPath string
	cmd     *exec.Cmd
	client  *client.Client
	// env is added to the daemon's environment at the next start.
	env []string
	// exited is closed when the current daemon process ends.
	exited chan struct{}
	// cred, if set, is the user the daemon runs as.
	cred *syscall.Credential
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startDaemon starts goldvm serve on dataDir and waits until it answers.
// The test's cleanup stops it and kills anything it left running.
func startDaemon(t *testing.T, dataDir string, extra ...string) *daemon {
	t.Helper()
	return startDaemonEnv(t, dataDir, nil, extra...)
}

// startDaemonEnv is startDaemon with extra environment variables.
func startDaemonEnv(t *testing.T, dataDir string, env []string, extra ...string) *daemon {
	t.Helper()
	return startDaemonAs(t, dataDir, env, nil, extra...)
}

// startDaemonAs is startDaemonEnv as another user (cred nil: this one).
func startDaemonAs(t *testing.T, dataDir string, env []string, cred *syscall.Credential, extra ...string) *daemon {
	t.Helper()
	searchableParents(t, dataDir)
	d := &daemon{t: t, dataDir: dataDir, addr: freeAddr(t), env: env, cred: cred,
		logPath: filepath.Join(dataDir, "..", filepath.Base(dataDir)+"-daemon.log")}
	// Registered first, so it ends last: the daemon's traffic until it
	// stops is checked against api/openapi.yaml, its mismatches fail t.
	t.Cleanup(apiCheck.Watch(d.addr, t))
	d.start(extra...)
	t.Cleanup(func() {
		d.stop()
		if t.Failed() {
			if b, err := os.ReadFile(d.logPath); err == nil {
				t.Logf("daemon log:\n%s", lastLines(string(b), 80))
			}
		}
		killStrays(t, dataDir)
	})
	return d
}

func (d *daemon) start(extra ...string) {
	d.t.Helper()
	logf, err := os.OpenFile(d.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		d.t.Fatal(err)
	}
	args := append([]string{"serve", "--listen", d.addr, "--data-dir", d.dataDir, "--accel", "tcg", "--log-level", "debug", "--log-format", "text"}, extra...)
	d.cmd = exec.Command(goldvmBin, args...)
	d.cmd.Env = append(os.Environ(), d.env...)
	if d.cred != nil {
		d.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: d.cred}
	}
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	logf.Close()
	exited := make(chan struct{})
	d.exited = exited
	go func(cmd *exec.Cmd) { cmd.Wait(); close(exited) }(d.cmd)
	d.client = client.New(d.addr, "")
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get("http://" + d.addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(d.logPath)
			d.t.Fatalf("daemon did not answer on %s: %v\n%s", d.addr, err, lastLines(string(b), 40))
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(d.logPath)
			d.t.Fatalf("daemon exited at start:\n%s", lastLines(string(b), 40))
		default:
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// kill SIGKILLs the daemon, as a crash would.
func (d *daemon) kill() {
	if d.cmd != nil && d.cmd.Process != nil {
		d.cmd.Process.Kill()
		<-d.exited
		d.cmd = nil
	}
}

// stop asks the daemon to shut down and waits.
func (d *daemon) stop() {
	if d.cmd == nil || d.cmd.Process == nil {
		return
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(30 * time.Second):
		d.cmd.Process.Kill()
		<-d.exited
	}
	d.cmd = nil
}

// processesMatching lists pids whose command line contains s.
func processesMatching(s string) []int {
	var pids []int
	for _, pid := range allPIDs() {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err == nil && bytes.Contains(b, []byte(s)) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// allPIDs lists the processes visible in /proc, this one excepted.
func allPIDs() []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil && pid != os.Getpid() {
			pids = append(pids, pid)
		}
	}
	return pids
}

// killStrays kills every process that refers to dataDir (QEMU, dnsmasq), so
// a failed test cannot leave guests running.
func killStrays(t *testing.T, dataDir string) {
	for _, pid := range processesMatching(dataDir) {
		if os.Getenv(netnsMarker) != "" && isDnsmasq(pid) {
			// The bridge's DHCP server may serve other tests' daemons in
			// this namespace; TestMain stops it when every test is done.
			continue
		}
		t.Logf("killing leftover process %d", pid)
		syscall.Kill(pid, syscall.SIGKILL)
	}
	if os.Getenv(netnsMarker) == "" {
		return // taps outside the test's namespace are not the test's to remove
	}
	// The taps of VMs the test left behind (their QEMU was just killed):
	// a tap's alias names its VM, whose directory is under dataDir.
	out, _ := exec.Command("ip", "-o", "link", "show", "type", "tun").Output()
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		i := slices.Index(f, "alias")
		if len(f) < 2 || i < 0 || i+1 >= len(f) {
			continue
		}
		id, ok := strings.CutPrefix(f[i+1], "goldvm:")
		if !ok || id == "" || strings.ContainsAny(id, "/.") {
			continue
		}
		if _, err := os.Stat(filepath.Join(dataDir, "vms", id)); err == nil {
			tap := strings.TrimSuffix(f[1], ":")
			t.Logf("removing the tap %s of leftover VM %s", tap, id)
			exec.Command("ip", "link", "del", tap).Run()
		}
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// imageServer serves files from a directory on loopback and counts requests.
type imageServer struct {
	*httptest.Server
	dir      string
	requests sync.Map // path -> *atomic.Int32
}

func newImageServer(t *testing.T) *imageServer {
	s := &imageServer{dir: t.TempDir()}
	fs := http.FileServer(http.Dir(s.dir))
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := s.requests.LoadOrStore(r.URL.Path, new(atomic.Int32))
		n.(*atomic.Int32).Add(1)
		fs.ServeHTTP(w, r)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *imageServer) count(path string) int {
	n, ok := s.requests.Load(path)
	if !ok {
		return 0
	}
	return int(n.(*atomic.Int32).Load())
}

// callbackServer records the bodies POSTed to it.
type callbackServer struct {
	*httptest.Server
	mu     sync.Mutex
	bodies map[string][]api.VM // by VM id
	status atomic.Int32        // answer to give; 200 when 0
}

func newCallbackServer(t *testing.T) *callbackServer {
	c := &callbackServer{bodies: map[string][]api.VM{}}
	c.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var v api.VM
		if err := json.NewDecoder(r.Body).Decode(&v); err != nil {
			t.Errorf("callback body: %v", err)
		}
		c.mu.Lock()
		c.bodies[v.ID] = append(c.bodies[v.ID], v)
		c.mu.Unlock()
		if s := c.status.Load(); s != 0 {
			w.WriteHeader(int(s))
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(c.Close)
	return c
}

func (c *callbackServer) got(id string) []api.VM {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]api.VM(nil), c.bodies[id]...)
}

// waitCallback waits until a callback for id has arrived.
func (c *callbackServer) waitCallback(t *testing.T, id string, timeout time.Duration) api.VM {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if got := c.got(id); len(got) > 0 {
			return got[len(got)-1]
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no callback for %s within %s", id, timeout)
	return api.VM{}
}

// sha256File returns the hex sha256 of a file.
func sha256File(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// packages maps a format name to a function that packages the guest disk
// into dir and returns the package's file name. Archives nest the disk one
// level down next to a README, as real image packages do.
var packages = map[string]func(t *testing.T, dir string) string{
	"qcow2": func(t *testing.T, dir string) string {
		copyFile(t, guestDisk, filepath.Join(dir, "guest.qcow2"))
		return "guest.qcow2"
	},
	"tar":     tarWith(""),
	"tar.gz":  tarWith("--gzip"),
	"tar.bz2": tarWith("--bzip2"),
	"tar.zst": tarWith("--zstd"),
	"tar.xz":  tarWith("--xz"),
	"zip": func(t *testing.T, dir string) string {
		src := stageGuest(t)
		run(t, src, "zip", "-q", "-r", filepath.Join(dir, "guest.zip"), "guest")
		return "guest.zip"
	},
	// archive/zip writes a stored file's sizes only in a data descriptor
	// after its data: the end of such an entry cannot be found while it
	// streams, so goldvm unpacks this one after the download.
	"zip-stored": func(t *testing.T, dir string) string {
		src := stageGuest(t)
		out, err := os.Create(filepath.Join(dir, "guest.zip"))
		if err != nil {
			t.Fatal(err)
		}
		defer out.Close()
		zw := zip.NewWriter(out)
		for _, name := range []string{"guest/README", "guest/disk.qcow2"} {
			w, err := zw.CreateHeader(&zip.FileHeader{Name: name, Method: zip.Store})
			if err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(filepath.Join(src, name))
			if err != nil {
				t.Fatal(err)
			}
			_, err = io.Copy(w, f)
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
		}
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
		return "guest.zip"
	},
}

func tarWith(compress string) func(t *testing.T, dir string) string {
	return func(t *testing.T, dir string) string {
		src := stageGuest(t)
		name := "guest.tar"
		switch compress {
		case "--gzip":
			name += ".gz"
		case "--bzip2":
			name += ".bz2"
		case "--zstd":
			name += ".zst"
		case "--xz":
			name += ".xz"
		}
		args := []string{"-c", "-f", filepath.Join(dir, name)}
		if compress != "" {
			args = append(args, compress)
		}
		run(t, src, "tar", append(args, "guest")...)
		return name
	}
}

// stageGuest lays out guest/disk.qcow2 and guest/README in a temp dir.
func stageGuest(t *testing.T) string {
	t.Helper()
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "guest"), 0o755)
	copyFile(t, guestDisk, filepath.Join(src, "guest", "disk.qcow2"))
	os.WriteFile(filepath.Join(src, "guest", "README"), []byte("goldvm test guest\n"), 0o644)
	return src
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	run(t, "", "cp", "--sparse=always", from, to)
}

func run(t *testing.T, dir, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// publish packages the guest in format, serves it and returns the image spec.
func publish(t *testing.T, srv *imageServer, format string) api.Image {
	t.Helper()
	sub := filepath.Join(srv.dir, strings.ReplaceAll(format, ".", "-"))
	os.MkdirAll(sub, 0o755)
	name := packages[format](t, sub)
	path := filepath.Join(sub, name)
	return api.Image{
		URL:          srv.URL + "/" + filepath.Base(sub) + "/" + name,
		Checksum:     sha256File(t, path),
		ChecksumType: "sha256",
	}
}

// postJSON sends a raw request and decodes the reply.
func postRaw(t *testing.T, d *daemon, method, path, contentType, body string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+d.addr+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

// waitVM polls until the VM's creation ends.
func waitVM(t *testing.T, d *daemon, id string, timeout time.Duration) *api.VM {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	v, err := d.client.WaitVM(ctx, id, nil)
	if err != nil {
		t.Fatalf("wait for %s: %v (last: %+v)", id, err, v)
	}
	return v
}

// waitStatus polls until the VM has the wanted status.
func waitStatus(t *testing.T, d *daemon, id string, want api.Status, timeout time.Duration) *api.VM {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var v *api.VM
	var err error
	for time.Now().Before(deadline) {
		v, err = d.client.GetVM(context.Background(), id)
		if err == nil && v.Status == want {
			return v
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("VM %s did not reach %s within %s (last: %+v, err %v)", id, want, timeout, v, err)
	return nil
}

// assertGone checks that nothing of the VM is left: record, directory, process.
func assertGone(t *testing.T, d *daemon, id string) {
	t.Helper()
	if _, err := d.client.GetVM(context.Background(), id); !isAPIError(err, 404, "vm-not-found") {
		t.Errorf("GET after delete: got %v, want 404 vm-not-found", err)
	}
	if _, err := os.Stat(filepath.Join(d.dataDir, "vms", id)); !os.IsNotExist(err) {
		t.Errorf("VM directory of %s still exists (err %v)", id, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(processesMatching("goldvm-"+id)) > 0 {
		if time.Now().After(deadline) {
			t.Errorf("QEMU process of %s still running: %v", id, processesMatching("goldvm-"+id))
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func isAPIError(err error, status int, code string) bool {
	e, ok := err.(*client.APIError)
	return ok && e.Status == status && e.Code == code
}

func createReq(img api.Image, callback string) api.CreateVMRequest {
	return api.CreateVMRequest{
		CPUs: 1, Memory: 128, NetworkType: "nat", Image: img, CallbackURL: callback,
		ToolsInitTimeout: api.Duration(3 * time.Minute),
	}
}

func mustCreate(t *testing.T, d *daemon, req api.CreateVMRequest) *api.VM {
	t.Helper()
	v, err := d.client.CreateVM(context.Background(), req)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if v.Status != api.StatusCreating || v.ID == "" {
		t.Fatalf("create answered %+v, want a creating record with an id", v)
	}
	return v
}

func fmtVM(v *api.VM) string {
	b, _ := json.Marshal(v)
	return fmt.Sprint(string(b))
}

func isDnsmasq(pid int) bool {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	name, _, _ := bytes.Cut(b, []byte{0})
	return filepath.Base(string(name)) == "dnsmasq"
}

// killNamespaceDnsmasq stops every dnsmasq in this network namespace, so the
// namespace the tests made goes away with them.
func killNamespaceDnsmasq() {
	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		return
	}
	for _, pid := range allPIDs() {
		if !isDnsmasq(pid) {
			continue
		}
		if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid)); err == nil && ns == self {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// lockedBuffer is a buffer a command writes to while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startBackground starts cmd, which runs until the end of the test (then
// it is killed), with its output gathered in out; exited is closed when
// it has exited.
func startBackground(t *testing.T, cmd *exec.Cmd) (out *lockedBuffer, exited <-chan struct{}) {
	t.Helper()
	out = &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", cmd.Path, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-done })
	return out, done
}

// testBridge makes the bridge name, up, with the address cidr unless it is
// empty; it is removed at the end of the test.
func testBridge(t *testing.T, name, cidr string) {
	t.Helper()
	cmds := [][]string{{"ip", "link", "add", name, "type", "bridge"}}
	if cidr != "" {
		cmds = append(cmds, []string{"ip", "addr", "add", cidr, "dev", name})
	}
	cmds = append(cmds, []string{"ip", "link", "set", name, "up"})
	for i, args := range cmds {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
		if i == 0 {
			t.Cleanup(func() { exec.Command("ip", "link", "del", name).Run() })
		}
	}
}

// searchableParents lets other users search the test's directories above
// dataDir (t.TempDir makes them 0700): a root daemon runs QEMU under user
// ids of its own by default, and QEMU opens the disks below by path.
func searchableParents(t *testing.T, dataDir string) {
	t.Helper()
	tmp := filepath.Clean(os.TempDir())
	for dir := filepath.Dir(filepath.Clean(dataDir)); strings.HasPrefix(dir, tmp+string(filepath.Separator)); dir = filepath.Dir(dir) {
		fi, err := os.Stat(dir)
		if err != nil {
			continue // made later, by the daemon
		}
		if err := os.Chmod(dir, fi.Mode().Perm()|0o001); err != nil {
			t.Fatal(err)
		}
	}
}
