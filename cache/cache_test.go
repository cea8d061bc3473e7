package cache_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/signalforge/signalforge/cache"
	"github.com/signalforge/signalforge/cache/rediscache"
	"github.com/signalforge/signalforge/internal/testredis"
)

// stores returns constructors of empty stores, memory and real Redis.
func stores(t *testing.T) map[string]func(t *testing.T) cache.Store {
	srv := testredis.Start(t)
	return map[string]func(t *testing.T) cache.Store{
		"memory": func(t *testing.T) cache.Store {
			s, err := cache.NewMemory(cache.MemoryConfig{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		},
		"redis": func(t *testing.T) cache.Store {
			s, err := rediscache.New(rediscache.Options{Addrs: []string{srv.Addr}})
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Client().FlushAll(context.Background()).Err(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		},
	}
}

func newCache(t *testing.T, s cache.Store, cfg cache.Config) *cache.Cache {
	t.Helper()
	c, err := cache.New(s, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func key(t testing.TB, c *cache.Cache, model, version, ticker string, horizon int, rsi float64) cache.Key {
	t.Helper()
	k, err := c.Key(cache.KeyInput{Model: model, Version: version, Ticker: ticker, Horizon: horizon,
		Features: map[string]float64{"rsi_14": rsi, "macd": 0.5}})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func val(x float32) cache.Value { return cache.Value{Predictions: [][]float32{{x}}} }

func mustHit(t *testing.T, c *cache.Cache, k cache.Key, want float32) {
	t.Helper()
	v, ok := c.Get(context.Background(), k)
	if !ok {
		t.Fatalf("Get(%v) missed, want %v", k, want)
	}
	if len(v.Predictions) != 1 || len(v.Predictions[0]) != 1 || v.Predictions[0][0] != want {
		t.Fatalf("Get(%v) = %v, want [[%v]]", k, v.Predictions, want)
	}
}

func mustMiss(t *testing.T, c *cache.Cache, k cache.Key) {
	t.Helper()
	if v, ok := c.Get(context.Background(), k); ok {
		t.Fatalf("Get(%v) = %v, want a miss", k, v.Predictions)
	}
}

func TestConfigValidation(t *testing.T) {
	s, _ := cache.NewMemory(cache.MemoryConfig{})
	defer s.Close()
	for name, cfg := range map[string]cache.Config{
		"negative ttl":  {DefaultTTL: -1},
		"zero type ttl": {TypeTTL: map[string]time.Duration{"x": 0}},
		"bad prefix":    {Prefix: "a:b"},
		"neg timeout":   {Timeout: -time.Second},
	} {
		if _, err := cache.New(s, cfg); err == nil {
			t.Errorf("%s: New accepted %+v", name, cfg)
		}
	}
	if _, err := cache.New(nil, cache.Config{}); err == nil {
		t.Error("New accepted a nil store")
	}
	c := newCache(t, s, cache.Config{})
	if got := c.TTL("anything"); got != 300*time.Second {
		t.Errorf("default TTL = %v, want the seed's 300s", got)
	}
	if _, err := cache.NewMemory(cache.MemoryConfig{MaxEntries: 1, MaxBytes: 1}); err == nil {
		t.Error("NewMemory accepted both bounds")
	}
}

func TestCacheBasics(t *testing.T) {
	for name, newStore := range stores(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			c := newCache(t, newStore(t), cache.Config{})
			k := key(t, c, "lstm_model", "v2.0", "AAPL", 5, 65)
			mustMiss(t, c, k)
			before := time.Now()
			if err := c.Set(ctx, k, cache.Value{Predictions: [][]float32{{0.25, 0.75}, {1}}}, 0); err != nil {
				t.Fatal(err)
			}
			v, ok := c.Get(ctx, k)
			if !ok || len(v.Predictions) != 2 || v.Predictions[0][1] != 0.75 || v.Predictions[1][0] != 1 {
				t.Fatalf("Get = %v, %v", v, ok)
			}
			if v.CreatedAt.Before(before.Add(-time.Second)) || v.CreatedAt.After(time.Now().Add(time.Second)) {
				t.Errorf("CreatedAt = %v, not set to the write time", v.CreatedAt)
			}
			// Different versions never share entries.
			mustMiss(t, c, key(t, c, "lstm_model", "v2.1", "AAPL", 5, 65))
			mustMiss(t, c, key(t, c, "lstm_model", "v2.0", "AAPL", 5, 65.5))
			st := c.Stats()
			if st.Hits != 1 || st.Misses != 3 || st.Writes != 1 || st.Errors != 0 || st.HitRatePct != 25 {
				t.Errorf("Stats = %+v, want 1 hit, 3 misses, 1 write, 25%%", st)
			}
			if st.Breaker != cache.BreakerClosed {
				t.Errorf("breaker %s on a healthy store", st.Breaker)
			}
		})
	}
}

// recordingStore is a fake that records the TTL of each write (beside the
// real-expiry test below).
type recordingStore struct {
	cache.Store
	mu   sync.Mutex
	ttls map[string]time.Duration
}

func (r *recordingStore) Set(ctx context.Context, key string, v []byte, ttl time.Duration) error {
	r.mu.Lock()
	r.ttls[key] = ttl
	r.mu.Unlock()
	return r.Store.Set(ctx, key, v, ttl)
}

func TestTTLPerType(t *testing.T) {
	mem, _ := cache.NewMemory(cache.MemoryConfig{})
	defer mem.Close()
	rs := &recordingStore{Store: mem, ttls: map[string]time.Duration{}}
	c := newCache(t, rs, cache.Config{DefaultTTL: time.Hour, TypeTTL: map[string]time.Duration{"intraday": time.Minute, "daily": 24 * time.Hour}})
	ctx := context.Background()
	for _, tc := range []struct {
		typ     string
		explict time.Duration
		want    time.Duration
	}{
		{"intraday", 0, time.Minute},
		{"daily", 0, 24 * time.Hour},
		{"", 0, time.Hour},
		{"unknown", 0, time.Hour},
		{"intraday", 5 * time.Second, 5 * time.Second},
	} {
		k, err := c.Key(cache.KeyInput{Model: "m", Version: "v1", Type: tc.typ, Features: map[string]float64{"x": float64(tc.explict) + float64(len(tc.typ))}})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Set(ctx, k, val(1), tc.explict); err != nil {
			t.Fatal(err)
		}
		rs.mu.Lock()
		var got time.Duration
		for sk, ttl := range rs.ttls {
			if len(sk) > 8 && sk[:8] == "sf:pred:" && sk[len(sk)-len(k.Hash):] == k.Hash {
				got = ttl
			}
		}
		rs.mu.Unlock()
		if got != tc.want {
			t.Errorf("type %q, explicit TTL %v: wrote with TTL %v, want %v", tc.typ, tc.explict, got, tc.want)
		}
	}
	if err := c.Set(ctx, key(t, c, "m", "v1", "", 0, 1), val(1), -time.Second); err == nil {
		t.Error("Set accepted a negative TTL")
	}
}

func TestTypeTTLExpiresInRedis(t *testing.T) {
	s := stores(t)["redis"](t)
	c := newCache(t, s, cache.Config{TypeTTL: map[string]time.Duration{"fast": 150 * time.Millisecond, "slow": time.Minute}})
	ctx := context.Background()
	mk := func(typ string) cache.Key {
		k, err := c.Key(cache.KeyInput{Model: "m", Version: "v1", Type: typ, Features: map[string]float64{typ: 1}})
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	fast, slow := mk("fast"), mk("slow")
	c.Set(ctx, fast, val(1), 0)
	c.Set(ctx, slow, val(2), 0)
	mustHit(t, c, fast, 1)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, ok := c.Get(ctx, fast); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("entry of a type with a 150ms TTL still cached after 5s")
		}
		time.Sleep(25 * time.Millisecond)
	}
	mustHit(t, c, slow, 2)
	st := c.Stats().ByType
	if st["fast"].Hits < 1 || st["fast"].Misses != 1 || st["fast"].Writes != 1 || st["slow"].Hits != 1 || st["slow"].Writes != 1 {
		t.Errorf("per-type stats = %+v", st)
	}
}

func TestGenerations(t *testing.T) {
	for name, newStore := range stores(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			s := newStore(t)
			a := newCache(t, s, cache.Config{GenerationRefresh: 20 * time.Millisecond})
			b := newCache(t, s, cache.Config{GenerationRefresh: 20 * time.Millisecond}) // another replica
			k := key(t, a, "m", "v1", "AAPL", 1, 1)
			other := key(t, a, "m", "v2", "AAPL", 1, 1)
			a.Set(ctx, k, val(1), 0)
			a.Set(ctx, other, val(2), 0)
			mustHit(t, b, k, 1) // replicas agree on the generation
			gen, err := a.BumpGeneration(ctx, "m", "v1")
			if err != nil {
				t.Fatal(err)
			}
			if gen == "" {
				t.Fatal("empty generation")
			}
			mustMiss(t, a, k)       // at once on the replica that bumped
			mustHit(t, a, other, 2) // other versions keep theirs
			time.Sleep(40 * time.Millisecond)
			mustMiss(t, b, k) // within GenerationRefresh on the others
			b.Set(ctx, k, val(3), 0)
			mustHit(t, a, k, 3) // and they share the new generation
			if st := a.Stats(); st.GenerationBumps != 1 {
				t.Errorf("GenerationBumps = %d", st.GenerationBumps)
			}
			// Losing the generation key (eviction, Redis restart) must
			// never resurrect old entries: a fresh random token is drawn.
			if _, err := s.Delete(ctx, "sf:gen:m:v1"); err != nil {
				t.Fatal(err)
			}
			time.Sleep(40 * time.Millisecond)
			mustMiss(t, a, k)
			if _, err := a.BumpGeneration(ctx, "m", "bad:version"); err == nil {
				t.Error("BumpGeneration accepted an invalid version")
			}
		})
	}
}

func TestInvalidation(t *testing.T) {
	for name, newStore := range stores(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			c := newCache(t, newStore(t), cache.Config{ScanCount: 7})
			type entry struct {
				model, version, ticker string
				horizon                int
			}
			entries := []entry{
				{"lstm", "v1", "AAPL", 5}, {"lstm", "v1", "MSFT", 5}, {"lstm", "v2", "AAPL", 5},
				{"lstm2", "v1", "AAPL", 5}, {"mlp", "v1", "5", 1}, {"mlp", "v1", "GOOG", 5},
				{"mlp", "v1", "", 5},
			}
			populate := func() map[entry]cache.Key {
				keys := map[entry]cache.Key{}
				for i, e := range entries {
					for j := range 10 { // several feature sets per combination
						k := key(t, c, e.model, e.version, e.ticker, e.horizon, float64(j))
						if err := c.Set(ctx, k, val(float32(i)), 0); err != nil {
							t.Fatal(err)
						}
						if j == 0 {
							keys[e] = k
						}
					}
				}
				return keys
			}
			check := func(op string, keys map[entry]cache.Key, gone func(entry) bool) {
				t.Helper()
				for e, k := range keys {
					_, ok := c.Get(ctx, k)
					if ok == gone(e) {
						t.Errorf("after %s: %+v cached = %v", op, e, ok)
					}
				}
			}
			keys := populate()
			n, err := c.InvalidateModel(ctx, "lstm")
			if err != nil || n != 30 {
				t.Fatalf("InvalidateModel(lstm) = %d, %v; want 30 (not lstm2's)", n, err)
			}
			check("InvalidateModel", keys, func(e entry) bool { return e.model == "lstm" })

			keys = populate()
			n, err = c.InvalidateTicker(ctx, "5")
			if err != nil || n != 10 {
				t.Fatalf("InvalidateTicker(5) = %d, %v; want 10 (not horizon 5)", n, err)
			}
			check("InvalidateTicker", keys, func(e entry) bool { return e.ticker == "5" })

			keys = populate()
			n, err = c.InvalidateVersion(ctx, "lstm", "v1")
			if err != nil || n != 20 {
				t.Fatalf("InvalidateVersion(lstm, v1) = %d, %v; want 20", n, err)
			}
			check("InvalidateVersion", keys, func(e entry) bool { return e.model == "lstm" && e.version == "v1" })

			keys = populate()
			n, err = c.InvalidatePattern(ctx, "sf:pred:mlp:*:GOOG:*")
			if err != nil || n != 10 {
				t.Fatalf("InvalidatePattern = %d, %v; want 10", n, err)
			}
			check("InvalidatePattern", keys, func(e entry) bool { return e.ticker == "GOOG" })
			for _, bad := range []string{"*", "sf:*", "sf:gen:*", "other:pred:*"} {
				if _, err := c.InvalidatePattern(ctx, bad); !errors.Is(err, cache.ErrBadPattern) {
					t.Errorf("InvalidatePattern(%q) = %v, want ErrBadPattern", bad, err)
				}
			}
			if _, err := c.InvalidateTicker(ctx, "A*"); err == nil {
				t.Error("InvalidateTicker accepted a glob")
			}
			if st := c.Stats(); st.Invalidations != 4 || st.InvalidatedKeys != 70 {
				t.Errorf("Stats: %d invalidations, %d keys; want 4, 70", st.Invalidations, st.InvalidatedKeys)
			}
		})
	}
}

