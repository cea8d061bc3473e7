// Package fleettest is the conformance suite every fleet.Store passes:
//
//	fleettest.Run(t, func(t *testing.T) fleet.Store { return fleet.NewMemory() })
package fleettest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/signalforge/signalforge/route"
	"github.com/signalforge/signalforge/route/fleet"
)

// Counters returns counters of n requests of latency lat, errs of them
// errors.
func Counters(n, errs int64, lat time.Duration) route.Counters {
	c := route.Counters{Requests: n, Errors: errs, LatencySum: time.Duration(n) * lat,
		MinLatency: lat, MaxLatency: lat}
	if n > 0 {
		c.Hist = make([]uint64, route.HistBuckets)
		c.Hist[route.HistBucket(lat)] = uint64(n)
	}
	return c
}

func snap(model, replica string, started, at time.Time, versions map[string]route.Counters) fleet.Snapshot {
	return fleet.Snapshot{Model: model, Replica: replica, Started: started, At: at, Versions: versions}
}

// Run runs the suite against fresh stores from newStore.
func Run(t *testing.T, newStore func(t *testing.T) fleet.Store) {
	ctx := context.Background()
	const ttl = time.Minute

	t.Run("SumOfThreeReplicas", func(t *testing.T) {
		st := newStore(t)
		now := time.Now().Truncate(time.Millisecond)
		parts := []fleet.Snapshot{
			snap("m", "a", now, now, map[string]route.Counters{"v1": Counters(1000, 10, time.Millisecond), "v2": Counters(50, 3, 2*time.Millisecond)}),
			snap("m", "b", now, now, map[string]route.Counters{"v1": Counters(900, 9, 3*time.Millisecond), "v2": Counters(40, 2, time.Millisecond)}),
			snap("m", "c", now, now, map[string]route.Counters{"v1": Counters(800, 8, 5*time.Millisecond)}),
		}
		parts[1].Versions["v2"] = withNonFinite(parts[1].Versions["v2"], 1)
		for _, s := range parts {
			if err := st.Publish(ctx, ttl, s); err != nil {
				t.Fatalf("Publish(%s): %v", s.Replica, err)
			}
		}
		got, err := st.Snapshots(ctx, "m")
		if err != nil {
			t.Fatal(err)
		}
		f := fleet.Sum("m", got, now, time.Second)
		if len(f.Replicas) != 3 || len(f.Stale) != 0 {
			t.Fatalf("%d replicas, %v stale, want 3 fresh", len(f.Replicas), f.Stale)
		}
		for i, s := range f.Replicas {
			if !reflect.DeepEqual(s, parts[i]) {
				t.Errorf("replica %s read back differently:\n got  %+v\n want %+v", parts[i].Replica, s.Versions["v1"].Metrics(), parts[i].Versions["v1"].Metrics())
			}
		}
		v1, v2 := f.Versions["v1"], f.Versions["v2"]
		if v1.Requests != 2700 || v1.Errors != 27 || v2.Requests != 90 || v2.Errors != 5 || v2.NonFinite != 1 {
			t.Errorf("sums v1 %d/%d, v2 %d/%d/%d; want 2700/27, 90/5/1", v1.Requests, v1.Errors, v2.Requests, v2.Errors, v2.NonFinite)
		}
		if v1.LatencySum != (1000*1+900*3+800*5)*time.Millisecond || v1.MinLatency != time.Millisecond || v1.MaxLatency != 5*time.Millisecond {
			t.Errorf("v1 latency sum/min/max = %v/%v/%v", v1.LatencySum, v1.MinLatency, v1.MaxLatency)
		}
		for _, lat := range []time.Duration{time.Millisecond, 3 * time.Millisecond, 5 * time.Millisecond} {
			want := map[time.Duration]uint64{time.Millisecond: 1000, 3 * time.Millisecond: 900, 5 * time.Millisecond: 800}[lat]
			if got := v1.Hist[route.HistBucket(lat)]; got != want {
				t.Errorf("v1 bucket of %v holds %d, want %d", lat, got, want)
			}
		}
		if m := v1.Metrics(); route.HistBucket(m.P50) != route.HistBucket(3*time.Millisecond) {
			t.Errorf("fleet p50 = %v, want 3ms's bucket (the middle replica's)", m.P50)
		}
	})

	t.Run("LatestReplacesAndModelsAreSeparate", func(t *testing.T) {
		st := newStore(t)
		now := time.Now()
		must(t, st.Publish(ctx, ttl,
			snap("m", "a", now, now, map[string]route.Counters{"v1": Counters(1, 0, time.Millisecond)}),
			snap("other", "a", now, now, map[string]route.Counters{"v9": Counters(7, 0, time.Millisecond)})))
		must(t, st.Publish(ctx, ttl, snap("m", "a", now, now.Add(time.Second), map[string]route.Counters{"v1": Counters(5, 1, time.Millisecond)})))
		got, err := st.Snapshots(ctx, "m")
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || got[0].Versions["v1"].Requests != 5 {
			t.Fatalf("Snapshots(m) = %+v, want replica a's second snapshot only", got)
		}
		if got, _ := st.Snapshots(ctx, "none"); len(got) != 0 {
			t.Errorf("Snapshots(none) = %+v, want none", got)
		}
	})

	t.Run("InvalidRefused", func(t *testing.T) {
		st := newStore(t)
		now := time.Now()
		bad := []fleet.Snapshot{
			snap("bad model", "a", now, now, nil),
			snap("m", "", now, now, nil),
			snap("m", "a", now, now, map[string]route.Counters{"v1": {Requests: 1, Errors: 2}}),
			snap("m", "a", now, now, map[string]route.Counters{"v1": {Requests: 3, Hist: make([]uint64, route.HistBuckets)}}),
		}
		for _, s := range bad {
			if err := st.Publish(ctx, ttl, s); !errors.Is(err, fleet.ErrInvalid) {
				t.Errorf("Publish(%+v) = %v, want ErrInvalid", s, err)
			}
		}
		if err := st.Publish(ctx, 0, snap("m", "a", now, now, nil)); err == nil {
			t.Error("Publish with TTL 0 accepted")
		}
		if got, _ := st.Snapshots(ctx, "m"); len(got) != 0 {
			t.Errorf("refused snapshots stored: %+v", got)
		}
	})

	t.Run("StoppedReplicaAgesOut", func(t *testing.T) {
		st := newStore(t)
		now := time.Now()
		must(t, st.Publish(ctx, ttl, snap("m", "stays", now, now, map[string]route.Counters{"v1": Counters(10, 0, time.Millisecond)})))
		must(t, st.Publish(ctx, 50*time.Millisecond, snap("m", "goes", now, now, map[string]route.Counters{"v1": Counters(10, 0, time.Millisecond)})))
		time.Sleep(200 * time.Millisecond) // 4 TTLs: the store must have dropped it
		got, err := st.Snapshots(ctx, "m")
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || got[0].Replica != "stays" {
			t.Fatalf("after the TTL, Snapshots = %+v, want replica 'stays' only", got)
		}
	})

	t.Run("ReplacementRenewsTTL", func(t *testing.T) {
		st := newStore(t)
		const short = 500 * time.Millisecond
		start := time.Now()
		must(t, st.Publish(ctx, short, snap("m", "a", start, start, map[string]route.Counters{"v1": Counters(1, 0, time.Millisecond)})))
		time.Sleep(3 * short / 5)
		at := time.Now()
		must(t, st.Publish(ctx, short, snap("m", "a", start, at, map[string]route.Counters{"v1": Counters(2, 0, time.Millisecond)})))
		published := time.Now()
		time.Sleep(3 * short / 5) // past the first snapshot's TTL, within the second's
		got, err := st.Snapshots(ctx, "m")
		if err != nil {
			t.Fatal(err)
		}
		if time.Since(at) >= short {
			t.Skipf("the machine is too slow for this test: %v between the publish and the read", time.Since(at))
		}
		if len(got) != 1 || got[0].Versions["v1"].Requests != 2 {
			t.Fatalf("a TTL after the first publish, Snapshots = %+v; want the second snapshot, which renewed the TTL", got)
		}
		time.Sleep(time.Until(published.Add(short + 100*time.Millisecond)))
		if got, err := st.Snapshots(ctx, "m"); err != nil || len(got) != 0 {
			t.Fatalf("after the second snapshot's TTL, Snapshots = %+v, %v; want none", got, err)
		}
	})

	t.Run("LastOfOnePublishWins", func(t *testing.T) {
		st := newStore(t)
		now := time.Now()
		must(t, st.Publish(ctx, ttl,
			snap("m", "a", now, now, map[string]route.Counters{"v1": Counters(1, 0, time.Millisecond)}),
			snap("m", "b", now, now, map[string]route.Counters{"v1": Counters(10, 0, time.Millisecond)}),
			snap("m", "a", now, now.Add(time.Millisecond), map[string]route.Counters{"v1": Counters(2, 0, time.Millisecond)})))
		got, err := st.Snapshots(ctx, "m")
		if err != nil {
			t.Fatal(err)
		}
		f := fleet.Sum("m", got, now, time.Hour)
		if len(f.Replicas) != 2 || f.Replicas[0].Versions["v1"].Requests != 2 || f.Versions["v1"].Requests != 12 {
			t.Fatalf("Snapshots = %+v; want a's second snapshot (2 requests) and b's (10)", got)
		}
	})

	t.Run("CancelledContext", func(t *testing.T) {
		st := newStore(t)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		now := time.Now()
		if err := st.Publish(cctx, ttl, snap("m", "a", now, now, map[string]route.Counters{"v1": Counters(1, 0, time.Millisecond)})); err == nil {
			t.Error("Publish with a cancelled context succeeded")
		}
		if _, err := st.Snapshots(cctx, "m"); err == nil {
			t.Error("Snapshots with a cancelled context succeeded")
		}
		if got, err := st.Snapshots(ctx, "m"); err != nil || len(got) != 0 {
			t.Errorf("Snapshots = %+v, %v after a cancelled Publish; want none", got, err)
		}
	})

	t.Run("ConcurrentPublishersAndReaders", func(t *testing.T) {
		// Replicas publish their growing counters while readers sum: a
		// reader never sees a replica's counters go down or a replica it
		// saw vanish, and in the end every last publish is there.
		st := newStore(t)
		const replicas, publishes, readers = 6, 40, 2
		start := time.Now()
		done := make(chan struct{})
		errs := make(chan error, replicas+readers)
		var pubs, reads sync.WaitGroup
		for r := range replicas {
			pubs.Go(func() {
				id := fmt.Sprintf("r%d", r)
				for i := int64(1); i <= publishes; i++ {
					s := snap("m", id, start, time.Now(), map[string]route.Counters{"v1": Counters(i, i/4, time.Millisecond)})
					if err := st.Publish(ctx, ttl, s); err != nil {
						errs <- fmt.Errorf("replica %s, publish %d: %w", id, i, err)
						return
					}
				}
			})
		}
		for range readers {
			reads.Go(func() {
				seen := map[string]int64{}
				for {
					select {
					case <-done:
						return
					default:
					}
					got, err := st.Snapshots(ctx, "m")
					if err != nil {
						errs <- err
						return
					}
					f := fleet.Sum("m", got, time.Now(), time.Hour)
					now := map[string]int64{}
					for _, s := range f.Replicas {
						now[s.Replica] = s.Versions["v1"].Requests
					}
					for id, n := range seen {
						if now[id] < n {
							errs <- fmt.Errorf("replica %s went from %d to %d requests (present: %v)", id, n, now[id], slices.Collect(maps.Keys(now)))
							return
						}
					}
					seen = now
				}
			})
		}
		pubs.Wait()
		close(done)
		reads.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		got, err := st.Snapshots(ctx, "m")
		if err != nil {
			t.Fatal(err)
		}
		f := fleet.Sum("m", got, time.Now(), time.Hour)
		if len(f.Replicas) != replicas || f.Versions["v1"].Requests != replicas*publishes {
			t.Fatalf("after all publishes: %d replicas, %d requests; want %d, %d", len(f.Replicas), f.Versions["v1"].Requests, replicas, replicas*publishes)
		}
	})

	t.Run("RestartedReplicaNoNegativeDelta", func(t *testing.T) {
		st := newStore(t)
		col, err := fleet.NewCollector(st, fleet.CollectorConfig{StaleAfter: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		var tr fleet.Tracker
		start := time.Now().Add(-time.Minute)
		read := func() map[string]route.Counters {
			t.Helper()
			f, err := col.Collect(ctx, "m")
			if err != nil {
				t.Fatal(err)
			}
			return tr.Delta(f)
		}
		pub := func(replica string, started time.Time, n, errs int64) {
			t.Helper()
			must(t, st.Publish(ctx, ttl, snap("m", replica, started, time.Now(), map[string]route.Counters{"v1": Counters(n, errs, time.Millisecond)})))
		}
		pub("a", start, 1000, 10)
		pub("b", start, 500, 5)
		if d := read(); d["v1"].Requests != 0 {
			t.Fatalf("first read delta %+v, want only a baseline", d["v1"])
		}
		pub("a", start, 1100, 11)
		pub("b", start, 600, 5)
		if d := read(); d["v1"].Requests != 200 || d["v1"].Errors != 1 {
			t.Fatalf("delta %d/%d, want 200/1", d["v1"].Requests, d["v1"].Errors)
		}
		// b restarts: new process, counters from zero.
		pub("a", start, 1200, 11)
		pub("b", time.Now(), 30, 3)
		d := read()
		if d["v1"].Requests != 130 || d["v1"].Errors != 3 {
			t.Fatalf("delta after b's restart %d/%d, want 100+30 / 0+3", d["v1"].Requests, d["v1"].Errors)
		}
		// Same Started but counters went down (e.g. clock trouble): still
		// a new baseline, never negative.
		pub("a", start, 5, 0)
		d = read()
		if d["v1"].Requests != 5 || d["v1"].Errors != 0 {
			t.Fatalf("delta after a's counters dropped %d/%d, want 5/0", d["v1"].Requests, d["v1"].Errors)
		}
	})
}

func withNonFinite(c route.Counters, n int64) route.Counters {
	c.NonFinite = n
	return c
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
