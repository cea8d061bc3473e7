package server

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/signalforge/signalforge/api"
	"github.com/signalforge/signalforge/internal/loadgen"
)

// BenchmarkLoad is the server's load benchmark: 64 closed-loop connections
// against the native predict API on a 100-50-10 MLP (batching on, cache
// off; and all cache hits), the OIP v2 infer API, and a trivial net/http
// handler returning a fixed JSON body — the ceiling of this machine's
// loopback HTTP — interleaved in rounds so that noise hits all alike.
// Run it once per invocation:
//
//	go test ./server -run '^$' -bench Load -benchtime 1x
func BenchmarkLoad(b *testing.B) {
	const conns = 64
	dur := 3 * time.Second
	ctx := context.Background()
	ts := startServer(&testing.T{}, testOpts{mutate: func(c *Config) { c.MaxRows = 1024; c.MaxBodyBytes = 1 << 20 }})
	b.StopTimer()
	names := registerMLP100(b, ts)
	row := func(seed int64) api.Features {
		f := api.Features{}
		for i, n := range names {
			f[n] = api.Scalar(float64((seed*7+int64(i))%1000) / 100)
		}
		return f
	}
	// Bodies are prepared up front so the generator measures the server.
	const distinct = 4096
	fresh := make([][]byte, distinct)
	for i := range fresh {
		fresh[i], _ = json.Marshal(api.PredictRequest{RequestID: fmt.Sprint(i), Ticker: "AAPL", Horizon: 1, Features: row(int64(i)), NoCache: true})
	}
	hot := make([][]byte, 64)
	for i := range hot {
		hot[i], _ = json.Marshal(api.PredictRequest{RequestID: fmt.Sprint(i), Ticker: "AAPL", Horizon: 1, Features: row(int64(i))})
	}
	v2 := make([][]byte, distinct)
	for i := range v2 {
		data := make([]float32, 100)
		for j := range data {
			data[j] = float32((int64(i)*7+int64(j))%1000) / 100
		}
		raw, _ := json.Marshal(data)
		v2[i], _ = json.Marshal(api.InferRequest{Inputs: []api.InferTensor{{Name: "x", Shape: []int64{1, 100}, Datatype: "FP32", Data: raw}}})
	}
	ceiling, err := loadgen.StartCeiling()
	if err != nil {
		b.Fatal(err)
	}
	defer ceiling.Close()

	type scenario struct {
		name string
		cfg  loadgen.Config
	}
	scenarios := []scenario{
		{"ceiling (fixed JSON net/http)", loadgen.Config{URL: ceiling.URL}},
		{"ceiling, same POST bodies", loadgen.Config{URL: ceiling.URL, Body: func(s int64) []byte { return fresh[s%distinct] }}},
		{"v1 predict, batching, cache off", loadgen.Config{URL: ts.URL + "/v1/models/mlp100/predict", Body: func(s int64) []byte { return fresh[s%distinct] }}},
		{"v1 predict, cache hits", loadgen.Config{URL: ts.URL + "/v1/models/mlp100/predict", Body: func(s int64) []byte { return hot[s%int64(len(hot))] }}},
		{"v2 infer, batching", loadgen.Config{URL: ts.URL + "/v2/models/mlp100/infer", Body: func(s int64) []byte { return v2[s%distinct] }}},
	}
	// Warm the cache for the hit scenario.
	for _, h := range hot {
		post(b, ts.URL+"/v1/models/mlp100/predict", string(h))
	}
	const rounds = 3
	results := make([][]loadgen.Result, len(scenarios))
	b.StartTimer()
	for r := 0; r < rounds; r++ {
		for i, sc := range scenarios {
			cfg := sc.cfg
			cfg.Concurrency, cfg.Duration = conns, dur
			res, err := loadgen.Run(ctx, cfg)
			if err != nil {
				b.Fatal(err)
			}
			if res.Failures > 0 {
				b.Fatalf("%s: %v", sc.name, res)
			}
			results[i] = append(results[i], res)
		}
	}
	b.StopTimer()
	median := func(rs []loadgen.Result, f func(loadgen.Result) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	ceilRPS := median(results[0], func(r loadgen.Result) float64 { return r.RPS })
	b.Logf("%d connections, %v per run, %d interleaved rounds, medians:", conns, dur, rounds)
	b.Logf("%-34s %10s %9s %9s %10s", "scenario", "req/s", "p50", "p99", "of ceiling")
	for i, sc := range scenarios {
		rps := median(results[i], func(r loadgen.Result) float64 { return r.RPS })
		p50 := time.Duration(median(results[i], func(r loadgen.Result) float64 { return float64(r.P50) }))
		p99 := time.Duration(median(results[i], func(r loadgen.Result) float64 { return float64(r.P99) }))
		b.Logf("%-34s %10.0f %9v %9v %9.0f%%", sc.name, rps, p50.Round(time.Microsecond), p99.Round(time.Microsecond), 100*rps/ceilRPS)
		b.ReportMetric(rps, fmt.Sprintf("req/s-%d", i))
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	b.Logf("GC cycles %d, GOGC=%s", ms.NumGC, os.Getenv("GOGC"))
	st := ts.srv.models.Current().Get("mlp100", "v1").Batcher().Stats()
	b.Logf("batcher: %d batches, average batch %.1f rows, batch p50 %v p99 %v", st.Batches, st.AvgBatchSize, st.BatchTime.P50, st.BatchTime.P99)
}