func TestSingleflightCollapse(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mem, _ := cache.NewMemory(cache.MemoryConfig{})
		defer mem.Close()
		c := newCache(t, mem, cache.Config{})
		k := key(t, c, "m", "v1", "AAPL", 5, 65)
		release := make(chan struct{})
		var computes atomic.Int32
		compute := func(ctx context.Context) (cache.Value, error) {
			computes.Add(1)
			<-release
			return val(42), nil
		}
		const n = 50
		var wg sync.WaitGroup
		results := make([]cache.Value, n)
		errs := make([]error, n)
		for i := range n {
			wg.Go(func() {
				results[i], _, errs[i] = c.GetOrCompute(context.Background(), k, compute)
			})
		}
		synctest.Wait() // all 50 have missed and wait on the one computation
		close(release)
		wg.Wait()
		if got := computes.Load(); got != 1 {
			t.Fatalf("%d concurrent misses ran compute %d times, want once", n, got)
		}
		for i := range n {
			if errs[i] != nil || results[i].Predictions[0][0] != 42 {
				t.Fatalf("caller %d got %v, %v", i, results[i].Predictions, errs[i])
			}
		}
		st := c.Stats()
		if st.Computes != 1 || st.Collapsed != n-1 || st.Writes != 1 {
			t.Errorf("Stats: computes %d, collapsed %d, writes %d; want 1, %d, 1", st.Computes, st.Collapsed, st.Writes, n-1)
		}
		// The result was cached: the next call hits without computing.
		v, cached, err := c.GetOrCompute(context.Background(), k, compute)
		if err != nil || !cached || v.Predictions[0][0] != 42 || computes.Load() != 1 {
			t.Fatalf("after the flight: %v, cached=%v, %v, computes=%d", v.Predictions, cached, err, computes.Load())
		}
	})
}

