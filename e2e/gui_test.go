package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
)

// TestCreateWithWindow: "launch_gui": true opens the VM's console in a
// window. The test runs a virtual X server (Xvfb) and starts the daemon on
// its display: QEMU runs with its gtk display under the sandbox it allows
// (spawning, which gtk needs), the X server shows its window, the guest
// boots and answers, a screenshot still works, and the window goes with
// the VM.
func TestCreateWithWindow(t *testing.T) {
	requireEnv(t)
	xvfb, err := exec.LookPath("Xvfb")
	xwininfo, err2 := exec.LookPath("xwininfo")
	if err != nil || err2 != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("Xvfb and xwininfo are needed (scripts/deps.sh --test installs xvfb and x11-utils)")
		}
		t.Skip("needs Xvfb and xwininfo (apt-get install xvfb x11-utils qemu-system-gui)")
	}
	display := startXvfb(t, xvfb)
	t.Setenv("DISPLAY", display)
	windows := func() string {
		t.Helper()
		cmd := exec.Command(xwininfo, "-root", "-tree")
		cmd.Env = append(os.Environ(), "DISPLAY="+display)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("xwininfo: %v: %s", err, out)
		}
		return string(out)
	}

	srv := newImageServer(t)
	cb := newCallbackServer(t)
	d := startDaemon(t, filepath.Join(t.TempDir(), "data"))
	img := publish(t, srv, "tar.gz")
	req := createReq(img, cb.URL)
	gui := true
	req.LaunchGUI = &gui
	v := mustCreate(t, d, req)
	got := waitVM(t, d, v.ID, bootTimeout)
	if got.Status != api.StatusRunning || got.Headless {
		t.Fatalf("with launch_gui: %s, want a running VM that is not headless", fmtVM(got))
	}
	if err := pingGuest(got.IPAddress); err != nil {
		t.Errorf("ping %s: %v", got.IPAddress, err)
	}
	pids := processesMatching("goldvm-" + v.ID)
	if len(pids) != 1 {
		t.Fatalf("QEMU processes for %s: %v, want 1", v.ID, pids)
	}
	cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(pids[0]) + "/cmdline")
	args := strings.ReplaceAll(string(cmdline), "\x00", " ")
	if !strings.Contains(args, "-display gtk") && !strings.Contains(args, "-display sdl") {
		t.Errorf("QEMU runs without a window: %s", args)
	}
	if !strings.Contains(args, "-sandbox on,") || strings.Contains(args, "spawn=deny") {
		t.Errorf("QEMU with a window: want the sandbox without spawn=deny: %s", args)
	}
	title := "QEMU (goldvm-" + v.ID + ")"
	if w := windows(); !strings.Contains(w, title) {
		t.Errorf("the X server has no window %q:\n%s", title, w)
	}
	checkScreenshot(t, d, v.ID)

	if err := d.client.DeleteVM(context.Background(), v.ID); err != nil {
		t.Fatalf("delete: %v", err)
	}
	assertGone(t, d, v.ID)
	waitFor(t, "the window to close after delete", 10*time.Second, func() bool { return !strings.Contains(windows(), title) })
}

// startXvfb starts a virtual X server on a free display and returns the
// display's name (":N"); it is stopped at the end of the test.
func startXvfb(t *testing.T, xvfb string) string {
	t.Helper()
	for n := 90; n < 190; n++ {
		if _, err := os.Stat("/tmp/.X11-unix/X" + strconv.Itoa(n)); err == nil {
			continue
		}
		if _, err := os.Stat("/tmp/.X" + strconv.Itoa(n) + "-lock"); err == nil {
			continue
		}
		display := ":" + strconv.Itoa(n)
		out, exited := startBackground(t, exec.Command(xvfb, display, "-ac", "-nolisten", "tcp", "-screen", "0", "1024x768x24"))
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			select {
			case <-exited:
				t.Fatalf("Xvfb %s exited: %s", display, out)
			default:
			}
			if _, err := os.Stat("/tmp/.X11-unix/X" + strconv.Itoa(n)); err == nil {
				return display
			}
		}
		t.Fatalf("Xvfb %s did not start: %s", display, out)
	}
	t.Fatal("no free X display between :90 and :189")
	return ""
}
