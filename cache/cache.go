// Package cache is SignalForge Serve's prediction cache: version-aware
// keys derived from a request's features, a TTL per prediction type,
// pattern and generation invalidation, collapsing of concurrent misses,
// and fail-open behaviour with a circuit breaker, over a Store that is
// either Redis (package cache/rediscache) or memory (NewMemory).
//
// It is the seed's PredictionCache(redis, default_ttl=300):
//
//	store, _ := rediscache.New(rediscache.Options{Addrs: []string{"localhost:6379"}})
//	c, _ := cache.New(store, cache.Config{DefaultTTL: 300 * time.Second})
//	key, err := c.Key(cache.KeyInput{Model: "lstm_model", Version: "v2.0",
//		Ticker: "AAPL", Horizon: 5, Features: map[string]float64{"rsi_14": 65, "macd": 0.5}})
//	v, cached, err := c.GetOrCompute(ctx, key, func(ctx context.Context) (cache.Value, error) {
//		return predict(ctx) // runs once for any number of concurrent misses
//	})
//	fmt.Println(c.Stats().HitRatePct)
//
// Keys are stored as
//
//	{prefix}:pred:{model}:{version}:g{generation}:{ticker}:{horizon}:{hash}
//
// (ticker "_" when there is none), readable by operators and selectable by
// pattern. The generation is a random token per model version kept in the
// store itself under {prefix}:gen:{model}:{version}, so all replicas agree
// on it; BumpGeneration replaces it, which orphans every entry of that
// version in O(1) (they expire by TTL). If the generation key is ever lost
// (Redis eviction, restart without persistence) a new random token is
// drawn, which can only cause misses, never stale hits.
//
// The cache never fails a request: a store error, a timeout (Config.Timeout)
// or an open breaker is a miss (Get) or a dropped write (Set), counted in
// Stats.
package cache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"
)

// Config configures a Cache. The zero value is usable.
type Config struct {
	// DefaultTTL is the TTL of an entry whose type has no TypeTTL and whose
	// write gives none. If zero, 300s (the seed's default_ttl).
	DefaultTTL time.Duration
	// TypeTTL maps prediction types (KeyInput.Type) to their TTL, e.g.
	// {"intraday": time.Minute, "daily": time.Hour}. Values must be > 0.
	TypeTTL map[string]time.Duration
	// Timeout bounds each store call on the request path (Get, Set,
	// generation lookups). If zero, 50ms: a slow cache must cost less than
	// the inference it saves.
	Timeout time.Duration
	// ComputeTimeout bounds a GetOrCompute computation. The computation is
	// shared by every caller asking for the same key at once, so it runs
	// detached from the callers' own deadlines (each caller still stops
	// waiting at its own); it gets ComputeTimeout or the first caller's
	// deadline, whichever is later. If zero, 2s.
	ComputeTimeout time.Duration
	// Breaker configures the circuit breaker in front of the store.
	Breaker BreakerConfig
	// Prefix starts every key. If empty, "sf". It must match
	// [A-Za-z0-9][A-Za-z0-9._-]{0,127}.
	Prefix string
	// GenerationRefresh is how long a replica trusts its copy of a model
	// version's generation before reading it from the store again, i.e.
	// how long after another replica's BumpGeneration this one may still
	// serve the old generation. If zero, 1s.
	GenerationRefresh time.Duration
	// ScanCount is the batch size of pattern invalidation (SCAN COUNT and
	// keys per UNLINK). If zero, 1000.
	ScanCount int
	// MaxTypes bounds the distinct prediction types Stats tracks; further
	// types are counted under "other". If zero, 64.
	MaxTypes int
	// Logger receives breaker transitions. If nil, nothing is logged.
	Logger *slog.Logger
}

// OtherType is the Stats.ByType row of types beyond Config.MaxTypes.
const OtherType = "other"