func TestGetOrComputeErrorsAndCancellation(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mem, _ := cache.NewMemory(cache.MemoryConfig{})
		defer mem.Close()
		c := newCache(t, mem, cache.Config{})
		ctx := context.Background()

		// compute's error reaches the caller and nothing is cached.
		boom := errors.New("model failed")
		k := key(t, c, "m", "v1", "AAPL", 5, 1)
		if _, _, err := c.GetOrCompute(ctx, k, func(context.Context) (cache.Value, error) { return cache.Value{}, boom }); !errors.Is(err, boom) {
			t.Fatalf("err = %v, want compute's", err)
		}
		mustMiss(t, c, k)

		// A panic becomes a *PanicError instead of killing the process.
		_, _, err := c.GetOrCompute(ctx, k, func(context.Context) (cache.Value, error) { panic("bad model") })
		var pe *cache.PanicError
		if !errors.As(err, &pe) || pe.Value != "bad model" {
			t.Fatalf("err = %v, want *PanicError", err)
		}

		// A caller whose context ends stops waiting; the computation goes on
		// for the others and is cached.
		k2 := key(t, c, "m", "v1", "AAPL", 5, 2)
		release := make(chan struct{})
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			_, _, err := c.GetOrCompute(cctx, k2, func(ctx context.Context) (cache.Value, error) {
				<-release
				return val(7), ctx.Err()
			})
			done <- err
		}()
		synctest.Wait()
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled caller got %v", err)
		}
		close(release)
		synctest.Wait()
		mustHit(t, c, k2, 7)
	})
}

