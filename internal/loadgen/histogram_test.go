package loadgen

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestBucketEdges(t *testing.T) {
	// Every value lands in a bucket whose upper edge is ≥ it and whose
	// predecessor's upper edge is < it; relative width stays under 1/128.
	r := rand.New(rand.NewPCG(1, 2))
	vals := []uint64{0, 1, 255, 256, 257, 511, 512, 1 << 20, 1<<20 + 1, 1<<40 - 1, 1 << 62}
	for range 10000 {
		vals = append(vals, r.Uint64N(1<<uint(r.IntN(62)+1)))
	}
	for _, v := range vals {
		i := bucketOf(v)
		if i < 0 || i >= numBuckets {
			t.Fatalf("bucketOf(%d) = %d out of range", v, i)
		}
		hi := bucketHigh(i)
		if hi < v {
			t.Fatalf("bucketHigh(bucketOf(%d)) = %d < value", v, hi)
		}
		if i > 0 && bucketHigh(i-1) >= v {
			t.Fatalf("value %d also fits bucket %d (high %d)", v, i-1, bucketHigh(i-1))
		}
		if v >= subCount && float64(hi-v) > float64(v)/128 {
			t.Fatalf("value %d: bucket high %d is more than 1/128 above", v, hi)
		}
	}
}

func TestHistogramQuantilesMatchSortedSamples(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	var h, a, b Histogram
	var samples []time.Duration
	for i := range 50000 {
		// Log-normal-ish latencies from ~50µs to ~50ms.
		d := time.Duration(math.Exp(r.NormFloat64()*1.2+math.Log(800e3)) + 1)
		samples = append(samples, d)
		h.Record(d)
		if i%2 == 0 {
			a.Record(d)
		} else {
			b.Record(d)
		}
	}
	a.Merge(&b)
	slices.Sort(samples)
	var sum float64
	for _, s := range samples {
		sum += float64(s)
	}
	if h.Count() != uint64(len(samples)) || a.Count() != h.Count() {
		t.Fatalf("counts %d, merged %d, want %d", h.Count(), a.Count(), len(samples))
	}
	if h.Min() != samples[0] || h.Max() != samples[len(samples)-1] || a.Min() != h.Min() || a.Max() != h.Max() {
		t.Fatalf("min/max %v/%v merged %v/%v, want %v/%v", h.Min(), h.Max(), a.Min(), a.Max(), samples[0], samples[len(samples)-1])
	}
	if want := time.Duration(math.Round(sum / float64(len(samples)))); h.Mean() != want {
		t.Fatalf("mean %v, want %v", h.Mean(), want)
	}
	for _, q := range []float64{0, 0.01, 0.5, 0.9, 0.99, 0.999, 1} {
		rank := int(math.Ceil(q * float64(len(samples))))
		exact := samples[max(rank, 1)-1]
		got := h.Quantile(q)
		if got < exact || float64(got-exact) > float64(exact)/128 {
			t.Errorf("q%.3f = %v, exact %v: want within +1/128", q, got, exact)
		}
		if a.Quantile(q) != got {
			t.Errorf("q%.3f merged = %v, want %v", q, a.Quantile(q), got)
		}
	}
}

func TestHistogramEmptyAndNegative(t *testing.T) {
	var h Histogram
	if h.Quantile(0.5) != 0 || h.Mean() != 0 || h.Max() != 0 {
		t.Fatalf("empty histogram: q50 %v mean %v max %v, want zeros", h.Quantile(0.5), h.Mean(), h.Max())
	}
	h.Record(-time.Second)
	h.Record(100)
	if h.Min() != 0 || h.Quantile(0.5) != 0 || h.Quantile(1) != 100 {
		t.Fatalf("min %v q50 %v q100 %v, want 0, 0, 100ns", h.Min(), h.Quantile(0.5), h.Quantile(1))
	}
}
