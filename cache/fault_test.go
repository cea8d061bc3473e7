package cache_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/signalforge/signalforge/cache"
	"github.com/signalforge/signalforge/cache/rediscache"
	"github.com/signalforge/signalforge/internal/testredis"
)

// waitFor polls cond every 10ms until it holds, failing the test after d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestFailOpenRedisKilledAndRestarted kills Redis under traffic and
// restarts it: no request may fail, the breaker must open and close again,
// and hits must come back by themselves.
func TestFailOpenRedisKilledAndRestarted(t *testing.T) {
	srv := testredis.Start(t)
	store, err := rediscache.New(rediscache.Options{Addrs: []string{srv.Addr}, DialTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	c := newCache(t, store, cache.Config{
		Timeout:           100 * time.Millisecond,
		Breaker:           cache.BreakerConfig{Failures: 3, Cooldown: 100 * time.Millisecond},
		GenerationRefresh: 50 * time.Millisecond,
	})
	keys := make([]cache.Key, 20)
	for i := range keys {
		keys[i] = key(t, c, "lstm_model", "v2.0", "AAPL", 5, float64(i))
	}

	var (
		phase     atomic.Int32 // 0 warm, 1 down, 2 back
		requests  [3]atomic.Int64
		hits      [3]atomic.Int64
		reqErrors atomic.Int64
		stop      = make(chan struct{})
		wg        sync.WaitGroup
	)
	for w := range 4 {
		wg.Go(func() {
			for i := w; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				k := keys[i%len(keys)]
				p := phase.Load() // the phase the request started in
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				v, cached, err := c.GetOrCompute(ctx, k, func(ctx context.Context) (cache.Value, error) {
					return val(float32(i % len(keys))), nil // the "model"
				})
				cancel()
				requests[p].Add(1)
				if err != nil || len(v.Predictions) != 1 {
					reqErrors.Add(1)
					continue
				}
				if cached {
					hits[p].Add(1)
				}
				time.Sleep(time.Millisecond)
			}
		})
	}
	defer func() {
		close(stop)
		wg.Wait()
	}()

	waitFor(t, 10*time.Second, "warm hits", func() bool { return hits[0].Load() >= 100 })
	srv.Kill()
	phase.Store(1) // after Kill returns: requests of phase 1 start with Redis dead
	waitFor(t, 10*time.Second, "the breaker to open", func() bool {
		st := c.Stats()
		return st.BreakerOpens >= 1 && st.Rejected > 0
	})
	downSince := requests[1].Load()
	waitFor(t, 10*time.Second, "traffic while Redis is down", func() bool { return requests[1].Load() >= downSince+200 })
	phase.Store(2)
	srv.Restart()
	waitFor(t, 15*time.Second, "hits after Redis came back", func() bool {
		return hits[2].Load() >= 50 && c.Stats().Breaker == cache.BreakerClosed
	})

	st := c.Stats()
	t.Logf("requests warm/down/back = %d/%d/%d, hits %d/%d/%d; store errors %d, rejected by breaker %d, breaker opened %d times",
		requests[0].Load(), requests[1].Load(), requests[2].Load(), hits[0].Load(), hits[1].Load(), hits[2].Load(),
		st.Errors, st.Rejected, st.BreakerOpens)
	if n := reqErrors.Load(); n != 0 {
		t.Fatalf("%d requests failed because of the cache", n)
	}
	if hits[1].Load() != 0 {
		t.Errorf("%d hits while Redis was dead", hits[1].Load())
	}
	if st.Errors == 0 {
		t.Error("no store errors counted while Redis was dead")
	}
}

// TestFailOpenSlowRedis: a Redis that stops answering (DEBUG SLEEP) costs
// a request Config.Timeout, not the stall.
func TestFailOpenSlowRedis(t *testing.T) {
	srv := testredis.Start(t, "--enable-debug-command", "yes")
	store, err := rediscache.New(rediscache.Options{Addrs: []string{srv.Addr}, ReadTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	c := newCache(t, store, cache.Config{Timeout: 50 * time.Millisecond})
	ctx := context.Background()
	k := key(t, c, "m", "v1", "AAPL", 1, 1)
	if err := c.Set(ctx, k, val(1), 0); err != nil {
		t.Fatal(err)
	}
	mustHit(t, c, k, 1)

	admin, err := rediscache.New(rediscache.Options{Addrs: []string{srv.Addr}, ReadTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	slept := make(chan error, 1)
	go func() { slept <- admin.Client().Do(ctx, "DEBUG", "SLEEP", "1").Err() }()
	time.Sleep(100 * time.Millisecond) // let the sleep start

	start := time.Now()
	_, ok := c.Get(ctx, k)
	elapsed := time.Since(start)
	if ok {
		t.Fatal("Get hit while Redis was stalled")
	}
	if elapsed > 700*time.Millisecond {
		t.Fatalf("Get took %v against a stalled Redis; Timeout is 50ms", elapsed)
	}
	if st := c.Stats(); st.Errors == 0 {
		t.Error("the timeout was not counted as an error")
	}
	if err := <-slept; err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "hits after the stall", func() bool {
		_, ok := c.Get(ctx, k)
		return ok
	})
}

// TestBreakerHalfOpenProbe: an open breaker lets one probe through after
// the cooldown, and a failing probe keeps it open.
func TestBreakerProbesAndRecovers(t *testing.T) {
	srv := testredis.Start(t)
	store, _ := rediscache.New(rediscache.Options{Addrs: []string{srv.Addr}})
	defer store.Close()
	c := newCache(t, store, cache.Config{Breaker: cache.BreakerConfig{Failures: 2, Cooldown: 200 * time.Millisecond}, GenerationRefresh: time.Hour})
	ctx := context.Background()
	k := key(t, c, "m", "v1", "", 0, 1)
	c.Set(ctx, k, val(1), 0)
	srv.Kill()
	for c.Stats().Breaker != cache.BreakerOpen {
		c.Get(ctx, k)
	}
	st := c.Stats()
	for range 100 {
		c.Get(ctx, k)
	}
	if st2 := c.Stats(); st2.Errors != st.Errors || st2.Rejected != st.Rejected+100 {
		t.Fatalf("open breaker still called the store: errors %d→%d, rejected %d→%d", st.Errors, st2.Errors, st.Rejected, st2.Rejected)
	}
	time.Sleep(250 * time.Millisecond)
	c.Get(ctx, k) // the probe fails: open again
	if st3 := c.Stats(); st3.Errors != st.Errors+1 || st3.Breaker != cache.BreakerOpen || st3.BreakerOpens != 2 {
		t.Fatalf("after a failed probe: %+v", st3)
	}
	srv.Restart()
	// A probe after the cooldown closes it. (The first command on a pooled
	// connection to the old process may still fail; then the next probe,
	// a cooldown later, succeeds.)
	waitFor(t, 5*time.Second, "a successful probe to close the breaker", func() bool {
		time.Sleep(210 * time.Millisecond)
		c.Set(ctx, k, val(2), 0)
		return c.Stats().Breaker == cache.BreakerClosed
	})
	mustHit(t, c, k, 2)
}
