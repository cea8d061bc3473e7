package route

import (
	"errors"
	"maps"
	"math/bits"
	"slices"
	"sync"
	"time"
)

// Latency histogram: log-linear buckets over microseconds, 16 per power of
// two, so a quantile is within ±3.2% of the true value (bucket midpoint,
// clamped to the observed min and max); within 0.5µs below 16µs. Values
// above 2^37µs (38h) share the top bucket.
const (
	histSub     = 16
	histSubBits = 4
	histMaxExp  = 36
	histBuckets = histSub + (histMaxExp-histSubBits+1)*histSub
)

func histIndex(d time.Duration) int {
	us := uint64(0)
	if d > 0 {
		us = uint64(d / time.Microsecond)
	}
	if us < histSub {
		return int(us)
	}
	e := bits.Len64(us) - 1
	if e > histMaxExp {
		return histBuckets - 1
	}
	sub := (us >> (e - histSubBits)) & (histSub - 1)
	return histSub + (e-histSubBits)*histSub + int(sub)
}

// histValue is the midpoint of bucket i.
func histValue(i int) time.Duration {
	if i < histSub {
		return time.Duration(i)*time.Microsecond + time.Microsecond/2
	}
	e := (i-histSub)/histSub + histSubBits
	sub := uint64((i - histSub) % histSub)
	width := uint64(1) << (e - histSubBits)
	lower := (histSub + sub) * width
	return time.Duration(lower)*time.Microsecond + time.Duration(width)*time.Microsecond/2
}

type counters struct {
	count, errors  int64
	nonFinite      int64
	latSum         time.Duration
	minLat, maxLat time.Duration // valid when count > 0
	hist           [histBuckets]uint32
}

func (c *counters) add(lat time.Duration, failed bool) {
	if c.count == 0 || lat < c.minLat {
		c.minLat = lat
	}
	if c.count == 0 || lat > c.maxLat {
		c.maxLat = lat
	}
	c.count++
	if failed {
		c.errors++
	}
	c.latSum += lat
	c.hist[histIndex(lat)]++
}

func (c *counters) merge(o *counters) {
	if o.count == 0 {
		return
	}
	if c.count == 0 || o.minLat < c.minLat {
		c.minLat = o.minLat
	}
	if c.count == 0 || o.maxLat > c.maxLat {
		c.maxLat = o.maxLat
	}
	c.count += o.count
	c.errors += o.errors
	c.nonFinite += o.nonFinite
	c.latSum += o.latSum
	for i, n := range o.hist {
		c.hist[i] += n
	}
}

func (c *counters) quantile(q float64) time.Duration {
	return histQuantile(c.hist[:], c.count, c.minLat, c.maxLat, q)
}

// histQuantile is the q-quantile of count latencies in hist, all within
// [minLat, maxLat].
func histQuantile[T uint32 | uint64](hist []T, count int64, minLat, maxLat time.Duration, q float64) time.Duration {
	if count <= 0 {
		return 0
	}
	rank := uint64(q*float64(count) + 0.999999)
	if rank < 1 {
		rank = 1
	}
	var seen uint64
	for i, n := range hist {
		seen += uint64(n)
		if seen >= rank {
			// The bucket midpoint, but never outside what was seen: a
			// constant latency reads back exactly.
			return min(max(histValue(i), minLat), maxLat)
		}
	}
	return maxLat
}

func (c *counters) metrics() Metrics {
	m := Metrics{Count: c.count, Errors: c.errors}
	if c.count > 0 {
		m.ErrorRatePct = 100 * float64(c.errors) / float64(c.count)
		m.AvgLatency = c.latSum / time.Duration(c.count)
		m.P50 = c.quantile(0.50)
		m.P95 = c.quantile(0.95)
		m.P99 = c.quantile(0.99)
	}
	return m
}

// Metrics summarizes requests to one version over a span.
type Metrics struct {
	Count  int64
	Errors int64
	// ErrorRatePct is 100·Errors/Count (0 when Count is 0).
	ErrorRatePct float64
	// Latency statistics; quantiles are within ±3.2% (histogram buckets).
	AvgLatency    time.Duration
	P50, P95, P99 time.Duration
}

// VersionStats is a snapshot of one version's statistics.
type VersionStats struct {
	Model, Version string
	// Weight is the version's share of the split in force (0 if none).
	Weight float64
	// Window covers the last Config.Window (see WindowBuckets); Total
	// covers everything since the version was first seen.
	Window Metrics
	Total  Metrics
}

type statsTable struct {
	models map[string]map[string]*versionStats // immutable maps, mutable entries
}

type windowBucket struct {
	slot int64 // which bucketDur-long slice of time this holds
	counters
}