func TestMemoryEvictionsCounted(t *testing.T) {
	mem, _ := cache.NewMemory(cache.MemoryConfig{MaxEntries: 100})
	defer mem.Close()
	c := newCache(t, mem, cache.Config{})
	ctx := context.Background()
	for i := range 1000 {
		c.Set(ctx, key(t, c, "m", "v1", "", 0, float64(i)), val(1), 0)
	}
	deadline := time.Now().Add(5 * time.Second)
	for (c.Stats().Evictions < 800 || mem.Len() > 110) && time.Now().Before(deadline) {
		mem.Get(ctx, "poke") // reads drive otter's maintenance
		time.Sleep(10 * time.Millisecond)
	}
	if ev, n := c.Stats().Evictions, mem.Len(); ev < 800 || n > 110 {
		t.Fatalf("1000 writes into 100 entries: %d evictions counted, %d entries left", ev, n)
	}
}

func TestMemoryMaxBytes(t *testing.T) {
	mem, _ := cache.NewMemory(cache.MemoryConfig{MaxBytes: 64 << 10})
	defer mem.Close()
	ctx := context.Background()
	big := make([]byte, 1<<10)
	for i := range 500 {
		mem.Set(ctx, fmt.Sprintf("k%03d", i), big, 0)
	}
	deadline := time.Now().Add(5 * time.Second)
	for mem.Len() > 64 && time.Now().Before(deadline) {
		mem.Get(ctx, "poke")
		time.Sleep(10 * time.Millisecond)
	}
	if n := mem.Len(); n > 64 || n == 0 {
		t.Fatalf("500 × 1 KiB into 64 KiB: %d entries kept", n)
	}
}

