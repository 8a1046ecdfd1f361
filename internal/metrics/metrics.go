// Package metrics keeps goldvm's Prometheus metrics (GET /metrics). Most
// are counted from the event bus (see Observe), so the components that
// change state need no metrics code of their own; gauges of the current
// state (VMs by status, image bytes on disk) are read at each scrape.
package metrics

import (
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/goldvm/goldvm/api"
)

// Metrics holds the registry and the daemon's metrics. Its methods are safe
// for concurrent use.
type Metrics struct {
	reg *prometheus.Registry

	httpRequests *prometheus.CounterVec
	httpDuration *prometheus.HistogramVec
	phaseSeconds *prometheus.HistogramVec
	createTotal  *prometheus.HistogramVec
	downloaded   prometheus.Counter
	lookups      *prometheus.CounterVec
	evictions    prometheus.Counter
	imageFetches *prometheus.CounterVec
	callbacks    *prometheus.CounterVec
	exits        *prometheus.CounterVec
	capacity     *prometheus.CounterVec
	handOuts     *prometheus.CounterVec
	groupChanges *prometheus.CounterVec

	mu     sync.Mutex
	phases map[string]phaseStart // creations under way, by VM id
}

type phaseStart struct {
	phase api.Phase
	since time.Time
}

// durationBuckets suit creation phases, from a cached clone (ms) to a
// large download or a slow boot (many minutes).
var durationBuckets = []float64{0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800}

