package pgstore_test

import (
	"context"
	"os"
	"testing"

	"github.com/signalforge/signalforge/internal/testpg"
	"github.com/signalforge/signalforge/registry"
	"github.com/signalforge/signalforge/registry/pgstore"
	"github.com/signalforge/signalforge/registry/registrytest"
)

func TestMain(m *testing.M) {
	if code, ok := childMain(); ok {
		os.Exit(code)
	}
	testpg.Main(m)
}

// open opens a Store on url with a cache folder of t's own.
func open(t testing.TB, url string) *pgstore.Store {
	t.Helper()
	return openCache(t, url, t.TempDir())
}

// openCache opens a Store on url with its artifact cache in dir.
func openCache(t testing.TB, url, dir string) *pgstore.Store {
	t.Helper()
	s, err := pgstore.Open(context.Background(), pgstore.Config{URL: url, CacheDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	registrytest.Run(t, func(t *testing.T) registrytest.Opener {
		url := testpg.NewDatabase(t)
		return func(t *testing.T) registry.Store { return open(t, url) }
	})
}
