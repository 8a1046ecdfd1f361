package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// writeConfig writes lines as a configuration file and returns its path.
func writeConfig(t *testing.T, lines ...string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "goldvm.toml")
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// printConfig runs `goldvm config print --json args...` and returns what
// it printed and the configuration it settled.
func printConfig(t *testing.T, args ...string) (shownConfig, *config, error) {
	t.Helper()
	var out bytes.Buffer
	show := &configShow{out: &out}
	err := serve(append([]string{"--json"}, args...), show)
	if err != nil {
		return shownConfig{}, show.printed, err
	}
	var sc shownConfig
	if err := json.Unmarshal(out.Bytes(), &sc); err != nil {
		t.Fatalf("config print --json: %v\n%s", err, out.String())
	}
	return sc, show.printed, nil
}

func (sc shownConfig) get(t *testing.T, name string) shownSetting {
	t.Helper()
	for _, s := range sc.Settings {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("config print shows no %s", name)
	return shownSetting{}
}

// TestConfigPrecedence: each of the four sources wins where it should: a
// flag over its variable and the file, a variable over the file, the file
// over the default, and the default when nothing else says.
func TestConfigPrecedence(t *testing.T) {
	path := writeConfig(t,
		"# goldvm",
		`listen = "127.0.0.1:3"`,
		"max-cpus = 3",
		"",
		"image-retries = 0",
		"cpu-overcommit = 2.5",
	)
	t.Setenv("GOLDVM_LISTEN", "127.0.0.1:2")
	t.Setenv("GOLDVM_MAX_CPUS", "2")
	sc, _, err := printConfig(t, "--config", path, "--listen", "127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	if sc.File != path || !sc.FileRead {
		t.Errorf("config file %q read %v, want %q read", sc.File, sc.FileRead, path)
	}
	for _, want := range []shownSetting{
		{Name: "listen", Value: "127.0.0.1:1", origin: origin{Source: "flag"}},
		{Name: "max-cpus", Value: "2", origin: origin{Source: "env", Env: "GOLDVM_MAX_CPUS"}},
		{Name: "image-retries", Value: "0", origin: origin{Source: "file", File: path, Line: 5}},
		{Name: "cpu-overcommit", Value: "2.5", origin: origin{Source: "file", File: path, Line: 6}},
		{Name: "callback-attempts", Value: "8", origin: origin{Source: "default"}},
	} {
		if got := sc.get(t, want.Name); got != want {
			t.Errorf("%s = %+v, want %+v", want.Name, got, want)
		}
	}
}

// TestConfigUnknownKey: a key that is no flag of serve stops the daemon at
// start, naming the key and its line; so do keys in a table and the
// configuration layer's own flags.
func TestConfigUnknownKey(t *testing.T) {
	path := writeConfig(t,
		`listen = "127.0.0.1:12345"`,
		"",
		"max-cpu = 4",
		`config = "/etc/other.toml"`,
		"max_cpus = 4",
		"[lxd]",
		`url = "unix:///x"`,
	)
	err := runServe([]string{"--config", path, "--data-dir", t.TempDir()})
	if err == nil {
		t.Fatal("serve started with unknown keys")
	}
	for _, want := range []string{
		path + `:3: unknown key "max-cpu"`,
		path + `:4: unknown key "config"`,
		path + `:5: unknown key "max_cpus": not a flag of goldvm serve (did you mean max-cpus?)`,
		path + `:6: table [lxd]`,
		path + `:7: unknown key "lxd.url"`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q\nlacks %q", err, want)
		}
	}
}

// TestConfigBadValue: a value of the wrong type, one its flag refuses, one
// out of range, one a later check refuses and a TOML syntax error each stop
// the daemon at start with the file, the line and the field.
func TestConfigBadValue(t *testing.T) {
	for _, tc := range []struct {
		line string
		want string // after "FILE:2"
	}{
		{`max-cpus = "lots"`, `: max-cpus: want an integer, not the string "lots"`},
		{`queue-timeout = 10`, `: queue-timeout: want a duration in quotes`},
		{`queue-timeout = "soon"`, `: queue-timeout = "soon": `},
		{`max-cpus = 0`, `: max-cpus: --max-cpus 0: the smallest value is 1`},
		{`default-threads = 0`, `: default-threads: --default-threads 0: give 1 to`},
		{`max-memory = "lots"`, `: max-memory: --max-memory "lots": `},
		{`cpu-overcommit = true`, `: cpu-overcommit: want a number, not the boolean true`},
		{`listen = [1, 2]`, `: listen: want a string, not an array`},
		{`listen = "127.0.0.1`, `:20: basic strings cannot have new lines`},
	} {
		t.Run(tc.line, func(t *testing.T) {
			path := writeConfig(t, "# goldvm", tc.line)
			err := runServe([]string{"--config", path, "--data-dir", t.TempDir()})
			if err == nil || !strings.Contains(err.Error(), path+":2"+tc.want) {
				t.Errorf("%s: %v\nwant %q", tc.line, err, path+":2"+tc.want)
			}
		})
	}
}

