package route

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
)

func newRouter(t testing.TB, cfg Config) *Router {
	t.Helper()
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// randomIDs makes n request ids like the ones clients send (random hex).
func randomIDs(seed uint64, n int) []string {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("req_%016x%08x", rng.Uint64(), rng.Uint32())
	}
	return ids
}

func mustSplit(t testing.TB, r *Router, model string, s Split) {
	t.Helper()
	vs := make([]string, 0, len(s))
	for v := range s {
		vs = append(vs, v)
	}
	if err := r.AddVersions(model, vs...); err != nil {
		t.Fatal(err)
	}
	if err := r.SetSplit(model, s); err != nil {
		t.Fatal(err)
	}
}

func TestSetSplitValidation(t *testing.T) {
	r := newRouter(t, Config{})
	if err := r.AddVersions("m", "v1", "v2"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		model string
		split Split
		want  error
	}{
		{"ok", "m", Split{"v1": 0.8, "v2": 0.2}, nil},
		{"ok within epsilon", "m", Split{"v1": 0.8, "v2": 0.2000000001}, nil},
		{"ok zero weight", "m", Split{"v1": 1, "v2": 0}, nil},
		{"unknown version", "m", Split{"v1": 0.5, "v3": 0.5}, ErrUnknownVersion},
		{"unknown model", "other", Split{"v1": 1}, ErrUnknownVersion},
		{"total low", "m", Split{"v1": 0.7, "v2": 0.2}, ErrInvalidSplit},
		{"total high", "m", Split{"v1": 0.9, "v2": 0.2}, ErrInvalidSplit},
		{"negative", "m", Split{"v1": 1.2, "v2": -0.2}, ErrInvalidSplit},
		{"NaN", "m", Split{"v1": 1, "v2": nan()}, ErrInvalidSplit},
		{"empty", "m", Split{}, ErrInvalidSplit},
		{"bad model name", "../m", Split{"v1": 1}, ErrInvalidName},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := r.SetSplit(tt.model, tt.split)
			if !errors.Is(err, tt.want) {
				t.Fatalf("SetSplit(%q, %v) = %v, want %v", tt.model, tt.split, err, tt.want)
			}
		})
	}
	if err := r.AddVersions("m", "bad/version"); !errors.Is(err, ErrInvalidName) {
		t.Fatalf("AddVersions bad name: %v", err)
	}
	// The last valid split is in force, normalized.
	got, _ := r.Split("m")
	if got["v1"] != 1 || got["v2"] != 0 {
		t.Fatalf("split = %v", got)
	}
	if err := r.RemoveVersion("m", "v1"); !errors.Is(err, ErrInvalidSplit) {
		t.Fatalf("RemoveVersion with traffic: %v", err)
	}
	if err := r.RemoveVersion("m", "v2"); err != nil {
		t.Fatal(err)
	}
	if err := r.SetSplit("m", Split{"v1": 0.5, "v2": 0.5}); !errors.Is(err, ErrUnknownVersion) {
		t.Fatalf("removed version accepted: %v", err)
	}
}

func nan() float64 { z := 0.0; return z / z }

func TestRouteUnknownModel(t *testing.T) {
	r := newRouter(t, Config{})
	if _, err := r.Route("nope", "req"); !errors.Is(err, ErrUnknownModel) {
		t.Fatalf("err = %v", err)
	}
}

func countShares(t *testing.T, r *Router, model string, ids []string) map[string]float64 {
	t.Helper()
	n := map[string]int{}
	for _, id := range ids {
		v, err := r.Route(model, id)
		if err != nil {
			t.Fatal(err)
		}
		n[v]++
	}
	out := map[string]float64{}
	for v, c := range n {
		out[v] = float64(c) / float64(len(ids))
	}
	return out
}

func TestRouteDistribution(t *testing.T) {
	skipUnderRace(t)
	ids := randomIDs(1, 100_000)
	for _, split := range []Split{
		{"v1.0": 0.8, "v2.0": 0.2},
		{"v1.0": 0.5, "v2.0": 0.3, "v3.0": 0.2},
		{"v1.0": 0.95, "v2.0": 0.05},
	} {
		t.Run(fmt.Sprint(split), func(t *testing.T) {
			r := newRouter(t, Config{})
			mustSplit(t, r, "lstm_model", split)
			got := countShares(t, r, "lstm_model", ids)
			for v, w := range split {
				if d := got[v] - w; d < -0.01 || d > 0.01 {
					t.Errorf("%s: share %.4f, want %.2f ± 0.01", v, got[v], w)
				}
			}
			t.Logf("100k random ids on %v: %v", split, got)
		})
	}
	// Sequential ids ("req_1", "req_2", …) are common; they must spread too.
	r := newRouter(t, Config{})
	mustSplit(t, r, "m", Split{"a": 0.8, "b": 0.2})
	seq := make([]string, 100_000)
	for i := range seq {
		seq[i] = fmt.Sprintf("req_%d", i)
	}
	if got := countShares(t, r, "m", seq)["b"]; got < 0.19 || got > 0.21 {
		t.Errorf("sequential ids: b share %.4f, want 0.20 ± 0.01", got)
	}
}