type versionStats struct {
	bucketDur int64 // ns

	mu    sync.Mutex // guards total and win
	total counters
	win   []windowBucket
}

func newVersionStats(cfg *Config) *versionStats {
	return &versionStats{
		bucketDur: int64(cfg.Window / time.Duration(cfg.WindowBuckets)),
		win:       make([]windowBucket, cfg.WindowBuckets),
	}
}

func (vs *versionStats) record(now int64, lat time.Duration, failed, nonFinite bool) {
	slot := now / vs.bucketDur
	vs.mu.Lock()
	vs.total.add(lat, failed)
	b := &vs.win[int(slot%int64(len(vs.win)))]
	if b.slot != slot {
		*b = windowBucket{slot: slot}
	}
	b.add(lat, failed)
	if nonFinite {
		vs.total.nonFinite++
		b.nonFinite++
	}
	vs.mu.Unlock()
}

func (vs *versionStats) snapshot(now int64) (window, total Metrics) {
	slot := now / vs.bucketDur
	var w counters
	vs.mu.Lock()
	t := vs.total
	for i := range vs.win {
		b := &vs.win[i]
		if b.count > 0 && b.slot > slot-int64(len(vs.win)) && b.slot <= slot {
			w.merge(&b.counters)
		}
	}
	vs.mu.Unlock()
	return w.metrics(), t.metrics()
}

// statsForLocked returns the stats of model:version, creating them.
func (r *Router) statsForLocked(model, version string) *versionStats {
	old := r.stats.Load()
	if vs := old.models[model][version]; vs != nil {
		return vs
	}
	next := &statsTable{models: maps.Clone(old.models)}
	inner := maps.Clone(old.models[model])
	if inner == nil {
		inner = map[string]*versionStats{}
	}
	vs := newVersionStats(&r.cfg)
	inner[version] = vs
	next.models[model] = inner
	r.stats.Store(next)
	return vs
}

// Record counts one request served by model:version that ended now with
// the given latency; a non-nil err counts it as an error, and one that
// matches ErrNonFinite (errors.Is) also as a non-finite answer. It does not
// allocate once the version has been seen. Invalid names are ignored.
func (r *Router) Record(model, version string, latency time.Duration, err error) {
	r.RecordAt(model, version, time.Now(), latency, err)
}

// RecordAt is Record for a request that ended at end. Servers that already
// read the clock to measure latency pass that reading and save Record's
// own time.Now (half of Record's cost on our VMs).
func (r *Router) RecordAt(model, version string, end time.Time, latency time.Duration, err error) {
	vs := r.stats.Load().models[model][version]
	if vs == nil {
		if !validName(model) || !validName(version) {
			return
		}
		r.mu.Lock()
		vs = r.statsForLocked(model, version)
		r.mu.Unlock()
	}
	vs.record(end.UnixNano(), latency, err != nil, err != nil && errors.Is(err, ErrNonFinite))
}

// VersionStats returns a snapshot of model:version's statistics.
func (r *Router) VersionStats(model, version string) (VersionStats, bool) {
	vs := r.stats.Load().models[model][version]
	if vs == nil {
		return VersionStats{}, false
	}
	return r.versionSnapshot(model, version, vs, time.Now().UnixNano()), true
}

func (r *Router) versionSnapshot(model, version string, vs *versionStats, now int64) VersionStats {
	s := VersionStats{Model: model, Version: version}
	if ms, ok := r.splits.Load().models[model]; ok {
		s.Weight = ms.split[version]
	}
	s.Window, s.Total = vs.snapshot(now)
	return s
}

// Stats returns a snapshot of every version seen, sorted by model and
// version.
func (r *Router) Stats() []VersionStats {
	now := time.Now().UnixNano()
	st := r.stats.Load()
	var out []VersionStats
	for _, m := range slices.Sorted(maps.Keys(st.models)) {
		for _, v := range slices.Sorted(maps.Keys(st.models[m])) {
			out = append(out, r.versionSnapshot(m, v, st.models[m][v], now))
		}
	}
	return out
}

// ShouldRollback is the seed's threshold check: true when model:version's
// error rate over the sliding window exceeds errorRateThresholdPct percent
// (5.0 means 5%) and the window holds at least Config.MinSamples requests.
// For a comparison with the baseline that accounts for chance, use Judge.
func (r *Router) ShouldRollback(model, version string, errorRateThresholdPct float64) bool {
	s, ok := r.VersionStats(model, version)
	if !ok || s.Window.Count == 0 {
		return false
	}
	if r.cfg.MinSamples > 0 && s.Window.Count < int64(r.cfg.MinSamples) {
		return false
	}
	return s.Window.ErrorRatePct > errorRateThresholdPct
}
