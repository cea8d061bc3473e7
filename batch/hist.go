package batch

import (
	"math"
	"math/bits"
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
