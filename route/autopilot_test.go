package route

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

type actionLog struct {
	mu      sync.Mutex // guards actions
	actions []Action
	err     error // returned by record
}

func (l *actionLog) record(ctx context.Context, a Action) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.actions = append(l.actions, a)
	return l.err
}

func (l *actionLog) get() []Action {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Action(nil), l.actions...)
}

// traffic sends n requests with random ids through the router; versions
// fail with the given probabilities.
func traffic(r *Router, rng *rand.Rand, model string, n int, errRate map[string]float64) {
	for range n {
		id := fmt.Sprintf("req_%x", rng.Uint64())
		v, err := r.Route(model, id)
		if err != nil {
			panic(err)
		}
		var fail error
		if rng.Float64() < errRate[v] {
			fail = errSynthetic
		}
		r.Record(model, v, 5*time.Millisecond, fail)
	}
}

func TestAutopilotStepsUpToPromotion(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		r := newRouter(t, Config{Window: 10 * time.Minute})
		mustSplit(t, r, "lstm_model", Split{"v1.0": 1, "v2.0": 0})
		log := &actionLog{}
		ap, err := NewAutopilot(r, AutopilotConfig{OnAction: log.record})
		if err != nil {
			t.Fatal(err)
		}
		defer ap.Close()
		err = ap.Start(ctx, Plan{Model: "lstm_model", Canary: "v2.0", Baseline: "v1.0",
			Rollback: true, StepUp: true, Interval: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		if s, _ := r.Split("lstm_model"); s["v2.0"] != 0.05 || s["v1.0"] != 0.95 {
			t.Fatalf("split after Start = %v, want the first step 95/5", s)
		}
		rng := rand.New(rand.NewPCG(1, 2))
		rates := map[string]float64{"v1.0": 0.005, "v2.0": 0.005}
		start := time.Now()
		var st CanaryStatus
		for range 60 {
			traffic(r, rng, "lstm_model", 10_000, rates) // 10k requests a minute
			time.Sleep(time.Minute)
			synctest.Wait()
			if st, err = ap.Status(ctx, "lstm_model"); err != nil {
				t.Fatal(err)
			}
			if st.State != Running {
				break
			}
		}
		if st.State != PromotedState {
			t.Fatalf("state after an hour = %v (last verdict %v)", st.State, st.Last)
		}
		var weights []float64
		for _, a := range log.get() {
			weights = append(weights, a.To["v2.0"])
			t.Logf("%v at +%v: to %v (%s)", a.Kind, a.At.Sub(start), a.To, a.Verdict.Reason)
		}
		acts := log.get()
		if fmt.Sprint(weights) != "[0.05 0.25 0.5 1]" || acts[len(acts)-1].Kind != Promoted {
			t.Fatalf("canary weights over the plan = %v", weights)
		}
		for _, a := range acts[1:] {
			if a.Verdict.Decision != Healthy || a.Kind == RolledBack {
				t.Fatalf("step without a healthy verdict: %+v", a)
			}
		}
		if s, _ := r.Split("lstm_model"); s["v2.0"] != 1 || s["v1.0"] != 0 {
			t.Fatalf("final split = %v", s)
		}
		t.Logf("promoted after %v, %d verdicts", time.Since(start), st.Judged)
	})
}

func TestAutopilotRollsBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		r := newRouter(t, Config{Window: 10 * time.Minute})
		mustSplit(t, r, "lstm_model", Split{"v1.0": 0.8, "v2.0": 0.2})
		log := &actionLog{err: errors.New("registry down")} // logged, not fatal
		ap, _ := NewAutopilot(r, AutopilotConfig{OnAction: log.record})
		defer ap.Close()
		if err := ap.Start(ctx, Plan{Model: "lstm_model", Canary: "v2.0", Baseline: "v1.0",
			Rollback: true, Interval: time.Minute}); err != nil {
			t.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(3, 4))
		rates := map[string]float64{"v1.0": 0.01, "v2.0": 0.05}
		// A trickle first: 100 requests (20 canary) a minute is not
		// enough evidence, so nothing happens.
		traffic(r, rng, "lstm_model", 100, rates)
		time.Sleep(time.Minute)
		synctest.Wait()
		if st, _ := ap.Status(ctx, "lstm_model"); st.State != Running || st.Last.Decision != Inconclusive || len(log.get()) != 0 {
			t.Fatalf("after a trickle: %v, actions %v", st.Last, log.get())
		}
		for range 10 {
			traffic(r, rng, "lstm_model", 2000, rates)
			time.Sleep(time.Minute)
			synctest.Wait()
		}
		st, _ := ap.Status(ctx, "lstm_model")
		acts := log.get()
		if st.State != RolledBackState || len(acts) != 1 || acts[0].Kind != RolledBack {
			t.Fatalf("state %v, actions %+v", st.State, acts)
		}
		a := acts[0]
		t.Logf("rolled back after %d verdicts: %v", st.Judged, a.Verdict)
		if a.Verdict.Decision != Rollback || a.From["v2.0"] != 0.2 || a.To["v2.0"] != 0 || a.To["v1.0"] != 1 {
			t.Fatalf("action = %+v", a)
		}
		if s, _ := r.Split("lstm_model"); s["v2.0"] != 0 {
			t.Fatalf("split after rollback = %v", s)
		}
		// The plan is over: no more judging.
		time.Sleep(10 * time.Minute)
		if st2, _ := ap.Status(ctx, "lstm_model"); st2.Judged != st.Judged {
			t.Fatalf("ended plan still judged: %d → %d", st.Judged, st2.Judged)
		}
	})
}

