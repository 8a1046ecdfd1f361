package server

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/client"
)

// scrape returns GET /metrics of d.
func scrape(t *testing.T, d *testDaemon) string {
	t.Helper()
	resp, err := http.Get(d.http.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", resp.StatusCode, body)
	}
	return string(body)
}

// metricValue returns the value of the series line that starts with
// series (name and labels as Prometheus writes them), or "".
func metricValue(text, series string) string {
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return v
		}
	}
	return ""
}

// TestMetrics: after one creation that downloads its image and fails
// verification, the metrics count it: VMs by status, the cache miss and
// the bytes downloaded, the failed fetch by code, the phase and creation
// durations, the requests by route. The stream follows the creation (one
// GET of the VM by WaitVM, no polling).
func TestMetrics(t *testing.T) {
	d := newTestDaemon(t, daemonOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	v := d.failingVM(t, 1)
	v, err := d.client.WaitVM(ctx, v.ID, nil)
	if err != nil || v.Status != api.StatusError {
		t.Fatalf("%+v, %v", v, err)
	}
	text := scrape(t, d)
	for series, want := range map[string]string{
		`goldvm_vms{backend="qemu",status="error"}`:                                       "1",
		`goldvm_image_cache_lookups_total{result="miss"}`:                                 "1",
		`goldvm_image_fetches_total{code="checksum-mismatch",outcome="error"}`:            "1",
		`goldvm_vm_create_phase_duration_seconds_count{backend="qemu",phase="pending"}`:   "1",
		`goldvm_vm_create_phase_duration_seconds_count{backend="qemu",phase="verifying"}`: "1",
		`goldvm_vm_create_duration_seconds_count{backend="qemu",outcome="error"}`:         "1",
		`goldvm_http_requests_total{code="202",method="POST",route="POST /vms"}`:          "1",
		`goldvm_http_requests_total{code="200",method="GET",route="GET /vms/{id}"}`:       "1",
		`goldvm_event_clients_dropped_total`:                                              "0",
	} {
		if got := metricValue(text, series); got != want {
			t.Errorf("%s = %q, want %s", series, got, want)
		}
	}
	size := len("not the image anyone asked for: /image-1.img")
	if got := metricValue(text, `goldvm_image_download_bytes_total`); got != strconv.Itoa(size) {
		t.Errorf("goldvm_image_download_bytes_total = %q, want %d", got, size)
	}
	// Unknown paths share one series, whatever the path.
	http.Get(d.http.URL + "/no/such/path/1")
	http.Get(d.http.URL + "/no/such/path/2")
	if got := metricValue(scrape(t, d), `goldvm_http_requests_total{code="404",method="GET",route="unmatched"}`); got != "2" {
		t.Errorf("unmatched requests = %q, want 2", got)
	}
}

// TestWaitVMFallsBackToPolling: a daemon without GET /events (an older
// one, or a proxy that refuses streams) still gets waited on, by polling.
func TestWaitVMFallsBackToPolling(t *testing.T) {
	d := newTestDaemon(t, daemonOptions{})
	old := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/events" {
			http.NotFound(w, r)
			return
		}
		d.srv.ServeHTTP(w, r)
	}))
	defer old.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	v := d.failingVM(t, 1)
	var states int
	v, err := client.New(old.URL, "").WaitVM(ctx, v.ID, func(*api.VM) { states++ })
	if err != nil || v.Status != api.StatusError {
		t.Fatalf("%+v, %v", v, err)
	}
	polls := metricValue(scrape(t, d), `goldvm_http_requests_total{code="200",method="GET",route="GET /vms/{id}"}`)
	t.Logf("polled %s times, %d states seen", polls, states)
	if polls == "" || polls == "0" {
		t.Fatal("WaitVM did not poll")
	}
}

// TestRequestLog: every request is logged with its method, route pattern,
// status and duration, and the VM or image it names.
func TestRequestLog(t *testing.T) {
	s := newTestServer(t, "")
	var buf strings.Builder
	s.log = slog.New(slog.NewJSONHandler(&buf, nil))
	do(t, s, "GET", "/vms/vm-0000000000000000000000", "", "")
	do(t, s, "DELETE", "/images/sha256-"+strings.Repeat("0", 64), "", "")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d log lines: %q", len(lines), buf.String())
	}
	for i, want := range []map[string]any{
		{"msg": "http", "method": "GET", "route": "GET /vms/{id}", "status": 404.0, "vm": "vm-0000000000000000000000"},
		{"msg": "http", "method": "DELETE", "route": "DELETE /images/{key}", "status": 404.0, "image": "sha256-" + strings.Repeat("0", 64)},
	} {
		var got map[string]any
		if err := json.Unmarshal([]byte(lines[i]), &got); err != nil {
			t.Fatal(err)
		}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("line %d: %s = %v, want %v (%s)", i, k, got[k], v, lines[i])
			}
		}
		if _, ok := got["dur"]; !ok {
			t.Errorf("line %d has no duration: %s", i, lines[i])
		}
	}
}
