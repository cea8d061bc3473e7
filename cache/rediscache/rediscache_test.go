package rediscache_test

import (
	"context"
	"testing"

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