func TestRouteSticky(t *testing.T) {
	skipUnderRace(t)
	ids := randomIDs(2, 10_000)
	r := newRouter(t, Config{})
	mustSplit(t, r, "lstm_model", Split{"v1.0": 0.8, "v2.0": 0.2})
	// A second router stands for another replica: same answers.
	replica := newRouter(t, Config{})
	mustSplit(t, replica, "lstm_model", Split{"v2.0": 0.2, "v1.0": 0.8})
	for _, id := range ids {
		first, _ := r.Route("lstm_model", id)
		for range 100 {
			if v, _ := r.Route("lstm_model", id); v != first {
				t.Fatalf("id %s routed to %s then %s", id, first, v)
			}
		}
		if v, _ := replica.Route("lstm_model", id); v != first {
			t.Fatalf("id %s: replica routes to %s, router to %s", id, v, first)
		}
	}
	// Re-applying the same split moves nothing.
	before := countShares(t, r, "lstm_model", ids)
	if err := r.Apply("lstm_model", Split{"v1.0": 0.8, "v2.0": 0.2}); err != nil {
		t.Fatal(err)
	}
	after := countShares(t, r, "lstm_model", ids)
	if before["v2.0"] != after["v2.0"] {
		t.Fatalf("same split re-applied changed shares: %v → %v", before, after)
	}
}

// movedFraction routes ids under split a, then b, and returns the share of
// ids whose version changed and the theoretical minimum (total variation
// distance between the splits).
func movedFraction(t *testing.T, ids []string, a, b Split) (moved, theory float64) {
	t.Helper()
	r := newRouter(t, Config{})
	mustSplit(t, r, "m", a)
	was := make([]string, len(ids))
	for i, id := range ids {
		was[i], _ = r.Route("m", id)
	}
	if err := r.Apply("m", b); err != nil {
		t.Fatal(err)
	}
	n := 0
	for i, id := range ids {
		if v, _ := r.Route("m", id); v != was[i] {
			n++
		}
	}
	for v := range mergeKeys(a, b) {
		d := a[v] - b[v]
		if d > 0 {
			theory += d
		}
	}
	return float64(n) / float64(len(ids)), theory
}

func mergeKeys(a, b Split) map[string]bool {
	m := map[string]bool{}
	for v := range a {
		m[v] = true
	}
	for v := range b {
		m[v] = true
	}
	return m
}

func TestMinimalMovement(t *testing.T) {
	skipUnderRace(t)
	ids := randomIDs(3, 100_000)
	tests := []struct {
		name string
		a, b Split
		// slack is how far above the theoretical minimum the measured
		// fraction may be. Two versions: exact up to sampling noise.
		slack float64
	}{
		{"80/20→70/30", Split{"v1": 0.8, "v2": 0.2}, Split{"v1": 0.7, "v2": 0.3}, 0.005},
		{"95/5→75/25", Split{"v1": 0.95, "v2": 0.05}, Split{"v1": 0.75, "v2": 0.25}, 0.005},
		{"add a 0-weight version", Split{"v1": 0.8, "v2": 0.2}, Split{"v1": 0.8, "v2": 0.2, "v3": 0}, 0},
		{"new version takes 10%", Split{"v1": 0.8, "v2": 0.2}, Split{"v1": 0.72, "v2": 0.18, "v3": 0.1}, 0.005},
		{"50/30/20→40/40/20", Split{"v1": 0.5, "v2": 0.3, "v3": 0.2}, Split{"v1": 0.4, "v2": 0.4, "v3": 0.2}, 0.05},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			moved, theory := movedFraction(t, ids, tt.a, tt.b)
			cum := cumulativeMoved(ids, tt.a, tt.b)
			t.Logf("%s: moved %.4f of 100k ids, theoretical minimum %.4f (cumulative ranges: %.4f)", tt.name, moved, theory, cum)
			if moved < theory-0.005 || moved > theory+tt.slack {
				t.Fatalf("moved %.4f, want within [%.4f, %.4f]", moved, theory-0.005, theory+tt.slack)
			}
		})
	}
}

