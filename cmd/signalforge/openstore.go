package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"strings"

	"github.com/signalforge/signalforge/registry"
	"github.com/signalforge/signalforge/registry/pgstore"
)

// noRegistryError is openStoreURL's refusal of a folder that holds no
// registry when it may not create one.
type noRegistryError struct{ dir string }

func (e *noRegistryError) Error() string { return "no registry in " + e.dir }

// openStoreURL opens the registry store s names, the one place every
// command turns a --registry (or $SIGNALFORGE_REGISTRY, or --from/--to)
// into a store: a folder path is the file store; a postgres:// or
// postgresql:// URL is the PostgreSQL store (registry/pgstore: its schema
// is created or migrated on open; artifacts are cached on this machine in
// the user's cache folder, $XDG_CACHE_HOME/signalforge/artifacts or
// ~/.cache/signalforge/artifacts).
//
// With create false, a folder that holds no registry is refused with a
// *noRegistryError (so a read or a migration source never leaves an empty
// registry behind) and a folder whose state.json is missing while it holds
// history with an error wrapping registry.ErrStateMissing.
func openStoreURL(ctx context.Context, s string, create bool) (registry.Store, error) {
	return openStoreWith(ctx, s, create, storeOptions{})
}

// storeOptions tune a PostgreSQL store (serve's registry_max_conns and
// registry_cache_dir); the file store ignores them. The zero value means
// pgstore's defaults.
type storeOptions struct {
	maxConns int32
	cacheDir string
	// log receives the PostgreSQL store's warnings (a lost change
	// listener, retried transactions); nil discards them.
	log *slog.Logger
}

// openStoreWith is openStoreURL with options.
func openStoreWith(ctx context.Context, s string, create bool, opt storeOptions) (registry.Store, error) {
	if scheme, _, ok := strings.Cut(s, "://"); ok {
		switch strings.ToLower(scheme) {
		case "postgres", "postgresql":
			return pgstore.Open(ctx, pgstore.Config{URL: s, MaxConns: opt.maxConns, CacheDir: opt.cacheDir, Logger: opt.log})
		default:
			return nil, fmt.Errorf("registry %s: unknown scheme %q: give a folder path or a postgres:// URL", redactURL(s), scheme)
		}
	}
	if s == "" {
		return nil, fmt.Errorf("empty registry folder (pass --registry or set $%s)", modelsEnvRegistry)
	}
	if !create && !registry.FileStoreExists(s) {
		// A registry whose state.json is gone is not an empty one.
		if err := registry.CheckFileStoreState(s); err != nil {
			return nil, err
		}
		return nil, &noRegistryError{dir: s}
	}
	return registry.OpenFileStore(s)
}

// registryName is s as messages show it: a URL without its password.
func registryName(s string) string {
	if strings.Contains(s, "://") {
		return redactURL(s)
	}
	return s
}

// redactURL returns s with any password replaced, for messages.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		scheme, _, _ := strings.Cut(s, "://")
		return scheme + "://…"
	}
	return u.Redacted()
}

// openRegistry opens a Registry (configured by cfg) over the store s names
// (see openStoreURL). The returned func closes both.
func openRegistry(ctx context.Context, s string, create bool, cfg registry.Config) (*registry.Registry, func(), error) {
	return openRegistryWith(ctx, s, create, cfg, storeOptions{})
}

// openRegistryWith is openRegistry with store options.
func openRegistryWith(ctx context.Context, s string, create bool, cfg registry.Config, opt storeOptions) (*registry.Registry, func(), error) {
	if opt.log == nil {
		opt.log = cfg.Logger
	}
	store, err := openStoreWith(ctx, s, create, opt)
	if err != nil {
		return nil, nil, err
	}
	cfg.Store = store
	r, err := registry.Open(ctx, cfg)
	if err != nil {
		store.Close()
		return nil, nil, err
	}
	return r, func() { r.Close(); store.Close() }, nil
}
