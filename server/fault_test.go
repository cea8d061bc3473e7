package server

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/signalforge/signalforge/api"
	"github.com/signalforge/signalforge/cache"
	"github.com/signalforge/signalforge/infer/ort"
	"github.com/signalforge/signalforge/internal/demo"
	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/registry"
	"github.com/signalforge/signalforge/tensor"
)

// TestReplicaStartKeepsSharedCache: a replica starting on the same
// registry and shared cache must not invalidate what the others cached.
func TestReplicaStartKeepsSharedCache(t *testing.T) {
	mem, err := cache.NewMemory(cache.MemoryConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	// A rereads generations from the store at once, so a bump by B would
	// show immediately.
	a := startServer(t, testOpts{cacheStore: mem, cacheCfg: cache.Config{GenerationRefresh: time.Nanosecond}})
	c := &api.Client{BaseURL: a.URL}
	ctx := context.Background()
	req := &api.PredictRequest{RequestID: "r1", Ticker: "AAPL", Horizon: 1, Features: demoFeatures(4)}
	if _, err := c.Predict(ctx, "forecast_mlp", req); err != nil {
		t.Fatal(err)
	}

	// Replica B: same registry, same cache store.
	eng, err := ort.New(ort.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	cb, err := cache.New(mem, cache.Config{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(Config{Registry: a.reg, Engine: eng, Cache: cb, ServeStaging: true})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	bctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- b.Serve(bctx, ln) }()
	waitFor(t, b.Ready)
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	r, err := c.Predict(ctx, "forecast_mlp", req)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Cached {
		t.Fatal("a replica's start emptied the shared cache")
	}
}

// TestCacheHitsDoNotCountInVersionStats: a warm version answering from
// cache must not look faster (or busier) than a cold one to the judge.
func TestCacheHitsDoNotCountInVersionStats(t *testing.T) {
	ts := startServer(t, testOpts{})
	c := &api.Client{BaseURL: ts.URL}
	req := &api.PredictRequest{Version: "v1.0", Features: demoFeatures(2)}
	for range 5 {
		if _, err := c.Predict(context.Background(), "forecast_mlp", req); err != nil {
			t.Fatal(err)
		}
	}
	vs, _ := ts.srv.router.VersionStats("forecast_mlp", "v1.0")
	if vs.Total.Count != 1 {
		t.Fatalf("version stats count %d after 1 computed and 4 cached answers, want 1", vs.Total.Count)
	}
}

// nanModel computes sqrt(-|x|-1): NaN for every input.
func nanModel(t *testing.T) []byte {
	b := onnx.NewBuilder("nan", onnx.Opset(14))
	x := b.Input("x", tensor.Float32, onnx.Dim("batch"), onnx.Dim(len(demo.Features)))
	one := b.Initializer("one", tensor.Must(tensor.Shape{1}, []float32{1}))
	neg := b.Node("Neg", []string{b.Node("Abs", []string{x})})
	b.Node("Sqrt", []string{b.Node("Sub", []string{neg, one})}, onnx.Outputs("y"))
	b.Output("y", tensor.Float32, onnx.Dim("batch"), onnx.Dim(len(demo.Features)))
	m, err := b.Build()
	if err != nil {
		t.Fatal(err)
	}
	art, err := onnx.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return art
}

// TestNaNOutputsCountAgainstVersion: a version that answers NaN is broken
// and the judge must see it; the client gets a 422 naming the model.
func TestNaNOutputsCountAgainstVersion(t *testing.T) {
	ts := startServer(t, testOpts{noCache: true})
	ctx := context.Background()
	if _, err := ts.reg.Register(ctx, registry.RegisterRequest{Name: "forecast_mlp", Version: "v9", ONNX: nanModel(t), Features: demo.Features}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return ts.srv.models.Current().Get("forecast_mlp", "v9") != nil })
	code, body, _ := post(t, ts.URL+"/v1/models/forecast_mlp/predict", mustJSON(t, api.PredictRequest{Version: "v9", Features: demoFeatures(1)}))
	if code != 422 || !strings.Contains(string(body), "produced NaN") {
		t.Fatalf("%d %s", code, body)
	}
	vs, _ := ts.srv.router.VersionStats("forecast_mlp", "v9")
	if vs.Total.Errors != 1 {
		t.Fatalf("NaN answer not counted against the version: %+v", vs.Total)
	}
	var found bool
	for _, c := range ts.srv.router.Counters() {
		if c.Model == "forecast_mlp" && c.Version == "v9" {
			found = true
			if c.NonFinite != 1 || c.Errors != 1 {
				t.Fatalf("NaN answer not counted as non-finite in the fleet counters: %+v", c.Counters)
			}
		}
	}
	if !found {
		t.Fatal("forecast_mlp:v9 is missing from the router's counters")
	}
	text := scrape(t, ts.URL)
	for _, want := range []string{
		`signalforge_version_nonfinite_total{model="forecast_mlp",version="v9"} 1`,
		`signalforge_version_errors_total{model="forecast_mlp",version="v9"} 1`,
		`signalforge_requests_total{api="v1",code="422",model="forecast_mlp",version="v9"} 1`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
