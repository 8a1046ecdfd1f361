package main

import (
	"cmp"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/client"
)

// runEvents prints the daemon's events as they happen, reconnecting (and
// resuming from the last one) when the daemon ends the stream.
func runEvents(args []string) error {
	fs := flag.NewFlagSet("events", flag.ExitOnError)
	var cf clientFlags
	cf.register(fs)
	vmID := fs.String("vm", "", "only the events of this VM")
	types := fs.String("type", "", "only events of these types, comma-separated: vm, image, group, capacity")
	fs.Parse(args)
	if fs.NArg() != 0 {
		return fmt.Errorf("events takes no arguments, got %q", fs.Args())
	}
	opts := client.EventOptions{VM: *vmID}
	for _, t := range strings.Split(*types, ",") {
		if t = strings.TrimSpace(t); t != "" {
			opts.Types = append(opts.Types, t)
		}
	}
	ctx, cancel := signalContext()
	defer cancel()
	c := cf.client()
	enc := json.NewEncoder(os.Stdout)
	for {
		st, err := c.Events(ctx, opts)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		for {
			e, err := st.Next()
			if err != nil {
				st.Close()
				if ctx.Err() != nil {
					return nil
				}
				if !errors.Is(err, io.EOF) {
					return err
				}
				break
			}
			if cf.json {
				if err := enc.Encode(e); err != nil {
					return err
				}
			} else {
				fmt.Println(formatEvent(e))
			}
		}
		// The daemon ended the stream (dropped a slow reader, or
		// restarted): resume after the last event seen.
		opts.Resume, opts.LastEventID = true, st.LastID
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}

// formatEvent is one line for people: time, type.action, what, details.
func formatEvent(e api.Event) string {
	ts := e.Time.Local().Format("15:04:05.000")
	switch {
	case e.Type == api.EventReset:
		return fmt.Sprintf("%s reset %s", ts, e.Message)
	case e.VM != nil:
		v := e.VM
		detail := string(v.Status)
		if v.Phase != "" {
			detail += "/" + string(v.Phase)
		}
		switch {
		case v.Error != nil && e.Action == api.ActionError:
			detail += " " + v.Error.Code + ": " + v.Error.Message
		case e.Action == api.ActionRunning:
			detail += " " + dash(v.IPAddress) + " " + dash(cmp.Or(v.GuestOSName, v.GuestOS))
		case e.Action == api.ActionStopped:
			detail += " " + v.StopReason
		case e.Action == api.ActionCallback && v.Callback != nil:
			detail += fmt.Sprintf(" callback %s (%d attempts)", v.Callback.State, v.Callback.Attempts)
		case v.Progress != nil:
			detail += " " + humanBytes(v.Progress.BytesDone)
		}
		return fmt.Sprintf("%s vm.%s %s %s", ts, e.Action, e.VMID, detail)
	case e.Image != nil:
		detail := e.Image.URL
		if e.Image.Error != nil {
			detail += " " + e.Image.Error.Code + ": " + e.Image.Error.Message
		}
		return fmt.Sprintf("%s image.%s %s %s", ts, e.Action, shortKey(e.ImageKey), detail)
	case e.Type == api.EventGroup:
		return fmt.Sprintf("%s group.%s %s%s", ts, e.Action, e.GroupName, groupDetail(e))
	case e.Type == api.EventCapacity && e.Capacity != nil:
		c := e.Capacity
		detail := fmt.Sprintf(" %d/%s vCPUs %d/%s MiB held, %d waiting", c.Used.CPUs+c.Reserved.CPUs, limit(int64(c.Total.CPUs)),
			c.Used.MemoryMiB+c.Reserved.MemoryMiB, limit(c.Total.MemoryMiB), c.Waiting)
		if e.Position > 0 {
			detail = fmt.Sprintf(" position %d,%s", e.Position, detail)
		}
		if e.Message != "" {
			detail += ": " + e.Message
		}
		return fmt.Sprintf("%s capacity.%s %s%s", ts, e.Action, e.VMID, detail)
	default:
		return fmt.Sprintf("%s %s.%s %s%s", ts, e.Type, e.Action, e.VMID, e.ImageKey)
	}
}

// groupDetail is the tail of a group event's line: the VM handed out, what
// a pass did, why the group degraded, or its state.
func groupDetail(e api.Event) string {
	switch {
	case e.Action == api.ActionHandedOut:
		return " vm " + e.VMID
	case e.Reconcile != nil:
		var parts []string
		for _, p := range []struct {
			what string
			ids  []string
		}{{"created", e.Reconcile.Created}, {"deleting", e.Reconcile.Deleted}, {"failed", e.Reconcile.Failed}} {
			if len(p.ids) > 0 {
				parts = append(parts, p.what+" "+strings.Join(p.ids, ","))
			}
		}
		return " " + strings.Join(parts, "; ")
	case e.Message != "":
		return " " + e.Message
	case e.Group != nil:
		return fmt.Sprintf(" %s, %d/%d running", e.Group.State, e.Group.Running, e.Group.Spec.Size)
	}
	return ""
}

// limit shows a capacity total, "∞" for none.
func limit(n int64) string {
	if n == 0 {
		return "∞"
	}
	return strconv.FormatInt(n, 10)
}
