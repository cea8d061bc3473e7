package cache

import (
	"context"
	"errors"
	"time"
)

// ErrNotFound is returned by Store.Get for a missing or expired key.
var ErrNotFound = errors.New("cache: key not found")

// Store is a byte-valued key-value store with per-entry TTL: the part of
// the cache that differs between Redis and memory. Every implementation
// must pass cachetest.Run. All methods are safe for concurrent use.
type Store interface {
	// Get returns the value of key, or ErrNotFound. The returned slice is
	// the caller's.
	Get(ctx context.Context, key string) ([]byte, error)
	// Set stores value under key for ttl; ttl <= 0 means no expiry. The
	// store keeps no reference to value.
	Set(ctx context.Context, key string, value []byte, ttl time.Duration) error
	// SetNX stores value under key only if key is absent, and reports
	// whether it did.
	SetNX(ctx context.Context, key string, value []byte, ttl time.Duration) (bool, error)
	// Delete removes keys and returns how many existed.
	Delete(ctx context.Context, keys ...string) (int64, error)
	// Scan calls fn with batches of about count keys matching the Redis
	// glob pattern match (*, ?, [abc], [^a], [a-z], \ escapes) until all
	// keys were visited, fn returns an error, or ctx ends. It must not hold
	// up other operations for the whole walk: Redis uses SCAN, never KEYS.
	// Keys may be deleted from within fn. Like SCAN, a key that exists for
	// the whole walk is visited at least once; keys added or removed
	// during it may or may not be. fn may be called from several
	// goroutines at once (one per Redis Cluster shard).
	Scan(ctx context.Context, match string, count int, fn func(keys []string) error) error
	// Close releases the store.
	Close() error
}

// EvictionCounter is implemented by stores that know how many entries
// they evicted (for size or expiry); Stats reports it.
type EvictionCounter interface {
	Evictions() int64
}

// Local is implemented by stores that answer from process memory and
// never block on I/O; the Cache then skips the per-call timeout (a timer
// per call would cost more than the lookup).
type Local interface {
	Local() bool
}

// Match reports whether s matches the Redis glob pattern, with Redis's
// semantics (stringmatchlen in util.c): '*' matches any run of bytes
// including ':', '?' any one byte, [abc] [^abc] [a-z] a class, '\' escapes
// the next byte. The memory store uses it so that both stores select the
// same keys for a pattern, which cachetest checks against a real Redis.
//
// The lone pattern "*" matches every key, the empty one included, as it
// does in SCAN (which skips matching for it); stringmatchlen alone would
// refuse "".
func Match(pattern, s string) bool {
	if pattern == "*" {
		return true
	}
	return globMatch(pattern, s, 0)
}

// globMatch is a port of Redis's stringmatchlen. nesting bounds the
// recursion on '*' the way Redis does, so a pattern of many stars cannot
// blow up exponentially.
func globMatch(p, s string, nesting int) bool {
	if nesting > 1000 {
		return false
	}
	for len(p) > 0 && len(s) > 0 {
		switch p[0] {
		case '*':
			for len(p) > 1 && p[1] == '*' {
				p = p[1:]
			}
			if len(p) == 1 {
				return true
			}
			for len(s) > 0 {
				if globMatch(p[1:], s, nesting+1) {
					return true
				}
				s = s[1:]
			}
			return false
		case '?':
			s = s[1:]
		case '[':
			p = p[1:]
			not := len(p) > 0 && p[0] == '^'
			if not {
				p = p[1:]
			}
			match := false
			for {
				if len(p) == 0 {
					// Redis: an unterminated class ends the pattern;
					// stay on the last byte so the loop below ends it.
					break
				}
				if p[0] == '\\' && len(p) >= 2 {
					p = p[1:]
					if p[0] == s[0] {
						match = true
					}
				} else if p[0] == ']' {
					break
				} else if len(p) >= 3 && p[1] == '-' {
					start, end := p[0], p[2]
					if start > end {
						start, end = end, start
					}
					p = p[2:]
					if s[0] >= start && s[0] <= end {
						match = true
					}
				} else if p[0] == s[0] {
					match = true
				}
				p = p[1:]
			}
			if not {
				match = !match
			}
			if !match {
				return false
			}
			s = s[1:]
			if len(p) == 0 {
				// Unterminated class: Redis steps back onto the last
				// pattern byte and then past it; nothing is left.
				return len(s) == 0
			}
		case '\\':
			if len(p) >= 2 {
				p = p[1:]
			}
			fallthrough
		default:
			if p[0] != s[0] {
				return false
			}
			s = s[1:]
		}
		p = p[1:]
		if len(s) == 0 {
			for len(p) > 0 && p[0] == '*' {
				p = p[1:]
			}
			break
		}
	}
	return len(p) == 0 && len(s) == 0
}
