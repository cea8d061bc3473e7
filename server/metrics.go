package server

import (
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/signalforge/signalforge/batch"
)

// metrics holds the server's own instruments and a collector that turns the
// core packages' Stats() snapshots (batchers, cache, router) into metrics at
// scrape time, so those packages import no metrics library.
type metrics struct {
	requests     *prometheus.CounterVec
	latency      *prometheus.HistogramVec
	loadFailures *prometheus.CounterVec
}

func newMetrics(s *Server, reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "signalforge", Name: "requests_total",
			Help: "HTTP prediction requests by API, model, version and status code.",
		}, []string{"api", "model", "version", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "signalforge", Name: "request_duration_seconds",
			Help:    "Prediction request latency, from decoding to the answer, by API, model, version that answered, and whether the cache did.",
			Buckets: []float64{.0005, .001, .002, .005, .01, .02, .05, .1, .25, .5, 1, 2.5},
		}, []string{"api", "model", "version", "cached"}),
		loadFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "signalforge", Name: "model_load_failures_total",
			Help: "Failed attempts to load (or warm up) a model version; the version is not served and shows as failed in /v1/models.",
		}, []string{"model", "version"}),
	}
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "signalforge", Name: "build_info",
		Help:        "Always 1; its labels tell which build runs (the version GET /v2 reports, the commit, the Go toolchain, the build date).",
		ConstLabels: prometheus.Labels{"version": s.build.Version, "commit": s.build.Commit, "go_version": s.build.GoVersion, "build_date": s.build.Date},
	})
	build.Set(1)
	for _, c := range []prometheus.Collector{m.requests, m.latency, m.loadFailures, build, &statsCollector{s: s}} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Every label value below comes from the server's own state, never from a
// client: model and version names from the registry (the loaded table, the
// router's split, the canary plans), states and reasons from fixed sets.
// Request metrics fold names that are not loaded (see metricLabels).
var (
	descBatches    = prometheus.NewDesc("signalforge_batches_total", "Batches run by a version's batcher.", []string{"model", "version"}, nil)
	descBatchRows  = prometheus.NewDesc("signalforge_batch_rows_total", "Rows run in batches.", []string{"model", "version"}, nil)
	descBatchSize  = prometheus.NewDesc("signalforge_batch_size", "Histogram of batch sizes (rows).", []string{"model", "version"}, nil)
	descQueueDepth = prometheus.NewDesc("signalforge_queue_depth_rows", "Rows waiting in a version's batch queue.", []string{"model", "version"}, nil)
	descQueueCap   = prometheus.NewDesc("signalforge_queue_capacity_rows", "The most rows a version's batch queue holds; beyond it requests are refused with 429.", []string{"model", "version"}, nil)
	descInFlight   = prometheus.NewDesc("signalforge_batches_in_flight", "Batches running now.", []string{"model", "version"}, nil)
	descRejected   = prometheus.NewDesc("signalforge_queue_rejected_total", "Requests refused because the batch queue was full.", []string{"model", "version"}, nil)
	descDropped    = prometheus.NewDesc("signalforge_queue_dropped_total", "Requests dropped from the queue (expired or cancelled).", []string{"model", "version", "reason"}, nil)
	descBatchExec  = prometheus.NewDesc("signalforge_batch_exec_seconds", "Histogram of batch execution time (one model call).", []string{"model", "version"}, nil)
	descQueueWait  = prometheus.NewDesc("signalforge_queue_wait_seconds", "Histogram of the time requests waited in a version's batch queue, from arrival until their batch left (one count per request; a request split into chunks counts per chunk).", []string{"model", "version"}, nil)
	descCompute    = prometheus.NewDesc("signalforge_compute_seconds", "Histogram of the execution time of the model call each request ran in (one count per request, as signalforge_queue_wait_seconds).", []string{"model", "version"}, nil)

	descCacheHits   = prometheus.NewDesc("signalforge_cache_hits_total", "Prediction cache hits.", nil, nil)
	descCacheMisses = prometheus.NewDesc("signalforge_cache_misses_total", "Prediction cache misses.", nil, nil)
	descCacheErrors = prometheus.NewDesc("signalforge_cache_errors_total", "Failed cache store calls (requests never fail for them).", nil, nil)
	descCacheWrites = prometheus.NewDesc("signalforge_cache_writes_total", "Prediction cache writes.", nil, nil)
	descCacheOpen   = prometheus.NewDesc("signalforge_cache_breaker_open", "1 when the cache's circuit breaker is open.", nil, nil)

	descVerRequests  = prometheus.NewDesc("signalforge_version_requests_total", "Requests the router sent to a version (the counters the canary judge reads).", []string{"model", "version"}, nil)
	descVerErrors    = prometheus.NewDesc("signalforge_version_errors_total", "Failed requests of a version (router counters); non-finite answers included.", []string{"model", "version"}, nil)
	descVerNonFinite = prometheus.NewDesc("signalforge_version_nonfinite_total", "Requests of a version that failed because the model answered NaN (also counted in signalforge_version_errors_total).", []string{"model", "version"}, nil)
	descTraffic      = prometheus.NewDesc("signalforge_version_traffic_ratio", "Share of a model's traffic routed to a version (0–1).", []string{"model", "version"}, nil)
	descReady        = prometheus.NewDesc("signalforge_ready", "1 when the server is ready: models loaded, not shutting down, and every model with production traffic has a loaded production version.", nil, nil)
	descVerFailed    = prometheus.NewDesc("signalforge_model_version_failed", "1 for a version that should be served but failed to load (the error is in /v1/models and the logs).", []string{"model", "version"}, nil)
	descRegistryUp   = prometheus.NewDesc("signalforge_registry_up", "1 when the registry answered the server's last read of its changes, 0 while it cannot be read (database down or unreachable, damaged folder): the server keeps serving what it loaded and catches up when the registry answers again.", nil, nil)
	descRegistrySeq  = prometheus.NewDesc("signalforge_registry_seq", "Sequence number of the last registry change the server has read.", nil, nil)

	descCanaryState      = prometheus.NewDesc("signalforge_canary_state", "1 for a model's canary plan, labelled with its canary and baseline versions and its state (running, paused, promoted, rolled_back, aborted), as the registry last told this replica.", []string{"model", "canary", "baseline", "state"}, nil)
	descCanaryLastAction = prometheus.NewDesc("signalforge_canary_last_action_timestamp_seconds", "When a model's canary plan last changed (Unix time): a running plan whose last change is many intervals old is stuck.", []string{"model"}, nil)
	descCanaryInterval   = prometheus.NewDesc("signalforge_canary_interval_seconds", "A model's canary plan's hold time between verdicts.", []string{"model"}, nil)
)

