package pgstore_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/signalforge/signalforge/internal/testpg"
	"github.com/signalforge/signalforge/registry"
)

// openWatcher opens a Registry over s that polls only every poll, so that
// a change it sees sooner can only have come through LISTEN/NOTIFY.
func openWatcher(t *testing.T, s registry.Store, poll time.Duration) *registry.Registry {
	t.Helper()
	r, err := registry.Open(context.Background(), registry.Config{Store: s, PollInterval: poll})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// next receives the next event from events within limit.
func next(t *testing.T, events <-chan registry.Event, limit time.Duration) registry.Event {
	t.Helper()
	select {
	case ev, ok := <-events:
		if !ok {
			t.Fatal("the watch channel closed")
		}
		return ev
	case <-time.After(limit):
		t.Fatalf("no event within %v", limit)
	}
	panic("unreachable")
}

// TestWatchSeesOtherStoresChangesAtOnce: a change committed through another
// Store (another pool, as another process or machine would have) reaches a
// Watch whose poll is 10 s within well under a second: only the
// notification can explain it.
func TestWatchSeesOtherStoresChangesAtOnce(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	url := testpg.NewDatabase(t)
	writer := openReg(t, open(t, url))
	if _, err := writer.Register(ctx, registry.RegisterRequest{Name: "m", ONNX: onnxModel(t, 1), Status: registry.StatusProduction, Traffic: 100}); err != nil {
		t.Fatal(err)
	}
	if _, err := writer.Register(ctx, registry.RegisterRequest{Name: "m", ONNX: onnxModel(t, 2)}); err != nil {
		t.Fatal(err)
	}
	watcher := openWatcher(t, open(t, url), 10*time.Second)
	seq, err := watcher.Seq(ctx)
	if err != nil {
		t.Fatal(err)
	}
	events := watcher.Watch(ctx, seq)
	if _, err := writer.Promote(ctx, ref(t, "m:v2"), 10); err != nil {
		t.Fatal(err)
	}
	if ev := next(t, events, 5*time.Second); ev.Seq != seq+1 {
		t.Fatalf("first event %d; want %d", ev.Seq, seq+1)
	}
	const changes = 20
	var lat []time.Duration
	for i := range changes {
		start := time.Now()
		if _, err := writer.SetTraffic(ctx, ref(t, "m:v2"), float64(11+i)); err != nil {
			t.Fatal(err)
		}
		ev := next(t, events, time.Second)
		lat = append(lat, time.Since(start))
		if want := seq + 2 + uint64(i); ev.Seq != want || ev.SplitAfter["v2"] != float64(11+i) {
			t.Fatalf("change %d: got event %d with split %v; want event %d with v2 at %d%%", i, ev.Seq, ev.SplitAfter, want, 11+i)
		}
	}
	slices.Sort(lat)
	t.Logf("commit-to-watch latency over %d changes (poll 10s): p50 %v, p99 %v, max %v", changes, lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1])
	if st := watcher.Stats(); !st.Up || st.Seq != seq+1+changes {
		t.Fatalf("watcher Stats = %+v; want Up and Seq %d", st, seq+1+changes)
	}
}

// TestWatchResumesAfterDatabaseRestart: PostgreSQL killed and restarted
// under a Watch that polls only every minute. The watch reports the
// registry down (Stats().Up false) while it is, then resumes from its last
// Seq: the changes committed right after the restart all arrive, in order,
// none lost — brought by the listener's reconnection, not by the poll.
func TestWatchResumesAfterDatabaseRestart(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := testpg.Start(t)
	url := srv.NewDatabase(t)
	writer := openReg(t, open(t, url))
	if _, err := writer.Register(ctx, registry.RegisterRequest{Name: "m", ONNX: onnxModel(t, 1), Status: registry.StatusProduction, Traffic: 100}); err != nil {
		t.Fatal(err)
	}
	if _, err := writer.Register(ctx, registry.RegisterRequest{Name: "m", ONNX: onnxModel(t, 2), Status: registry.StatusProduction, Traffic: 10}); err != nil {
		t.Fatal(err)
	}
	watcher := openWatcher(t, open(t, url), time.Minute)
	seq, err := watcher.Seq(ctx)
	if err != nil {
		t.Fatal(err)
	}
	events := watcher.Watch(ctx, seq)
	if _, err := writer.SetTraffic(ctx, ref(t, "m:v2"), 20); err != nil {
		t.Fatal(err)
	}
	if ev := next(t, events, 5*time.Second); ev.Seq != seq+1 {
		t.Fatalf("event before the outage: %d; want %d", ev.Seq, seq+1)
	}

	srv.Kill()
	waitFor(t, 5*time.Second, "the watcher to report the registry down", func() bool { return !watcher.Stats().Up })
	if st := watcher.Stats(); st.LastError == "" || st.Seq != seq+1 {
		t.Fatalf("Stats while down = %+v; want the error and Seq %d", st, seq+1)
	}
	time.Sleep(500 * time.Millisecond)
	srv.Restart(t)

	// Commit three changes right away; the writer's pool may need a try
	// or two to notice its connections died.
	for i, pct := range []float64{30, 40, 50} {
		deadline := time.Now().Add(10 * time.Second)
		for {
			_, err := writer.SetTraffic(ctx, ref(t, "m:v2"), pct)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("change %d after the restart: %v", i, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	for i, pct := range []float64{30, 40, 50} {
		ev := next(t, events, 10*time.Second)
		if want := seq + 2 + uint64(i); ev.Seq != want || ev.SplitAfter["v2"] != pct {
			t.Fatalf("after the restart: event %d with split %v; want event %d with v2 at %v%%", ev.Seq, ev.SplitAfter, want, pct)
		}
	}
	waitFor(t, 5*time.Second, "the watcher to report the registry up", func() bool { return watcher.Stats().Up })
	if st := watcher.Stats(); st.LastError != "" || st.Seq != seq+4 {
		t.Fatalf("Stats after the outage = %+v; want Up, no error, Seq %d", st, seq+4)
	}
}

func waitFor(t *testing.T, limit time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", limit, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
