package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"

	"github.com/goldvm/goldvm/internal/websocket"
)

// runVNC relays a local TCP port to a VM's VNC console (GET /vms/{id}/vnc)
// for desktop viewers: each connection to the port is one WebSocket.
func runVNC(args []string) error {
	fs := flag.NewFlagSet("vnc", flag.ExitOnError)
	var cf clientFlags
	cf.register(fs)
	listen := fs.String("listen", "127.0.0.1:0", "local address for VNC viewers (port 0: a free one)")
	id, err := parseWithID(fs, args)
	if err != nil {
		return err
	}
	c := cf.client()
	ctx, cancel := signalContext()
	defer cancel()
	// Fail now, not at the first viewer, when the VM has no console.
	probe, err := c.VNC(ctx, id)
	if err != nil {
		return err
	}
	probe.Close()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	defer ln.Close()
	go func() { <-ctx.Done(); ln.Close() }()
	// The address alone on stdout, for scripts; the hint on stderr.
	fmt.Println(ln.Addr().String())
	fmt.Fprintf(os.Stderr, "goldvm: VNC of VM %s on %s (e.g. vncviewer %s); Ctrl-C ends\n", id, ln.Addr(), ln.Addr())
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go func() {
			ws, err := c.VNC(context.WithoutCancel(ctx), id)
			if err != nil {
				fmt.Fprintln(os.Stderr, "goldvm: vnc:", err)
				conn.Close()
				return
			}
			websocket.Relay(ws, conn)
		}()
	}
}

// runScreenshot saves a PNG of a running VM's display.
func runScreenshot(args []string) error {
	fs := flag.NewFlagSet("screenshot", flag.ExitOnError)
	var cf clientFlags
	cf.register(fs)
	out := fs.String("o", "", "file to write the PNG to (required; - for stdout)")
	id, err := parseWithID(fs, args)
	if err != nil || *out == "" {
		return errors.New("usage: goldvm screenshot ID -o FILE.png")
	}
	png, err := cf.client().Screenshot(context.Background(), id)
	if err != nil {
		return err
	}
	if *out == "-" {
		_, err = os.Stdout.Write(png)
		return err
	}
	return os.WriteFile(*out, png, 0o644)
}

// runCapacity prints GET /capacity.
func runCapacity(args []string) error {
	fs := flag.NewFlagSet("capacity", flag.ExitOnError)
	var cf clientFlags
	cf.register(fs)
	fs.Parse(args)
	c, err := cf.client().Capacity(context.Background())
	if err != nil {
		return err
	}
	if cf.json {
		return printJSON(c)
	}
	fmt.Printf("total     %d vCPUs  %d MiB\nused      %d vCPUs  %d MiB\nreserved  %d vCPUs  %d MiB\nfree      %d vCPUs  %d MiB\nqueued    %d vCPUs  %d MiB  (%d waiting)\n",
		c.Total.CPUs, c.Total.MemoryMiB, c.Used.CPUs, c.Used.MemoryMiB, c.Reserved.CPUs, c.Reserved.MemoryMiB,
		c.Free.CPUs, c.Free.MemoryMiB, c.Queued.CPUs, c.Queued.MemoryMiB, c.Waiting)
	return nil
}

// parseWithID parses flags given before or after the one VM id.
func parseWithID(fs *flag.FlagSet, args []string) (string, error) {
	fs.Parse(args)
	if fs.NArg() < 1 {
		return "", fmt.Errorf("%s takes one VM id", fs.Name())
	}
	id := fs.Arg(0)
	fs.Parse(fs.Args()[1:])
	if fs.NArg() != 0 {
		return "", fmt.Errorf("%s takes one VM id", fs.Name())
	}
	return id, nil
}
