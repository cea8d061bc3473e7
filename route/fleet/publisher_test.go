package fleet_test

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/signalforge/signalforge/route"
	"github.com/signalforge/signalforge/route/fleet"
	"github.com/signalforge/signalforge/route/fleet/fleettest"
)

// TestPublisherLoop: three replicas publish every 2s into one in-process
// store; the collector sees the fleet sum, and a replica that stops ages
// out of the sum after StaleAfter (and out of the store after its TTL).
func TestPublisherLoop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := fleet.NewMemory()
		routers := make([]*route.Router, 3)
		pubs := make([]*fleet.Publisher, 3)
		for i := range routers {
			r, err := route.New(route.Config{})
			if err != nil {
				t.Fatal(err)
			}
			routers[i] = r
			pubs[i], err = fleet.NewPublisher(store, fleet.FromRouter(r), fleet.PublisherConfig{Replica: string(rune('a' + i))})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { pubs[i].Close() })
		}
		for i, r := range routers {
			for range 100 * (i + 1) {
				r.Record("m", "v1", time.Millisecond, nil)
			}
			r.Record("m", "v2", time.Millisecond, errors.New("boom"))
		}
		col, err := fleet.NewCollector(store, fleet.CollectorConfig{})
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second) // one interval: every publisher has published the records
		synctest.Wait()
		f, err := col.Collect(context.Background(), "m")
		if err != nil {
			t.Fatal(err)
		}
		if len(f.Replicas) != 3 || f.Versions["v1"].Requests != 600 || f.Versions["v2"].Errors != 3 {
			t.Fatalf("fleet: %d replicas, v1 %d requests, v2 %d errors; want 3, 600, 3",
				len(f.Replicas), f.Versions["v1"].Requests, f.Versions["v2"].Errors)
		}
		if st := pubs[0].Stats(); st.Publishes != 2 || st.Failures != 0 || st.Replica != "a" {
			t.Errorf("publisher a stats %+v, want 2 publishes (at start and after 2s), no failure", st)
		}

		pubs[2].Close() // replica c stops
		time.Sleep(5 * time.Second)
		synctest.Wait()
		f, _ = col.Collect(context.Background(), "m")
		if len(f.Replicas) != 3 {
			t.Fatalf("5s after c's last publish (StaleAfter 6s): %d replicas, want still 3", len(f.Replicas))
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		f, _ = col.Collect(context.Background(), "m")
		if len(f.Replicas) != 2 || f.Versions["v1"].Requests != 300 {
			t.Fatalf("7s after c's last publish: %d replicas, v1 %d requests; want 2 and 300 (a+b)",
				len(f.Replicas), f.Versions["v1"].Requests)
		}
		if snaps, _ := store.Snapshots(context.Background(), "m"); len(snaps) != 2 {
			t.Errorf("store still holds %d snapshots after c's TTL (6s), want 2", len(snaps))
		}
	})
}

func TestPublisherCloseIdempotent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, err := fleet.NewPublisher(fleet.NewMemory(), func() []route.VersionCounters { return nil }, fleet.PublisherConfig{})
		if err != nil {
			t.Fatal(err)
		}
		p.Close()
		p.Close()
		// synctest.Test fails if the publisher's goroutine outlived Close.
	})
}

func TestPublisherConfigRefused(t *testing.T) {
	src := func() []route.VersionCounters { return nil }
	for _, cfg := range []fleet.PublisherConfig{
		{Replica: "bad id"},
		{Interval: time.Second, TTL: time.Second},
		{Interval: -time.Second},
	} {
		if p, err := fleet.NewPublisher(fleet.NewMemory(), src, cfg); err == nil {
			p.Close()
			t.Errorf("NewPublisher(%+v) accepted", cfg)
		}
	}
}

func TestSumStaleAndLatest(t *testing.T) {
	now := time.Unix(1000, 0)
	c := fleettest.Counters(10, 1, time.Millisecond)
	snaps := []fleet.Snapshot{
		{Model: "m", Replica: "a", At: now.Add(-time.Second), Versions: map[string]route.Counters{"v1": c}},
		{Model: "m", Replica: "a", At: now.Add(-3 * time.Second), Versions: map[string]route.Counters{"v1": fleettest.Counters(1, 0, time.Millisecond)}},
		{Model: "m", Replica: "old", At: now.Add(-7 * time.Second), Versions: map[string]route.Counters{"v1": c}},
		{Model: "other", Replica: "b", At: now, Versions: map[string]route.Counters{"v1": c}},
	}
	f := fleet.Sum("m", snaps, now, 6*time.Second)
	if len(f.Replicas) != 1 || f.Replicas[0].Replica != "a" || f.Versions["v1"].Requests != 10 {
		t.Errorf("Sum: replicas %d, v1 %d requests; want only a's latest (10)", len(f.Replicas), f.Versions["v1"].Requests)
	}
	if len(f.Stale) != 1 || f.Stale[0] != "old" {
		t.Errorf("Stale = %v, want [old]", f.Stale)
	}
}

// TestTrackerNewReplica: a replica first seen after the baseline counts
// whole if it started after the previous read, and only sets its baseline
// if it was already running (it had aged out and came back).
func TestTrackerNewReplica(t *testing.T) {
	t0 := time.Unix(1000, 0)
	c := func(n int64) map[string]route.Counters {
		return map[string]route.Counters{"v1": fleettest.Counters(n, 0, time.Millisecond)}
	}
	var tr fleet.Tracker
	tr.Delta(fleet.Fleet{At: t0, Replicas: []fleet.Snapshot{{Replica: "a", Started: t0.Add(-time.Hour), Versions: c(100)}}})
	d := tr.Delta(fleet.Fleet{At: t0.Add(2 * time.Second), Replicas: []fleet.Snapshot{
		{Replica: "a", Started: t0.Add(-time.Hour), Versions: c(110)},
		{Replica: "new", Started: t0.Add(time.Second), Versions: c(7)},
		{Replica: "back", Started: t0.Add(-time.Hour), Versions: c(5000)},
	}})
	if got := d["v1"].Requests; got != 17 {
		t.Errorf("delta %d requests, want 10 (a) + 7 (new) + 0 (back, baseline only)", got)
	}
	if m := d["v1"].Metrics(); m.P99 != time.Millisecond {
		t.Errorf("delta p99 = %v, want 1ms", m.P99)
	}
}
