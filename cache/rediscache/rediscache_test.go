package rediscache_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/signalforge/signalforge/cache"
	"github.com/signalforge/signalforge/cache/cachetest"
	"github.com/signalforge/signalforge/cache/rediscache"
	"github.com/signalforge/signalforge/internal/testredis"
)

func TestConformance(t *testing.T) {
	srv := testredis.Start(t)
	cachetest.Run(t, func(t *testing.T) cache.Store {
		s, err := rediscache.New(rediscache.Options{Addrs: []string{srv.Addr}})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Client().FlushAll(context.Background()).Err(); err != nil {
			t.Fatal(err)
		}
		return s
	})
}

// TestClusterConformance runs the suite against a real three-master
// Redis Cluster: SCAN on every master, UNLINK across slots.
func TestClusterConformance(t *testing.T) {
	cl := testredis.StartCluster(t, 3)
	cachetest.Run(t, func(t *testing.T) cache.Store {
		s, err := rediscache.New(rediscache.Options{Addrs: cl.Addrs, ReadTimeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		cc, ok := s.Client().(*redis.ClusterClient)
		if !ok {
			t.Fatalf("three addresses gave a %T, want a cluster client", s.Client())
		}
		err = cc.ForEachMaster(context.Background(), func(ctx context.Context, c *redis.Client) error {
			return c.FlushAll(ctx).Err()
		})
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

// TestClusterInvalidation: the cache's invalidation finds keys on every
// master and deletes keys of different slots.
func TestClusterInvalidation(t *testing.T) {
	cl := testredis.StartCluster(t, 3)
	s, err := rediscache.New(rediscache.Options{Addrs: cl.Addrs, ReadTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c, err := cache.New(s, cache.Config{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var keys []cache.Key
	for i := range 300 {
		k, err := c.Key(cache.KeyInput{Model: "m", Version: "v1", Ticker: fmt.Sprintf("T%d", i%3), Features: map[string]float64{"x": float64(i)}})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Set(ctx, k, cache.Value{Predictions: [][]float32{{1}}}, time.Minute); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	var mu sync.Mutex // ForEachMaster calls back concurrently
	perNode := map[string]int64{}
	cc := s.Client().(*redis.ClusterClient)
	cc.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error {
		size, _ := n.DBSize(ctx).Result()
		mu.Lock()
		perNode[n.Options().Addr] = size
		mu.Unlock()
		return nil
	})
	for addr, size := range perNode {
		if size < 50 {
			t.Fatalf("keys not spread over the masters: %v (%s)", perNode, addr)
		}
	}
	n, err := c.InvalidateTicker(ctx, "T1")
	if err != nil || n != 100 {
		t.Fatalf("InvalidateTicker = %d, %v; want 100", n, err)
	}
	for i, k := range keys {
		if _, ok := c.Get(ctx, k); ok == (i%3 == 1) {
			t.Fatalf("key %d (ticker %s) cached = %v after invalidating T1", i, k.Ticker, ok)
		}
	}
}

func TestModes(t *testing.T) {
	for _, tc := range []struct {
		opts rediscache.Options
		want string
	}{
		{rediscache.Options{Addrs: []string{"localhost:6379"}}, "*redis.Client"},
		{rediscache.Options{Addrs: []string{"a:1", "b:2"}}, "*redis.ClusterClient"},
		{rediscache.Options{Addrs: []string{"a:1"}, Cluster: true}, "*redis.ClusterClient"},
		{rediscache.Options{Addrs: []string{"s1:26379", "s2:26379"}, MasterName: "mymaster"}, "*redis.Client"},
	} {
		s, err := rediscache.New(tc.opts)
		if err != nil {
			t.Fatalf("New(%+v): %v", tc.opts, err)
		}
		if got := fmt.Sprintf("%T", s.Client()); got != tc.want {
			t.Errorf("New(%+v) made a %s, want %s", tc.opts, got, tc.want)
		}
		s.Close()
	}
	for _, bad := range []rediscache.Options{
		{},
		{Addrs: []string{"a:1"}, ReadTimeout: -1},
		{Addrs: []string{"a:1", "b:2"}, DB: 3},
	} {
		if _, err := rediscache.New(bad); err == nil {
			t.Errorf("New(%+v) succeeded", bad)
		}
	}
}

// TestShortTimeoutsByDefault: against an address that accepts connections
// but never answers, a command fails within the default timeouts.
func TestShortTimeoutsByDefault(t *testing.T) {
	srv := testredis.Start(t, "--enable-debug-command", "yes")
	s, err := rediscache.New(rediscache.Options{Addrs: []string{srv.Addr}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if err := s.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	admin := redis.NewClient(&redis.Options{Addr: srv.Addr, ReadTimeout: 5 * time.Second})
	defer admin.Close()
	done := make(chan error, 1)
	go func() { done <- admin.Do(ctx, "DEBUG", "SLEEP", "1").Err() }()
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	_, err = s.Get(ctx, "k")
	if err == nil {
		t.Fatal("Get against a stalled Redis succeeded")
	}
	if d := time.Since(start); d > 700*time.Millisecond {
		t.Fatalf("Get took %v against a stalled Redis with the default 100ms read timeout", d)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestParseURL(t *testing.T) {
	for _, tc := range []struct {
		url  string
		want rediscache.Options
	}{
		{"redis://localhost:6379", rediscache.Options{Addrs: []string{"localhost:6379"}}},
		{"redis://user:pw@host:6380/2", rediscache.Options{Addrs: []string{"host:6380"}, Username: "user", Password: "pw", DB: 2}},
		{"redis://h1:7000?addr=h2:7001&addr=h3:7002", rediscache.Options{Addrs: []string{"h1:7000", "h2:7001", "h3:7002"}, Cluster: true}},
	} {
		got, err := rediscache.ParseURL(tc.url)
		if err != nil {
			t.Fatalf("ParseURL(%q): %v", tc.url, err)
		}
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("ParseURL(%q) = %+v, want %+v", tc.url, got, tc.want)
		}
	}
	if o, err := rediscache.ParseURL("rediss://host:6380"); err != nil || o.TLS == nil {
		t.Errorf("rediss:// = %+v, %v; want TLS", o, err)
	}
	for _, bad := range []string{"http://x", "redis://host:6379/notadb", "::", "redis://h:1/0?addr=h2:2&db=3"} {
		if _, err := rediscache.ParseURL(bad); err == nil {
			t.Errorf("ParseURL(%q) succeeded", bad)
		}
	}
}

// FuzzParseURL: --redis comes from the command line and config files.
// ParseURL never panics, and what it accepts New accepts.
func FuzzParseURL(f *testing.F) {
	f.Add("redis://localhost:6379/0")
	f.Add("rediss://u:p@h:1?addr=h2:2")
	f.Add("redis://[::1]:6379")
	f.Fuzz(func(t *testing.T, s string) {
		o, err := rediscache.ParseURL(s)
		if err != nil {
			return
		}
		st, err := rediscache.New(o)
		if err != nil {
			t.Fatalf("ParseURL(%q) = %+v, which New refuses: %v", s, o, err)
		}
		st.Close()
	})
}

func ExampleNew() {
	store, err := rediscache.New(rediscache.Options{Addrs: []string{"localhost:6379"}})
	if err != nil {
		panic(err)
	}
	defer store.Close()
	pc, _ := cache.New(store, cache.Config{DefaultTTL: 300 * time.Second})
	_ = pc // use it as in the cache package's Example
}
