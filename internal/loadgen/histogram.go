package loadgen

import (
	"math"
	"math/bits"
	"time"
)

// Histogram records durations in log-linear buckets, like HdrHistogram with
// two significant digits: values below 256 ns are exact, larger ones land in
// one of 128 buckets per power of two, so a quantile is off by less than
// 1/128 (0.8%) of its value. Memory is fixed (≈60 KB) however many values
// are recorded, so a long run does not grow.
//
// A Histogram is not safe for concurrent use: each worker records into its
// own and the runner merges them.
type Histogram struct {
	counts   [numBuckets]uint64
	n        uint64
	sum      float64 // ns; float64 so a long run cannot overflow
	min, max time.Duration
}

const (
	subBits    = 8
	subCount   = 1 << subBits // exact below this many ns
	subHalf    = subCount / 2 // buckets per power of two above it
	numBuckets = subCount + (64-subBits)*subHalf
)

// bucketOf returns v's bucket index (v ≥ 0).
func bucketOf(v uint64) int {
	if v < subCount {
		return int(v)
	}
	shift := bits.Len64(v) - subBits // ≥ 1
	mant := v >> uint(shift)         // in [subHalf, subCount)
	return subCount + (shift-1)*subHalf + int(mant-subHalf)
}

// bucketHigh returns the largest value that falls into bucket i.
func bucketHigh(i int) uint64 {
	if i < subCount {
		return uint64(i)
	}
	shift := (i-subCount)/subHalf + 1
	mant := uint64((i-subCount)%subHalf + subHalf)
	return (mant+1)<<uint(shift) - 1
}

// Record adds one duration; negative durations count as zero.
func (h *Histogram) Record(d time.Duration) {
	if d < 0 {
		d = 0
	}
	h.counts[bucketOf(uint64(d))]++
	if h.n == 0 || d < h.min {
		h.min = d
	}
	if d > h.max {
		h.max = d
	}
	h.n++
	h.sum += float64(d)
}

// Merge adds o's values to h.
func (h *Histogram) Merge(o *Histogram) {
	if o.n == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	if o.max > h.max {
		h.max = o.max
	}
	h.n += o.n
	h.sum += o.sum
}

// Count returns the number of recorded values.
func (h *Histogram) Count() uint64 { return h.n }

// Min returns the smallest recorded value (exact), or 0 if none.
func (h *Histogram) Min() time.Duration { return h.min }

// Max returns the largest recorded value (exact), or 0 if none.
func (h *Histogram) Max() time.Duration { return h.max }

// Mean returns the mean of the recorded values, or 0 if none.
func (h *Histogram) Mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return time.Duration(math.Round(h.sum / float64(h.n)))
}

// Quantile returns the value at or below which a fraction q (0..1) of the
// recorded values fall — the nearest-rank definition, reported as the upper
// edge of its bucket (clamped to the exact max), so it never understates a
// latency. It returns 0 if nothing was recorded.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	q = min(max(q, 0), 1)
	rank := uint64(math.Ceil(q * float64(h.n)))
	if rank == 0 {
		rank = 1
	}
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			v := time.Duration(bucketHigh(i))
			return min(max(v, h.min), h.max)
		}
	}
	return h.max
}