// cumulativeMoved is the alternative we did not choose: one uniform point
// per id against cumulative ranges in sorted version order.
func cumulativeMoved(ids []string, a, b Split) float64 {
	salt := modelSalt("", "m")
	pick := func(s Split, id string) string {
		u := unitFloat(hashString(salt, id))
		acc, last := 0.0, ""
		for _, v := range slices.Sorted(maps.Keys(s)) {
			if s[v] == 0 {
				continue
			}
			acc += s[v]
			last = v
			if u < acc {
				return v
			}
		}
		return last
	}
	n := 0
	for _, id := range ids {
		if pick(a, id) != pick(b, id) {
			n++
		}
	}
	return float64(n) / float64(len(ids))
}

// Moving weight from v1 to v2 must only move ids from v1 to v2.
func TestMovementIsOneWay(t *testing.T) {
	ids := randomIDs(4, 20_000)
	r := newRouter(t, Config{})
	mustSplit(t, r, "m", Split{"v1": 0.8, "v2": 0.2})
	was := make([]string, len(ids))
	for i, id := range ids {
		was[i], _ = r.Route("m", id)
	}
	if err := r.SetSplit("m", Split{"v1": 0.7, "v2": 0.3}); err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		if v, _ := r.Route("m", id); v != was[i] && !(was[i] == "v1" && v == "v2") {
			t.Fatalf("id %s moved %s → %s", id, was[i], v)
		}
	}
}

// Different models (or salts) must be independent experiments: being in
// one model's 20% says nothing about another's.
func TestSaltIndependence(t *testing.T) {
	skipUnderRace(t)
	ids := randomIDs(5, 100_000)
	r := newRouter(t, Config{})
	salted := newRouter(t, Config{Salt: "experiment-2"})
	for _, rr := range []*Router{r, salted} {
		mustSplit(t, rr, "a", Split{"v1": 0.8, "v2": 0.2})
		mustSplit(t, rr, "b", Split{"v1": 0.8, "v2": 0.2})
	}
	both, saltBoth := 0, 0
	for _, id := range ids {
		va, _ := r.Route("a", id)
		vb, _ := r.Route("b", id)
		vs, _ := salted.Route("a", id)
		if va == "v2" && vb == "v2" {
			both++
		}
		if va == "v2" && vs == "v2" {
			saltBoth++
		}
	}
	for name, n := range map[string]int{"models a,b": both, "salts": saltBoth} {
		f := float64(n) / float64(len(ids))
		t.Logf("%s: P(v2 in both) = %.4f (independent: 0.04)", name, f)
		if f < 0.035 || f > 0.045 {
			t.Errorf("%s: P(v2 in both) = %.4f, want 0.04 ± 0.005", name, f)
		}
	}
}

func TestRouteDoesNotAllocate(t *testing.T) {
	r := newRouter(t, Config{})
	mustSplit(t, r, "lstm_model", Split{"v1.0": 0.5, "v2.0": 0.3, "v3.0": 0.2})
	id := "req_0123456789abcdef"
	if n := testing.AllocsPerRun(1000, func() { _, _ = r.Route("lstm_model", id) }); n != 0 {
		t.Fatalf("Route allocates %v times", n)
	}
	if n := testing.AllocsPerRun(1000, func() { _, _ = r.Route("lstm_model", "") }); n != 0 {
		t.Fatalf("Route with empty key allocates %v times", n)
	}
}

func TestEmptyKeyIsRandom(t *testing.T) {
	r := newRouter(t, Config{})
	mustSplit(t, r, "m", Split{"v1": 0.5, "v2": 0.5})
	seen := map[string]int{}
	for range 1000 {
		v, _ := r.Route("m", "")
		seen[v]++
	}
	if seen["v1"] < 400 || seen["v2"] < 400 {
		t.Fatalf("empty keys: %v, want about 500 each", seen)
	}
}

