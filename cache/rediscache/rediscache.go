// Package rediscache is the Redis cache.Store, over go-redis v9's
// UniversalClient: one address is a single server, several (or Cluster)
// a Redis Cluster, MasterName a Sentinel-managed failover group.
//
//	store, err := rediscache.New(rediscache.Options{Addrs: []string{"localhost:6379"}})
//	c, err := cache.New(store, cache.Config{})
//
// Timeouts are short by default (dial 250ms, read/write 100ms) and there
// are no retries: the cache is fail-open, so a slow Redis must turn into a
// quick miss, not a slow request. Pattern deletion walks the key space
// with SCAN and deletes each batch with UNLINK (freed in Redis's
// background thread); it never uses KEYS, which blocks Redis for the
// whole key space.
package rediscache

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/signalforge/signalforge/cache"
)

// Options configure New. Only Addrs is required.
type Options struct {
	// Addrs are host:port seed addresses. One address is a single server;
	// several, or Cluster set, a Redis Cluster; with MasterName, the
	// addresses of Sentinels.
	Addrs []string
	// Cluster forces cluster mode with a single seed address.
	Cluster bool
	// MasterName selects Sentinel failover for that master.
	MasterName string
	// Username, Password authenticate (Redis 6 ACLs); SentinelPassword the
	// Sentinels.
	Username, Password, SentinelPassword string
	// DB selects the database (single and failover modes only).
	DB int
	// TLS enables TLS with this configuration.
	TLS *tls.Config
	// DialTimeout bounds connecting. If zero, 250ms.
	DialTimeout time.Duration
	// ReadTimeout and WriteTimeout bound each command's socket I/O. If
	// zero, 100ms. A pattern deletion's SCAN and UNLINK steps are bounded
	// by them too, each step on its own.
	ReadTimeout, WriteTimeout time.Duration
	// PoolSize is the number of connections per node. If zero, go-redis's
	// default (10 per CPU).
	PoolSize int
	// MaxRetries is how often a failed command is retried. If zero, never:
	// a retry doubles the latency of a miss the request then pays anyway.
	MaxRetries int
}

func (o *Options) universal() (*redis.UniversalOptions, error) {
	if len(o.Addrs) == 0 {
		return nil, errors.New("rediscache: no address")
	}
	if o.DialTimeout < 0 || o.ReadTimeout < 0 || o.WriteTimeout < 0 || o.PoolSize < 0 || o.MaxRetries < 0 {
		return nil, errors.New("rediscache: negative value in Options")
	}
	if o.MasterName == "" && (len(o.Addrs) > 1 || o.Cluster) && o.DB != 0 {
		return nil, errors.New("rediscache: Redis Cluster has no DB other than 0")
	}
	u := &redis.UniversalOptions{
		Addrs:                 o.Addrs,
		IsClusterMode:         o.Cluster,
		MasterName:            o.MasterName,
		Username:              o.Username,
		Password:              o.Password,
		SentinelPassword:      o.SentinelPassword,
		DB:                    o.DB,
		TLSConfig:             o.TLS,
		DialTimeout:           o.DialTimeout,
		ReadTimeout:           o.ReadTimeout,
		WriteTimeout:          o.WriteTimeout,
		ContextTimeoutEnabled: true, // the cache's per-call timeout must win
		PoolSize:              o.PoolSize,
		MaxRetries:            -1, // go-redis: -1 is none
		DialerRetries:         1,
		DisableIdentity:       true, // no CLIENT SETINFO round trip per connection
	}
	if o.MaxRetries > 0 {
		u.MaxRetries = o.MaxRetries
	}
	if u.DialTimeout == 0 {
		u.DialTimeout = 250 * time.Millisecond
	}
	if u.ReadTimeout == 0 {
		u.ReadTimeout = 100 * time.Millisecond
	}
	if u.WriteTimeout == 0 {
		u.WriteTimeout = 100 * time.Millisecond
	}
	return u, nil
}