func TestAutopilotWatchOnly(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		r := newRouter(t, Config{})
		mustSplit(t, r, "m", Split{"a": 0.8, "b": 0.2})
		log := &actionLog{}
		ap, _ := NewAutopilot(r, AutopilotConfig{OnAction: log.record})
		defer ap.Close()
		if err := ap.Start(ctx, Plan{Model: "m", Canary: "b", Baseline: "a", Interval: time.Second}); err != nil {
			t.Fatal(err)
		}
		traffic(r, rand.New(rand.NewPCG(5, 6)), "m", 5000, map[string]float64{"b": 0.5})
		time.Sleep(3 * time.Second)
		synctest.Wait()
		st, _ := ap.Status(ctx, "m")
		if st.Judged != 3 || st.Last.Decision != Rollback || st.State != Running || len(log.get()) != 0 {
			t.Fatalf("watch-only plan: %+v, actions %v", st, log.get())
		}
		if s, _ := r.Split("m"); s["b"] != 0.2 {
			t.Fatalf("watch-only plan changed the split: %v", s)
		}
		// Someone else removes the canary's traffic: the plan stops.
		if err := r.SetSplit("m", Split{"a": 1, "b": 0}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if st, _ = ap.Status(ctx, "m"); st.State != Stopped {
			t.Fatalf("state = %v", st.State)
		}
		// Stop on an ended plan, and on none.
		if err := ap.Stop(ctx, "m"); !errors.Is(err, ErrUnknownModel) {
			t.Fatalf("Stop = %v", err)
		}
	})
}

func TestAutopilotStartErrorsAndClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		r := newRouter(t, Config{})
		mustSplit(t, r, "m", Split{"a": 1, "b": 0})
		ap, _ := NewAutopilot(r, AutopilotConfig{})
		for _, p := range []Plan{
			{Model: "nope", Canary: "b", Baseline: "a"},
			{Model: "m", Canary: "a", Baseline: "a"},
			{Model: "m", Canary: "b", Baseline: "a", Steps: []float64{0.5, 0.25}},
			{Model: "m", Canary: "b", Baseline: "a", Steps: []float64{}},
			{Model: "m", Canary: "b", Baseline: "a", Judge: Judge{Alpha: 0.9}},
		} {
			if err := ap.Start(ctx, p); err == nil {
				t.Errorf("Start(%+v) accepted", p)
			}
		}
		if err := ap.Start(ctx, Plan{Model: "m", Canary: "b", Baseline: "a", StepUp: true}); err != nil {
			t.Fatal(err)
		}
		if err := ap.Stop(ctx, "m"); err != nil {
			t.Fatal(err)
		}
		if st, _ := ap.Status(ctx, "m"); st.State != Stopped {
			t.Fatalf("state after Stop = %v", st.State)
		}
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := ap.Status(cctx, "m"); !errors.Is(err, context.Canceled) {
			t.Fatalf("Status on cancelled ctx = %v", err)
		}
		if err := ap.Close(); err != nil {
			t.Fatal(err)
		}
		if err := ap.Close(); err != nil {
			t.Fatal(err)
		}
		if err := ap.Start(ctx, Plan{Model: "m", Canary: "b", Baseline: "a"}); !errors.Is(err, ErrClosed) {
			t.Fatalf("Start after Close = %v", err)
		}
	})
}
