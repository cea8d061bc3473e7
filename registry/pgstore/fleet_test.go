package pgstore_test

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/signalforge/signalforge/internal/testpg"
	"github.com/signalforge/signalforge/route"
	"github.com/signalforge/signalforge/route/fleet"
	"github.com/signalforge/signalforge/route/fleet/fleettest"
)

func TestFleetConformance(t *testing.T) {
	fleettest.Run(t, func(t *testing.T) fleet.Store { return open(t, testpg.NewDatabase(t)).Fleet() })
}

// countRows counts the rows of fleet_snapshots at url whose condition
// holds.
func countRows(t *testing.T, url, where string) int {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM fleet_snapshots WHERE "+where).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestFleetExpiredRowsDeleted: a publish deletes the rows that expired,
// and only those.
func TestFleetExpiredRowsDeleted(t *testing.T) {
	ctx := context.Background()
	url := testpg.NewDatabase(t)
	st := open(t, url).Fleet()
	now := time.Now()
	snap := func(model, replica string) fleet.Snapshot {
		return fleet.Snapshot{Model: model, Replica: replica, Started: now, At: now,
			Versions: map[string]route.Counters{"v1": fleettest.Counters(5, 0, time.Millisecond)}}
	}
	if err := st.Publish(ctx, time.Hour, snap("m", "stays")); err != nil {
		t.Fatal(err)
	}
	if err := st.Publish(ctx, time.Millisecond, snap("m", "gone1"), snap("other", "gone2")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	if err := st.Publish(ctx, time.Hour, snap("m", "new")); err != nil {
		t.Fatal(err)
	}
	if n, live := countRows(t, url, "true"), countRows(t, url, "replica IN ('stays', 'new')"); n != 2 || live != 2 {
		t.Fatalf("after a publish: %d rows, %d of them stays and new; want just those two", n, live)
	}
}

// TestFleetBadRowsSkipped: rows another program wrote that do not decode,
// or hold another replica's snapshot, are skipped and counted; the rest
// of the fleet is read.
func TestFleetBadRowsSkipped(t *testing.T) {
	ctx := context.Background()
	url := testpg.NewDatabase(t)
	st := open(t, url).Fleet()
	now := time.Now()
	if err := st.Publish(ctx, time.Hour, fleet.Snapshot{Model: "m", Replica: "a", Started: now, At: now,
		Versions: map[string]route.Counters{"v1": fleettest.Counters(5, 0, time.Millisecond)}}); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`INSERT INTO fleet_snapshots VALUES ('m', 'neg', now(), now() + interval '1 hour', '{"model":"m","replica":"neg","versions":{"v1":{"requests":-1}}}')`,
		`INSERT INTO fleet_snapshots VALUES ('m', 'odd', now(), now() + interval '1 hour', '[1, 2]')`,
		`INSERT INTO fleet_snapshots SELECT 'm', 'impostor', at, expires, body FROM fleet_snapshots WHERE replica = 'a'`,
	} {
		sql(t, url, q)
	}
	got, err := st.Snapshots(ctx, "m")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Replica != "a" || got[0].Versions["v1"].Requests != 5 {
		t.Fatalf("Snapshots = %+v, want replica a's only", got)
	}
	if n := st.(interface{ Invalid() int64 }).Invalid(); n != 3 {
		t.Errorf("Invalid() = %d, want 3", n)
	}
}

// TestFleetOverlappingPublishers: publishers whose snapshots overlap, in
// different orders and with TTLs so short that every publish also deletes
// expired rows, never deadlock or fail.
func TestFleetOverlappingPublishers(t *testing.T) {
	ctx := context.Background()
	url := testpg.NewDatabase(t)
	a, b := open(t, url).Fleet(), open(t, url).Fleet() // two pools, as two machines
	replicas := []string{"r0", "r1", "r2", "r3", "r4", "r5"}
	errs := make(chan error, 8)
	var wg sync.WaitGroup
	for g := range 8 {
		st := a
		if g%2 == 1 {
			st = b
		}
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for i := range 40 {
				snaps := make([]fleet.Snapshot, len(replicas))
				for j, k := range rng.Perm(len(replicas)) {
					now := time.Now()
					snaps[j] = fleet.Snapshot{Model: "m", Replica: replicas[k], Started: now, At: now,
						Versions: map[string]route.Counters{"v1": fleettest.Counters(int64(i+1), 0, time.Millisecond)}}
				}
				if err := st.Publish(ctx, time.Millisecond, snaps...); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
