package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/client"
)

// clientFlags are the flags every client command takes.
type clientFlags struct {
	addr  string
	token string
	json  bool
}

func (c *clientFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.addr, "addr", envOr("GOLDVM_ADDR", "127.0.0.1:12345"), "daemon address ($GOLDVM_ADDR)")
	fs.StringVar(&c.token, "token", os.Getenv("GOLDVM_TOKEN"), "bearer token ($GOLDVM_TOKEN)")
	fs.BoolVar(&c.json, "json", false, "print JSON")
}

func (c *clientFlags) client() *client.Client { return client.New(c.addr, c.token) }

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt)
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func runCreate(args []string) error {
	fs := flag.NewFlagSet("create", flag.ExitOnError)
	var cf clientFlags
	cf.register(fs)
	cpus := fs.Int("cpus", 1, "virtual CPUs")
	memory := fs.String("memory", "512mib", "memory: MiB or an IEC size such as 1gib or 1.5gib")
	network := fs.String("network", "nat", "network type: nat, bridged or hostonly")
	imageURL := fs.String("image", "", "image URL (http or https)")
	checksum := fs.String("checksum", "", "image checksum, hex")
	checksumType := fs.String("checksum-type", "sha256", "md5, sha1, sha256 or sha512")
	callback := fs.String("callback-url", "", "URL to POST the result to")
	gui := fs.Bool("gui", false, "open a console window (not headless)")
	toolsTimeout := fs.Duration("tools-init-timeout", 5*time.Minute, "how long to wait for the guest's address")
	wait := fs.Bool("wait", true, "wait until the VM runs (or fails), showing progress")
	fromGroup := fs.String("from-group", "", "take one of this group's warm VMs (booted cold from its template when none is ready); only --tag and --callback-url go with it")
	var tags tagFlags
	fs.Var(&tags, "tag", "tag the VM, key=value (repeat for more)")
	fs.Parse(args)
	req, err := createRequest(fs, *fromGroup, tags.m, *callback)
	if err != nil {
		return err
	}
	if *fromGroup == "" {
		req.CPUs, req.NetworkType = *cpus, *network
		req.Image = api.Image{URL: *imageURL, Checksum: *checksum, ChecksumType: *checksumType}
		req.ToolsInitTimeout = api.Duration(*toolsTimeout)
		if err := json.Unmarshal(memoryJSON(*memory), &req.Memory); err != nil {
			return fmt.Errorf("--memory: %w", err)
		}
		headless := !*gui
		req.Headless = &headless
	}
	ctx, cancel := signalContext()
	defer cancel()
	c := cf.client()
	v, err := c.CreateVM(ctx, req)
	if err != nil {
		return err
	}
	if v.FromGroup != nil && v.FromGroup.Warm {
		fmt.Fprintf(os.Stderr, "handed out a warm VM of group %s\n", v.FromGroup.Group)
	}
	if !*wait {
		if cf.json {
			return printJSON(v)
		}
		fmt.Println(v.ID)
		return nil
	}
	bar := newProgressBar(os.Stderr, !cf.json)
	v, err = c.WaitVM(ctx, v.ID, bar.update)
	bar.done()
	if err != nil {
		return err
	}
	if cf.json {
		return printJSON(v)
	}
	printVM(os.Stdout, v)
	if v.Status == api.StatusError && v.Error != nil {
		err := fmt.Errorf("%s: %s", v.Error.Code, v.Error.Message)
		if v.Error.Code == api.CodeDiscoveryTimeout || v.Error.Code == api.CodeVMNotRunning {
			// The guest booted, or tried to: its console says how far.
			err = fmt.Errorf("%w\n(goldvm console %s shows what the guest printed)", err, v.ID)
		}
		return err
	}
	return nil
}

// createRequest starts the create request of `goldvm create`: with
// fromGroup, the group's template gives the machine and image, so the
// flags that describe them are refused when given.
func createRequest(fs *flag.FlagSet, fromGroup string, tags map[string]string, callback string) (api.CreateVMRequest, error) {
	req := api.CreateVMRequest{FromGroup: fromGroup, Tags: tags, CallbackURL: callback}
	if fromGroup == "" {
		if fs.Lookup("image").Value.String() == "" || fs.Lookup("checksum").Value.String() == "" {
			return req, errors.New("create needs --image URL and --checksum HEX (or --from-group NAME)")
		}
		return req, nil
	}
	var clash []string
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "from-group", "tag", "callback-url", "wait", "json", "addr", "token":
		default:
			clash = append(clash, "--"+f.Name)
		}
	})
	if len(clash) > 0 {
		return req, fmt.Errorf("--from-group takes the machine and image from the group's template: drop %s", strings.Join(clash, ", "))
	}
	return req, nil
}

