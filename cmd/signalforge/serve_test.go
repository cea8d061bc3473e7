package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/signalforge/signalforge/cache/rediscache"
	"github.com/signalforge/signalforge/internal/testpg"
	"github.com/signalforge/signalforge/internal/testredis"
	"github.com/signalforge/signalforge/registry"
	"github.com/signalforge/signalforge/registry/pgstore"
	"github.com/signalforge/signalforge/route"
	"github.com/signalforge/signalforge/route/fleet"
)

// TestServeRefusesOpenAdminBeyondLoopback: opening the admin API without a
// token on an address other machines reach is a start-up error, from the
// flag and from the config file.
func TestServeRefusesOpenAdminBeyondLoopback(t *testing.T) {
	t.Setenv("SIGNALFORGE_ADMIN_TOKEN", "")
	cfg := filepath.Join(t.TempDir(), "serve.yaml")
	if err := os.WriteFile(cfg, []byte("addr: \"0.0.0.0:0\"\nadmin_open_loopback: true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"serve", "--addr", "0.0.0.0:0", "--admin-open-loopback", "--registry", t.TempDir()},
		{"serve", "--config", cfg, "--registry", t.TempDir()},
	} {
		code, _, errOut := mainRun(args...)
		if code == 0 || !strings.Contains(errOut, "loopback") || !strings.Contains(errOut, "0.0.0.0:0") {
			t.Errorf("%v: exit %d, stderr %q; want a refusal naming the address", args, code, errOut)
		}
	}
}

// TestServeFleetStore: the fleet's counters go to Redis when one is
// configured, else to the registry's PostgreSQL database or folder, else
// to this process; a snapshot published through the chosen store is read
// back through another handle on the same place (another replica's view).
func TestServeFleetStore(t *testing.T) {
	ctx := t.Context()
	snap := fleet.Snapshot{Model: "m", Replica: "r1", Started: time.Now(), At: time.Now(), Versions: map[string]route.Counters{}}
	roundTrip := func(t *testing.T, st, other fleet.Store) {
		t.Helper()
		if err := st.Publish(ctx, time.Minute, snap); err != nil {
			t.Fatal(err)
		}
		if got, err := other.Snapshots(ctx, "m"); err != nil || len(got) != 1 || got[0].Replica != "r1" {
			t.Fatalf("snapshots read back: %+v, %v", got, err)
		}
	}

	t.Run("memory", func(t *testing.T) {
		st, where, err := openFleet(nil, registry.NewMemStore())
		if _, ok := st.(*fleet.Memory); err != nil || !ok || !strings.Contains(where, "memory") {
			t.Fatalf("a memory registry without Redis: %T (%s), %v", st, where, err)
		}
	})
	t.Run("folder", func(t *testing.T) {
		dir := t.TempDir()
		fs, err := registry.OpenFileStore(dir)
		if err != nil {
			t.Fatal(err)
		}
		defer fs.Close()
		st, where, err := openFleet(nil, fs)
		d, ok := st.(*fleet.Dir)
		if err != nil || !ok || d.Path() != filepath.Join(dir, "fleet") || !strings.Contains(where, "folder") {
			t.Fatalf("a folder registry without Redis: %T (%s), %v", st, where, err)
		}
		other, err := fleet.NewDir(filepath.Join(dir, "fleet"))
		if err != nil {
			t.Fatal(err)
		}
		roundTrip(t, st, other)
	})
	t.Run("postgres", func(t *testing.T) {
		var url string
		if os.Getenv(testpg.EnvURL) != "" {
			url = testpg.NewDatabase(t)
		} else {
			url = testpg.Start(t).NewDatabase(t)
		}
		open := func() *pgstore.Store {
			st, err := openStoreWith(ctx, url, true, storeOptions{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			return st.(*pgstore.Store)
		}
		st, where, err := openFleet(nil, open())
		if err != nil || !strings.Contains(where, "PostgreSQL") {
			t.Fatalf("a PostgreSQL registry without Redis: %T (%s), %v", st, where, err)
		}
		roundTrip(t, st, open().Fleet())
	})
	t.Run("redis", func(t *testing.T) {
		srv := testredis.Start(t)
		rs, err := rediscache.New(rediscache.Options{Addrs: []string{srv.Addr}})
		if err != nil {
			t.Fatal(err)
		}
		defer rs.Close()
		st, where, err := openFleet(rs, registry.NewMemStore())
		if _, ok := st.(*fleet.Redis); err != nil || !ok || where != "redis" {
			t.Fatalf("with Redis: %T (%s), %v", st, where, err)
		}
		roundTrip(t, st, fleet.NewRedis(rs.Client(), "signalforge"))
	})
}

// TestServeFleetFlags: the fleet's durations must be positive.
func TestServeFleetFlags(t *testing.T) {
	for _, args := range [][]string{
		{"serve", "--lease-ttl", "0", "--registry", t.TempDir()},
		{"serve", "--fleet-interval", "-1s", "--registry", t.TempDir()},
	} {
		code, _, errOut := mainRun(args...)
		if code != 1 || !strings.Contains(errOut, "must be positive") {
			t.Errorf("%v: exit %d, stderr %q", args, code, errOut)
		}
	}
}
