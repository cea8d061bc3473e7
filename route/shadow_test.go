package route

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

func TestShadowCompare(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sh, err := NewShadow(ShadowConfig[string]{
			Model: "lstm_model", Version: "v3.0",
			Run: func(ctx context.Context, in string) ([]float32, error) {
				time.Sleep(20 * time.Millisecond)
				switch in {
				case "fail":
					return nil, errors.New("shadow broke")
				case "short":
					return []float32{1}, nil
				}
				return []float32{1.5, 2}, nil
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		defer sh.Close()
		primary := []float32{1, -2}
		for _, in := range []string{"a", "b", "fail", "c", "short", "d"} {
			if !sh.Offer("req_"+in, in, primary, 2*time.Millisecond) {
				t.Fatalf("offer %q not queued", in)
			}
		}
		time.Sleep(time.Second)
		synctest.Wait()
		st := sh.Stats()
		t.Logf("%+v", st)
		// Each compared request: |1.5-1| = 0.5 and |2-(-2)| = 4; signs agree
		// on the first element only.
		if st.Offered != 6 || st.Sampled != 6 || st.Dropped != 0 || st.Compared != 4 || st.Mismatched != 1 {
			t.Fatalf("counts = %+v", st)
		}
		if st.MeanAbsDiff != 2.25 || st.MaxAbsDiff != 4 || st.DirectionAgreementPct != 50 {
			t.Fatalf("mean %v max %v agreement %v%%", st.MeanAbsDiff, st.MaxAbsDiff, st.DirectionAgreementPct)
		}
		if st.Shadow.Count != 6 || st.Shadow.Errors != 1 || st.Shadow.P50 != 20*time.Millisecond || st.Shadow.P99 != 20*time.Millisecond {
			t.Fatalf("shadow metrics = %+v", st.Shadow)
		}
		if st.Primary.Count != 6 || st.Primary.AvgLatency != 2*time.Millisecond {
			t.Fatalf("primary metrics = %+v", st.Primary)
		}
		if st.Model != "lstm_model" || st.Version != "v3.0" {
			t.Fatalf("labels = %q %q", st.Model, st.Version)
		}
	})
}

func TestShadowNonFinite(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		nan := float32(math.NaN())
		sh, _ := NewShadow(ShadowConfig[int]{Run: func(ctx context.Context, in int) ([]float32, error) {
			return []float32{nan, 3}, nil
		}})
		defer sh.Close()
		sh.Offer("x", 0, []float32{1, 1}, time.Millisecond)
		synctest.Wait()
		if st := sh.Stats(); st.NonFinite != 1 || st.MeanAbsDiff != 2 || st.DirectionAgreementPct != 100 {
			t.Fatalf("stats = %+v", st)
		}
	})
}

func TestShadowDropsWhenFull(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		sh, _ := NewShadow(ShadowConfig[int]{
			QueueSize: 2, Workers: 1,
			Run: func(ctx context.Context, in int) ([]float32, error) {
				select {
				case <-release:
				case <-ctx.Done():
					return nil, ctx.Err()
				}
				return []float32{float32(in)}, nil
			},
		})
		defer sh.Close()
		out := []float32{0}
		if !sh.Offer("r0", 0, out, 0) {
			t.Fatal("first offer dropped")
		}
		synctest.Wait() // the worker holds r0 and waits
		start := time.Now()
		var queued []int
		for i := 1; i < 10; i++ {
			if sh.Offer(fmt.Sprint("r", i), i, out, 0) {
				queued = append(queued, i)
			}
		}
		if time.Since(start) != 0 {
			t.Fatal("Offer waited for the shadow")
		}
		if !slices.Equal(queued, []int{1, 2}) {
			t.Fatalf("queued %v, want [1 2] (queue of 2 behind a busy worker)", queued)
		}
		if st := sh.Stats(); st.Dropped != 7 || st.Offered != 10 {
			t.Fatalf("stats = %+v", st)
		}
		close(release)
		synctest.Wait()
		if st := sh.Stats(); st.Compared != 3 {
			t.Fatalf("compared %d, want 3", st.Compared)
		}
	})
}

