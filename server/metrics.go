package server

import (
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
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
			Help:    "Prediction request latency, from decoding to the answer, by API and model.",
			Buckets: []float64{.0005, .001, .002, .005, .01, .02, .05, .1, .25, .5, 1, 2.5},
		}, []string{"api", "model", "cached"}),
		loadFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "signalforge", Name: "model_load_failures_total",
			Help: "Failed attempts to load (or warm up) a model version; the version is not served and shows as failed in /v1/models.",
		}, []string{"model", "version"}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.latency, m.loadFailures, &statsCollector{s: s}} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

var (
	descBatches    = prometheus.NewDesc("signalforge_batches_total", "Batches run by a version's batcher.", []string{"model", "version"}, nil)
	descBatchRows  = prometheus.NewDesc("signalforge_batch_rows_total", "Rows run in batches.", []string{"model", "version"}, nil)
	descBatchSize  = prometheus.NewDesc("signalforge_batch_size", "Histogram of batch sizes (rows).", []string{"model", "version"}, nil)
	descQueueDepth = prometheus.NewDesc("signalforge_queue_depth_rows", "Rows waiting in a version's batch queue.", []string{"model", "version"}, nil)
	descInFlight   = prometheus.NewDesc("signalforge_batches_in_flight", "Batches running now.", []string{"model", "version"}, nil)
	descRejected   = prometheus.NewDesc("signalforge_queue_rejected_total", "Requests refused because the batch queue was full.", []string{"model", "version"}, nil)
	descDropped    = prometheus.NewDesc("signalforge_queue_dropped_total", "Requests dropped from the queue (expired or cancelled).", []string{"model", "version", "reason"}, nil)
	descBatchP99   = prometheus.NewDesc("signalforge_batch_exec_p99_seconds", "p99 batch execution time.", []string{"model", "version"}, nil)

	descCacheHits   = prometheus.NewDesc("signalforge_cache_hits_total", "Prediction cache hits.", nil, nil)
	descCacheMisses = prometheus.NewDesc("signalforge_cache_misses_total", "Prediction cache misses.", nil, nil)
	descCacheErrors = prometheus.NewDesc("signalforge_cache_errors_total", "Failed cache store calls (requests never fail for them).", nil, nil)
	descCacheWrites = prometheus.NewDesc("signalforge_cache_writes_total", "Prediction cache writes.", nil, nil)
	descCacheOpen   = prometheus.NewDesc("signalforge_cache_breaker_open", "1 when the cache's circuit breaker is open.", nil, nil)

	descVerRequests = prometheus.NewDesc("signalforge_version_requests_total", "Requests answered by a version (router stats).", []string{"model", "version"}, nil)
	descVerErrors   = prometheus.NewDesc("signalforge_version_errors_total", "Failed requests of a version (router stats).", []string{"model", "version"}, nil)
	descVerErrRate  = prometheus.NewDesc("signalforge_version_error_rate_pct", "Error rate % of a version over the router's sliding window.", []string{"model", "version"}, nil)
	descTraffic     = prometheus.NewDesc("signalforge_version_traffic_ratio", "Share of a model's traffic routed to a version (0–1).", []string{"model", "version"}, nil)
	descReady       = prometheus.NewDesc("signalforge_ready", "1 when the server is ready: models loaded, not shutting down, and every model with production traffic has a loaded production version.", nil, nil)
	descVerFailed   = prometheus.NewDesc("signalforge_model_version_failed", "1 for a version that should be served but failed to load (the error is in /v1/models and the logs).", []string{"model", "version"}, nil)
	descRegistryUp  = prometheus.NewDesc("signalforge_registry_up", "1 when the registry answered the server's last read of its changes, 0 while it cannot be read (database down or unreachable, damaged folder): the server keeps serving what it loaded and catches up when the registry answers again.", nil, nil)
	descRegistrySeq = prometheus.NewDesc("signalforge_registry_seq", "Sequence number of the last registry change the server has read.", nil, nil)
)

type statsCollector struct{ s *Server }

func (c *statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descBatches, descBatchRows, descBatchSize, descQueueDepth, descInFlight, descRejected, descDropped, descBatchP99,
		descCacheHits, descCacheMisses, descCacheErrors, descCacheWrites, descCacheOpen, descVerRequests, descVerErrors, descVerErrRate, descTraffic, descReady, descVerFailed, descRegistryUp, descRegistrySeq} {
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
			ch <- prometheus.MustNewConstMetric(descInFlight, prometheus.GaugeValue, float64(st.InFlight), model, ver)
			ch <- prometheus.MustNewConstMetric(descRejected, prometheus.CounterValue, float64(st.Rejected), model, ver)
			ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(st.Expired), model, ver, "expired")
			ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(st.Cancelled), model, ver, "cancelled")
			ch <- prometheus.MustNewConstMetric(descBatchP99, prometheus.GaugeValue, st.BatchTime.P99.Seconds(), model, ver)
			// Power-of-two buckets: 1, 2, 4, … up to the largest batch.
			buckets := map[float64]uint64{}
			var cum, total uint64
			var sum float64
			for n, cnt := range st.BatchSizes {
				total += uint64(cnt)
				sum += float64(n) * float64(cnt)
			}
			for le := 1; ; le *= 2 {
				cum = 0
				for n := 0; n <= le && n < len(st.BatchSizes); n++ {
					cum += uint64(st.BatchSizes[n])
				}
				buckets[float64(le)] = cum
				if le >= len(st.BatchSizes)-1 {
					break
				}
			}
			cum = total
			ch <- prometheus.MustNewConstHistogram(descBatchSize, cum, sum, buckets, model, ver)
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
	for _, vs := range s.router.Stats() {
		ch <- prometheus.MustNewConstMetric(descVerRequests, prometheus.CounterValue, float64(vs.Total.Count), vs.Model, vs.Version)
		ch <- prometheus.MustNewConstMetric(descVerErrors, prometheus.CounterValue, float64(vs.Total.Errors), vs.Model, vs.Version)
		ch <- prometheus.MustNewConstMetric(descVerErrRate, prometheus.GaugeValue, vs.Window.ErrorRatePct, vs.Model, vs.Version)
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
