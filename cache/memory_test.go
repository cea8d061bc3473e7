package cache_test

import (
	"testing"

	"github.com/signalforge/signalforge/cache"
	"github.com/signalforge/signalforge/cache/cachetest"
)

func TestMemoryConformance(t *testing.T) {
	cachetest.Run(t, func(t *testing.T) cache.Store {
		s, err := cache.NewMemory(cache.MemoryConfig{})
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

func TestMemoryBytesConformance(t *testing.T) {
	cachetest.Run(t, func(t *testing.T) cache.Store {
		s, err := cache.NewMemory(cache.MemoryConfig{MaxBytes: 64 << 20})
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}
