package lxd

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/goldvm/goldvm/internal/hypervisor/drivertest"
)

var (
	lxdOnce sync.Once
	lxdErr  error
	pkgOnce sync.Once
	pkgPath string
	pkgErr  error
)

// requireLXD makes the host's LXD ready (scripts/lxd-init.sh: started and
// initialised when it is not). Without root it skips, but never under
// CI=true.
func requireLXD(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("the LXD tests need root (CI=true: they must run)")
		}
		t.Skip("the LXD tests need root")
	}
	if testing.Short() && os.Getenv("CI") != "true" {
		t.Skip("-short: no LXD tests")
	}
	lxdOnce.Do(func() {
		script, err := filepath.Abs("../../../scripts/lxd-init.sh")
		if err != nil {
			lxdErr = err
			return
		}
		out, err := exec.Command("bash", script).CombinedOutput()
		if err != nil {
			lxdErr = fmt.Errorf("%s: %w\n%s", script, err, out)
		}
	})
	if lxdErr != nil {
		t.Fatalf("LXD is not usable here: %v (install it with scripts/deps.sh --test)", lxdErr)
	}
}

// containerPackage returns the test container package, built by
// testdata/container/build.sh (cached in ~/.cache/goldvm/container).
func containerPackage(t *testing.T) string {
	t.Helper()
	pkgOnce.Do(func() { pkgPath, pkgErr = runScript("testdata/container/build.sh") })
	if pkgErr != nil {
		t.Fatal(pkgErr)
	}
	return pkgPath
}

// runScript runs the repository's script rel with bash, with env added
// to the environment, and returns the last line it printed on stdout.
func runScript(rel string, env ...string) (string, error) {
	script, err := filepath.Abs(filepath.Join("../../..", rel))
	if err != nil {
		return "", err
	}
	cmd := exec.Command("bash", script)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s: %w", script, err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1], nil
}

// goldFromPackage unpacks the tar.gz pkg into a new directory and seals it
// as goldvm's image store does (files 0644 whatever the archive says, then
// 0444; directories 0555). It returns the directory and an image key made from
// the package's bytes.
func goldFromPackage(t *testing.T, pkg string) (dir, key string) {
	t.Helper()
	f, err := os.Open(pkg)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	zr, err := gzip.NewReader(io.TeeReader(f, h))
	if err != nil {
		t.Fatal(err)
	}
	dir = filepath.Join(t.TempDir(), "files")
	tr := tar.NewReader(zr)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, filepath.FromSlash(hdr.Name))
		switch hdr.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(p, 0o755)
		case tar.TypeSymlink:
			err = os.Symlink(hdr.Linkname, p)
		case tar.TypeReg:
			var out *os.File
			if out, err = os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o644); err == nil {
				_, err = io.Copy(out, tr)
				if cerr := out.Close(); err == nil {
					err = cerr
				}
			}
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	io.Copy(io.Discard, f)
	seal(t, dir)
	return dir, "sha256-" + hex.EncodeToString(h.Sum(nil))
}

// seal makes the tree under dir read-only as the image store does.
func seal(t *testing.T, dir string) {
	t.Helper()
	var dirs []string
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		switch {
		case e.IsDir():
			dirs = append(dirs, p)
		case e.Type().IsRegular():
			fi, err := e.Info()
			if err != nil {
				return err
			}
			mode := fs.FileMode(0o444)
			if fi.Mode()&0o111 != 0 {
				mode = 0o555
			}
			return os.Chmod(p, mode)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := os.Chmod(dirs[i], 0o555); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, d := range dirs {
			os.Chmod(d, 0o755)
		}
	})
}

// cluster3Dir is member1's directory of the three-member test cluster;
// member N's is cluster3Dir-N.
const cluster3Dir = "/var/lib/goldvm-test-lxd-cluster3"

// testCluster is one of the test LXD clusters, started once.
type testCluster struct {
	env  []string // for scripts/lxd-cluster-init.sh
	once sync.Once
	url  string
	err  error
}