func TestApplyAndFollow(t *testing.T) {
	r := newRouter(t, Config{})
	src := &chanSource{ch: make(chan SplitUpdate)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Follow(ctx, src) }()

	src.ch <- SplitUpdate{Model: "lstm_model", Split: Split{"v1.0": 1}}
	src.ch <- SplitUpdate{Model: "lstm_model", Split: Split{"v1.0": 0.8, "v2.0": 0.2}}
	src.ch <- SplitUpdate{Model: "lstm_model", Split: Split{"v1.0": 0.8, "v2.0": 0.3}} // rejected
	src.ch <- SplitUpdate{Model: "other", Split: Split{"v1": 1}}
	src.ch <- SplitUpdate{Model: "other"} // removes
	src.ch <- SplitUpdate{Model: "sync"}  // unblocks after the previous were applied
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Follow = %v", err)
	}
	got, ok := r.Split("lstm_model")
	if !ok || got["v1.0"] != 0.8 || got["v2.0"] != 0.2 {
		t.Fatalf("split after updates = %v (bad update must be ignored)", got)
	}
	if _, err := r.Route("other", "x"); !errors.Is(err, ErrUnknownModel) {
		t.Fatalf("removed model still routes: %v", err)
	}
	// Versions applied by the source are now known to SetSplit.
	if err := r.SetSplit("lstm_model", Split{"v1.0": 0.5, "v2.0": 0.5}); err != nil {
		t.Fatal(err)
	}
	if got := r.Models(); len(got) != 1 || got[0] != "lstm_model" {
		t.Fatalf("Models() = %v", got)
	}

	closed := &chanSource{ch: make(chan SplitUpdate)}
	close(closed.ch)
	if err := r.Follow(context.Background(), closed); err != nil {
		t.Fatalf("Follow on closed source = %v", err)
	}
	if err := r.Follow(context.Background(), &chanSource{err: errors.New("down")}); err == nil {
		t.Fatal("Follow ignored a Watch error")
	}
}

type chanSource struct {
	ch  chan SplitUpdate
	err error
}

func (s *chanSource) Watch(ctx context.Context) (<-chan SplitUpdate, error) {
	return s.ch, s.err
}

func TestConcurrentRouteAndSetSplit(t *testing.T) {
	r := newRouter(t, Config{})
	mustSplit(t, r, "m", Split{"v1": 0.8, "v2": 0.2})
	ids := randomIDs(6, 1000)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for g := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				v, err := r.Route("m", ids[(i+g)%len(ids)])
				if err != nil || (v != "v1" && v != "v2") {
					t.Errorf("Route = %q, %v", v, err)
					return
				}
				r.Record("m", v, 1000, nil)
			}
		})
	}
	for i := range 200 {
		w := float64(i%10) / 10
		if err := r.SetSplit("m", Split{"v1": 1 - w, "v2": w}); err != nil {
			t.Fatal(err)
		}
		_ = r.Stats()
	}
	close(stop)
	wg.Wait()
}

func TestConfigValidation(t *testing.T) {
	for _, cfg := range []Config{
		{Epsilon: -1},
		{Window: -1},
		{WindowBuckets: -2},
		{Window: 5, WindowBuckets: 10},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}

func BenchmarkRoute(b *testing.B) {
	for _, split := range []Split{
		{"v1.0": 0.8, "v2.0": 0.2},
		{"v1.0": 0.5, "v2.0": 0.3, "v3.0": 0.2},
	} {
		b.Run(fmt.Sprintf("versions=%d", len(split)), func(b *testing.B) {
			r := newRouter(b, Config{})
			mustSplit(b, r, "lstm_model", split)
			ids := randomIDs(7, 1024)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				_, _ = r.Route("lstm_model", ids[i&1023])
				i++
			}
		})
	}
	b.Run("parallel", func(b *testing.B) {
		r := newRouter(b, Config{})
		mustSplit(b, r, "lstm_model", Split{"v1.0": 0.8, "v2.0": 0.2})
		ids := randomIDs(7, 1024)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				_, _ = r.Route("lstm_model", ids[i&1023])
				i++
			}
		})
	})
}

func skipUnderRace(t *testing.T) {
	if raceEnabled {
		t.Skip("large single-goroutine statistical test; covered by the run without -race")
	}
}

// FuzzRoute: any key reaches a version of the split, the same one every
// time, and never panics.
func FuzzRoute(f *testing.F) {
	for _, k := range []string{"", "req_123", "\x00\xff", "ü", "a-very-long-user-id-0123456789abcdefghijklmnopqrstuvwxyz"} {
		f.Add(k)
	}
	r := newRouter(f, Config{})
	mustSplit(f, r, "m", Split{"v1": 0.5, "v2": 0.3, "v3": 0.2, "v4": 0})
	f.Fuzz(func(t *testing.T, key string) {
		v, err := r.Route("m", key)
		if err != nil || (v != "v1" && v != "v2" && v != "v3") {
			t.Fatalf("Route(%q) = %q, %v", key, v, err)
		}
		if again, _ := r.Route("m", key); key != "" && again != v {
			t.Fatalf("Route(%q) = %q then %q", key, v, again)
		}
	})
}