// memoryJSON turns a flag value into the JSON the API takes: digits are MiB.
func memoryJSON(s string) []byte {
	if s != "" && strings.Trim(s, "0123456789") == "" {
		return []byte(s)
	}
	b, _ := json.Marshal(s)
	return b
}

func runGet(args []string) error {
	fs := flag.NewFlagSet("get", flag.ExitOnError)
	var cf clientFlags
	cf.register(fs)
	fs.Parse(args)
	if fs.NArg() != 1 {
		return errors.New("get takes one VM id")
	}
	v, err := cf.client().GetVM(context.Background(), fs.Arg(0))
	if err != nil {
		return err
	}
	if cf.json {
		return printJSON(v)
	}
	printVM(os.Stdout, v)
	return nil
}

func runList(args []string) error {
	fs := flag.NewFlagSet("ls", flag.ExitOnError)
	var cf clientFlags
	cf.register(fs)
	status := fs.String("status", "", "only VMs in these statuses, comma-separated (creating, running, stopped, error, deleting)")
	limit := fs.Int("limit", 0, fmt.Sprintf("at most this many VMs, newest first (1 to %d; 0: all)", api.MaxPageSize))
	after := fs.String("after", "", "only VMs older than this id (the previous page names it)")
	var tags tagFlags
	fs.Var(&tags, "tag", "only VMs with this tag, key=value (repeat: all of them)")
	fs.Parse(args)
	if fs.NArg() != 0 {
		return fmt.Errorf("ls takes no arguments, got %q", fs.Args())
	}
	var opts client.ListOptions
	for _, st := range strings.Split(*status, ",") {
		if st = strings.TrimSpace(st); st != "" {
			opts.Status = append(opts.Status, api.Status(st))
		}
	}
	opts.Limit, opts.After, opts.Tags = *limit, *after, tags.m
	l, err := cf.client().ListVMsPage(context.Background(), opts)
	if err != nil {
		return err
	}
	if cf.json {
		if *limit > 0 || *after != "" {
			return printJSON(l) // with "next"
		}
		return printJSON(l.VMs)
	}
	vms := l.VMs
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATUS\tCPUS\tMEMORY\tIP\tGUEST OS\tAGE")
	for _, v := range vms {
		status := string(v.Status)
		if v.Phase != "" {
			status += "/" + string(v.Phase)
		}
		if v.Error != nil {
			status += " (" + v.Error.Code + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%dMiB\t%s\t%s\t%s\n", v.ID, status, v.CPUs, v.MemoryMiB, dash(v.IPAddress), dash(cmp.Or(v.GuestOSName, v.GuestOS)), age(v.CreatedAt))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if l.Next != "" {
		fmt.Fprintf(os.Stderr, "more VMs: repeat with --after %s\n", l.Next)
	}
	return nil
}

func runConsole(args []string) error {
	fs := flag.NewFlagSet("console", flag.ExitOnError)
	var cf clientFlags
	cf.register(fs)
	tail := fs.Int("tail", 0, "bytes from the end to show (default 64 KiB, at most 1 MiB)")
	fs.Parse(args)
	if fs.NArg() != 1 {
		return errors.New("console takes one VM id")
	}
	out, err := cf.client().Console(context.Background(), fs.Arg(0), *tail)
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(out)
	return err
}

func runRemove(args []string) error {
	fs := flag.NewFlagSet("rm", flag.ExitOnError)
	var cf clientFlags
	cf.register(fs)
	fs.Parse(args)
	if fs.NArg() == 0 {
		return errors.New("rm takes one or more VM ids")
	}
	c := cf.client()
	var errs []error
	for _, id := range fs.Args() {
		if err := c.DeleteVM(context.Background(), id); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", id, err))
			continue
		}
		if !cf.json {
			fmt.Println("deleted", id)
		}
	}
	return errors.Join(errs...)
}