func (cfg *Config) init() error {
	if cfg.DefaultTTL < 0 || cfg.Timeout < 0 || cfg.GenerationRefresh < 0 || cfg.ScanCount < 0 || cfg.MaxTypes < 0 ||
		cfg.Breaker.Failures < 0 || cfg.Breaker.Cooldown < 0 {
		return errors.New("cache: negative value in Config")
	}
	if cfg.DefaultTTL == 0 {
		cfg.DefaultTTL = 300 * time.Second
	}
	for t, ttl := range cfg.TypeTTL {
		if ttl <= 0 {
			return fmt.Errorf("cache: TypeTTL[%q] = %v, want > 0", t, ttl)
		}
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 50 * time.Millisecond
	}
	if cfg.ComputeTimeout == 0 {
		cfg.ComputeTimeout = 2 * time.Second
	}
	if cfg.ComputeTimeout < 0 {
		return fmt.Errorf("cache: negative ComputeTimeout %v", cfg.ComputeTimeout)
	}
	if cfg.Breaker.Failures == 0 {
		cfg.Breaker.Failures = 5
	}
	if cfg.Breaker.Cooldown == 0 {
		cfg.Breaker.Cooldown = 2 * time.Second
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "sf"
	}
	if !validName(cfg.Prefix) {
		return fmt.Errorf("cache: invalid Prefix %q", cfg.Prefix)
	}
	if cfg.GenerationRefresh == 0 {
		cfg.GenerationRefresh = time.Second
	}
	if cfg.ScanCount == 0 {
		cfg.ScanCount = 1000
	}
	if cfg.MaxTypes == 0 {
		cfg.MaxTypes = 64
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Cache is the prediction cache. It is safe for concurrent use.
type Cache struct {
	store Store
	local bool // store implements Local: no per-call timeout
	cfg   Config
	br    *breaker

	flights singleflight.Group // computations, by Key.String()
	genLoad singleflight.Group // generation lookups, by model version

	genMu sync.Mutex // guards gens
	gens  map[genID]genEntry

	typesMu sync.RWMutex // guards types
	types   map[string]*typeCounters

	hits, misses, writes, errs, rejected, corrupt atomic.Int64
	invalidations, invalidatedKeys, bumps         atomic.Int64
	computes, collapsed                           atomic.Int64
}

// genID names a model version in gens (a struct, so that looking one up
// on every request builds no string).
type genID struct{ model, version string }

type genEntry struct {
	gen string
	at  time.Time
}

type typeCounters struct {
	hits, misses, writes atomic.Int64
}

// ErrBreakerOpen is what a store call returns internally while the breaker
// refuses calls; the public API turns it into a miss.
var ErrBreakerOpen = errors.New("cache: circuit breaker open")

// ErrBadPattern is returned by InvalidatePattern for a pattern outside the
// cache's key space.
var ErrBadPattern = errors.New("cache: pattern outside the cache's key space (it must start with {prefix}:pred:)")

// New returns a Cache over store. The caller keeps ownership of store and
// closes it after the last use of the Cache.
func New(store Store, cfg Config) (*Cache, error) {
	if store == nil {
		return nil, errors.New("cache: nil store")
	}
	if err := cfg.init(); err != nil {
		return nil, err
	}
	c := &Cache{
		store: store,
		cfg:   cfg,
		br:    newBreaker(cfg.Breaker, time.Now),
		gens:  make(map[genID]genEntry),
		types: make(map[string]*typeCounters),
	}
	if l, ok := store.(Local); ok && l.Local() {
		c.local = true
	}
	c.types[DefaultType] = &typeCounters{}
	c.types[OtherType] = &typeCounters{}
	for t := range cfg.TypeTTL {
		c.types[t] = &typeCounters{}
	}
	return c, nil
}

// Key derives the key of in; see MakeKey.
func (c *Cache) Key(in KeyInput) (Key, error) { return MakeKey(in) }

// TTL returns the TTL a write of a prediction of type typ gets when it
// names none.
func (c *Cache) TTL(typ string) time.Duration {
	if ttl, ok := c.cfg.TypeTTL[typ]; ok {
		return ttl
	}
	return c.cfg.DefaultTTL
}

// do runs one request-path store call under the breaker and Timeout.
func (c *Cache) do(ctx context.Context, fn func(ctx context.Context) error) error {
	if !c.br.allow() {
		c.rejected.Add(1)
		return ErrBreakerOpen
	}
	var err error
	if c.local {
		err = fn(ctx)
	} else {
		tctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
		err = fn(tctx)
		cancel()
	}
	var changed string
	switch {
	case err == nil || errors.Is(err, ErrNotFound):
		changed = c.br.done(true)
	case ctx.Err() != nil:
		// The caller's own context ended; that says nothing about the store.
		c.br.release()
	default:
		c.errs.Add(1)
		changed = c.br.done(false)
	}
	switch changed {
	case BreakerOpen:
		c.cfg.Logger.Warn("cache: store failing, circuit breaker open", "err", err, "cooldown", c.cfg.Breaker.Cooldown)
	case BreakerClosed:
		c.cfg.Logger.Info("cache: store back, circuit breaker closed")
	}
	return err
}

func genStoreKey(prefix, model, version string) string {
	return prefix + ":gen:" + model + ":" + version
}

func newGeneration() string {
	return strconv.FormatUint(rand.Uint64(), 16)
}

// generation returns the current generation of a model version, from the
// local copy while it is fresh, else from the store (creating it there if
// it is missing).
func (c *Cache) generation(ctx context.Context, model, version string) (string, error) {
	c.genMu.Lock()
	e, ok := c.gens[genID{model, version}]
	c.genMu.Unlock()
	if ok && time.Since(e.at) < c.cfg.GenerationRefresh {
		return e.gen, nil
	}
	id := model + ":" + version
	// One lookup per model version at a time; it is detached from the
	// first caller's cancellation because others share its result.
	v, err, _ := c.genLoad.Do(id, func() (any, error) {
		dctx := context.WithoutCancel(ctx)
		gk := genStoreKey(c.cfg.Prefix, model, version)
		var gen string
		err := c.do(dctx, func(ctx context.Context) error {
			b, err := c.store.Get(ctx, gk)
			if err == nil && validGeneration(string(b)) {
				gen = string(b)
				return nil
			}
			if err != nil && !errors.Is(err, ErrNotFound) {
				return err
			}
			// Missing (first use, or lost): draw a token. A concurrent
			// replica may win the race; then read its token.
			fresh := newGeneration()
			if err == nil { // present but not ours to parse: replace it
				if err := c.store.Set(ctx, gk, []byte(fresh), 0); err != nil {
					return err
				}
				gen = fresh
				return nil
			}
			set, err := c.store.SetNX(ctx, gk, []byte(fresh), 0)
			if err != nil {
				return err
			}
			if set {
				gen = fresh
				return nil
			}
			b, err = c.store.Get(ctx, gk)
			if err != nil {
				return err
			}
			if !validGeneration(string(b)) {
				return fmt.Errorf("cache: corrupt generation at %s", gk)
			}
			gen = string(b)
			return nil
		})
		if err != nil {
			return "", err
		}
		c.genMu.Lock()
		c.gens[genID{model, version}] = genEntry{gen: gen, at: time.Now()}
		c.genMu.Unlock()
		return gen, nil
	})
	if err != nil {
		return "", err
	}
	return v.(string), nil
}

// storeKeyOf returns the stored key of k under its current generation.
func (c *Cache) storeKeyOf(ctx context.Context, k Key) (string, error) {
	if k.Hash == "" {
		return "", fmt.Errorf("%w: zero Key", ErrInvalidKey)
	}
	gen, err := c.generation(ctx, k.Model, k.Version)
	if err != nil {
		return "", err
	}
	return storeKey(c.cfg.Prefix, k, gen), nil
}

func (c *Cache) typeStats(typ string) *typeCounters {
	c.typesMu.RLock()
	tc, ok := c.types[typ]
	c.typesMu.RUnlock()
	if ok {
		return tc
	}
	c.typesMu.Lock()
	defer c.typesMu.Unlock()
	if tc, ok := c.types[typ]; ok {
		return tc
	}
	if len(c.types) >= c.cfg.MaxTypes+2 { // + default and other
		return c.types[OtherType]
	}
	tc = &typeCounters{}
	c.types[typ] = tc
	return tc
}

// Get returns the cached prediction for k. Any failure of the store is a
// miss: Get never makes a request fail.
func (c *Cache) Get(ctx context.Context, k Key) (Value, bool) {
	v, ok, _ := c.lookup(ctx, k)
	return v, ok
}

// lookup is Get that also returns the stored key it looked under ("" if
// the generation could not be read).
func (c *Cache) lookup(ctx context.Context, k Key) (Value, bool, string) {
	sk, err := c.storeKeyOf(ctx, k)
	var v Value
	ok := false
	if err == nil {
		v, ok = c.get(ctx, sk)
	}
	tc := c.typeStats(k.Type)
	if ok {
		c.hits.Add(1)
		tc.hits.Add(1)
	} else {
		c.misses.Add(1)
		tc.misses.Add(1)
	}
	return v, ok, sk
}

func (c *Cache) get(ctx context.Context, sk string) (Value, bool) {
	var b []byte
	err := c.do(ctx, func(ctx context.Context) error {
		var err error
		b, err = c.store.Get(ctx, sk)
		return err
	})
	if err != nil {
		return Value{}, false
	}
	v, err := DecodeValue(b)
	if err != nil {
		c.corrupt.Add(1)
		return Value{}, false
	}
	return v, true
}

// Set caches v under k for ttl; if ttl is zero, for the TTL of k's type
// (Config.TypeTTL) or else Config.DefaultTTL. A zero v.CreatedAt is set to
// now. The error is for information only (it is already counted in Stats);
// callers on the request path ignore it.
func (c *Cache) Set(ctx context.Context, k Key, v Value, ttl time.Duration) error {
	if ttl < 0 {
		return fmt.Errorf("cache: negative TTL %v", ttl)
	}
	sk, err := c.storeKeyOf(ctx, k)
	if err != nil {
		return err
	}
	return c.set(ctx, k, sk, v, ttl)
}

// set writes v under the stored key sk.
func (c *Cache) set(ctx context.Context, k Key, sk string, v Value, ttl time.Duration) error {
	if ttl == 0 {
		ttl = c.TTL(k.Type)
	}
	if v.CreatedAt.IsZero() {
		v.CreatedAt = time.Now()
	}
	b := EncodeValue(nil, v)
	if err := c.do(ctx, func(ctx context.Context) error { return c.store.Set(ctx, sk, b, ttl) }); err != nil {
		return err
	}
	c.writes.Add(1)
	c.typeStats(k.Type).writes.Add(1)
	return nil
}

// PanicError is returned by GetOrCompute when compute panicked. The panic
// is turned into an error because compute runs on a goroutine of its own,
// where a panic could not be recovered by the caller and would end the
// process.
type PanicError struct {
	Value any
	Stack []byte
}

func (e *PanicError) Error() string { return fmt.Sprintf("cache: compute panicked: %v", e.Value) }

// GetOrCompute returns the cached prediction for k, or computes, caches
// and returns it. cached reports a hit. Concurrent calls for the same key
// that miss run compute once; the others wait for its result (and share
// its error). err is only ever compute's error (or the caller's ctx
// error): the cache itself never fails the call.
//
// compute runs with the first caller's context values and deadline but
// not its cancellation, because other callers may be waiting for it; each
// caller stops waiting when its own ctx ends. The returned Value may be
// shared between callers and must not be modified.
func (c *Cache) GetOrCompute(ctx context.Context, k Key, compute func(ctx context.Context) (Value, error)) (v Value, cached bool, err error) {
	v, ok, sk := c.lookup(ctx, k)
	if ok {
		return v, true, nil
	}
	// The result is written under the generation the lookup saw: a
	// computation that started before a BumpGeneration must not file its
	// (possibly stale) answer under the new generation.
	flight := sk
	if flight == "" { // generation unknown (store down): still collapse
		flight = k.String()
	}
	ran := false // set only if this caller's function is the one that runs
	ch := c.flights.DoChan(flight, func() (res any, err error) {
		ran = true
		c.computes.Add(1)
		// The computation serves every caller that joins it, so it must
		// not inherit the first caller's deadline (one client's timeout_ms
		// of 1 would fail the others) nor its cancellation. It runs under
		// ComputeTimeout, or the first caller's deadline if that is later.
		cctx := context.WithoutCancel(ctx)
		dl := time.Now().Add(c.cfg.ComputeTimeout)
		if d, ok := ctx.Deadline(); ok && d.After(dl) {
			dl = d
		}
		cctx, cancel := context.WithDeadline(cctx, dl)
		defer cancel()
		defer func() {
			if r := recover(); r != nil {
				err = &PanicError{Value: r, Stack: debug.Stack()}
			}
		}()
		v, err := compute(cctx)
		if err != nil {
			return nil, err
		}
		if v.CreatedAt.IsZero() {
			v.CreatedAt = time.Now()
		}
		if sk != "" {
			_ = c.set(context.WithoutCancel(ctx), k, sk, v, 0) // fail-open: counted in Stats
		}
		return v, nil
	})
	select {
	case r := <-ch:
		if !ran { // the send on ch orders the write of ran before this read
			c.collapsed.Add(1)
		}
		if r.Err != nil {
			return Value{}, false, r.Err
		}
		return r.Val.(Value), false, nil
	case <-ctx.Done():
		return Value{}, false, ctx.Err()
	}
}

// BumpGeneration gives a model version a new generation, so that none of
// its cached entries is served again (by this replica at once, by others
// within Config.GenerationRefresh). It is O(1): old entries are not
// deleted but age out by TTL. Call it when a version is promoted or
// re-registered. It returns the new generation.
func (c *Cache) BumpGeneration(ctx context.Context, model, version string) (string, error) {
	if !validName(model) || !validName(version) {
		return "", fmt.Errorf("%w: model version %q:%q", ErrInvalidKey, model, version)
	}
	gen := newGeneration()
	tctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	if err := c.store.Set(tctx, genStoreKey(c.cfg.Prefix, model, version), []byte(gen), 0); err != nil {
		c.errs.Add(1)
		return "", fmt.Errorf("cache: bump generation of %s:%s: %w", model, version, err)
	}
	c.genMu.Lock()
	c.gens[genID{model, version}] = genEntry{gen: gen, at: time.Now()}
	c.genMu.Unlock()
	c.bumps.Add(1)
	return gen, nil
}

// InvalidateModel deletes every cached prediction of every version of
// model and returns how many keys it deleted.
func (c *Cache) InvalidateModel(ctx context.Context, model string) (int64, error) {
	if !validName(model) {
		return 0, fmt.Errorf("%w: model %q", ErrInvalidKey, model)
	}
	return c.invalidate(ctx, c.cfg.Prefix+":pred:"+model+":*", nil)
}

// InvalidateVersion makes every cached prediction of a model version
// unreachable at once (BumpGeneration), then deletes the entries of all its
// generations to free their memory, and returns how many keys it deleted.
func (c *Cache) InvalidateVersion(ctx context.Context, model, version string) (int64, error) {
	if _, err := c.BumpGeneration(ctx, model, version); err != nil {
		return 0, err
	}
	return c.invalidate(ctx, c.cfg.Prefix+":pred:"+model+":"+version+":*", nil)
}

// InvalidateTicker deletes every cached prediction for ticker, of any
// model, and returns how many keys it deleted.
func (c *Cache) InvalidateTicker(ctx context.Context, ticker string) (int64, error) {
	if !ValidTicker(ticker) {
		return 0, fmt.Errorf("%w: ticker %q", ErrInvalidKey, ticker)
	}
	// '*' also matches ':', so the glob only narrows the walk; the exact
	// segment comparison decides (ticker "5" must not match horizon 5).
	return c.invalidate(ctx, c.cfg.Prefix+":pred:*:"+ticker+":*", func(k storedKey) bool { return k.ticker == ticker })
}

// InvalidatePattern deletes every cached prediction whose stored key
// matches the Redis glob pattern, which must start with "{prefix}:pred:"
// (e.g. "sf:pred:lstm_model:*:*:AAPL:5:*"), and returns how many keys it
// deleted.
func (c *Cache) InvalidatePattern(ctx context.Context, pattern string) (int64, error) {
	p := c.cfg.Prefix + ":pred:"
	if len(pattern) < len(p) || pattern[:len(p)] != p {
		return 0, fmt.Errorf("%w: %q does not start with %q", ErrBadPattern, pattern, p)
	}
	return c.invalidate(ctx, pattern, nil)
}

// invalidate deletes the keys matching match (and keep, if not nil) in
// ScanCount batches: one SCAN step, then one UNLINK of what it found, so
// Redis is never blocked for long and serves other clients in between.
// Admin calls use the caller's ctx, not Config.Timeout; each store command
// is still bounded by the store's own timeouts.
func (c *Cache) invalidate(ctx context.Context, match string, keep func(storedKey) bool) (int64, error) {
	var total atomic.Int64
	err := c.store.Scan(ctx, match, c.cfg.ScanCount, func(keys []string) error {
		if keep != nil {
			kept := keys[:0]
			for _, k := range keys {
				if sk, ok := parseStoreKey(c.cfg.Prefix, k); ok && keep(sk) {
					kept = append(kept, k)
				}
			}
			keys = kept
		}
		if len(keys) == 0 {
			return nil
		}
		n, err := c.store.Delete(ctx, keys...)
		total.Add(n)
		return err
	})
	c.invalidations.Add(1)
	c.invalidatedKeys.Add(total.Load())
	if err != nil {
		c.errs.Add(1)
		return total.Load(), fmt.Errorf("cache: invalidate %q: %w", match, err)
	}
	return total.Load(), nil
}

// Stats is a snapshot of a Cache's counters since New.
type Stats struct {
	// Hits and Misses count Get calls (including GetOrCompute's lookups).
	Hits, Misses int64
	// HitRatePct is 100 × Hits / (Hits + Misses), 0 before any lookup.
	HitRatePct float64
	// Writes counts successful Set calls.
	Writes int64
	// Errors counts failed store calls (timeouts included); each also
	// counted as a miss or a dropped write, never as a failed request.
	Errors int64
	// Rejected counts store calls the open breaker skipped.
	Rejected int64
	// Corrupt counts stored values that failed to decode (served as misses).
	Corrupt int64
	// Evictions counts entries the store evicted, if it reports them
	// (the memory store does; for Redis see INFO's evicted_keys).
	Evictions int64
	// Invalidations counts invalidation calls, InvalidatedKeys the keys
	// they deleted, GenerationBumps the BumpGeneration calls.
	Invalidations, InvalidatedKeys, GenerationBumps int64
	// Computes counts computations GetOrCompute ran; Collapsed the calls
	// that shared another call's computation instead of running their own.
	Computes, Collapsed int64
	// Breaker is BreakerClosed, BreakerOpen or BreakerHalfOpen;
	// BreakerOpens counts how often it opened.
	Breaker      string
	BreakerOpens int64
	// ByType has a row per prediction type.
	ByType map[string]TypeStats
}

// TypeStats are the counters of one prediction type.
type TypeStats struct {
	Hits, Misses, Writes int64
	HitRatePct           float64
}

func hitRate(h, m int64) float64 {
	if h+m == 0 {
		return 0
	}
	return 100 * float64(h) / float64(h+m)
}

// Stats returns a snapshot of the counters. It does no I/O.
func (c *Cache) Stats() Stats {
	s := Stats{
		Hits:            c.hits.Load(),
		Misses:          c.misses.Load(),
		Writes:          c.writes.Load(),
		Errors:          c.errs.Load(),
		Rejected:        c.rejected.Load(),
		Corrupt:         c.corrupt.Load(),
		Invalidations:   c.invalidations.Load(),
		InvalidatedKeys: c.invalidatedKeys.Load(),
		GenerationBumps: c.bumps.Load(),
		Computes:        c.computes.Load(),
		Collapsed:       c.collapsed.Load(),
		ByType:          make(map[string]TypeStats),
	}
	s.HitRatePct = hitRate(s.Hits, s.Misses)
	if ec, ok := c.store.(EvictionCounter); ok {
		s.Evictions = ec.Evictions()
	}
	s.Breaker, s.BreakerOpens = c.br.snapshot()
	c.typesMu.RLock()
	for t, tc := range c.types {
		h, m := tc.hits.Load(), tc.misses.Load()
		s.ByType[t] = TypeStats{Hits: h, Misses: m, Writes: tc.writes.Load(), HitRatePct: hitRate(h, m)}
	}
	c.typesMu.RUnlock()
	return s
}