func TestShadowSampling(t *testing.T) {
	skipUnderRace(t)
	synctest.Test(t, func(t *testing.T) {
		sh, err := NewShadow(ShadowConfig[int]{Rate: 0.25, QueueSize: 1,
			Run: func(ctx context.Context, in int) ([]float32, error) { return nil, nil }})
		if err != nil {
			t.Fatal(err)
		}
		defer sh.Close()
		ids := randomIDs(9, 100_000)
		for _, id := range ids {
			sh.Offer(id, 0, nil, 0)
		}
		st := sh.Stats()
		if f := float64(st.Sampled) / float64(st.Offered); f < 0.24 || f > 0.26 {
			t.Fatalf("sampled %.4f of offers, want 0.25 ± 0.01", f)
		}
		// The same id is consistently in or out.
		before := sh.Stats().Sampled
		for range 10 {
			sh.Offer(ids[0], 0, nil, 0)
		}
		if d := sh.Stats().Sampled - before; d != 0 && d != 10 {
			t.Fatalf("id sampled %d of 10 times", d)
		}
	})
}

func TestShadowCloseAndOfferAllocs(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sh, _ := NewShadow(ShadowConfig[[]float32]{
			QueueSize: 2000,
			Run: func(ctx context.Context, in []float32) ([]float32, error) {
				<-ctx.Done() // a shadow that never answers in time
				return nil, ctx.Err()
			},
		})
		in := []float32{1, 2}
		if n := testing.AllocsPerRun(1000, func() { sh.Offer("req_1", in, in, time.Millisecond) }); n != 0 {
			t.Fatalf("Offer allocates %v times", n)
		}
		synctest.Wait()
		if err := sh.Close(); err != nil {
			t.Fatal(err)
		}
		if err := sh.Close(); err != nil {
			t.Fatal(err)
		}
		st := sh.Stats()
		// One run was in flight and cancelled (not the shadow's error), the
		// rest were queued: all are counted as dropped, none as compared.
		if st.Shadow.Count != 0 || st.Dropped != st.Sampled || st.Sampled != 1001 {
			t.Fatalf("after Close: %+v", st)
		}
		if sh.Offer("late", in, in, 0) {
			t.Fatal("Offer after Close queued")
		}
	})
	for _, cfg := range []ShadowConfig[int]{
		{},
		{Run: func(context.Context, int) ([]float32, error) { return nil, nil }, Rate: 1.5},
		{Run: func(context.Context, int) ([]float32, error) { return nil, nil }, Workers: -1},
	} {
		if _, err := NewShadow(cfg); err == nil {
			t.Errorf("NewShadow(%+v) accepted", cfg)
		}
	}
}

func TestShadowMaxBusy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sh, _ := NewShadow(ShadowConfig[int]{MaxBusy: 0.25,
			Run: func(ctx context.Context, in int) ([]float32, error) {
				time.Sleep(10 * time.Millisecond)
				return []float32{0}, nil
			}})
		defer sh.Close()
		for i := range 5 {
			sh.Offer(fmt.Sprint(i), i, []float32{0}, 0)
		}
		// Runs end at 10, 50, 90, 130, 170ms: each 10ms run is followed
		// by 30ms of rest.
		time.Sleep(100 * time.Millisecond)
		synctest.Wait()
		if st := sh.Stats(); st.Compared != 3 {
			t.Fatalf("compared %d after 100ms, want 3", st.Compared)
		}
	})
	if _, err := NewShadow(ShadowConfig[int]{MaxBusy: 2,
		Run: func(context.Context, int) ([]float32, error) { return nil, nil }}); err == nil {
		t.Fatal("MaxBusy 2 accepted")
	}
}