// TestConfigEnv: every flag has a variable, GOLDVM_ and its name (also
// those whose usage does not say); a legacy variable named in a usage text
// still works; an empty variable is unset; a malformed one is refused with
// its name; GOLDVM_CONFIG names the file, --config wins over it, "" reads
// none; an explicit file must exist, the default one need not.
func TestConfigEnv(t *testing.T) {
	file := writeConfig(t, "cpu-overcommit = 3", `vmrun = "/file/vmrun"`, "max-group-size = 7")
	t.Setenv("GOLDVM_CONFIG", file)
	t.Setenv("GOLDVM_CPU_OVERCOMMIT", "4")
	t.Setenv("VMRUN_PATH", "/env/vmrun")
	t.Setenv("GOLDVM_MAX_GROUP_SIZE", "")
	sc, _, err := printConfig(t)
	if err != nil {
		t.Fatal(err)
	}
	if got := sc.get(t, "cpu-overcommit"); got.Value != "4" || got.Env != "GOLDVM_CPU_OVERCOMMIT" {
		t.Errorf("cpu-overcommit: %+v, want 4 from $GOLDVM_CPU_OVERCOMMIT", got)
	}
	if got := sc.get(t, "vmrun"); got.Value != "/env/vmrun" || got.Env != "VMRUN_PATH" {
		t.Errorf("vmrun: %+v, want /env/vmrun from $VMRUN_PATH", got)
	}
	if got := sc.get(t, "max-group-size"); got.Value != "7" || got.Source != "file" {
		t.Errorf("max-group-size: %+v, want 7 from the file (the variable is empty)", got)
	}

	t.Setenv("GOLDVM_MAX_GROUP_SIZE", "many")
	if _, _, err := printConfig(t); err == nil || !strings.Contains(err.Error(), `$GOLDVM_MAX_GROUP_SIZE "many"`) {
		t.Errorf("GOLDVM_MAX_GROUP_SIZE=many: %v, want an error naming it", err)
	}
	t.Setenv("GOLDVM_MAX_GROUP_SIZE", "")

	other := writeConfig(t, "cpu-overcommit = 5")
	if sc, _, err := printConfig(t, "--config", other); err != nil || sc.File != other {
		t.Errorf("--config %s with $GOLDVM_CONFIG=%s: read %q, %v", other, file, sc.File, err)
	}
	t.Setenv("GOLDVM_CONFIG", "")
	if sc, _, err := printConfig(t); err != nil || sc.File != "" || sc.get(t, "max-group-size").Source != "default" {
		t.Errorf("GOLDVM_CONFIG=\"\": file %q, %v; want none", sc.File, err)
	}
	missing := filepath.Join(t.TempDir(), "missing.toml")
	t.Setenv("GOLDVM_CONFIG", missing)
	if _, _, err := printConfig(t); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("GOLDVM_CONFIG=%s (missing): %v, want an error naming it", missing, err)
	}
	os.Unsetenv("GOLDVM_CONFIG") // restored by the Setenv above
	defer func(f string) { defaultConfigFile = f }(defaultConfigFile)
	defaultConfigFile = missing
	if sc, _, err := printConfig(t); err != nil || sc.File != missing || sc.FileRead {
		t.Errorf("missing default file: %+v, %v; want it noted as absent", sc, err)
	}
}

// tomlLiteral is value as the TOML literal of flag f's type.
func tomlLiteral(f *flag.Flag, value string) string {
	switch f.Value.(flag.Getter).Get().(type) {
	case bool, int, int64, uint, uint64, float64:
		return value
	}
	return strconv.Quote(value)
}

