package main

import (
	"context"
	"flag"
	"log/slog"
	"os"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/events"
	"github.com/goldvm/goldvm/internal/hypervisor"
	"github.com/goldvm/goldvm/internal/hypervisor/lxd"
)

// lxdFlags are the settings of --backend lxd.
type lxdFlags struct {
	url, cert, key, serverCert, project, instanceType *string
}

// addLXDFlags declares the lxd backend's flags on fs.
func addLXDFlags(fs *flag.FlagSet) lxdFlags {
	return lxdFlags{
		url:          fs.String("lxd-url", os.Getenv("GOLDVM_LXD_URL"), "LXD to drive with --backend lxd: empty for the local unix socket, unix:///path/unix.socket, or https://host:8443 with --lxd-cert/--lxd-key ($GOLDVM_LXD_URL)"),
		cert:         fs.String("lxd-cert", os.Getenv("GOLDVM_LXD_CERT"), "client certificate (PEM) LXD trusts, for an https --lxd-url ($GOLDVM_LXD_CERT)"),
		key:          fs.String("lxd-key", os.Getenv("GOLDVM_LXD_KEY"), "the client certificate's key (PEM) ($GOLDVM_LXD_KEY)"),
		serverCert:   fs.String("lxd-server-cert", os.Getenv("GOLDVM_LXD_SERVER_CERT"), "LXD's server certificate (PEM), when no CA the host trusts signed it ($GOLDVM_LXD_SERVER_CERT)"),
		project:      fs.String("lxd-project", envOr("GOLDVM_LXD_PROJECT", "goldvm"), "LXD project of goldvm's instances and images, created when missing ($GOLDVM_LXD_PROJECT)"),
		instanceType: fs.String("lxd-instance-type", envOr("GOLDVM_LXD_INSTANCE_TYPE", lxd.TypeVM), "LXD instance type: virtual-machine or container ($GOLDVM_LXD_INSTANCE_TYPE)"),
	}
}

// newLXD connects to LXD as f says.
func newLXD(f lxdFlags, log *slog.Logger) (*lxd.Driver, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return lxd.New(ctx, lxd.Config{
		URL: *f.url, CertFile: *f.cert, KeyFile: *f.key, ServerCertFile: *f.serverCert,
		Project: *f.project, InstanceType: *f.instanceType, Logger: log,
	})
}

// forgetDriverImages tells a driver that keeps copies of gold images of
// its own (hypervisor.ImageForgetter) when goldvm deletes or evicts one.
func forgetDriverImages(bus *events.Bus, driver hypervisor.Driver, log *slog.Logger) {
	f, ok := driver.(hypervisor.ImageForgetter)
	if !ok {
		return
	}
	bus.Observe(func(e api.Event) {
		if e.Type != api.EventImage || (e.Action != api.ActionDeleted && e.Action != api.ActionEvicted) {
			return
		}
		// Observers must be quick: the removal runs on its own.
		go func(key string) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			if err := f.ForgetImage(ctx, key); err != nil {
				log.Warn("removing the backend's copy of an image", "key", key, "err", err)
			}
		}(e.ImageKey)
	})
}