// spin burns CPU for d, like a model's forward pass.
func spin(d time.Duration) float64 {
	x := 1.0
	for start := time.Now(); time.Since(start) < d; {
		for range 100 {
			x = x*1.0000001 + 1e-9
		}
	}
	return x
}

// BenchmarkShadowPrimaryP99 serves primary requests one after another and
// compares the primary's latency with and without a shadow that is 10×
// slower, mirrored at Rate 1 (so its queue is always full and it drops).
// Rounds alternate the two modes so drift on a shared machine hits both.
// "cpu" burns CPU in both (the shadow competes for a core) with the
// default nice 19 shadow thread; "cpu-nice-off" keeps normal priority;
// "cpu-maxbusy-0.25" also caps the shadow at a quarter of a core; "wait"
// blocks the shadow without CPU (a remote or I/O-bound shadow). Run with
// -benchtime 100x or more: each round is 100 requests per mode.
func BenchmarkShadowPrimaryP99(b *testing.B) {
	const primary = 200 * time.Microsecond
	for _, mode := range []string{"cpu-nice-off", "cpu", "cpu-maxbusy-0.25", "wait"} {
		b.Run(mode, func(b *testing.B) {
			var sink float64
			var mu sync.Mutex // guards sink
			run := func(ctx context.Context, in []float32) ([]float32, error) {
				if mode != "wait" {
					x := spin(10 * primary)
					mu.Lock()
					sink += x
					mu.Unlock()
				} else {
					select {
					case <-time.After(10 * primary):
					case <-ctx.Done():
					}
				}
				return in, nil
			}
			// Little allocation on the primary path: a GC stop-the-world
			// would wait for the shadow's thread and blur what is measured.
			keys := randomIDs(11, 100)
			off := make([]time.Duration, 0, 1<<17)
			on := make([]time.Duration, 0, 1<<17)
			var primarySink float64
			var dropped, compared int64
			// Each request runs on its own goroutine, as net/http serves
			// them; the latency includes starting it.
			serve := func(sh *Shadow[[]float32], n int, into *[]time.Duration) {
				out := []float32{0.5}
				done := make(chan float64)
				for i := range n {
					start := time.Now()
					go func() {
						x := spin(primary)
						if sh != nil {
							sh.Offer(keys[i%len(keys)], out, out, primary)
						}
						done <- x
					}()
					primarySink += <-done
					*into = append(*into, time.Since(start))
				}
			}
			for b.Loop() {
				serve(nil, 100, &off)
				maxBusy := 0.0
				if mode == "cpu-maxbusy-0.25" {
					maxBusy = 0.25
				}
				nice := 0 // the default, 19
				if mode == "cpu-nice-off" {
					nice = -1
				}
				sh, err := NewShadow(ShadowConfig[[]float32]{Run: run, MaxBusy: maxBusy, Nice: nice})
				if err != nil {
					b.Fatal(err)
				}
				serve(sh, 100, &on)
				sh.Close()
				st := sh.Stats()
				dropped += st.Dropped
				compared += st.Compared
			}
			p99 := func(d []time.Duration) float64 {
				slices.Sort(d)
				return float64(d[len(d)*99/100]) / 1e3
			}
			p50 := func(d []time.Duration) float64 {
				slices.Sort(d)
				return float64(d[len(d)/2]) / 1e3
			}
			b.ReportMetric(p50(off), "p50-off-µs")
			b.ReportMetric(p50(on), "p50-on-µs")
			b.ReportMetric(p99(off), "p99-off-µs")
			b.ReportMetric(p99(on), "p99-on-µs")
			b.ReportMetric(100*(p99(on)/p99(off)-1), "p99-rise-%")
			b.ReportMetric(float64(compared)/float64(b.N), "shadowed/round")
			b.ReportMetric(float64(dropped)/float64(b.N), "dropped/round")
			_, _ = sink, primarySink
		})
	}
}