// testClusters are the one-member cluster (placement, capacity) and the
// three-member one (a member going offline), by size.
var testClusters = map[int]*testCluster{
	1: {},
	3: {env: []string{"GOLDVM_LXD_CLUSTER_DIR=" + cluster3Dir, "GOLDVM_LXD_CLUSTER_MEMBERS=3", "GOLDVM_LXD_CLUSTER_PORT=18451"}},
}

// requireLXDCluster starts the test LXD cluster of members members
// (scripts/lxd-cluster-init.sh: LXD daemons beside the host's) and returns
// member1's URL (unix://socket). It skips and fails as requireLXD does.
func requireLXDCluster(t *testing.T, members int) string {
	t.Helper()
	requireLXD(t)
	c := testClusters[members]
	c.once.Do(func() {
		var sock string
		sock, c.err = runScript("scripts/lxd-cluster-init.sh", c.env...)
		c.url = "unix://" + sock
	})
	if c.err != nil {
		t.Fatalf("the %d-member test LXD cluster is not usable: %v", members, c.err)
	}
	return c.url
}

// testProject returns a project name of its own for this test on the
// host's LXD and removes the project (its instances and images first)
// when the test ends.
func testProject(t *testing.T) string { return testProjectAt(t, "") }

// testProjectAt is testProject on the LXD at url.
func testProjectAt(t *testing.T, url string) string {
	t.Helper()
	sum := sha256.Sum256(fmt.Appendf(nil, "%s %d %d", t.Name(), os.Getpid(), time.Now().UnixNano()))
	name := "goldvm-test-" + hex.EncodeToString(sum[:4])
	t.Cleanup(func() { removeProject(t, url, name) })
	return name
}

// removeProject deletes the project name of the LXD at url with
// everything in it.
func removeProject(t *testing.T, url, name string) {
	c, err := newClient(url, "", "", "", name)
	if err != nil {
		t.Errorf("cleanup: %v", err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var ins []instance
	if err := c.do(ctx, http.MethodGet, "/1.0/instances?recursion=1", nil, &ins); err != nil {
		if !isStatus(err, http.StatusNotFound) {
			t.Errorf("cleanup: listing instances: %v", err)
		}
		return
	}
	for _, in := range ins {
		c.do(ctx, http.MethodPut, "/1.0/instances/"+in.Name+"/state", map[string]any{"action": "stop", "force": true}, nil)
		if err := c.do(ctx, http.MethodDelete, "/1.0/instances/"+in.Name, nil, nil); err != nil {
			t.Errorf("cleanup: deleting instance %s: %v", in.Name, err)
		}
	}
	var imgs []struct {
		Fingerprint string `json:"fingerprint"`
	}
	if err := c.do(ctx, http.MethodGet, "/1.0/images?recursion=1", nil, &imgs); err != nil {
		t.Errorf("cleanup: listing images: %v", err)
	}
	for _, im := range imgs {
		if err := c.do(ctx, http.MethodDelete, "/1.0/images/"+im.Fingerprint, nil, nil); err != nil {
			t.Errorf("cleanup: deleting image %s: %v", im.Fingerprint, err)
		}
	}
	if err := c.do(ctx, http.MethodDelete, "/1.0/projects/"+name, nil, nil); err != nil {
		t.Errorf("cleanup: deleting project %s: %v", name, err)
	}
}

// newTestDriver returns a container driver in project of the host's LXD.
func newTestDriver(t *testing.T, project string) *Driver { return newTestDriverAt(t, "", project) }

// newTestDriverAt is newTestDriver on the LXD at url.
func newTestDriverAt(t *testing.T, url, project string) *Driver {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d, err := New(ctx, Config{URL: url, Project: project, InstanceType: TypeContainer, StopTimeout: 5 * time.Second, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func testLogger(t *testing.T) *slog.Logger { return drivertest.Logger(t) }
