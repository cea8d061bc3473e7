package route

import (
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"testing/synctest"
	"time"
)

func TestHistogramQuantiles(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var c counters
	var exact []time.Duration
	for range 100_000 {
		// Log-normal latencies around 2ms, like a real service.
		d := time.Duration(2e6 * math.Exp(0.6*rng.NormFloat64()))
		c.add(d, false)
		exact = append(exact, d)
	}
	slices.Sort(exact)
	m := c.metrics()
	for _, q := range []struct {
		name string
		got  time.Duration
		p    float64
	}{{"p50", m.P50, 0.50}, {"p95", m.P95, 0.95}, {"p99", m.P99, 0.99}} {
		want := exact[int(q.p*float64(len(exact)))-1]
		if rel := math.Abs(float64(q.got-want)) / float64(want); rel > 0.035 {
			t.Errorf("%s = %v, exact %v (%.1f%% off, want ≤ 3.5%%)", q.name, q.got, want, 100*rel)
		}
	}
	// Exact below 16µs; the top bucket absorbs huge values.
	for _, d := range []time.Duration{0, 3 * time.Microsecond, 15 * time.Microsecond} {
		if got := histValue(histIndex(d)); got-d != time.Microsecond/2 {
			t.Errorf("histValue(histIndex(%v)) = %v", d, got)
		}
	}
	if histIndex(1000*time.Hour) != histBuckets-1 || histIndex(-time.Second) != 0 {
		t.Error("out-of-range latencies not clamped")
	}
	for i := 1; i < histBuckets; i++ {
		if histValue(i) <= histValue(i-1) || histIndex(histValue(i)) != i {
			t.Fatalf("bucket %d: value %v not increasing or not round-tripping", i, histValue(i))
		}
	}
}

func TestRecordAndStats(t *testing.T) {
	r := newRouter(t, Config{})
	mustSplit(t, r, "lstm_model", Split{"v1.0": 0.8, "v2.0": 0.2})
	for i := range 100 {
		var err error
		if i%10 == 0 {
			err = errors.New("boom")
		}
		r.Record("lstm_model", "v2.0", time.Duration(i+1)*time.Millisecond, err)
	}
	r.Record("lstm_model", "v1.0", 4*time.Millisecond, nil)
	r.Record("bad name!", "v1", time.Millisecond, nil) // ignored

	st, ok := r.VersionStats("lstm_model", "v2.0")
	if !ok {
		t.Fatal("no stats")
	}
	for _, m := range []Metrics{st.Window, st.Total} {
		if m.Count != 100 || m.Errors != 10 || m.ErrorRatePct != 10 {
			t.Fatalf("metrics = %+v", m)
		}
		if m.AvgLatency != 50500*time.Microsecond {
			t.Errorf("avg = %v, want 50.5ms", m.AvgLatency)
		}
		near := func(got, want time.Duration) bool {
			return math.Abs(float64(got-want)) <= 0.035*float64(want)
		}
		if !near(m.P50, 50*time.Millisecond) || !near(m.P95, 95*time.Millisecond) || !near(m.P99, 99*time.Millisecond) {
			t.Errorf("p50/p95/p99 = %v/%v/%v, want ≈ 50/95/99ms", m.P50, m.P95, m.P99)
		}
	}
	if st.Weight != 0.2 {
		t.Errorf("weight = %v", st.Weight)
	}
	all := r.Stats()
	if len(all) != 2 || all[0].Version != "v1.0" || all[1].Version != "v2.0" || all[0].Total.Count != 1 {
		t.Fatalf("Stats() = %+v", all)
	}
	// A version outside the split (a pinned request) is recorded too.
	r.Record("lstm_model", "v0.9", time.Millisecond, nil)
	if st, ok := r.VersionStats("lstm_model", "v0.9"); !ok || st.Total.Count != 1 || st.Weight != 0 {
		t.Fatalf("pinned version stats = %+v, %v", st, ok)
	}
}

