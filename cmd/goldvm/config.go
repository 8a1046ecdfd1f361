package main

import (
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
)

// defaultConfigFile is the configuration file `goldvm serve` reads when
// neither --config nor $GOLDVM_CONFIG names one. It may be missing. (A
// variable for tests.)
var defaultConfigFile = "/etc/goldvm/goldvm.toml"

// origin is where a setting's value came from.
type origin struct {
	Source string `json:"source"`         // "flag", "env", "file" or "default"
	Env    string `json:"env,omitempty"`  // the variable, for "env"
	File   string `json:"file,omitempty"` // the configuration file, for "file"
	Line   int    `json:"line,omitempty"` // its line, for "file"
}

func (o origin) String() string {
	switch o.Source {
	case "env":
		return "env $" + o.Env
	case "file":
		return fmt.Sprintf("%s:%d", o.File, o.Line)
	}
	return o.Source
}

// config is the settled configuration of `goldvm serve`: every flag's
// value (in its flag set) and where it came from. Precedence: a flag on
// the command line, then its environment variable, then the configuration
// file, then the flag's default.
type config struct {
	flags    *flag.FlagSet
	file     string            // the configuration file, "" for none
	fileRead bool              // whether file existed (and was read)
	origins  map[string]origin // by flag name; not the config layer's own flags
}

// loadConfig declares --config on flags (and show's flags, when given), parses
// args and fills every flag not given on the command line from its
// environment variable or the configuration file. Every flag of flags is a
// key of the file, named as the flag; any other key is refused, as is a
// value of the wrong type or one the flag does not accept, each with the
// file's name and line.
func loadConfig(flags *flag.FlagSet, args []string, show *configShow) (*config, error) {
	own := map[string]bool{"config": true}
	path := flags.String("config", "", "configuration file (TOML, one key per flag) ($GOLDVM_CONFIG; default "+defaultConfigFile+", read when it exists)")
	if show != nil {
		show.register(flags, own)
	}
	flags.Parse(args)
	onCommandLine := map[string]bool{}
	flags.Visit(func(f *flag.Flag) { onCommandLine[f.Name] = true })

	cfg := &config{flags: flags, origins: map[string]origin{}}
	explicit := true
	if onCommandLine["config"] {
		cfg.file = *path
	} else if v, ok := os.LookupEnv("GOLDVM_CONFIG"); ok {
		cfg.file = v
	} else {
		cfg.file, explicit = defaultConfigFile, false
	}
	var entries map[string]fileEntry
	if cfg.file != "" {
		data, err := os.ReadFile(cfg.file)
		switch {
		case err == nil:
			cfg.fileRead = true
			if entries, err = parseConfigFile(cfg.file, data, flags, own); err != nil {
				return nil, err
			}
		case !explicit && errors.Is(err, fs.ErrNotExist):
			// No configuration file: flags, environment and defaults.
		default:
			return nil, fmt.Errorf("configuration file: %w", err)
		}
	}

	var errs []error
	flags.VisitAll(func(f *flag.Flag) {
		if own[f.Name] {
			return
		}
		if onCommandLine[f.Name] {
			cfg.origins[f.Name] = origin{Source: "flag"}
			return
		}
		if env, v, ok := lookupFlagEnv(f); ok {
			cfg.origins[f.Name] = origin{Source: "env", Env: env}
			if err := flags.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("$%s %q: %w", env, v, err))
			}
			return
		}
		if e, ok := entries[f.Name]; ok {
			cfg.origins[f.Name] = origin{Source: "file", File: cfg.file, Line: e.line}
			if err := flags.Set(f.Name, e.value); err != nil {
				errs = append(errs, fmt.Errorf("%s:%d: %s = %q: %w", cfg.file, e.line, f.Name, e.value, err))
			}
			return
		}
		cfg.origins[f.Name] = origin{Source: "default"}
	})
	return cfg, errors.Join(errs...)
}