func TestStatsTypeCardinalityBounded(t *testing.T) {
	mem, _ := cache.NewMemory(cache.MemoryConfig{})
	defer mem.Close()
	c := newCache(t, mem, cache.Config{MaxTypes: 3})
	for i := range 10 {
		k, _ := c.Key(cache.KeyInput{Model: "m", Version: "v1", Type: fmt.Sprintf("t%d", i)})
		c.Get(context.Background(), k)
	}
	st := c.Stats().ByType
	if len(st) != 5 || st[cache.OtherType].Misses != 7 {
		t.Fatalf("ByType = %+v; want default, other and 3 types, 7 misses under other", st)
	}
}

// TestBumpDuringComputeDoesNotLeak: an answer computed before a
// BumpGeneration is not filed under the new generation.
func TestBumpDuringComputeDoesNotLeak(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mem, _ := cache.NewMemory(cache.MemoryConfig{})
		defer mem.Close()
		c := newCache(t, mem, cache.Config{})
		ctx := context.Background()
		k := key(t, c, "m", "v1", "AAPL", 5, 1)
		release := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			v, _, err := c.GetOrCompute(ctx, k, func(context.Context) (cache.Value, error) {
				<-release
				return val(1), nil // computed by the old weights
			})
			if err != nil || v.Predictions[0][0] != 1 {
				t.Errorf("GetOrCompute = %v, %v", v.Predictions, err)
			}
		}()
		synctest.Wait()
		if _, err := c.BumpGeneration(ctx, "m", "v1"); err != nil {
			t.Fatal(err)
		}
		close(release)
		<-done
		mustMiss(t, c, k)
		if st := c.Stats(); st.Writes != 1 {
			t.Fatalf("Writes = %d: the answer was not written at all", st.Writes)
		}
	})
}

// TestShortDeadlineDoesNotFailFollowers: one caller's tiny deadline must
// not fail the callers that share its computation.
func TestShortDeadlineDoesNotFailFollowers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mem, err := cache.NewMemory(cache.MemoryConfig{})
		if err != nil {
			t.Fatal(err)
		}
		defer mem.Close()
		c, err := cache.New(mem, cache.Config{})
		if err != nil {
			t.Fatal(err)
		}
		k, err := cache.MakeKey(cache.KeyInput{Model: "m", Version: "v1", Features: map[string]float64{"a": 1}})
		if err != nil {
			t.Fatal(err)
		}
		release := make(chan struct{})
		compute := func(ctx context.Context) (cache.Value, error) {
			select {
			case <-release:
				return cache.Value{Predictions: [][]float32{{1}}}, nil
			case <-ctx.Done():
				return cache.Value{}, ctx.Err()
			}
		}
		short, cancel := context.WithTimeout(context.Background(), time.Millisecond)
		defer cancel()
		firstErr := make(chan error, 1)
		go func() {
			_, _, err := c.GetOrCompute(short, k, compute)
			firstErr <- err
		}()
		time.Sleep(5 * time.Millisecond) // the first caller leads the flight and times out
		followerErr := make(chan error, 1)
		go func() {
			v, _, err := c.GetOrCompute(context.Background(), k, compute)
			if err == nil && v.Predictions[0][0] != 1 {
				err = errors.New("wrong value")
			}
			followerErr <- err
		}()
		time.Sleep(5 * time.Millisecond)
		close(release)
		if err := <-firstErr; !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("short caller: %v, want its own deadline", err)
		}
		if err := <-followerErr; err != nil {
			t.Fatalf("follower failed with the leader's deadline: %v", err)
		}
	})
}