func TestSlidingWindow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRouter(t, Config{Window: time.Minute, WindowBuckets: 6})
		mustSplit(t, r, "m", Split{"v": 1})
		for range 50 {
			r.Record("m", "v", time.Millisecond, errors.New("x"))
		}
		time.Sleep(30 * time.Second)
		for range 50 {
			r.Record("m", "v", 3*time.Millisecond, nil)
		}
		st, _ := r.VersionStats("m", "v")
		if st.Window.Count != 100 || st.Window.Errors != 50 {
			t.Fatalf("window after 30s = %+v", st.Window)
		}
		// The first 50 leave the window, the total keeps them.
		time.Sleep(45 * time.Second)
		st, _ = r.VersionStats("m", "v")
		if st.Window.Count != 50 || st.Window.Errors != 0 || st.Window.P50 < 2900*time.Microsecond {
			t.Fatalf("window after 75s = %+v", st.Window)
		}
		if st.Total.Count != 100 || st.Total.Errors != 50 {
			t.Fatalf("total = %+v", st.Total)
		}
		time.Sleep(2 * time.Minute)
		st, _ = r.VersionStats("m", "v")
		if st.Window.Count != 0 || st.Total.Count != 100 {
			t.Fatalf("after the window: window %+v total %+v", st.Window, st.Total)
		}
	})
}

func TestShouldRollback(t *testing.T) {
	r := newRouter(t, Config{}) // MinSamples 100
	mustSplit(t, r, "lstm_model", Split{"v1.0": 0.8, "v2.0": 0.2})
	if r.ShouldRollback("lstm_model", "v2.0", 5) {
		t.Fatal("rollback with no data")
	}
	rec := func(n, errs int) {
		for i := range n {
			var err error
			if i < errs {
				err = errors.New("x")
			}
			r.Record("lstm_model", "v2.0", time.Millisecond, err)
		}
	}
	rec(20, 2) // 10% but only 20 requests: the guard holds
	if r.ShouldRollback("lstm_model", "v2.0", 5) {
		t.Fatal("rollback on 20 requests")
	}
	rec(80, 6) // 8 errors in 100 = 8%
	if !r.ShouldRollback("lstm_model", "v2.0", 5) {
		t.Fatal("no rollback at 8% > 5%")
	}
	if r.ShouldRollback("lstm_model", "v2.0", 10) {
		t.Fatal("rollback at 8% < 10%")
	}
	// The seed's bare threshold, without the guard.
	bare := newRouter(t, Config{MinSamples: -1})
	bare.Record("m", "v", time.Millisecond, errors.New("x"))
	if !bare.ShouldRollback("m", "v", 5) {
		t.Fatal("MinSamples -1 kept the guard")
	}
}

func TestRecordDoesNotAllocate(t *testing.T) {
	r := newRouter(t, Config{})
	mustSplit(t, r, "m", Split{"v": 1})
	r.Record("m", "v", time.Millisecond, nil)
	err := errors.New("x")
	if n := testing.AllocsPerRun(1000, func() { r.Record("m", "v", time.Millisecond, err) }); n != 0 {
		t.Fatalf("Record allocates %v times", n)
	}
}

func BenchmarkRecord(b *testing.B) {
	r := newRouter(b, Config{})
	mustSplit(b, r, "lstm_model", Split{"v1.0": 0.8, "v2.0": 0.2})
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			r.Record("lstm_model", "v1.0", time.Duration(i&4095)*time.Microsecond, nil)
			i++
		}
	})
	b.Run("at", func(b *testing.B) {
		b.ReportAllocs()
		now := time.Now()
		i := 0
		for b.Loop() {
			r.RecordAt("lstm_model", "v1.0", now, time.Duration(i&4095)*time.Microsecond, nil)
			i++
		}
	})
	b.Run("parallel-one-version", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				r.Record("lstm_model", "v1.0", time.Duration(i&4095)*time.Microsecond, nil)
				i++
			}
		})
	})
}

func BenchmarkStats(b *testing.B) {
	r := newRouter(b, Config{})
	mustSplit(b, r, "lstm_model", Split{"v1.0": 0.8, "v2.0": 0.2})
	for i := range 10000 {
		r.Record("lstm_model", "v1.0", time.Duration(i)*time.Microsecond, nil)
	}
	b.ReportAllocs()
	for b.Loop() {
		_, _ = r.VersionStats("lstm_model", "v1.0")
	}
}