type statsCollector struct{ s *Server }

func (c *statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descBatches, descBatchRows, descBatchSize, descQueueDepth, descQueueCap, descInFlight, descRejected, descDropped, descBatchExec, descQueueWait, descCompute,
		descCacheHits, descCacheMisses, descCacheErrors, descCacheWrites, descCacheOpen,
		descVerRequests, descVerErrors, descVerNonFinite, descTraffic, descReady, descVerFailed, descRegistryUp, descRegistrySeq,
		descCanaryState, descCanaryLastAction, descCanaryInterval} {
		ch <- d
	}
}

func (c *statsCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	snap := s.models.Current()
	for _, model := range snap.Models() {
		for ver, l := range snap.Versions(model) {
			st := l.Batcher().Stats()
			ch <- prometheus.MustNewConstMetric(descBatches, prometheus.CounterValue, float64(st.Batches), model, ver)
			ch <- prometheus.MustNewConstMetric(descBatchRows, prometheus.CounterValue, float64(st.BatchedRows), model, ver)
			ch <- prometheus.MustNewConstMetric(descQueueDepth, prometheus.GaugeValue, float64(st.QueueDepth), model, ver)
			ch <- prometheus.MustNewConstMetric(descQueueCap, prometheus.GaugeValue, float64(l.Batcher().Config().MaxQueue), model, ver)
			ch <- prometheus.MustNewConstMetric(descInFlight, prometheus.GaugeValue, float64(st.InFlight), model, ver)
			ch <- prometheus.MustNewConstMetric(descRejected, prometheus.CounterValue, float64(st.Rejected), model, ver)
			ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(st.Expired), model, ver, "expired")
			ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(st.Cancelled), model, ver, "cancelled")
			ch <- durationHistogram(descBatchExec, st.BatchTimeHist, model, ver)
			ch <- durationHistogram(descQueueWait, st.QueueWaitHist, model, ver)
			ch <- durationHistogram(descCompute, st.ComputeTimeHist, model, ver)
			ch <- batchSizeHistogram(st.BatchSizes, model, ver)
		}
	}
	if s.cache != nil {
		st := s.cache.Stats()
		ch <- prometheus.MustNewConstMetric(descCacheHits, prometheus.CounterValue, float64(st.Hits))
		ch <- prometheus.MustNewConstMetric(descCacheMisses, prometheus.CounterValue, float64(st.Misses))
		ch <- prometheus.MustNewConstMetric(descCacheErrors, prometheus.CounterValue, float64(st.Errors))
		ch <- prometheus.MustNewConstMetric(descCacheWrites, prometheus.CounterValue, float64(st.Writes))
		open := 0.0
		if st.Breaker != "closed" {
			open = 1
		}
		ch <- prometheus.MustNewConstMetric(descCacheOpen, prometheus.GaugeValue, open)
	}
	for _, vc := range s.router.Counters() {
		ch <- prometheus.MustNewConstMetric(descVerRequests, prometheus.CounterValue, float64(vc.Requests), vc.Model, vc.Version)
		ch <- prometheus.MustNewConstMetric(descVerErrors, prometheus.CounterValue, float64(vc.Errors), vc.Model, vc.Version)
		ch <- prometheus.MustNewConstMetric(descVerNonFinite, prometheus.CounterValue, float64(vc.NonFinite), vc.Model, vc.Version)
	}
	for _, model := range s.router.Models() {
		if split, ok := s.router.Split(model); ok {
			for v, w := range split {
				ch <- prometheus.MustNewConstMetric(descTraffic, prometheus.GaugeValue, w, model, v)
			}
		}
	}
	for _, f := range s.models.Failures() {
		ch <- prometheus.MustNewConstMetric(descVerFailed, prometheus.GaugeValue, 1, f.Ref.Name, f.Ref.Version)
	}
	for model, p := range *s.canaries.Load() {
		ch <- prometheus.MustNewConstMetric(descCanaryState, prometheus.GaugeValue, 1, model, p.Canary, p.Baseline, string(p.State))
		if !p.LastActionAt.IsZero() {
			ch <- prometheus.MustNewConstMetric(descCanaryLastAction, prometheus.GaugeValue, float64(p.LastActionAt.UnixNano())/1e9, model)
		}
		ch <- prometheus.MustNewConstMetric(descCanaryInterval, prometheus.GaugeValue, p.Interval.Seconds(), model)
	}
	ready := 0.0
	if ok, _ := s.readiness(); ok {
		ready = 1
	}
	ch <- prometheus.MustNewConstMetric(descReady, prometheus.GaugeValue, ready)
	rs := s.reg.Stats()
	up := 0.0
	if rs.Up {
		up = 1
	}
	ch <- prometheus.MustNewConstMetric(descRegistryUp, prometheus.GaugeValue, up)
	ch <- prometheus.MustNewConstMetric(descRegistrySeq, prometheus.GaugeValue, float64(rs.Seq))
}

