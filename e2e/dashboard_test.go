package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/client"
)

// dashboardScreenshotEnv names a file the dashboard test writes a
// screenshot of the page to (docs/dashboard.png is made so).
const dashboardScreenshotEnv = "GOLDVM_DASHBOARD_SCREENSHOT"

// TestDashboard opens the daemon's web page in a real browser (Debian's
// chromium, headless, driven over the DevTools protocol). The daemon has a
// token: the page asks for it (and again after a wrong one); a VM created
// through the API appears on the page and reaches running without a
// reload, with its address, tags and image; its console tail and
// screenshot open from its row; the page follows a restart of the daemon
// with a new token (asks for it, reads the state again); its delete
// button asks first (a dismissed confirmation keeps it), and once
// confirmed the VM is gone from the page and the API answers 404; a reload
// does not ask for the token again, and no URL the page asked for holds it.
func TestDashboard(t *testing.T) {
	requireEnv(t)
	chrome, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("chromium is not installed (scripts/deps.sh --test installs it)")
		}
		t.Skip("chromium is not installed (apt-get install chromium)")
	}
	const token = "e2e-dashboard-token-0123456789"
	srv := newImageServer(t)
	d := startDaemon(t, filepath.Join(t.TempDir(), "data"), "--token", token)
	d.client = client.New(d.addr, token)
	img := publish(t, srv, "qcow2")

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chrome),
		chromedp.UserDataDir(t.TempDir()),
		// Its singleton socket and shared memory files too.
		chromedp.Env("TMPDIR="+t.TempDir()),
		chromedp.WindowSize(1400, 1000))
	if os.Geteuid() == 0 {
		// Chromium refuses to run as root with its sandbox.
		opts = append(opts, chromedp.NoSandbox)
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(actx)
	defer cancelBrowser()
	ctx, cancel := context.WithTimeout(bctx, bootTimeout+5*time.Minute)
	defer cancel()

	// The page's uncaught exceptions fail the test.
	var mu sync.Mutex
	var pageErrors []string
	exceptions := chromedp.Events(ctx, runtime.ExceptionThrown)
	go func() {
		for ev, err := range exceptions {
			if err != nil {
				return
			}
			mu.Lock()
			pageErrors = append(pageErrors, fmt.Sprintf("%s %s", ev.ExceptionDetails.Text, exceptionDescription(ev.ExceptionDetails)))
			mu.Unlock()
		}
	}()
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, e := range pageErrors {
			t.Errorf("the page threw: %s", e)
		}
	}()
	// Confirmation dialogs are answered as acceptDialog says.
	var acceptDialog atomic.Bool
	dialogs := make(chan string, 4)
	opening := chromedp.Events(ctx, page.JavascriptDialogOpening)
	go func() {
		for ev, err := range opening {
			if err != nil {
				return
			}
			dialogs <- ev.Message
			go chromedp.Call(ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: acceptDialog.Load()})
		}
	}()

	do := func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, actions...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	// waitPage polls a JavaScript expression in the page until it is
	// true, and fails the test after timeout.
	waitPage := func(what, expr string, timeout time.Duration) {
		t.Helper()
		_, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](expr,
			chromedp.WithPollingInterval(200*time.Millisecond), chromedp.WithPollingTimeout(timeout)))
		if err != nil {
			state, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector('main').innerText + '\n[login] ' + document.querySelector('#login-msg').textContent`))
			t.Fatalf("waiting for %s: %v; the page shows:\n%s", what, err, state)
		}
	}
	eval := func(expr string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Evaluate[string](expr))
		if err != nil {
			t.Fatalf("%s: %v", expr, err)
		}
		return s
	}

	// The page is served without the token; its data is not: it asks.
	do("open the page", chromedp.Navigate("http://"+d.addr+"/"))
	waitPage("the page to ask for the token", `document.querySelector('#login').open`, 30*time.Second)
	if msg := eval(`document.querySelector('#login-msg').textContent`); !strings.Contains(msg, "401") {
		t.Errorf("the token dialog says %q, want it to say the daemon answered 401", msg)
	}
	// A wrong token: refused, asked again.
	do("enter a wrong token", chromedp.SendKeys(chromedp.ID("token"), "not-the-token-0123456789"), chromedp.Click(chromedp.ID("login-submit")))
	waitPage("the page to ask again after a wrong token",
		`document.querySelector('#login').open && document.querySelector('#login-msg').textContent.includes('refused')`, 30*time.Second)
	do("enter the token", chromedp.SendKeys(chromedp.ID("token"), token), chromedp.Click(chromedp.ID("login-submit")))
	waitPage("the event stream to be live", `!document.querySelector('#login').open && document.querySelector('#conn').textContent === 'live'`, 30*time.Second)
	// A mark that a reload would lose.
	do("mark the page", chromedp.Evaluate[chromedp.Void](`window.goldvmNoReload = true`))

	// A VM created through the API shows up and comes up live.
	req := createReq(img, "")
	req.Tags = map[string]string{"team": "dashboard"}
	v := mustCreate(t, d, req)
	row := fmt.Sprintf(`document.querySelector('tr[data-vm=%q]')`, v.ID)
	waitPage("the new VM's row", row+` !== null`, 60*time.Second)
	first := eval(row + `.dataset.status`)
	waitPage("the VM to be running on the page", row+`?.dataset.status === 'running'`, bootTimeout)
	got, err := d.client.GetVM(ctx, v.ID)
	if err != nil || got.Status != api.StatusRunning {
		t.Fatalf("GET the VM: %v %+v", err, got)
	}
	t.Logf("the row appeared as %q and became running", first)
	if s := eval(row + `.querySelector('td.address').textContent`); s != got.IPAddress || s == "" {
		t.Errorf("address on the page %q, want %q", s, got.IPAddress)
	}
	if s := eval(row + `.querySelector('td.tags').textContent`); s != "team=dashboard" {
		t.Errorf("tags on the page %q, want team=dashboard", s)
	}
	if s, want := eval(row+`.querySelector('td.os').textContent`), got.GuestOSName; want != "" && s != want {
		t.Errorf("guest OS on the page %q, want %q", s, want)
	}
	imgRow := fmt.Sprintf(`document.querySelector('tr[data-image="sha256-%s"]')`, img.Checksum)
	waitPage("the image with its user", imgRow+`?.querySelector('td.users').textContent.includes(`+jsString(v.ID)+`)`, 30*time.Second)
	if s := eval(imgRow + `.querySelector('td.size').textContent`); !strings.HasSuffix(s, "iB") {
		t.Errorf("image size on the page %q, want a size", s)
	}

	// The console tail and the screenshot are a click away.
	do("open the console", chromedp.Click(chromedp.CSS(fmt.Sprintf(`tr[data-vm=%q] button.console`, v.ID))))
	// The guest prints its ready line a moment after it is reported
	// running: the open console refreshes itself until it is there.
	waitPage("the console tail with the guest's ready line",
		`document.querySelector('#console').textContent.includes(`+jsString("goldvm-guest: ready ip="+got.IPAddress)+`)`, 60*time.Second)
	if eval(`String(/[\x00-\x08\x0b-\x1f]/.test(document.querySelector('#console').textContent))`) != "false" {
		t.Error("the console tail on the page has control characters (terminal escapes) in it")
	}
	if path := os.Getenv(dashboardScreenshotEnv); path != "" {
		dashboardScreenshot(t, ctx, d, img, path, waitPage)
	}
	do("open the screenshot", chromedp.Click(chromedp.CSS(fmt.Sprintf(`tr[data-vm=%q] button.screenshot`, v.ID))))
	waitPage("the VM's screenshot", `document.querySelector('#screenshot').naturalWidth > 0 && !document.querySelector('#screenshot').hidden`, 60*time.Second)

	// The daemon restarts with another token: the page reconnects, is
	// refused, asks again and resumes its stream, whose last event id is of
	// the earlier run (a reset: the page reads everything again); a tag
	// set while it waited for the token shows.
	const token2 = "e2e-dashboard-second-token-0123"
	d.stop()
	d.start("--token", token2)
	d.client = client.New(d.addr, token2)
	waitPage("the page to ask for the daemon's new token",
		`document.querySelector('#login').open && document.querySelector('#login-msg').textContent.includes('refused')`, time.Minute)
	if _, err := d.client.PatchVM(ctx, v.ID, map[string]*string{"seen": new("after-restart")}); err != nil {
		t.Fatalf("PATCH the VM's tags: %v", err)
	}
	do("enter the new token", chromedp.SendKeys(chromedp.ID("token"), token2), chromedp.Click(chromedp.ID("login-submit")))
	waitPage("the page to read the VM again after the restart",
		`document.querySelector('#conn').textContent === 'live' && `+row+`?.querySelector('td.tags').textContent.includes('seen=after-restart')`, time.Minute)
	if s := eval(row + `.dataset.status`); s != "running" {
		t.Errorf("after the daemon's restart the page shows the VM %s, want running", s)
	}

	// Delete asks first: dismissed, the VM stays; accepted, it goes.
	deleteButton := chromedp.CSS(fmt.Sprintf(`tr[data-vm=%q] button.delete`, v.ID))
	do("click delete and dismiss", chromedp.Click(deleteButton))
	if msg := <-dialogs; !strings.Contains(msg, v.ID) {
		t.Errorf("the confirmation says %q, want it to name %s", msg, v.ID)
	}
	if got, err := d.client.GetVM(ctx, v.ID); err != nil || got.Status != api.StatusRunning {
		t.Fatalf("after a dismissed confirmation: %v %+v, want the VM running", err, got)
	}
	acceptDialog.Store(true)
	do("click delete and confirm", chromedp.Click(deleteButton))
	<-dialogs
	waitPage("the VM to leave the page", row+` === null`, 2*time.Minute)
	if _, err := d.client.GetVM(ctx, v.ID); !isAPIError(err, 404, "vm-not-found") {
		t.Errorf("GET after the page deleted the VM: %v, want 404 vm-not-found", err)
	}
	assertGone(t, d, v.ID)

	if eval(`String(window.goldvmNoReload === true)`) != "true" {
		t.Error("the page was reloaded")
	}
	// The token is kept for the tab: a reload does not ask again.
	do("reload the page", chromedp.Reload())
	waitPage("the reloaded page to be live without asking", `document.querySelector('#conn').textContent === 'live'`, 30*time.Second)
	if eval(`String(document.querySelector('#login').open)`) != "false" {
		t.Error("the reloaded page asked for the token again")
	}
	// The token went in headers only, never in a URL.
	urls := eval(`JSON.stringify(performance.getEntriesByType('resource').map(e => e.name).concat([location.href]))`)
	var list []string
	if err := json.Unmarshal([]byte(urls), &list); err != nil || len(list) < 3 {
		t.Errorf("the page's requests: %v %s", err, urls)
	}
	if strings.Contains(urls, token) {
		t.Errorf("the token is in a URL the page requested: %s", urls)
	}
}

// dashboardScreenshot writes a screenshot of the page to path, with a
// second VM on it while it is created (its progress bar), which it then
// deletes.
func dashboardScreenshot(t *testing.T, ctx context.Context, d *daemon, img api.Image, path string, waitPage func(what, expr string, timeout time.Duration)) {
	t.Helper()
	req := createReq(img, "")
	req.Tags = map[string]string{"team": "docs", "ci": "yes"}
	v := mustCreate(t, d, req)
	waitPage("the second VM's progress bar", fmt.Sprintf(`document.querySelector('tr[data-vm=%q] progress') !== null`, v.ID), time.Minute)
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot of the page: %v", err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote a screenshot of the page to %s", path)
	if err := d.client.DeleteVM(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	waitPage("the second VM to leave the page", fmt.Sprintf(`document.querySelector('tr[data-vm=%q]') === null`, v.ID), 2*time.Minute)
}

// exceptionDescription is the message of a page's exception.
func exceptionDescription(d *runtime.ExceptionDetails) string {
	if d == nil || d.Exception == nil {
		return ""
	}
	return d.Exception.Description
}

// jsString quotes s as a JavaScript string literal.
func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