// flagEnv is the environment variable of flag name: GOLDVM_ and the name
// in upper case with underscores for dashes (--max-cpus: GOLDVM_MAX_CPUS).
func flagEnv(name string) string {
	return "GOLDVM_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// envInUsage finds a "($VAR)" in a flag's usage text.
var envInUsage = regexp.MustCompile(`\(\$([A-Z][A-Z0-9_]*)\)`)

// lookupFlagEnv returns the environment variable that sets f and its value:
// flagEnv's, or another the flag's usage names as "($VAR)" (such as
// $VMRUN_PATH for --vmrun). An empty variable is unset.
func lookupFlagEnv(f *flag.Flag) (env, value string, ok bool) {
	names := []string{flagEnv(f.Name)}
	if m := envInUsage.FindStringSubmatch(f.Usage); m != nil && m[1] != names[0] {
		names = append(names, m[1])
	}
	for _, n := range names {
		if v := os.Getenv(n); v != "" {
			return n, v, true
		}
	}
	return "", "", false
}

// fileEntry is one key of the configuration file: its value as the flag
// would be given it, and its line.
type fileEntry struct {
	value string
	line  int
}

// parseConfigFile reads a configuration file: top-level keys, each the name
// of a flag of flags (but not those in own), with a value of the flag's type.
// Every problem is reported, each with path and line.
func parseConfigFile(path string, data []byte, flags *flag.FlagSet, own map[string]bool) (map[string]fileEntry, error) {
	var values map[string]any
	if err := toml.Unmarshal(data, &values); err != nil {
		var de *toml.DecodeError
		if errors.As(err, &de) {
			row, col := de.Position()
			return nil, fmt.Errorf("%s:%d:%d: %s", path, row, col, strings.TrimPrefix(de.Error(), "toml: "))
		}
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	entries := map[string]fileEntry{}
	var errs []error
	var table []string // the table of the keys that follow, from its header
	p := unstable.Parser{}
	p.Reset(data)
	for p.NextExpression() {
		e := p.Expression()
		if e.Kind != unstable.KeyValue && e.Kind != unstable.Table && e.Kind != unstable.ArrayTable {
			continue
		}
		var parts []string
		line := 0
		for it := e.Key(); it.Next(); {
			k := it.Node()
			if line == 0 {
				line = p.Shape(k.Raw).Start.Line
			}
			parts = append(parts, string(k.Data))
		}
		if e.Kind != unstable.KeyValue {
			table = parts
			errs = append(errs, fmt.Errorf("%s:%d: table [%s]: the file has no tables, every setting is a top-level key named as its flag", path, line, strings.Join(parts, ".")))
			continue
		}
		key := strings.Join(append(table, parts...), ".")
		f := flags.Lookup(key)
		if len(table)+len(parts) != 1 || f == nil || own[key] {
			hint := "goldvm serve -h lists them"
			if alt := strings.ReplaceAll(key, "_", "-"); alt != key && flags.Lookup(alt) != nil && !own[alt] {
				hint = "did you mean " + alt + "?"
			}
			errs = append(errs, fmt.Errorf("%s:%d: unknown key %q: not a flag of goldvm serve (%s)", path, line, key, hint))
			continue
		}
		v, err := flagText(f, values[key])
		if err != nil {
			errs = append(errs, fmt.Errorf("%s:%d: %s: %w", path, line, key, err))
			continue
		}
		entries[key] = fileEntry{value: v, line: line}
	}
	if err := p.Error(); err != nil {
		// toml.Unmarshal accepted the file; the parser must too.
		errs = append(errs, fmt.Errorf("%s: %w", path, err))
	}
	return entries, errors.Join(errs...)
}

// flagText turns the TOML value v of flag f's key into the text the flag
// takes, refusing a value of another type: booleans for boolean flags,
// integers for integer flags, numbers for float flags and strings for the
// rest (durations such as "90s", sizes such as "16gib", addresses, paths).
func flagText(f *flag.Flag, v any) (string, error) {
	var typed any = ""
	if g, ok := f.Value.(flag.Getter); ok {
		typed = g.Get()
	}
	switch typed.(type) {
	case bool:
		if b, ok := v.(bool); ok {
			return strconv.FormatBool(b), nil
		}
		return "", fmt.Errorf("want true or false, not %s", tomlType(v))
	case int, int64, uint, uint64:
		if n, ok := v.(int64); ok {
			return strconv.FormatInt(n, 10), nil
		}
		return "", fmt.Errorf("want an integer, not %s", tomlType(v))
	case float64:
		switch n := v.(type) {
		case int64:
			return strconv.FormatInt(n, 10), nil
		case float64:
			return strconv.FormatFloat(n, 'g', -1, 64), nil
		}
		return "", fmt.Errorf("want a number, not %s", tomlType(v))
	case time.Duration:
		if s, ok := v.(string); ok {
			return s, nil
		}
		return "", fmt.Errorf("want a duration in quotes such as \"90s\" or \"1h30m\", not %s", tomlType(v))
	default:
		if s, ok := v.(string); ok {
			return s, nil
		}
		return "", fmt.Errorf("want a string, not %s", tomlType(v))
	}
}

// tomlType names the type of a decoded TOML value for messages.
func tomlType(v any) string {
	switch v := v.(type) {
	case bool:
		return "the boolean " + strconv.FormatBool(v)
	case int64:
		return "the integer " + strconv.FormatInt(v, 10)
	case float64:
		return "the float " + strconv.FormatFloat(v, 'g', -1, 64)
	case string:
		return "the string " + strconv.Quote(v)
	case []any:
		return "an array"
	case map[string]any:
		return "a table"
	default:
		return "a date or time"
	}
}

// flagInMessage finds the flags an error message names as --name.
var flagInMessage = regexp.MustCompile(`--([a-z0-9][a-z0-9-]*)`)

// explain adds to err, which names a flag as --name, where that flag's
// value came from when it was not the command line: the configuration
// file's line or the environment variable.
func (c *config) explain(err error) error {
	if err == nil || c == nil {
		return err
	}
	for _, m := range flagInMessage.FindAllStringSubmatch(err.Error(), -1) {
		switch o := c.origins[m[1]]; o.Source {
		case "file":
			return fmt.Errorf("%s: %s: %w", o, m[1], err)
		case "env":
			return fmt.Errorf("$%s: %w", o.Env, err)
		}
	}
	return err
}
