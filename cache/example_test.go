package cache_test

import (
	"context"
	"fmt"
	"time"

	"github.com/signalforge/signalforge/cache"
)

// Example follows the seed's PredictionCache journey: generate_cache_key,
// get_cached_prediction, cache_prediction with a TTL per prediction type,
// invalidation by pattern, and hit_rate_pct. With Redis, only the store
// changes: rediscache.New(rediscache.Options{Addrs: []string{"localhost:6379"}}).
func Example() {
	store, _ := cache.NewMemory(cache.MemoryConfig{MaxEntries: 100_000})
	defer store.Close()
	pc, _ := cache.New(store, cache.Config{
		DefaultTTL: 300 * time.Second, // PredictionCache(redis, default_ttl=300)
		TypeTTL:    map[string]time.Duration{"intraday": time.Minute},
	})
	ctx := context.Background()

	// generate_cache_key(ticker, horizon, features, model_id)
	key, err := pc.Key(cache.KeyInput{
		Model: "lstm_model", Version: "v2.0", Ticker: "AAPL", Horizon: 5, Type: "intraday",
		Features: map[string]float64{"rsi_14": 65.0, "macd": 0.5},
	})
	if err != nil {
		fmt.Println(err)
		return
	}

	// get_cached_prediction(key)
	if _, ok := pc.Get(ctx, key); !ok {
		fmt.Println("miss: run the model")
	}
	// cache_prediction(key, value, ttl): ttl 0 takes the type's TTL (1m).
	pc.Set(ctx, key, cache.Value{Predictions: [][]float32{{0.42}}}, 0)

	// The same features in another order and notation hit the same entry.
	again, _ := pc.Key(cache.KeyInput{
		Model: "lstm_model", Version: "v2.0", Ticker: "AAPL", Horizon: 5, Type: "intraday",
		Features: map[string]float64{"macd": 5e-1, "rsi_14": 65},
	})
	if v, ok := pc.Get(ctx, again); ok {
		fmt.Println("hit:", v.Predictions)
	}

	// Concurrent misses of one key run the model once.
	v, cached, _ := pc.GetOrCompute(ctx, again, func(ctx context.Context) (cache.Value, error) {
		return cache.Value{}, fmt.Errorf("not called: the entry is cached")
	})
	fmt.Println("GetOrCompute:", v.Predictions, "cached:", cached)

	// Pattern invalidation: every AAPL prediction of any model.
	n, _ := pc.InvalidateTicker(ctx, "AAPL")
	fmt.Println("invalidated:", n)

	st := pc.Stats()
	fmt.Printf("hits=%d misses=%d hit_rate_pct=%.1f intraday hits=%d\n", st.Hits, st.Misses, st.HitRatePct, st.ByType["intraday"].Hits)
	// Output:
	// miss: run the model
	// hit: [[0.42]]
	// GetOrCompute: [[0.42]] cached: true
	// invalidated: 1
	// hits=2 misses=1 hit_rate_pct=66.7 intraday hits=2
}
