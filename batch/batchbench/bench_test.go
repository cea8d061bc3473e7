package batchbench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/signalforge/signalforge/batch"
	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/infer/ort"
	"github.com/signalforge/signalforge/onnx/onnxtest"
	"github.com/signalforge/signalforge/tensor"
)

// load builds the MLP of the given layer sizes and loads it into ONNX
// Runtime with one intra-op thread (the product's default).
func load(tb testing.TB, sizes ...int) (infer.Session, *onnxtest.MLP) {
	tb.Helper()
	eng, err := ort.New(ort.Config{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { eng.Close() })
	m := onnxtest.MustMLP(1, sizes...)
	data, err := m.Bytes()
	if err != nil {
		tb.Fatal(err)
	}
	sess, err := eng.LoadBytes(context.Background(), data, infer.Options{WarmupBatchSizes: []int{1, 8, 32}})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { sess.Close() })
	return sess, m
}

// TestBatchedMatchesReference sends concurrent requests of 1 to 10 rows and
// one of 9 rows (64 in all, batched as they arrive) and one of 128 rows
// (split into two chunks of 64) through a Batcher over the real engine,
// and checks each request gets exactly its own rows' predictions (against
// the Go reference pass).
func TestBatchedMatchesReference(t *testing.T) {
	sess, m := load(t, 100, 50, 10)
	b, err := batch.New(batch.Config{MaxBatchSize: 64, Window: time.Hour}, sess.Run)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(context.Background())
	check := func(rowCounts ...int) {
		var wg sync.WaitGroup
		for i, rows := range rowCounts {
			wg.Go(func() {
				x := m.RandomInput(rows, uint64(i))
				want, err := m.Forward(x)
				if err != nil {
					t.Error(err)
					return
				}
				out, err := b.Predict(context.Background(), []tensor.Tensor{x})
				if err != nil {
					t.Error(err)
					return
				}
				if !out[0].Shape().Equal(want.Shape()) {
					t.Errorf("request %d: shape %v, want %v", i, out[0].Shape(), want.Shape())
					return
				}
				for k, w := range want.Float32s() {
					if g := out[0].Float32s()[k]; math.Abs(float64(g-w)) > 1e-4 {
						t.Errorf("request %d: y[%d] = %v, want %v", i, k, g, w)
						return
					}
				}
			})
		}
		wg.Wait()
	}
	check(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 9)
	st := b.Stats()
	if st.BatchedRows != 64 || st.Batches < 1 || st.Batches > 11 {
		t.Fatalf("11 requests of 64 rows in all: %d batches of %d rows in all", st.Batches, st.BatchedRows)
	}
	check(128)
	if st2 := b.Stats(); st2.Batches != st.Batches+2 || st2.BatchSizes[64] != st.BatchSizes[64]+2 {
		t.Fatalf("a 128-row request: batch sizes %v, then %v; want two more batches of 64", st.BatchSizes, st2.BatchSizes)
	}
}

// TestMalformedRequestFailsAlone checks, on the real engine, that a request
// the model rejects (wrong feature count) is batched apart from valid ones
// and fails alone with infer.ErrInput.
func TestMalformedRequestFailsAlone(t *testing.T) {
	sess, m := load(t, 100, 50, 10)
	b, err := batch.New(batch.Config{MaxBatchSize: 8, Window: 5 * time.Millisecond}, sess.Run)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(context.Background())
	bad := make(chan error, 1)
	go func() {
		_, err := b.Predict(context.Background(), []tensor.Tensor{tensor.Must(tensor.Shape{1, 99}, make([]float32, 99))})
		bad <- err
	}()
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			if _, err := b.Predict(context.Background(), []tensor.Tensor{m.RandomInput(1, uint64(i))}); err != nil {
				t.Errorf("valid request beside a malformed one: %v", err)
			}
		})
	}
	wg.Wait()
	if err := <-bad; !errors.Is(err, infer.ErrInput) {
		t.Errorf("malformed request: err = %v, want infer.ErrInput", err)
	}
}

