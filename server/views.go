package server

import (
	"time"

	"github.com/signalforge/signalforge/batch"
	"github.com/signalforge/signalforge/cache"
	"github.com/signalforge/signalforge/route"
)

// JSON views of the core packages' Stats snapshots for the admin API:
// snake_case names and milliseconds, like the rest of the API (the core
// structs are plain Go values with durations in nanoseconds).

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

type metricsView struct {
	Count        int64   `json:"count"`
	Errors       int64   `json:"errors"`
	ErrorRatePct float64 `json:"error_rate_pct"`
	AvgLatencyMS float64 `json:"avg_latency_ms"`
	P50MS        float64 `json:"p50_ms"`
	P95MS        float64 `json:"p95_ms"`
	P99MS        float64 `json:"p99_ms"`
}

func viewMetrics(m route.Metrics) metricsView {
	return metricsView{Count: m.Count, Errors: m.Errors, ErrorRatePct: m.ErrorRatePct,
		AvgLatencyMS: ms(m.AvgLatency), P50MS: ms(m.P50), P95MS: ms(m.P95), P99MS: ms(m.P99)}
}

type versionStatsView struct {
	Weight float64     `json:"traffic_pct"`
	Window metricsView `json:"window"`
	Total  metricsView `json:"total"`
}

type latencyView struct {
	AvgMS float64 `json:"avg_ms"`
	P50MS float64 `json:"p50_ms"`
	P95MS float64 `json:"p95_ms"`
	P99MS float64 `json:"p99_ms"`
	MaxMS float64 `json:"max_ms"`
}

func viewLatency(l batch.Latency) latencyView {
	return latencyView{AvgMS: ms(l.Avg), P50MS: ms(l.P50), P95MS: ms(l.P95), P99MS: ms(l.P99), MaxMS: ms(l.Max)}
}

type batchView struct {
	Requests     int64       `json:"requests"`
	Rows         int64       `json:"rows"`
	Batches      int64       `json:"batches"`
	AvgBatchSize float64     `json:"avg_batch_size"`
	BatchSizes   []int64     `json:"batch_size_histogram"`
	BatchTime    latencyView `json:"batch_time"`
	QueueWait    latencyView `json:"queue_wait"`
	QueueDepth   int         `json:"queue_depth"`
	InFlight     int         `json:"in_flight"`
	Expired      int64       `json:"expired"`
	Cancelled    int64       `json:"cancelled"`
	Rejected     int64       `json:"rejected"`
	Failed       int64       `json:"failed"`
	Panics       int64       `json:"panics"`
}

func viewBatch(st batch.Stats) batchView {
	return batchView{Requests: st.Requests, Rows: st.Rows, Batches: st.Batches, AvgBatchSize: st.AvgBatchSize,
		BatchSizes: st.BatchSizes, BatchTime: viewLatency(st.BatchTime), QueueWait: viewLatency(st.QueueWait),
		QueueDepth: st.QueueDepth, InFlight: st.InFlight, Expired: st.Expired, Cancelled: st.Cancelled,
		Rejected: st.Rejected, Failed: st.Failed, Panics: st.Panics}
}

type shadowStatsView struct {
	Model                 string      `json:"model"`
	Version               string      `json:"version"`
	Offered               int64       `json:"offered"`
	Sampled               int64       `json:"sampled"`
	Dropped               int64       `json:"dropped"`
	Compared              int64       `json:"compared"`
	Mismatched            int64       `json:"mismatched"`
	MeanAbsDiff           float64     `json:"mean_abs_diff"`
	MaxAbsDiff            float64     `json:"max_abs_diff"`
	NonFinite             int64       `json:"non_finite"`
	DirectionAgreementPct float64     `json:"direction_agreement_pct"`
	Shadow                metricsView `json:"shadow_latency"`
	Primary               metricsView `json:"primary_latency"`
}

func viewShadow(st route.ShadowStats) shadowStatsView {
	return shadowStatsView{Model: st.Model, Version: st.Version, Offered: st.Offered, Sampled: st.Sampled, Dropped: st.Dropped,
		Compared: st.Compared, Mismatched: st.Mismatched, MeanAbsDiff: st.MeanAbsDiff, MaxAbsDiff: st.MaxAbsDiff,
		NonFinite: st.NonFinite, DirectionAgreementPct: st.DirectionAgreementPct, Shadow: viewMetrics(st.Shadow), Primary: viewMetrics(st.Primary)}
}

type cacheTypeView struct {
	Hits       int64   `json:"hits"`
	Misses     int64   `json:"misses"`
	Writes     int64   `json:"writes"`
	HitRatePct float64 `json:"hit_rate_pct"`
}

type cacheView struct {
	Hits            int64                    `json:"hits"`
	Misses          int64                    `json:"misses"`
	HitRatePct      float64                  `json:"hit_rate_pct"`
	Writes          int64                    `json:"writes"`
	Errors          int64                    `json:"errors"`
	Rejected        int64                    `json:"breaker_rejected"`
	Corrupt         int64                    `json:"corrupt"`
	Evictions       int64                    `json:"evictions"`
	Invalidations   int64                    `json:"invalidations"`
	InvalidatedKeys int64                    `json:"invalidated_keys"`
	GenerationBumps int64                    `json:"generation_bumps"`
	Computes        int64                    `json:"computes"`
	Collapsed       int64                    `json:"collapsed"`
	Breaker         string                   `json:"breaker"`
	BreakerOpens    int64                    `json:"breaker_opens"`
	ByType          map[string]cacheTypeView `json:"by_type"`
}

func viewCache(st cache.Stats) cacheView {
	v := cacheView{Hits: st.Hits, Misses: st.Misses, HitRatePct: st.HitRatePct, Writes: st.Writes, Errors: st.Errors,
		Rejected: st.Rejected, Corrupt: st.Corrupt, Evictions: st.Evictions, Invalidations: st.Invalidations,
		InvalidatedKeys: st.InvalidatedKeys, GenerationBumps: st.GenerationBumps, Computes: st.Computes,
		Collapsed: st.Collapsed, Breaker: st.Breaker, BreakerOpens: st.BreakerOpens, ByType: map[string]cacheTypeView{}}
	for k, t := range st.ByType {
		v.ByType[k] = cacheTypeView{Hits: t.Hits, Misses: t.Misses, Writes: t.Writes, HitRatePct: t.HitRatePct}
	}
	return v
}
