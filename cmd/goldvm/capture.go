package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
)

// runCapture is `goldvm capture [--stop] ID`: POST /vms/{id}/capture.
func runCapture(args []string) error {
	fs := flag.NewFlagSet("capture", flag.ExitOnError)
	var cf clientFlags
	cf.register(fs)
	stop := fs.Bool("stop", false, "stop the VM first if it runs")
	id, err := parseWithID(fs, args)
	if err != nil {
		return errors.New("usage: goldvm capture [--stop] ID")
	}
	ctx, cancel := signalContext()
	defer cancel()
	info, err := cf.client().Capture(ctx, id, *stop)
	if err != nil {
		return err
	}
	if cf.json {
		return printJSON(info)
	}
	fmt.Println(info.Key)
	return nil
}

// runImagePackage is `goldvm images package KEY -o FILE`: the image's
// tar.zst package, checked against its sha256, which is printed.
func runImagePackage(fs *flag.FlagSet, cf *clientFlags, args []string) error {
	out := fs.String("o", "", "file to write the tar.zst package to (required; - for stdout)")
	key, err := parseWithID(fs, args)
	if err != nil || *out == "" {
		return errors.New("usage: goldvm images package KEY -o FILE.tar.zst")
	}
	ctx, cancel := signalContext()
	defer cancel()
	if *out == "-" {
		sum, err := cf.client().ImagePackage(ctx, key, os.Stdout)
		if err == nil {
			fmt.Fprintln(os.Stderr, "sha256", sum)
		}
		return err
	}
	// Written beside the target and renamed into place once verified.
	f, err := os.CreateTemp(filepath.Dir(*out), ".goldvm-package-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	sum, err := cf.client().ImagePackage(ctx, key, f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Rename(f.Name(), *out); err != nil {
		return err
	}
	fmt.Println("sha256", sum)
	return nil
}
