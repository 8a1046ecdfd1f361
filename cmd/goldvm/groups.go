package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/goldvm/goldvm/api"
)

// tagFlags collects repeated --tag key=value flags.
type tagFlags struct{ m map[string]string }

func (f *tagFlags) String() string { return fmt.Sprint(f.m) }

func (f *tagFlags) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("%q is not key=value", s)
	}
	if f.m == nil {
		f.m = map[string]string{}
	}
	f.m[k] = v
	return nil
}

// runAction runs POST /vms/{id}/{action} on each id.
func runAction(action string, args []string) error {
	fs := flag.NewFlagSet(action, flag.ExitOnError)
	var cf clientFlags
	cf.register(fs)
	fs.Parse(args)
	if fs.NArg() == 0 {
		return fmt.Errorf("%s takes VM ids", action)
	}
	c := cf.client()
	for _, id := range fs.Args() {
		v, err := c.VMAction(context.Background(), id, action)
		if err != nil {
			return err
		}
		if cf.json {
			printJSON(v)
		} else {
			printVM(os.Stdout, v)
		}
	}
	return nil
}

// runGroup is `goldvm group set|ls|get|rm`.
func runGroup(args []string) error {
	if len(args) == 0 {
		return errors.New("group needs a subcommand: set NAME, ls, get NAME or rm NAME")
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("group "+sub, flag.ExitOnError)
	var cf clientFlags
	cf.register(fs)
	ctx := context.Background()
	switch sub {
	case "set":
		size := fs.Int("size", 1, "how many VMs the group keeps")
		surge := fs.Int("max-surge", 1, "most creations in flight")
		unavail := fs.Int("max-unavailable", 0, "how many fewer than size may run during a template change")
		warm := fs.Int("warm", 0, "extra VMs kept booted for creates with from_group")
		cpus := fs.Int("cpus", 1, "virtual CPUs of each VM")
		memory := fs.String("memory", "512mib", "memory of each VM: MiB or IEC")
		network := fs.String("network", "nat", "network type: nat, bridged or hostonly")
		imageURL := fs.String("image", "", "image URL (http or https)")
		checksum := fs.String("checksum", "", "image checksum, hex")
		checksumType := fs.String("checksum-type", "sha256", "md5, sha1, sha256 or sha512")
		toolsTimeout := fs.Duration("tools-init-timeout", 5*time.Minute, "how long to wait for each guest's address")
		var tags tagFlags
		fs.Var(&tags, "tag", "a tag of each VM, key=value (repeat for more)")
		name, rest := nameArg(args)
		fs.Parse(rest)
		if name == "" || *imageURL == "" || *checksum == "" {
			return errors.New("group set NAME needs --image URL and --checksum HEX")
		}
		spec := api.GroupSpec{Size: *size, MaxSurge: *surge, MaxUnavailable: *unavail, Warm: *warm, Template: api.CreateVMRequest{
			CPUs: *cpus, NetworkType: *network, Tags: tags.m, ToolsInitTimeout: api.Duration(*toolsTimeout),
			Image: api.Image{URL: *imageURL, Checksum: *checksum, ChecksumType: *checksumType},
		}}
		if err := json.Unmarshal(memoryJSON(*memory), &spec.Template.Memory); err != nil {
			return fmt.Errorf("--memory: %w", err)
		}
		g, err := cf.client().PutGroup(ctx, name, spec)
		if err != nil {
			return err
		}
		return showGroup(cf.json, g)
	case "get":
		name, rest := nameArg(args)
		fs.Parse(rest)
		g, err := cf.client().GetGroup(ctx, name)
		if err != nil {
			return err
		}
		return showGroup(cf.json, g)
	case "rm":
		keep := fs.Bool("keep-vms", false, "keep the VMs, without their group tags")
		name, rest := nameArg(args)
		fs.Parse(rest)
		return cf.client().DeleteGroup(ctx, name, *keep)
	case "ls", "list":
		fs.Parse(args)
		gs, err := cf.client().ListGroups(ctx)
		if err != nil {
			return err
		}
		if cf.json {
			return printJSON(gs)
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tSTATE\tSIZE\tRUNNING\tVMS\tTEMPLATE")
		for _, g := range gs {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%s\n", g.Name, g.State, g.Spec.Size, g.Running, len(g.VMs), g.TemplateHash)
		}
		return tw.Flush()
	}
	return fmt.Errorf("unknown group subcommand %q: use set, ls, get or rm", sub)
}

// nameArg takes the group name given before the flags.
func nameArg(args []string) (string, []string) {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return "", args
	}
	return args[0], args[1:]
}

func showGroup(asJSON bool, g *api.Group) error {
	if asJSON {
		return printJSON(g)
	}
	fmt.Printf("group %s: %s, size %d, %d running, template %s\n", g.Name, g.State, g.Spec.Size, g.Running, g.TemplateHash)
	if g.Spec.Warm > 0 {
		fmt.Printf("warm %d, %d ready\n", g.Spec.Warm, g.WarmReady)
	}
	if g.Error != nil {
		fmt.Printf("last error (%d in a row): %s: %s\n", g.Failures, g.Error.Code, g.Error.Message)
	}
	for _, v := range g.VMs {
		cur := ""
		if !v.Current {
			cur = " (old template)"
		}
		if v.Warm {
			cur += " (warm)"
		}
		fmt.Printf("  %s  %s%s\n", v.ID, v.Status, cur)
	}
	return nil
}
