package main

import (
	"context"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/events"
	"github.com/goldvm/goldvm/internal/group"
	"github.com/goldvm/goldvm/internal/image"
	"github.com/goldvm/goldvm/internal/metrics"
	"github.com/goldvm/goldvm/internal/vm"
)

// newObservability returns the daemon's event bus and its metrics, which
// count what the bus carries.
func newObservability() (*events.Bus, *metrics.Metrics) {
	bus := events.New(events.Options{})
	mets := metrics.New()
	bus.Observe(mets.Observe)
	mets.CollectEventDrops(bus.Dropped)
	return bus, mets
}

// collectState adds the gauges read at each scrape: VMs by status and
// backend, the capacity and its queue, gold images and their disk space.
func collectState(mets *metrics.Metrics, mgr *vm.Manager, images *image.Store) {
	mets.CollectVMs(func() ([]api.VM, error) { return mgr.List(context.Background()) })
	mets.CollectCapacity(mgr.Capacity)
	mets.CollectImages(func() (metrics.ImageStats, error) {
		infos, err := images.List()
		if err != nil {
			return metrics.ImageStats{}, err
		}
		st := metrics.ImageStats{Images: len(infos)}
		for _, in := range infos {
			st.DiskBytes += in.DiskBytes
		}
		return st, nil
	})
}

// collectGroups adds the gauges of each group (desired and running VMs,
// warm pool, degraded), read at each scrape.
func collectGroups(mets *metrics.Metrics, groups *group.Manager) {
	mets.CollectGroups(func() ([]api.Group, error) { return groups.List(context.Background()) })
}