// New returns the metrics, registered with a registry of their own along
// with the Go runtime's and the process's.
func New() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		httpRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "goldvm_http_requests_total", Help: "HTTP requests by route pattern, method and status code.",
		}, []string{"route", "method", "code"}),
		httpDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "goldvm_http_request_duration_seconds", Help: "Time to answer an HTTP request, by route pattern (event streams: their whole life).",
			Buckets: prometheus.DefBuckets,
		}, []string{"route"}),
		phaseSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "goldvm_vm_create_phase_duration_seconds", Help: "Time a VM creation spent in each phase.",
			Buckets: durationBuckets,
		}, []string{"backend", "phase"}),
		createTotal: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "goldvm_vm_create_duration_seconds", Help: "Time from a VM's acceptance to running or error.",
			Buckets: durationBuckets,
		}, []string{"backend", "outcome"}),
		downloaded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "goldvm_image_download_bytes_total", Help: "Image bytes received from image servers.",
		}),
		lookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "goldvm_image_cache_lookups_total", Help: "Gold image lookups of VM creations and pre-fetches: hit (in the store), miss (a fetch started), joined (a fetch under way).",
		}, []string{"result"}),
		evictions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "goldvm_image_evictions_total", Help: "Gold images removed by the eviction policy.",
		}),
		imageFetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "goldvm_image_fetches_total", Help: "Image fetches ended, by outcome (ready, error) and error code.",
		}, []string{"outcome", "code"}),
		callbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "goldvm_callback_deliveries_total", Help: "Callbacks ended, by outcome (delivered, failed).",
		}, []string{"outcome"}),
		exits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "goldvm_vm_machine_exits_total", Help: "Running VMs whose machine (QEMU process, VMware VM) ended without a delete.",
		}, []string{"backend"}),
		capacity: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "goldvm_capacity_events_total", Help: "VMs admitted to the host's capacity, queued for it, released it, or left the queue without it (dequeued: a timeout, delete or shutdown).",
		}, []string{"action"}),
		handOuts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "goldvm_group_handouts_total", Help: "Warm VMs a group handed out to creates.",
		}, []string{"group"}),
		groupChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "goldvm_group_transitions_total", Help: "Groups that became degraded or recovered.",
		}, []string{"group", "action"}),
		phases: map[string]phaseStart{},
	}
	for _, a := range []string{api.ActionAdmitted, api.ActionQueued, api.ActionReleased, api.ActionDequeued} {
		m.capacity.WithLabelValues(a) // shown at 0 before the first
	}
	m.reg.MustRegister(m.httpRequests, m.httpDuration, m.phaseSeconds, m.createTotal, m.downloaded,
		m.lookups, m.evictions, m.imageFetches, m.callbacks, m.exits, m.capacity, m.handOuts, m.groupChanges,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry returns the registry, for further collectors.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// Request counts one answered HTTP request. route is the mux pattern
// ("GET /vms/{id}"), so ids do not multiply the series.
func (m *Metrics) Request(route, method string, code int, d time.Duration) {
	m.httpRequests.WithLabelValues(route, method, strconv.Itoa(code)).Inc()
	m.httpDuration.WithLabelValues(route).Observe(d.Seconds())
}

// Lookup counts an image lookup (image.Counters).
func (m *Metrics) Lookup(result string) { m.lookups.WithLabelValues(result).Inc() }

// Downloaded counts downloaded image bytes (image.Counters).
func (m *Metrics) Downloaded(n int64) { m.downloaded.Add(float64(n)) }

// Observe counts what an event tells: phase and creation durations,
// callback outcomes, machine exits, image fetches and evictions, capacity
// admissions, waits and releases, warm hand-outs and groups degraded or
// recovered. It is meant for events.Bus.Observe.
func (m *Metrics) Observe(e api.Event) {
	switch e.Type {
	case api.EventImage:
		switch e.Action {
		case api.ActionEvicted:
			m.evictions.Inc()
		case api.ActionReady:
			m.imageFetches.WithLabelValues("ready", "").Inc()
		case api.ActionError:
			code := ""
			if e.Image != nil && e.Image.Error != nil {
				code = e.Image.Error.Code
			}
			m.imageFetches.WithLabelValues("error", code).Inc()
		}
	case api.EventVM:
		if e.VM != nil {
			m.observeVM(e)
		}
	case api.EventCapacity:
		m.capacity.WithLabelValues(e.Action).Inc()
	case api.EventGroup:
		switch e.Action {
		case api.ActionHandedOut:
			m.handOuts.WithLabelValues(e.GroupName).Inc()
		case api.ActionDegraded, api.ActionRecovered:
			m.groupChanges.WithLabelValues(e.GroupName, e.Action).Inc()
		case api.ActionDeleted:
			// A deleted group's series go with it.
			m.handOuts.DeleteLabelValues(e.GroupName)
			m.groupChanges.DeletePartialMatch(prometheus.Labels{"group": e.GroupName})
		}
	}
}

func (m *Metrics) observeVM(e api.Event) {
	v := e.VM
	switch e.Action {
	case api.ActionStopped:
		m.exits.WithLabelValues(v.Backend).Inc()
	case api.ActionCallback:
		if v.Callback != nil && (v.Callback.State == api.CallbackDelivered || v.Callback.State == api.CallbackFailed) {
			m.callbacks.WithLabelValues(v.Callback.State).Inc()
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	prev, tracked := m.phases[v.ID]
	endPhase := func() {
		if tracked && prev.phase != "" {
			m.phaseSeconds.WithLabelValues(v.Backend, string(prev.phase)).Observe(e.Time.Sub(prev.since).Seconds())
		}
	}
	switch {
	case e.Action == api.ActionDeleted || e.Action == api.ActionDeleting:
		delete(m.phases, v.ID)
	case v.Status == api.StatusCreating:
		if !tracked || prev.phase != v.Phase {
			endPhase()
			m.phases[v.ID] = phaseStart{phase: v.Phase, since: e.Time}
		}
	case v.Status == api.StatusRunning || v.Status == api.StatusError:
		if tracked {
			endPhase()
			delete(m.phases, v.ID)
			m.createTotal.WithLabelValues(v.Backend, string(v.Status)).Observe(e.Time.Sub(v.CreatedAt).Seconds())
		}
	}
}

// CollectVMs adds the gauge goldvm_vms{status,backend}, read from list at
// each scrape.
func (m *Metrics) CollectVMs(list func() ([]api.VM, error)) {
	m.reg.MustRegister(&vmCollector{list: list})
}

var vmsDesc = prometheus.NewDesc("goldvm_vms", "VMs by status and backend.", []string{"status", "backend"}, nil)

type vmCollector struct {
	list func() ([]api.VM, error)
}

func (c *vmCollector) Describe(ch chan<- *prometheus.Desc) { ch <- vmsDesc }

func (c *vmCollector) Collect(ch chan<- prometheus.Metric) {
	vms, err := c.list()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(vmsDesc, err)
		return
	}
	type key struct{ status, backend string }
	counts := map[key]int{}
	for _, v := range vms {
		counts[key{string(v.Status), v.Backend}]++
	}
	for k, n := range counts {
		ch <- prometheus.MustNewConstMetric(vmsDesc, prometheus.GaugeValue, float64(n), k.status, k.backend)
	}
}

// ImageStats is what CollectImages reads at each scrape.
type ImageStats struct {
	// Images is how many gold images are published.
	Images int
	// DiskBytes is the disk space they take.
	DiskBytes int64
}

// CollectImages adds the gauges goldvm_images and goldvm_image_disk_bytes,
// read from stats at each scrape.
func (m *Metrics) CollectImages(stats func() (ImageStats, error)) {
	m.reg.MustRegister(&imageCollector{stats: stats})
}

var (
	imagesDesc    = prometheus.NewDesc("goldvm_images", "Gold images in the store.", nil, nil)
	imageDiskDesc = prometheus.NewDesc("goldvm_image_disk_bytes", "Disk space the gold images take.", nil, nil)
)

type imageCollector struct {
	stats func() (ImageStats, error)
}

func (c *imageCollector) Describe(ch chan<- *prometheus.Desc) { ch <- imagesDesc; ch <- imageDiskDesc }

func (c *imageCollector) Collect(ch chan<- prometheus.Metric) {
	st, err := c.stats()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(imagesDesc, err)
		return
	}
	ch <- prometheus.MustNewConstMetric(imagesDesc, prometheus.GaugeValue, float64(st.Images))
	ch <- prometheus.MustNewConstMetric(imageDiskDesc, prometheus.GaugeValue, float64(st.DiskBytes))
}

// CollectEventDrops adds goldvm_event_clients_dropped_total, read from
// dropped (events.Bus.Dropped) at each scrape.
func (m *Metrics) CollectEventDrops(dropped func() uint64) {
	m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "goldvm_event_clients_dropped_total", Help: "Event stream clients dropped for falling too far behind.",
	}, func() float64 { return float64(dropped()) }))
}

