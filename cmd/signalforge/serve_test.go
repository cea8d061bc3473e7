package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/signalforge/signalforge/cache/rediscache"
	"github.com/signalforge/signalforge/internal/testredis"
	"github.com/signalforge/signalforge/registry"
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
// configured, else to this process; a snapshot published through the
// chosen store is read back from it.
func TestServeFleetStore(t *testing.T) {
	ctx := t.Context()
	snap := fleet.Snapshot{Model: "m", Replica: "r1", Started: time.Now(), At: time.Now(), Versions: map[string]route.Counters{}}

	mem, where, closeFn, err := openFleet(nil, registry.NewMemStore(), "")
	if err != nil {
		t.Fatal(err)
	}
	defer closeFn()
	if _, ok := mem.(*fleet.Memory); !ok || !strings.Contains(where, "memory") {
		t.Fatalf("without Redis: %T (%s), want the in-process store", mem, where)
	}

	srv := testredis.Start(t)
	rs, err := rediscache.New(rediscache.Options{Addrs: []string{srv.Addr}})
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	st, where, closeFn, err := openFleet(rs, registry.NewMemStore(), "")
	if err != nil {
		t.Fatal(err)
	}
	defer closeFn()
	if _, ok := st.(*fleet.Redis); !ok || where != "redis" {
		t.Fatalf("with Redis: %T (%s)", st, where)
	}
	if err := st.Publish(ctx, time.Minute, snap); err != nil {
		t.Fatal(err)
	}
	other := fleet.NewRedis(rs.Client(), "signalforge") // another replica's view of the same Redis
	if got, err := other.Snapshots(ctx, "m"); err != nil || len(got) != 1 || got[0].Replica != "r1" {
		t.Fatalf("snapshots read back: %+v, %v", got, err)
	}
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
