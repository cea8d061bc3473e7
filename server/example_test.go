package server_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/signalforge/signalforge/api"
	"github.com/signalforge/signalforge/cache"
	"github.com/signalforge/signalforge/infer/ort"
	"github.com/signalforge/signalforge/internal/demo"
	"github.com/signalforge/signalforge/registry"
	"github.com/signalforge/signalforge/server"
)

// Example serves a registry over HTTP and predicts twice: the repeat is
// answered by the prediction cache.
func Example() {
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	dir, _ := os.MkdirTemp("", "signalforge-example")
	defer os.RemoveAll(dir)

	eng, err := ort.New(ort.Config{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer eng.Close()
	reg, _ := registry.Open(ctx, registry.Config{Dir: dir, Validator: registry.EngineValidator(eng)})
	defer reg.Close()
	demo.Seed(ctx, reg) // forecast_mlp v1.0 and v2.0 at 80/20

	mem, _ := cache.NewMemory(cache.MemoryConfig{})
	defer mem.Close()
	c, _ := cache.New(mem, cache.Config{DefaultTTL: 5 * time.Minute})
	srv, _ := server.New(server.Config{Registry: reg, Engine: eng, Cache: c})
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	for !srv.Ready() {
		time.Sleep(10 * time.Millisecond)
	}

	client := &api.Client{BaseURL: "http://" + ln.Addr().String()}
	req := &api.PredictRequest{RequestID: "req_123", Ticker: "AAPL", Horizon: 5, Version: "v1.0", Features: api.Features{
		"rsi_14": api.Scalar(65), "macd": api.Scalar(0.5), "macd_signal": api.Scalar(0.4), "bb_width": api.Scalar(0.08),
		"volume_z": api.Scalar(1.3), "ret_1d": api.Scalar(0.004), "ret_5d": api.Scalar(0.012), "atr_14": api.Scalar(2.1),
	}}
	for range 2 {
		resp, err := client.Predict(ctx, "forecast_mlp", req)
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Println(resp.Model, resp.Version, "cached:", resp.Cached, "outputs:", len(resp.Predictions[0]))
	}
	stop()
	fmt.Println("shutdown:", <-done)
	// Output:
	// forecast_mlp v1.0 cached: false outputs: 1
	// forecast_mlp v1.0 cached: true outputs: 1
	// shutdown: <nil>
}
