package cache

import (
	"context"
	"errors"
	"math"
	"sync/atomic"
	"time"

	"github.com/maypok86/otter/v2"
)

// MemoryConfig configures NewMemory. The zero value is a store of at most
// 100,000 entries.
type MemoryConfig struct {
	// MaxEntries bounds the number of entries. If zero and MaxBytes is
	// zero, 100,000.
	MaxEntries int
	// MaxBytes bounds the total size of keys and values (plus a fixed
	// per-entry overhead of 64 bytes) instead of the entry count. It
	// cannot be combined with MaxEntries.
	MaxBytes int64
}

// entryOverhead approximates otter's per-entry bookkeeping for MaxBytes.
const entryOverhead = 64

// Memory is the in-memory Store: the embedded default when no Redis is
// configured. It is a bounded otter cache (W-TinyLFU eviction) with a TTL
// per entry. Its entries are lost on restart and not shared between
// replicas.
type Memory struct {
	c         *otter.Cache[string, memEntry]
	evictions atomic.Int64
}

type memEntry struct {
	value []byte
	ttl   time.Duration // <= 0: never expires
}

var _ Store = (*Memory)(nil)
var _ EvictionCounter = (*Memory)(nil)
var _ Local = (*Memory)(nil)

// NewMemory returns an in-memory Store.
func NewMemory(cfg MemoryConfig) (*Memory, error) {
	if cfg.MaxEntries < 0 || cfg.MaxBytes < 0 {
		return nil, errors.New("cache: negative memory store bound")
	}
	if cfg.MaxEntries > 0 && cfg.MaxBytes > 0 {
		return nil, errors.New("cache: memory store takes MaxEntries or MaxBytes, not both")
	}
	m := &Memory{}
	opts := &otter.Options[string, memEntry]{
		ExpiryCalculator: otter.ExpiryWritingFunc(func(e otter.Entry[string, memEntry]) time.Duration {
			if e.Value.ttl <= 0 {
				return math.MaxInt64
			}
			return e.Value.ttl
		}),
		OnDeletion: func(e otter.DeletionEvent[string, memEntry]) {
			if e.WasEvicted() {
				m.evictions.Add(1)
			}
		},
	}
	switch {
	case cfg.MaxBytes > 0:
		opts.MaximumWeight = uint64(cfg.MaxBytes)
		opts.Weigher = func(k string, v memEntry) uint32 {
			w := uint64(len(k)) + uint64(len(v.value)) + entryOverhead
			return uint32(min(w, math.MaxUint32))
		}
	case cfg.MaxEntries > 0:
		opts.MaximumSize = cfg.MaxEntries
	default:
		opts.MaximumSize = 100_000
	}
	c, err := otter.New(opts)
	if err != nil {
		return nil, err
	}
	m.c = c
	return m, nil
}

// Get implements Store.
func (m *Memory) Get(ctx context.Context, key string) ([]byte, error) {
	e, ok := m.c.GetIfPresent(key)
	if !ok {
		return nil, ErrNotFound
	}
	return append([]byte(nil), e.value...), nil
}

// Set implements Store.
func (m *Memory) Set(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	m.c.Set(key, memEntry{value: append([]byte(nil), value...), ttl: ttl})
	return nil
}

// SetNX implements Store.
func (m *Memory) SetNX(ctx context.Context, key string, value []byte, ttl time.Duration) (bool, error) {
	_, ok := m.c.SetIfAbsent(key, memEntry{value: append([]byte(nil), value...), ttl: ttl})
	return ok, nil
}

// Delete implements Store.
func (m *Memory) Delete(ctx context.Context, keys ...string) (int64, error) {
	var n int64
	for _, k := range keys {
		if _, ok := m.c.Invalidate(k); ok {
			n++
		}
	}
	return n, nil
}

// Scan implements Store. It walks otter's concurrent hash table without
// stopping writers.
func (m *Memory) Scan(ctx context.Context, match string, count int, fn func(keys []string) error) error {
	if count <= 0 {
		count = 1000
	}
	batch := make([]string, 0, count)
	for k := range m.c.Keys() {
		if !Match(match, k) {
			continue
		}
		batch = append(batch, k)
		if len(batch) == count {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := fn(batch); err != nil {
				return err
			}
			batch = make([]string, 0, count)
		}
	}
	if len(batch) > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		return fn(batch)
	}
	return nil
}

// Evictions implements EvictionCounter: entries removed for size or
// expiry (not by Delete or overwrite).
func (m *Memory) Evictions() int64 { return m.evictions.Load() }

// Local implements the Local interface: the memory store never blocks.
func (m *Memory) Local() bool { return true }

// Len returns the approximate number of entries.
func (m *Memory) Len() int { return m.c.EstimatedSize() }

// Close stops the store's background goroutines. It is safe to call more
// than once.
func (m *Memory) Close() error {
	m.c.StopAllGoroutines()
	return nil
}