// closedLoop runs b.N one-row requests from `callers` goroutines, each
// sending its next request when the previous one returns, and reports
// throughput and exact per-request latency percentiles.
func closedLoop(b *testing.B, callers int, x tensor.Tensor, call func(context.Context, []tensor.Tensor) ([]tensor.Tensor, error)) {
	in := []tensor.Tensor{x}
	var next atomic.Int64
	lat := make([][]time.Duration, callers)
	ctx := context.Background()
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for c := range callers {
		wg.Go(func() {
			mine := make([]time.Duration, 0, b.N/callers+1)
			for next.Add(1) <= int64(b.N) {
				t0 := time.Now()
				if _, err := call(ctx, in); err != nil {
					b.Error(err)
					return
				}
				mine = append(mine, time.Since(t0))
			}
			lat[c] = mine
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	all := slices.Concat(lat...)
	slices.Sort(all)
	if len(all) == 0 {
		return
	}
	q := func(p float64) float64 {
		return float64(all[min(len(all)-1, int(math.Ceil(p*float64(len(all))))-1)]) / 1e3
	}
	b.ReportMetric(float64(len(all))/elapsed.Seconds(), "req/s")
	b.ReportMetric(q(0.50), "p50-µs")
	b.ReportMetric(q(0.99), "p99-µs")
}

// BenchmarkBatcher is the must-show comparison: closed-loop callers (1, 8,
// 32, 64) sending one-row requests to a 100-50-10 and a 512-1024-1024-1
// MLP, unbatched (every caller calls Session.Run itself, concurrently) and
// through a Batcher (MaxBatchSize 32, MaxInFlight 2, DefaultWindow).
// Besides req/s and per-request p50/p99 it reports the batches' average
// size and median execution time. BenchmarkBatcherInterleaved compares
// windows side by side. Run with
//
//	go test ./batch/batchbench -run '^$' -bench 'Batcher$' -benchtime 3000x -count 3
func BenchmarkBatcher(b *testing.B) {
	windows := []time.Duration{batch.DefaultWindow}
	for _, sizes := range [][]int{{100, 50, 10}, {512, 1024, 1024, 1}} {
		sess, m := load(b, sizes...)
		x := m.RandomInput(1, 3)
		name := fmt.Sprintf("mlp%d", sizes[0])
		for _, callers := range []int{1, 8, 32, 64} {
			b.Run(fmt.Sprintf("%s/callers=%d/unbatched", name, callers), func(b *testing.B) {
				closedLoop(b, callers, x, sess.Run)
			})
			for _, w := range windows {
				b.Run(fmt.Sprintf("%s/callers=%d/window=%v", name, callers, w), func(b *testing.B) {
					bt, err := batch.New(batch.Config{MaxBatchSize: 32, Window: w, MaxInFlight: 2}, sess.Run)
					if err != nil {
						b.Fatal(err)
					}
					closedLoop(b, callers, x, bt.Predict)
					if err := bt.Close(context.Background()); err != nil {
						b.Fatal(err)
					}
					st := bt.Stats()
					b.ReportMetric(st.AvgBatchSize, "rows/batch")
					b.ReportMetric(float64(st.BatchTime.P50)/1e3, "batch-p50-µs")
				})
			}
		}
	}
}

// runFor runs one-row requests from `callers` closed-loop goroutines for
// about d and returns the number done, the time taken and every latency.
func runFor(d time.Duration, callers int, x tensor.Tensor, call func(context.Context, []tensor.Tensor) ([]tensor.Tensor, error)) (int, time.Duration, []time.Duration, error) {
	in := []tensor.Tensor{x}
	lat := make([][]time.Duration, callers)
	errs := make([]error, callers)
	var wg sync.WaitGroup
	start := time.Now()
	end := start.Add(d)
	for c := range callers {
		wg.Go(func() {
			for time.Now().Before(end) {
				t0 := time.Now()
				if _, err := call(context.Background(), in); err != nil {
					errs[c] = err
					return
				}
				lat[c] = append(lat[c], time.Since(t0))
			}
		})
	}
	wg.Wait()
	all := slices.Concat(lat...)
	return len(all), time.Since(start), all, errors.Join(errs...)
}

func median(v []float64) float64 {
	v = slices.Clone(v)
	slices.Sort(v)
	if len(v) == 0 {
		return 0
	}
	return v[len(v)/2]
}

// BenchmarkBatcherInterleaved is the side-by-side version of
// BenchmarkBatcher for a noisy, shared machine: for each model and number
// of closed-loop callers it runs rounds in which every mode (unbatched and
// batched at each window) gets the same slice of time in turn, so load
// spikes from elsewhere hit all modes alike. It reports per mode the median
// throughput over the rounds and the p50/p99 of all requests' latencies;
// for batched modes also rows per batch, the batch execution time (p50 and
// p99) and the queue wait p99, so a latency tail can be traced to the model
// call or to the queue. One iteration does all rounds, so run it with
// -benchtime 1x:
//
//	go test ./batch/batchbench -run '^$' -bench Interleaved -benchtime 1x
func BenchmarkBatcherInterleaved(b *testing.B) {
	const rounds, slice = 5, 300 * time.Millisecond
	for _, sizes := range [][]int{{100, 50, 10}, {512, 1024, 1024, 1}} {
		sess, m := load(b, sizes...)
		x := m.RandomInput(1, 3)
		for _, callers := range []int{1, 8, 32, 64} {
			b.Run(fmt.Sprintf("mlp%d/callers=%d", sizes[0], callers), func(b *testing.B) {
				type mode struct {
					name     string
					window   time.Duration // 0: unbatched
					inFlight int
					rps      []float64
					lat      []time.Duration
					rows     float64       // rows per batch, mean over rounds
					batch    time.Duration // batch execution p50, mean over rounds
					batch99  time.Duration // batch execution p99, mean over rounds
					wait99   time.Duration // queue wait p99, mean over rounds
				}
				// With one run at a time the window plays no part (a
				// request waits only while the model runs); with two it
				// bounds how long a request waits for company before
				// taking the second slot.
				modes := []*mode{
					{name: "unbatched"},
					{name: "inflight=1", window: batch.DefaultWindow, inFlight: 1},
					{name: "inflight=2/w=100µs", window: 100 * time.Microsecond, inFlight: 2},
					{name: "inflight=2/w=500µs", window: 500 * time.Microsecond, inFlight: 2},
					{name: "inflight=2/w=2ms", window: 2 * time.Millisecond, inFlight: 2},
				}
				for b.Loop() {
					for range rounds {
						for _, md := range modes {
							call := sess.Run
							var bt *batch.Batcher
							if md.window > 0 {
								var err error
								bt, err = batch.New(batch.Config{MaxBatchSize: 32, Window: md.window, MaxInFlight: md.inFlight}, sess.Run)
								if err != nil {
									b.Fatal(err)
								}
								call = bt.Predict
							}
							n, took, lat, err := runFor(slice, callers, x, call)
							if err != nil {
								b.Fatal(err)
							}
							md.rps = append(md.rps, float64(n)/took.Seconds())
							md.lat = append(md.lat, lat...)
							if bt != nil {
								if err := bt.Close(context.Background()); err != nil {
									b.Fatal(err)
								}
								st := bt.Stats()
								md.rows += st.AvgBatchSize / rounds
								md.batch += st.BatchTime.P50 / rounds
								md.batch99 += st.BatchTime.P99 / rounds
								md.wait99 += st.QueueWait.P99 / rounds
							}
						}
					}
				}
				for _, md := range modes {
					slices.Sort(md.lat)
					q := func(p float64) float64 {
						return float64(md.lat[min(len(md.lat)-1, int(math.Ceil(p*float64(len(md.lat))))-1)]) / 1e3
					}
					b.ReportMetric(median(md.rps), md.name+"-req/s")
					b.ReportMetric(q(0.50), md.name+"-p50-µs")
					b.ReportMetric(q(0.99), md.name+"-p99-µs")
					if md.window > 0 {
						b.ReportMetric(md.rows, md.name+"-rows/batch")
						b.ReportMetric(float64(md.batch)/1e3, md.name+"-batch-µs")
						b.ReportMetric(float64(md.batch99)/1e3, md.name+"-batch-p99-µs")
						b.ReportMetric(float64(md.wait99)/1e3, md.name+"-wait-p99-µs")
					}
				}
			})
		}
	}
}
