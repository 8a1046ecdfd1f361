package main

import (
	"runtime/debug"
	"testing"
)

// TestVersionFrom: the module version and VCS settings of the build
// information, the -X overrides winning, "(devel)" shown as devel.
func TestVersionFrom(t *testing.T) {
	bi := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: "github.com/goldvm/goldvm", Version: "(devel)"},
		Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "0123456789abcdef0123456789abcdef01234567"},
			{Key: "vcs.time", Value: "2026-11-27T12:00:00Z"},
			{Key: "vcs.modified", Value: "true"},
		}}
	v := versionFrom(bi, "", "")
	want := versionInfo{Version: "devel", Revision: "0123456789abcdef0123456789abcdef01234567", Time: "2026-11-27T12:00:00Z", Modified: true, Go: "go1.26.8"}
	if v != want {
		t.Errorf("versionFrom = %+v, want %+v", v, want)
	}
	if s := v.String(); s != "goldvm devel (commit 0123456789ab, modified, 2026-11-27T12:00:00Z) go1.26.8" {
		t.Errorf("String() = %q", s)
	}
	v = versionFrom(bi, "1.2.3", "fedcba")
	if v.Version != "1.2.3" || v.Revision != "fedcba" {
		t.Errorf("with overrides: %+v", v)
	}
	bi.Main.Version, bi.Settings = "v0.4.0", nil
	if v := versionFrom(bi, "", ""); v.String() != "goldvm v0.4.0 go1.26.8" {
		t.Errorf("a module version: %q", v)
	}
	if v := versionFrom(nil, "", ""); v.Version != "devel" {
		t.Errorf("no build information: %+v", v)
	}
}