// TestEveryFlagHasAKey: a file that sets every flag of serve by its name is
// read without complaint, each value from its line; the configuration
// layer's own flags (and anything else) are not keys. The list comes from
// the flag set, so a new flag needs nothing more.
func TestEveryFlagHasAKey(t *testing.T) {
	t.Setenv("GOLDVM_CONFIG", "")
	_, cfg, err := printConfig(t)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	want := map[string]int{}
	cfg.flags.VisitAll(func(f *flag.Flag) {
		if f.Name == "config" || f.Name == "json" {
			if _, ok := cfg.origins[f.Name]; ok {
				t.Errorf("--%s is a setting", f.Name)
			}
			return
		}
		lines = append(lines, f.Name+" = "+tomlLiteral(f, f.DefValue))
		want[f.Name] = len(lines)
	})
	if len(want) < 30 {
		t.Fatalf("only %d flags", len(want))
	}
	path := writeConfig(t, lines...)
	sc, _, err := printConfig(t, "--config", path)
	if err != nil {
		t.Fatalf("a file with every flag: %v", err)
	}
	if len(sc.Settings) != len(want) {
		t.Errorf("%d settings shown, %d flags", len(sc.Settings), len(want))
	}
	for _, s := range sc.Settings {
		if s.Source != "file" || s.Line != want[s.Name] {
			t.Errorf("%s: %+v, want line %d of the file", s.Name, s, want[s.Name])
		}
	}
	for _, key := range []string{"config", "json", "no-such-flag"} {
		path := writeConfig(t, key+` = "x"`)
		if _, _, err := printConfig(t, "--config", path); err == nil || !strings.Contains(err.Error(), `unknown key "`+key+`"`) {
			t.Errorf("key %s: %v, want it refused", key, err)
		}
	}
}

// TestConfigPrintText: the table shows each setting's origin, and never
// the token.
func TestConfigPrintText(t *testing.T) {
	path := writeConfig(t, `token = "0123456789abcdef0123"`, "max-cpus = 9")
	var out bytes.Buffer
	if err := serve([]string{"--config", path, "--accel", "tcg"}, &configShow{out: &out}); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	if strings.Contains(s, "0123456789abcdef") {
		t.Errorf("config print shows the token:\n%s", s)
	}
	for _, re := range []string{
		`(?m)^# configuration file: ` + path + `$`,
		`(?m)^accel +tcg +flag$`,
		`(?m)^max-cpus +9 +` + path + `:2$`,
		`(?m)^token +\(set, hidden\) +` + path + `:1$`,
		`(?m)^max-group-size +100 +default$`,
	} {
		if !regexpMatch(re, s) {
			t.Errorf("config print lacks %s:\n%s", re, s)
		}
	}
}

// TestSystemdUnit: the unit's ExecStart is a valid `goldvm serve` with the
// shipped configuration, and systemd-analyze (where installed) finds
// nothing to say about the unit.
func TestSystemdUnit(t *testing.T) {
	unit, err := os.ReadFile("../../contrib/systemd/goldvm.service")
	if err != nil {
		t.Fatal(err)
	}
	exec0, args := unitExecStart(t, string(unit))
	if exec0 != "/usr/bin/goldvm" || len(args) < 1 || args[0] != "serve" {
		t.Fatalf("ExecStart %s %v: want /usr/bin/goldvm serve ...", exec0, args)
	}
	// The shipped file in place of /etc/goldvm/goldvm.toml.
	for i, a := range args {
		if a == defaultConfigFile {
			args[i] = "../../contrib/goldvm.toml"
		}
	}
	sc, _, err := printConfig(t, args[1:]...)
	if err != nil {
		t.Fatalf("ExecStart's serve with contrib/goldvm.toml: %v", err)
	}
	if got := sc.get(t, "data-dir"); got.Value != "/var/lib/goldvm" || got.Source != "file" {
		t.Errorf("data-dir %+v: want /var/lib/goldvm from the file (the unit's StateDirectory)", got)
	}

	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("no systemd-analyze")
	}
	// verify wants ExecStart's program to exist: this test's binary
	// stands in for /usr/bin/goldvm.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	copyUnit := filepath.Join(t.TempDir(), "goldvm.service")
	if err := os.WriteFile(copyUnit, bytes.ReplaceAll(unit, []byte("/usr/bin/goldvm"), []byte(self)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", copyUnit).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

func regexpMatch(re, s string) bool { return regexp.MustCompile(re).MatchString(s) }

// unitExecStart returns the program and arguments of a unit's ExecStart
// (split at spaces: goldvm's unit quotes nothing).
func unitExecStart(t *testing.T, unit string) (string, []string) {
	t.Helper()
	for _, l := range strings.Split(unit, "\n") {
		if v, ok := strings.CutPrefix(l, "ExecStart="); ok {
			f := strings.Fields(v)
			return f[0], f[1:]
		}
	}
	t.Fatal("the unit has no ExecStart")
	return "", nil
}
