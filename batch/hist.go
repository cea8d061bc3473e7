package batch

import (
	"math"
	"math/bits"
	"slices"
	"time"
)

// hist is a log-linear histogram of durations: eight buckets per power of
// two of nanoseconds (exact below 16 ns). A percentile read from it is the
// middle of its bucket, within 1/16 (≈6%) of the exact sample, clamped to
// the observed min and max. It has a fixed size and never allocates, so the
// batcher can record every batch and every request for its whole life.
type hist struct {
	counts   [histBuckets]uint64
	n        uint64
	sum      time.Duration
	min, max time.Duration
}

// Bucket index of the largest int64 is (62-2)*8+7 = 487.
const histBuckets = 488

func histBucket(d time.Duration) int {
	ns := int64(d)
	if ns < 16 {
		return int(max(ns, 0))
	}
	e := bits.Len64(uint64(ns)) - 1 // floor(log2(ns)) >= 4
	m := (ns >> (e - 3)) & 7        // the three bits after the leading one
	return (e-2)*8 + int(m)
}

// histMid returns the middle of bucket i.
func histMid(i int) time.Duration {
	if i < 16 {
		return time.Duration(i)
	}
	e := uint(i/8 + 2)
	m := int64(i % 8)
	lo := (8 + m) << (e - 3)
	width := int64(1) << (e - 3)
	return time.Duration(lo + width/2)
}

func (h *hist) record(d time.Duration) {
	if d < 0 {
		d = 0
	}
	if h.n == 0 || d < h.min {
		h.min = d
	}
	if d > h.max {
		h.max = d
	}
	h.counts[histBucket(d)]++
	h.n++
	h.sum += d
}

// quantile returns the q-quantile (0 < q <= 1) of the recorded durations,
// or 0 if there are none.
func (h *hist) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	rank = min(max(rank, 1), h.n)
	if rank == h.n {
		return h.max
	}
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return min(max(histMid(i), h.min), h.max)
		}
	}
	return h.max
}

func (h *hist) latency() Latency {
	if h.n == 0 {
		return Latency{}
	}
	return Latency{
		Avg: h.sum / time.Duration(h.n),
		P50: h.quantile(0.50),
		P95: h.quantile(0.95),
		P99: h.quantile(0.99),
		Max: h.max,
	}
}

// Histogram is a cumulative histogram of durations with fixed bounds, the
// shape of a Prometheus histogram: Counts[i] is the number of durations at
// most Bounds[i]. Count and Sum cover every duration, those above the last
// bound too. The bounds are the same in every process and every Batcher,
// so histograms add up bucket by bucket.
type Histogram struct {
	Bounds []time.Duration
	Counts []uint64
	Count  uint64
	Sum    time.Duration
}

// execBounds are the upper bounds of Stats.BatchTimeHist: from a tenth of
// a millisecond (a small model on a small batch) to ten seconds.
var execBounds = [...]time.Duration{
	100 * time.Microsecond, 250 * time.Microsecond, 500 * time.Microsecond,
	time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond,
	10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond,
	100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond,
	time.Second, 2500 * time.Millisecond, 5 * time.Second, 10 * time.Second,
}

// latencyBounds are the upper bounds of Stats.QueueWaitHist and
// Stats.ComputeHist: from 5 µs (a request that found the model idle, a
// small model's run) to ten seconds.
var latencyBounds = [...]time.Duration{
	5 * time.Microsecond, 10 * time.Microsecond, 25 * time.Microsecond,
	50 * time.Microsecond, 100 * time.Microsecond, 250 * time.Microsecond,
	500 * time.Microsecond, time.Millisecond, 2500 * time.Microsecond,
	5 * time.Millisecond, 10 * time.Millisecond, 25 * time.Millisecond,
	50 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond,
	500 * time.Millisecond, time.Second, 2500 * time.Millisecond,
	5 * time.Second, 10 * time.Second,
}

// bounded counts durations per bucket of fixed, sorted bounds (not
// cumulative); the last count holds those above the last bound. Its counts
// are allocated once, by newBounded; record never allocates.
type bounded struct {
	bounds []time.Duration // shared and never modified
	counts []uint64        // len(bounds)+1
	n      uint64
	sum    time.Duration
}

func newBounded(bounds []time.Duration) bounded {
	return bounded{bounds: bounds, counts: make([]uint64, len(bounds)+1)}
}

func (b *bounded) record(d time.Duration) {
	d = max(d, 0)
	i, _ := slices.BinarySearch(b.bounds, d) // the first bound >= d
	b.counts[i]++
	b.n++
	b.sum += d
}

func (b *bounded) histogram() Histogram {
	h := Histogram{Bounds: slices.Clone(b.bounds), Counts: make([]uint64, len(b.bounds)), Count: b.n, Sum: b.sum}
	var cum uint64
	for i := range b.bounds {
		cum += b.counts[i]
		h.Counts[i] = cum
	}
	return h
}
