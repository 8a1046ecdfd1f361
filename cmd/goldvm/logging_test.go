package main

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"os"
	"strings"
	"testing"
)

// TestLogFormat: json writes one JSON object a line with the attributes,
// text key=value; the default is JSON for a file (not a terminal); an
// unknown format is refused.
func TestLogFormat(t *testing.T) {
	var buf bytes.Buffer
	log, err := newLogger(&buf, "json", slog.LevelInfo)
	if err != nil {
		t.Fatal(err)
	}
	log.Info("vm running", "vm", "vm-0123", "ip", "10.0.0.2")
	var line map[string]any
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil || line["vm"] != "vm-0123" || line["msg"] != "vm running" {
		t.Fatalf("json line %q: %v %v", buf.String(), line, err)
	}
	buf.Reset()
	log, _ = newLogger(&buf, "text", slog.LevelInfo)
	log.Info("vm running", "vm", "vm-0123")
	if !strings.Contains(buf.String(), "vm=vm-0123") {
		t.Fatalf("text line %q", buf.String())
	}
	f, err := os.Create(t.TempDir() + "/log")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	log, _ = newLogger(f, "", slog.LevelInfo)
	log.Info("hello")
	data, _ := os.ReadFile(f.Name())
	if !json.Valid(bytes.TrimSpace(data)) {
		t.Fatalf("default format to a file is not JSON: %q", data)
	}
	if _, err := newLogger(&buf, "xml", slog.LevelInfo); err == nil || !strings.Contains(err.Error(), "--log-format") {
		t.Fatalf("xml: %v", err)
	}
}