// durationHistogram exports one of a batcher's duration histograms as it
// is: its bounds are fixed, so every replica's buckets add up.
func durationHistogram(desc *prometheus.Desc, h batch.Histogram, model, version string) prometheus.Metric {
	buckets := make(map[float64]uint64, len(h.Bounds))
	for i, le := range h.Bounds {
		buckets[le.Seconds()] = h.Counts[i]
	}
	return prometheus.MustNewConstHistogram(desc, h.Count, h.Sum.Seconds(), buckets, model, version)
}

// batchSizeHistogram exports BatchSizes (batches per row count) with
// power-of-two buckets: 1, 2, 4, … up to the largest batch size.
func batchSizeHistogram(sizes []int64, model, version string) prometheus.Metric {
	buckets := map[float64]uint64{}
	var total uint64
	var sum float64
	for n, cnt := range sizes {
		total += uint64(cnt)
		sum += float64(n) * float64(cnt)
	}
	for le := 1; ; le *= 2 {
		var cum uint64
		for n := 0; n <= le && n < len(sizes); n++ {
			cum += uint64(sizes[n])
		}
		buckets[float64(le)] = cum
		if le >= len(sizes)-1 {
			break
		}
	}
	return prometheus.MustNewConstHistogram(descBatchSize, total, sum, buckets, model, version)
}

func codeLabel(status int) string { return strconv.Itoa(status) }

func promhttpHandler(g prometheus.Gatherer) http.Handler {
	return promhttp.HandlerFor(g, promhttp.HandlerOpts{})
}

// metricLabels returns the model and version labels of a request: names
// that are not loaded are folded into "_unknown", so clients can neither
// grow the metric set without bound nor put invalid UTF-8 into a label.
func (s *Server) metricLabels(model, version string) (string, string) {
	snap := s.models.Current()
	if !snap.HasModel(model) {
		return "_unknown", ""
	}
	if snap.Get(model, version) == nil {
		version = ""
	}
	return model, version
}
