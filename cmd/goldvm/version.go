package main

import (
	"flag"
	"fmt"
	"runtime/debug"
	"strings"
)

// version and revision are goldvm's release and commit, set when
// packaging: go build -ldflags "-X main.version=1.2.3 -X main.revision=abc…"
// (scripts/deb.sh does). Empty: the build information's module version
// ("(devel)" from a checkout) and VCS revision (which the go command records
// in a clone but not in a git worktree, nor with -buildvcs=false).
var version, revision string

// versionInfo is what `goldvm version` reports.
type versionInfo struct {
	Version  string `json:"version"`
	Revision string `json:"revision,omitempty"` // VCS commit the binary was built from
	Time     string `json:"time,omitempty"`     // that commit's time
	Modified bool   `json:"modified,omitempty"` // built with uncommitted changes
	Go       string `json:"go"`
}

// buildVersion reads the binary's build information.
func buildVersion() versionInfo {
	bi, _ := debug.ReadBuildInfo()
	return versionFrom(bi, version, revision)
}

// versionFrom is buildVersion for build information bi (nil when the
// binary has none) and the -X overrides (empty: none).
func versionFrom(bi *debug.BuildInfo, override, rev string) versionInfo {
	v := versionInfo{Version: override, Revision: rev}
	if bi == nil {
		bi = &debug.BuildInfo{}
	}
	v.Go = bi.GoVersion
	if v.Version == "" {
		v.Version = bi.Main.Version
	}
	if v.Version == "" || v.Version == "(devel)" {
		v.Version = "devel"
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			if rev == "" {
				v.Revision = s.Value
			}
		case "vcs.time":
			v.Time = s.Value
		case "vcs.modified":
			v.Modified = s.Value == "true"
		}
	}
	return v
}

func (v versionInfo) String() string {
	var extra []string
	if v.Revision != "" {
		r := v.Revision
		if len(r) > 12 {
			r = r[:12]
		}
		extra = append(extra, "commit "+r)
	}
	if v.Modified {
		extra = append(extra, "modified")
	}
	if v.Time != "" {
		extra = append(extra, v.Time)
	}
	s := "goldvm " + v.Version
	if len(extra) > 0 {
		s += " (" + strings.Join(extra, ", ") + ")"
	}
	if v.Go != "" {
		s += " " + v.Go
	}
	return s
}

// runVersion is `goldvm version` (and `goldvm --version`).
func runVersion(args []string) error {
	fs := flag.NewFlagSet("version", flag.ExitOnError)
	asJSON := fs.Bool("json", false, "print JSON")
	fs.Parse(args)
	v := buildVersion()
	if *asJSON {
		return printJSON(v)
	}
	fmt.Println(v)
	return nil
}
