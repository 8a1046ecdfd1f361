// Package e2e runs goldvm end to end: the real binary, the real QEMU backend
// booting the test guest that testdata/guest/build.sh makes from Debian
// packages, real HTTP servers on loopback for images and callbacks.
//
// As root, the test binary re-executes itself inside a fresh network
// namespace (unshare --net), so the bridge, taps and dnsmasq the daemon makes
// for "nat" live and die with the test, and all test traffic stays on that
// namespace's loopback and its own guests. Without root it runs in place and
// the daemon falls back to user-mode networking.
//
// Under CI=true nothing here skips: a missing QEMU or guest fails the run.
package e2e

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/goldvm/goldvm/internal/openapicheck"
)

const netnsMarker = "GOLDVM_E2E_IN_NETNS"

var (
	goldvmBin string // the built goldvm binary
	guestDisk string // the test guest's qcow2
	setupErr  error  // why the environment is not usable
	// apiCheck validates the traffic to the daemons against the OpenAPI
	// document; a mismatch fails the test that started the daemon.
	apiCheck *openapicheck.Transport
)

func TestMain(m *testing.M) {
	if os.Getenv(netnsMarker) == "" && os.Geteuid() == 0 && os.Getenv("GOLDVM_E2E_NO_NETNS") == "" {
		if _, err := exec.LookPath("unshare"); err == nil {
			os.Exit(reexecInNetns())
		}
	}
	if os.Getenv(netnsMarker) != "" {
		for _, args := range [][]string{
			{"mount", "-t", "sysfs", "sysfs", "/sys"},
			{"ip", "link", "set", "lo", "up"},
		} {
			if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "e2e: %v in the test namespace: %v: %s\n", args, err, out)
				os.Exit(1)
			}
		}
	}
	tmp, err := os.MkdirTemp("", "goldvm-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// TestUnprivilegedDaemon runs the binary as another user.
	if err := os.Chmod(tmp, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	setupErr = setup(tmp)
	// Every request to a daemon the harness started, from client.New,
	// http.Get or any client on http.DefaultTransport, and its answer are
	// checked against api/openapi.yaml (see startDaemonAs).
	if apiCheck, err = openapicheck.New(http.DefaultTransport); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	http.DefaultTransport = apiCheck
	code := m.Run()
	fmt.Fprintln(os.Stderr, "e2e:", apiCheck.Summary())
	if os.Getenv(netnsMarker) != "" {
		killNamespaceDnsmasq()
	}
	os.RemoveAll(tmp)
	os.Exit(code)
}

// reexecInNetns runs this same test binary, with the same flags, in a new
// network namespace and returns its exit code.
func reexecInNetns() int {
	// A mount namespace too, so /sys can be remounted to show this
	// network namespace's devices (as `ip netns exec` does).
	cmd := exec.Command("unshare", append([]string{"--net", "--mount", "--propagation", "private", "--", os.Args[0]}, os.Args[1:]...)...)
	cmd.Env = append(os.Environ(), netnsMarker+"=1")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		fmt.Fprintln(os.Stderr, "e2e: unshare --net:", err)
		return 1
	}
	return 0
}

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

func setup(tmp string) error {
	bin := filepath.Join(tmp, "goldvm")
	build := exec.Command("go", "build", "-o", bin, "./cmd/goldvm")
	build.Dir = repoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %v\n%s", err, out)
	}
	goldvmBin = bin
	for _, bin := range []string{"qemu-system-x86_64", "qemu-img"} {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Errorf("%s is not installed (apt-get install qemu-system-x86 qemu-utils)", bin)
		}
	}
	guestDisk = os.Getenv("GOLDVM_TEST_GUEST")
	if guestDisk == "" {
		var stdout bytes.Buffer
		cmd := exec.Command("bash", filepath.Join(repoRoot(), "testdata", "guest", "build.sh"))
		cmd.Stdout, cmd.Stderr = &stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("testdata/guest/build.sh: %w", err)
		}
		lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
		guestDisk = strings.TrimSpace(lines[len(lines)-1])
	}
	if _, err := os.Stat(guestDisk); err != nil {
		return fmt.Errorf("test guest: %w", err)
	}
	return nil
}

// requireEnv fails (under CI) or skips (elsewhere) when the environment
// cannot run end-to-end tests.
func requireEnv(t *testing.T) {
	t.Helper()
	if setupErr == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("end-to-end environment unusable under CI: %v", setupErr)
	}
	t.Skipf("end-to-end environment unusable: %v", setupErr)
}
