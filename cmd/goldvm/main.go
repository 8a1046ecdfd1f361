// Command goldvm is both the goldvm daemon (`goldvm serve`) and its CLI
// client (`goldvm create|get|ls|rm|images`).
package main

import (
	"fmt"
	"os"
)

const usage = `goldvm hands out virtual machines over an HTTP API.

Usage:
  goldvm serve   [flags]            run the daemon
  goldvm create  [flags]            create a VM and wait until it runs
  goldvm get     [flags] ID         show one VM
  goldvm console [flags] ID         print the end of a VM's serial console
  goldvm ls      [flags]            list VMs, newest first
  goldvm rm      [flags] ID...      delete VMs and free their disks
  goldvm images  [ls|pull|rm] ...   list, pre-fetch or delete gold images
  goldvm images package KEY -o FILE save an image's tar.zst package
  goldvm capture [--stop] ID        write a new gold image from a VM's disk
  goldvm group   [set|ls|get|rm] .. keep groups of VMs at a size
  goldvm stop|start|restart|suspend|resume ID
                                    run a lifecycle action on a VM
  goldvm events  [flags]            follow VM and image state changes
  goldvm vnc     [flags] ID         relay a local port to a VM's VNC console
  goldvm screenshot [flags] ID -o FILE.png   save a PNG of a VM's display
  goldvm capacity [flags]           show the host's capacity for VMs
  goldvm config print [flags]       show serve's configuration and where each value came from
  goldvm version [--json]           show goldvm's version and build

Client commands talk to $GOLDVM_ADDR (default 127.0.0.1:12345) with the bearer
token $GOLDVM_TOKEN if set; --json prints JSON for scripts.
Run 'goldvm COMMAND -h' for the flags of a command.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	args := os.Args[2:]
	switch os.Args[1] {
	case "serve":
		err = runServe(args)
	case "create":
		err = runCreate(args)
	case "get":
		err = runGet(args)
	case "console":
		err = runConsole(args)
	case "ls", "list":
		err = runList(args)
	case "rm", "delete":
		err = runRemove(args)
	case "images":
		err = runImages(args)
	case "group", "groups":
		err = runGroup(args)
	case "stop", "start", "restart", "suspend", "resume":
		err = runAction(os.Args[1], args)
	case "events":
		err = runEvents(args)
	case "vnc":
		err = runVNC(args)
	case "screenshot":
		err = runScreenshot(args)
	case "capture":
		err = runCapture(args)
	case "capacity":
		err = runCapacity(args)
	case "config":
		err = runConfig(args)
	case "version", "--version", "-version":
		err = runVersion(args)
	case "-h", "--help", "help":
		fmt.Print(usage)
		return
	default:
		fmt.Fprintf(os.Stderr, "goldvm: unknown command %q\n\n%s", os.Args[1], usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "goldvm:", err)
		os.Exit(1)
	}
}
