package server

import (
	"context"
	"testing"
	"time"

	"github.com/signalforge/signalforge/api"
	"github.com/signalforge/signalforge/cache/rediscache"
	"github.com/signalforge/signalforge/internal/testredis"
)

// TestRedisDownUnderLoad kills the real Redis behind the cache while
// requests flow and restarts it: no request may fail, and repeats hit the
// cache again once Redis is back.
func TestRedisDownUnderLoad(t *testing.T) {
	rs := testredis.Start(t)
	store, err := rediscache.New(rediscache.Options{Addrs: []string{rs.Addr}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	ts := startServer(t, testOpts{cacheStore: store})
	ctx := context.Background()
	c := &api.Client{BaseURL: ts.URL}
	req := &api.PredictRequest{RequestID: "r", Ticker: "MSFT", Horizon: 1, Features: demoFeatures(5)}
	if _, err := c.Predict(ctx, "forecast_mlp", req); err != nil {
		t.Fatal(err)
	}
	if r, err := c.Predict(ctx, "forecast_mlp", req); err != nil || !r.Cached {
		t.Fatalf("repeat with Redis up: %+v %v", r, err)
	}

	stop := make(chan struct{})
	total, fails, wait := load(t, ts.URL, 8, true, stop)
	time.Sleep(200 * time.Millisecond)
	rs.Kill()
	time.Sleep(500 * time.Millisecond)
	rs.Restart()
	time.Sleep(200 * time.Millisecond)
	close(stop)
	wait()
	if len(*fails) > 0 {
		t.Fatalf("%d of %d requests failed while Redis was down; first: %s", len(*fails), total.Load(), (*fails)[0])
	}
	// Redis restarted empty (no persistence): the first repeat misses and
	// refills, the next hits — once the breaker has probed Redis again.
	waitFor(t, func() bool {
		_, err1 := c.Predict(ctx, "forecast_mlp", req)
		r, err2 := c.Predict(ctx, "forecast_mlp", req)
		return err1 == nil && err2 == nil && r.Cached
	})
	st := ts.srv.cache.Stats()
	if st.Errors == 0 && st.Rejected == 0 {
		t.Fatalf("cache saw no errors while Redis was down: %+v", st)
	}
	t.Logf("%d requests, 0 failed; cache errors %d, breaker-rejected %d, opens %d", total.Load(), st.Errors, st.Rejected, st.BreakerOpens)
}
