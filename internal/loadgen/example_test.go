package loadgen_test

import (
	"context"
	"fmt"

	"github.com/signalforge/signalforge/internal/loadgen"
)

// A server's throughput means little without the machine's ceiling beside
// it: run both with the same load, in the same process, one after the other.
func Example() {
	ctx := context.Background()
	body := func(seq int64) []byte {
		return fmt.Appendf(nil, `{"request_id":"req_%d","features":{"rsi_14":%d,"macd":0.5}}`, seq, 30+seq%40)
	}
	cfg := loadgen.Config{Concurrency: 8, Requests: 500, Body: body}

	ceiling, err := loadgen.Ceiling(ctx, cfg)
	if err != nil {
		fmt.Println(err)
		return
	}
	// The server under test would go here:
	//	cfg.URL = "http://127.0.0.1:8080/v1/models/forecast_mlp/predict"
	//	res, err := loadgen.Run(ctx, cfg)
	//	fmt.Printf("%.0f%% of the ceiling\n", 100*res.RPS/ceiling.RPS)
	fmt.Println(ceiling.Requests, "requests,", ceiling.Status[200], "answered 200,", ceiling.Failures, "failed")

	_, err = loadgen.Run(ctx, loadgen.Config{URL: "http://10.1.2.3:8080/", Requests: 1})
	fmt.Println(err)
	// Output:
	// 500 requests, 500 answered 200, 0 failed
	// loadgen: target is not a loopback address (load generation is loopback-only by policy): 10.1.2.3
}