// ParseURL turns a redis:// or rediss:// URL into Options, as for a
// `--redis` flag: redis://[user:password@]host:port[/db]; extra
// cluster seeds with ?addr=host2:port&addr=host3:port. It accepts
// go-redis's query options (dial_timeout, read_timeout, …) only through
// those mapped here: user, password, db, TLS and addresses.
func ParseURL(s string) (Options, error) {
	u, err := url.Parse(s)
	if err != nil {
		return Options{}, fmt.Errorf("rediscache: %w", err)
	}
	if len(u.Query()["addr"]) > 0 {
		co, err := redis.ParseClusterURL(s)
		if err != nil {
			return Options{}, fmt.Errorf("rediscache: %w", err)
		}
		return Options{Addrs: co.Addrs, Cluster: true, Username: co.Username, Password: co.Password, TLS: co.TLSConfig}, nil
	}
	o, err := redis.ParseURL(s)
	if err != nil {
		return Options{}, fmt.Errorf("rediscache: %w", err)
	}
	return Options{Addrs: []string{o.Addr}, Username: o.Username, Password: o.Password, DB: o.DB, TLS: o.TLSConfig}, nil
}

// Store is the Redis cache.Store.
type Store struct {
	rdb redis.UniversalClient
	own bool // Close closes rdb
}

var _ cache.Store = (*Store)(nil)

// New connects lazily (no command is sent until first use, so a replica
// starts even while Redis is down; the cache is fail-open).
func New(opts Options) (*Store, error) {
	u, err := opts.universal()
	if err != nil {
		return nil, err
	}
	return &Store{rdb: redis.NewUniversalClient(u), own: true}, nil
}

// NewFromClient wraps a client the caller configured and keeps owning:
// Close leaves it open. Give it ContextTimeoutEnabled, short timeouts and
// no retries, as New does.
func NewFromClient(rdb redis.UniversalClient) *Store {
	return &Store{rdb: rdb}
}

// Client returns the underlying client.
func (s *Store) Client() redis.UniversalClient { return s.rdb }

// Ping checks that Redis answers.
func (s *Store) Ping(ctx context.Context) error { return s.rdb.Ping(ctx).Err() }

// Get implements cache.Store.
func (s *Store) Get(ctx context.Context, key string) ([]byte, error) {
	b, err := s.rdb.Get(ctx, key).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, cache.ErrNotFound
	}
	return b, err
}

// Set implements cache.Store: SET key value PX ttl.
func (s *Store) Set(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	return s.rdb.Set(ctx, key, value, redisTTL(ttl)).Err()
}

// SetNX implements cache.Store: SET key value NX PX ttl.
func (s *Store) SetNX(ctx context.Context, key string, value []byte, ttl time.Duration) (bool, error) {
	return s.rdb.SetNX(ctx, key, value, redisTTL(ttl)).Result()
}

// redisTTL maps the Store contract (<= 0: no expiry) onto go-redis's (0: no
// expiry) and rounds a positive TTL below a millisecond up to one, since
// PX has millisecond resolution and 0 would mean "keep forever".
func redisTTL(ttl time.Duration) time.Duration {
	if ttl <= 0 {
		return 0
	}
	return max(ttl, time.Millisecond)
}

// Delete implements cache.Store with UNLINK. In a cluster the keys may
// live in different slots, which one multi-key command cannot span, so
// there it pipelines one UNLINK per key.
func (s *Store) Delete(ctx context.Context, keys ...string) (int64, error) {
	if len(keys) == 0 {
		return 0, nil
	}
	if _, ok := s.rdb.(*redis.ClusterClient); !ok {
		return s.rdb.Unlink(ctx, keys...).Result()
	}
	cmds := make([]*redis.IntCmd, len(keys))
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, k := range keys {
			cmds[i] = p.Unlink(ctx, k)
		}
		return nil
	})
	var n int64
	for _, c := range cmds {
		n += c.Val()
	}
	return n, err
}

// Scan implements cache.Store with SCAN MATCH COUNT, on every master of a
// cluster (concurrently; fn must be safe for that).
func (s *Store) Scan(ctx context.Context, match string, count int, fn func(keys []string) error) error {
	if count <= 0 {
		count = 1000
	}
	if cc, ok := s.rdb.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
			return scan(ctx, node, match, count, fn)
		})
	}
	return scan(ctx, s.rdb, match, count, fn)
}

func scan(ctx context.Context, c redis.Cmdable, match string, count int, fn func([]string) error) error {
	var cursor uint64
	for {
		keys, next, err := c.Scan(ctx, cursor, match, int64(count)).Result()
		if err != nil {
			return err
		}
		if len(keys) > 0 {
			if err := fn(keys); err != nil {
				return err
			}
		}
		if next == 0 {
			return nil
		}
		cursor = next
	}
}

// Close closes the client if New made it.
func (s *Store) Close() error {
	if !s.own {
		return nil
	}
	return s.rdb.Close()
}
