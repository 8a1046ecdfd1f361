package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
)

// configShow is `goldvm config print`: serve settles its configuration
// from the same flags, environment and file, hands it here and returns.
type configShow struct {
	out     io.Writer
	json    bool
	printed *config // the configuration print was given
}

// register declares print's own flags on the serve flag set and adds
// their names to own (they are not settings).
func (s *configShow) register(flags *flag.FlagSet, own map[string]bool) {
	flags.BoolVar(&s.json, "json", false, "config print: print JSON")
	own["json"] = true
}

// shownSetting is one setting as config print shows it.
type shownSetting struct {
	Name  string `json:"name"`
	Value string `json:"value"`
	origin
}

// shownConfig is what config print --json prints.
type shownConfig struct {
	File     string         `json:"config_file"` // "" for none
	FileRead bool           `json:"config_file_read"`
	Settings []shownSetting `json:"settings"`
}

// print writes c's settings, by name, with their values and origins.
// Secrets (the token) show only whether they are set.
func (s *configShow) print(c *config) error {
	s.printed = c
	sc := shownConfig{File: c.file, FileRead: c.fileRead}
	c.flags.VisitAll(func(f *flag.Flag) {
		o, ok := c.origins[f.Name]
		if !ok {
			return
		}
		v := f.Value.String()
		if secretSetting(f.Name) && v != "" {
			v = "(set, hidden)"
		}
		sc.Settings = append(sc.Settings, shownSetting{Name: f.Name, Value: v, origin: o})
	})
	if s.json {
		enc := json.NewEncoder(s.out)
		enc.SetIndent("", "  ")
		return enc.Encode(sc)
	}
	switch {
	case sc.File == "":
		fmt.Fprintln(s.out, "# configuration file: none")
	case sc.FileRead:
		fmt.Fprintf(s.out, "# configuration file: %s\n", sc.File)
	default:
		fmt.Fprintf(s.out, "# configuration file: %s (absent)\n", sc.File)
	}
	tw := tabwriter.NewWriter(s.out, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tVALUE\tFROM")
	for _, st := range sc.Settings {
		v := st.Value
		if v == "" {
			v = `""`
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", st.Name, v, st.origin)
	}
	return tw.Flush()
}

// secretSetting reports whether a setting's value must not be printed.
func secretSetting(name string) bool {
	for _, w := range []string{"token", "password", "secret"} {
		if strings.Contains(name, w) {
			return true
		}
	}
	return false
}

const configUsage = `Usage: goldvm config print [--json] [--config FILE] [serve flags...]

Prints the configuration goldvm serve would run with, given the same flags,
environment and configuration file: every setting, its value and where the
value came from (flag, env $VAR, FILE:LINE or default).
`

// runConfig is `goldvm config`.
func runConfig(args []string) error {
	if len(args) == 0 || args[0] != "print" {
		fmt.Fprint(os.Stderr, configUsage)
		return errors.New("config: the only subcommand is print")
	}
	return serve(args[1:], &configShow{out: os.Stdout})
}
