package e2e

import (
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// requireTestNetns fails (under CI) or skips a test that must run in the
// test binary's own network namespace, as it does when run as root; why
// says what the test does there.
func requireTestNetns(t *testing.T, why string) {
	t.Helper()
	requireEnv(t)
	if os.Getenv(netnsMarker) == "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("this test %s: it runs only in the test's own network namespace (as root)", why)
		}
		t.Skipf("this test %s: it needs the test's own network namespace (run as root)", why)
	}
}

// TestServeDefaultsAndEnvironment: `goldvm serve` with no flags listens on
// 127.0.0.1:12345; GOLDVM_LISTEN and GOLDVM_DATA_DIR set the address and
// the data dir; a flag wins over its variable. (The default data dir,
// /var/lib/goldvm, is not touched: every run here names its own.) It runs
// in the test's network namespace, where 12345 is free.
func TestServeDefaultsAndEnvironment(t *testing.T) {
	requireTestNetns(t, "listens on the default port 127.0.0.1:12345")
	base := t.TempDir()
	searchableParents(t, filepath.Join(base, "data"))
	serve := func(env []string, args ...string) (stop func()) {
		t.Helper()
		logPath := filepath.Join(base, "daemon.log")
		logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		defer logf.Close()
		cmd := exec.Command(goldvmBin, append([]string{"serve"}, args...)...)
		cmd.Env = append(os.Environ(), env...)
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		stop = func() {
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				<-exited
			}
		}
		t.Cleanup(stop)
		return stop
	}
	answers := func(addr string) bool {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	hasStore := func(dir string) bool {
		fi, err := os.Stat(filepath.Join(dir, "goldvm.db"))
		return err == nil && fi.Mode().IsRegular()
	}

	// No flags: the default address; the data dir from the environment.
	dataA := filepath.Join(base, "a")
	stop := serve([]string{"GOLDVM_DATA_DIR=" + dataA})
	waitFor(t, "goldvm serve without flags to answer on 127.0.0.1:12345", time.Minute, func() bool { return answers("127.0.0.1:12345") })
	if !hasStore(dataA) {
		t.Errorf("GOLDVM_DATA_DIR=%s: no goldvm.db there", dataA)
	}
	if fi, err := os.Stat(dataA); err != nil {
		t.Error(err)
	} else if want := dataDirMode(); fi.Mode().Perm() != want {
		t.Errorf("data dir %s: mode %v, want %v", dataA, fi.Mode().Perm(), want)
	}
	stop()

	// GOLDVM_LISTEN; the default port stays closed.
	addr, dataB := freeAddr(t), filepath.Join(base, "b")
	stop = serve([]string{"GOLDVM_LISTEN=" + addr, "GOLDVM_DATA_DIR=" + dataB})
	waitFor(t, "GOLDVM_LISTEN="+addr+" to answer", time.Minute, func() bool { return answers(addr) })
	if answers("127.0.0.1:12345") {
		t.Errorf("with GOLDVM_LISTEN=%s the daemon also answers on 12345", addr)
	}
	if !hasStore(dataB) {
		t.Errorf("GOLDVM_DATA_DIR=%s: no goldvm.db there", dataB)
	}
	stop()

	// Flags win over the variables.
	flagAddr, dataC := freeAddr(t), filepath.Join(base, "c")
	stop = serve([]string{"GOLDVM_LISTEN=" + addr, "GOLDVM_DATA_DIR=" + dataB}, "--listen", flagAddr, "--data-dir", dataC)
	waitFor(t, "--listen "+flagAddr+" to answer", time.Minute, func() bool { return answers(flagAddr) })
	if answers(addr) {
		t.Errorf("--listen %s given, but the daemon answers on GOLDVM_LISTEN's %s", flagAddr, addr)
	}
	if !hasStore(dataC) {
		t.Errorf("--data-dir %s: no goldvm.db there", dataC)
	}
	stop()
	if t.Failed() {
		if b, err := os.ReadFile(filepath.Join(base, "daemon.log")); err == nil {
			t.Logf("daemon log:\n%s", lastLines(strings.TrimSpace(string(b)), 60))
		}
	}
}

// dataDirMode is the mode a new data dir gets: 0700, or 0711 (searchable,
// not listable) when QEMU runs as another user, as it does by default under
// a root daemon.
func dataDirMode() os.FileMode {
	if os.Geteuid() == 0 {
		return 0o711
	}
	return 0o700
}