// CollectCapacity adds the gauges goldvm_capacity_cpus{state},
// goldvm_capacity_memory_bytes{state} (state: total, used, reserved, free,
// queued; a total of 0 is no limit) and goldvm_capacity_queue_length, read
// from snap (GET /capacity's answer) at each scrape.
func (m *Metrics) CollectCapacity(snap func() api.Capacity) {
	m.reg.MustRegister(&capacityCollector{snap: snap})
}

var (
	capacityCPUsDesc = prometheus.NewDesc("goldvm_capacity_cpus",
		"The host's vCPU budget for VMs (total; 0 is no limit) and what running VMs use, admitted creations reserve, is free, and queued creations ask for.", []string{"state"}, nil)
	capacityMemDesc = prometheus.NewDesc("goldvm_capacity_memory_bytes",
		"The host's memory budget for VMs (total; 0 is no limit) and what running VMs use, admitted creations reserve, is free, and queued creations ask for.", []string{"state"}, nil)
	queueLenDesc = prometheus.NewDesc("goldvm_capacity_queue_length", "VM creations waiting for capacity.", nil, nil)
)

type capacityCollector struct {
	snap func() api.Capacity
}

func (c *capacityCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- capacityCPUsDesc
	ch <- capacityMemDesc
	ch <- queueLenDesc
}

func (c *capacityCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.snap()
	for _, st := range []struct {
		state string
		r     api.Resources
	}{{"total", s.Total}, {"used", s.Used}, {"reserved", s.Reserved}, {"free", s.Free}, {"queued", s.Queued}} {
		ch <- prometheus.MustNewConstMetric(capacityCPUsDesc, prometheus.GaugeValue, float64(st.r.CPUs), st.state)
		ch <- prometheus.MustNewConstMetric(capacityMemDesc, prometheus.GaugeValue, float64(st.r.MemoryMiB)*(1<<20), st.state)
	}
	ch <- prometheus.MustNewConstMetric(queueLenDesc, prometheus.GaugeValue, float64(s.Waiting))
}

// CollectGroups adds the gauges of each group, read from list at each
// scrape: goldvm_group_vms_desired and goldvm_group_vms_running (its size
// and its running VMs, the warm pool's not counted),
// goldvm_group_warm_desired and goldvm_group_warm_ready (its warm pool),
// goldvm_group_vms (its VMs in any status, warm ones included),
// goldvm_group_degraded (1 when creations keep failing) and
// goldvm_group_failures (creations failed in a row).
func (m *Metrics) CollectGroups(list func() ([]api.Group, error)) {
	m.reg.MustRegister(&groupCollector{list: list})
}

var (
	groupDesiredDesc  = prometheus.NewDesc("goldvm_group_vms_desired", "A group's size.", []string{"group"}, nil)
	groupRunningDesc  = prometheus.NewDesc("goldvm_group_vms_running", "A group's running VMs, its warm pool not counted.", []string{"group"}, nil)
	groupVMsDesc      = prometheus.NewDesc("goldvm_group_vms", "A group's VMs in any status, warm ones included.", []string{"group"}, nil)
	groupWarmDesc     = prometheus.NewDesc("goldvm_group_warm_desired", "The warm VMs a group keeps.", []string{"group"}, nil)
	groupWarmReady    = prometheus.NewDesc("goldvm_group_warm_ready", "A group's warm VMs ready to be handed out.", []string{"group"}, nil)
	groupDegradedDesc = prometheus.NewDesc("goldvm_group_degraded", "1 when a group's creations keep failing (state degraded), else 0.", []string{"group"}, nil)
	groupFailuresDesc = prometheus.NewDesc("goldvm_group_failures", "Creations from a group's template that failed in a row.", []string{"group"}, nil)
)

type groupCollector struct {
	list func() ([]api.Group, error)
}

func (c *groupCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{groupDesiredDesc, groupRunningDesc, groupVMsDesc, groupWarmDesc, groupWarmReady, groupDegradedDesc, groupFailuresDesc} {
		ch <- d
	}
}

func (c *groupCollector) Collect(ch chan<- prometheus.Metric) {
	groups, err := c.list()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(groupDesiredDesc, err)
		return
	}
	for _, g := range groups {
		degraded := 0.0
		if g.State == api.GroupDegraded {
			degraded = 1
		}
		for _, v := range []struct {
			d *prometheus.Desc
			n float64
		}{
			{groupDesiredDesc, float64(g.Spec.Size)}, {groupRunningDesc, float64(g.Running)}, {groupVMsDesc, float64(len(g.VMs))},
			{groupWarmDesc, float64(g.Spec.Warm)}, {groupWarmReady, float64(g.WarmReady)},
			{groupDegradedDesc, degraded}, {groupFailuresDesc, float64(g.Failures)},
		} {
			ch <- prometheus.MustNewConstMetric(v.d, prometheus.GaugeValue, v.n, g.Name)
		}
	}
}
