package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/signalforge/signalforge/internal/testpg"
	"github.com/signalforge/signalforge/registry/pgstore"
)

// TestServeStoreOptionsReachPostgres: serve's registry_max_conns and
// registry_cache_dir (storeOptions) reach the PostgreSQL store: with a
// pool of 2, two artifact readers (each holds a connection while it
// streams) leave a third waiting until one closes, and artifacts are
// cached in the folder given.
func TestServeStoreOptionsReachPostgres(t *testing.T) {
	ctx := context.Background()
	var url string
	if os.Getenv(testpg.EnvURL) != "" {
		url = testpg.NewDatabase(t)
	} else {
		url = testpg.Start(t).NewDatabase(t)
	}
	cache := filepath.Join(t.TempDir(), "artifacts")
	st, err := openStoreWith(ctx, url, true, storeOptions{maxConns: 2, cacheDir: cache})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	s, ok := st.(*pgstore.Store)
	if !ok {
		t.Fatalf("a postgres:// registry opened as %T", st)
	}
	a, err := s.PutArtifact(ctx, []byte("artifact bytes"))
	if err != nil {
		t.Fatal(err)
	}
	var held []func() error
	defer func() { // before st.Close, which waits for every connection
		for _, c := range held {
			c()
		}
	}()
	for range 2 {
		r, _, err := s.OpenArtifact(ctx, a.SHA256)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, r.Close)
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if r, _, err := s.OpenArtifact(short, a.SHA256); err == nil {
		r.Close()
		t.Fatal("a third connection was handed out with registry_max_conns 2")
	} else if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("third reader: %v; want it to wait for a connection", err)
	}
	held[0]()
	held = held[1:]
	r, _, err := s.OpenArtifact(ctx, a.SHA256)
	if err != nil {
		t.Fatalf("after a reader closed: %v", err)
	}
	r.Close()

	p, err := s.ArtifactPath(ctx, a.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(p, cache+string(filepath.Separator)) {
		t.Fatalf("artifact cached at %s; want it in registry_cache_dir %s", p, cache)
	}
}