func runImages(args []string) error {
	sub := "ls"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		sub, args = args[0], args[1:]
	}
	fs := flag.NewFlagSet("images "+sub, flag.ExitOnError)
	var cf clientFlags
	cf.register(fs)
	switch sub {
	case "ls", "list":
		fs.Parse(args)
		imgs, err := cf.client().ListImages(context.Background())
		if err != nil {
			return err
		}
		if cf.json {
			return printJSON(imgs)
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "KEY\tSTATE\tSIZE\tVMS\tLAST USED\tURL")
		for _, im := range imgs {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", shortKey(im.Key), im.State, humanBytes(im.SizeBytes), im.VMs, age(im.LastUsed), im.URL)
		}
		return tw.Flush()
	case "pull":
		checksum := fs.String("checksum", "", "image checksum, hex")
		checksumType := fs.String("checksum-type", "sha256", "md5, sha1, sha256 or sha512")
		wait := fs.Bool("wait", true, "wait until the image is ready (or failed), showing progress")
		fs.Parse(args)
		if fs.NArg() != 1 || *checksum == "" {
			return errors.New("images pull takes --checksum HEX and one URL")
		}
		ctx, cancel := signalContext()
		defer cancel()
		c := cf.client()
		info, err := c.PrefetchImage(ctx, api.Image{URL: fs.Arg(0), Checksum: *checksum, ChecksumType: *checksumType})
		if err != nil {
			return err
		}
		if *wait && info.State == "fetching" {
			bar := newProgressBar(os.Stderr, !cf.json)
			info, err = c.WaitImage(ctx, info.Key, func(i *api.ImageInfo) {
				if i.State == "fetching" {
					bar.show(shortKey(i.Key), cmp.Or(i.Phase, api.Phase(i.State)), i.Progress)
				}
			})
			bar.done()
			if err != nil {
				return err
			}
		}
		if cf.json {
			if err := printJSON(info); err != nil {
				return err
			}
		} else {
			fmt.Println(info.Key, info.State)
		}
		if info.State == "error" && info.Error != nil {
			return fmt.Errorf("%s: %s", info.Error.Code, info.Error.Message)
		}
		return nil
	case "rm":
		fs.Parse(args)
		var errs []error
		for _, key := range fs.Args() {
			if err := cf.client().DeleteImage(context.Background(), key); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", key, err))
			}
		}
		return errors.Join(errs...)
	case "package":
		return runImagePackage(fs, &cf, args)
	default:
		return fmt.Errorf("unknown images command %q (ls, pull, rm, package)", sub)
	}
}

func printVM(w io.Writer, v *api.VM) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	row("ID", v.ID)
	row("Status", string(v.Status))
	if v.Phase != "" {
		row("Phase", string(v.Phase))
	}
	if v.Error != nil {
		row("Error", v.Error.Code+": "+v.Error.Message)
	}
	if v.StopReason != "" {
		row("Stop reason", v.StopReason)
	}
	row("Backend", v.Backend)
	row("CPUs", fmt.Sprint(v.CPUs))
	row("Memory", fmt.Sprintf("%d MiB", v.MemoryMiB))
	row("Network", v.NetworkType)
	row("IP address", dash(v.IPAddress))
	if v.SSHAddress != "" {
		row("SSH", v.SSHAddress+" (forwarded to the guest's port 22)")
	}
	row("Guest OS", guestOS(v))
	row("Image", v.Image.URL)
	if v.Callback != nil {
		row("Callback", fmt.Sprintf("%s (%d attempts)", v.Callback.State, v.Callback.Attempts))
	}
	row("Created", v.CreatedAt.Local().Format(time.RFC3339))
	tw.Flush()
}

// guestOS shows the guest's OS to people: its readable name, with the
// identifier the API gives in guest_os when that differs.
func guestOS(v *api.VM) string {
	name := cmp.Or(v.GuestOSName, v.GuestOS)
	if v.GuestOS != "" && v.GuestOS != name {
		name += " (" + v.GuestOS + ")"
	}
	return dash(name)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func shortKey(k string) string {
	if len(k) > 24 {
		return k[:24] + "…"
	}
	return k
}

func age(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Since(t).Round(time.Second)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	default:
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	}
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// progressBar draws the creation's phase and download progress on one
// terminal line, like docker pull.
type progressBar struct {
	w       io.Writer
	enabled bool
	last    string
}

func newProgressBar(w io.Writer, enabled bool) *progressBar {
	return &progressBar{w: w, enabled: enabled}
}

// update shows a VM's creation.
func (p *progressBar) update(v *api.VM) {
	if v.Status == api.StatusCreating {
		p.show(v.ID, cmp.Or(v.Phase, api.Phase(v.Status)), v.Progress)
	}
}

// show draws what's phase and, while downloading, its progress.
func (p *progressBar) show(what string, phase api.Phase, pr *api.Progress) {
	if !p.enabled {
		return
	}
	line := fmt.Sprintf("%s: %s", what, phase)
	if pr != nil && phase == api.PhaseDownloading {
		if pr.BytesTotal > 0 {
			const width = 30
			frac := float64(pr.BytesDone) / float64(pr.BytesTotal)
			n := int(frac * width)
			line += fmt.Sprintf(" [%s%s] %s / %s (%.0f%%)", strings.Repeat("=", n), strings.Repeat(" ", width-n),
				humanBytes(pr.BytesDone), humanBytes(pr.BytesTotal), frac*100)
		} else {
			line += " " + humanBytes(pr.BytesDone)
		}
	}
	if line != p.last {
		fmt.Fprintf(p.w, "\r\033[K%s", line)
		p.last = line
	}
}

func (p *progressBar) done() {
	if p.enabled && p.last != "" {
		fmt.Fprintln(p.w)
	}
}
