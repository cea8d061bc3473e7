package route

import (
	"errors"
	"maps"
	"math"
	"slices"
	"time"
)

// ErrNonFinite marks a request error that was a non-finite answer (a NaN
// the model produced). Record counts an error that matches it (errors.Is)
// both as an error and as a non-finite answer.
var ErrNonFinite = errors.New("route: non-finite answer")

// HistBuckets is the number of latency histogram buckets: Counters.Hist
// has this length, bucket i covering HistBounds(i). The bounds are fixed,
// so histograms of different processes add bucket by bucket.
const HistBuckets = histBuckets

// HistBucket returns the index of the histogram bucket that holds d.
func HistBucket(d time.Duration) int { return histIndex(d) }

// HistBounds returns the latencies bucket i holds, [lo, hi). The top
// bucket also holds everything above its range: its hi is the largest
// Duration. It panics if i is out of range.
func HistBounds(i int) (lo, hi time.Duration) {
	if i < 0 || i >= histBuckets {
		panic("route: histogram bucket out of range")
	}
	if i < histSub {
		return time.Duration(i) * time.Microsecond, time.Duration(i+1) * time.Microsecond
	}
	e := (i-histSub)/histSub + histSubBits
	sub := uint64((i - histSub) % histSub)
	width := uint64(1) << (e - histSubBits)
	lower := (histSub + sub) * width
	if i == histBuckets-1 {
		return time.Duration(lower) * time.Microsecond, time.Duration(math.MaxInt64)
	}
	return time.Duration(lower) * time.Microsecond, time.Duration(lower+width) * time.Microsecond
}

// Counters are one version's cumulative request counters since the
// router first saw it: what a replica publishes so that a fleet's
// counters can be added up (see route/fleet).
type Counters struct {
	Requests  int64
	Errors    int64
	NonFinite int64 // errors that matched ErrNonFinite
	// LatencySum is the sum of all requests' latencies.
	LatencySum time.Duration
	// MinLatency and MaxLatency bound every latency counted (valid when
	// Requests > 0); quantiles are clamped to them.
	MinLatency, MaxLatency time.Duration
	// Hist counts requests per latency bucket (see HistBounds); its
	// length is HistBuckets, or zero when Requests is 0.
	Hist []uint64
}

// Metrics summarizes the counters as the judge reads them: error rate,
// average latency and quantiles (within ±3.2%, the buckets' precision).
func (c Counters) Metrics() Metrics {
	m := Metrics{Count: c.Requests, Errors: c.Errors}
	if c.Requests > 0 {
		m.ErrorRatePct = 100 * float64(c.Errors) / float64(c.Requests)
		m.AvgLatency = c.LatencySum / time.Duration(c.Requests)
		m.P50 = histQuantile(c.Hist, c.Requests, c.MinLatency, c.MaxLatency, 0.50)
		m.P95 = histQuantile(c.Hist, c.Requests, c.MinLatency, c.MaxLatency, 0.95)
		m.P99 = histQuantile(c.Hist, c.Requests, c.MinLatency, c.MaxLatency, 0.99)
	}
	return m
}

// VersionCounters are the Counters of model:version.
type VersionCounters struct {
	Model, Version string
	Counters
}

// Counters returns the cumulative counters of every version seen, sorted
// by model and version.
func (r *Router) Counters() []VersionCounters {
	st := r.stats.Load()
	var out []VersionCounters
	for _, m := range slices.Sorted(maps.Keys(st.models)) {
		for _, v := range slices.Sorted(maps.Keys(st.models[m])) {
			vs := st.models[m][v]
			vs.mu.Lock()
			t := vs.total
			vs.mu.Unlock()
			out = append(out, VersionCounters{Model: m, Version: v, Counters: t.exported()})
		}
	}
	return out
}

func (c *counters) exported() Counters {
	e := Counters{Requests: c.count, Errors: c.errors, NonFinite: c.nonFinite,
		LatencySum: c.latSum, MinLatency: c.minLat, MaxLatency: c.maxLat}
	if c.count > 0 {
		e.Hist = make([]uint64, histBuckets)
		for i, n := range c.hist {
			e.Hist[i] = uint64(n)
		}
	}
	return e
}
