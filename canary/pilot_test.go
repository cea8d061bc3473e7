package canary

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/signalforge/signalforge/registry"
	"github.com/signalforge/signalforge/route"
)

const ms = time.Millisecond

// TestStepsUpAndPromotes: the first step is applied once, healthy fleet
// evidence moves the canary up, and the last step promotes it.
func TestStepsUpAndPromotes(t *testing.T) {
	for _, kind := range stores {
		t.Run(kind, func(t *testing.T) {
			ctx := context.Background()
			w := newWorld(t, kind, "a", "b", "c")
			w.serve("v1", 5000, 5, 3*ms) // traffic before the plan
			w.start(registry.CanaryPlan{StepUp: true, Rollback: true, StepsPct: []float64{10, 50, 100},
				Interval: time.Minute, Judge: registry.CanaryJudge{MinSamples: 1000}})
			p := w.pilot(nil, nil)

			p.pass(ctx)
			p.pass(ctx) // not due: nothing more
			if pl := w.plan(); pl.Step != 0 || pl.State != registry.CanaryRunning || len(pl.Mark) == 0 || pl.Verdict != nil {
				t.Fatalf("after the first passes: %+v; want step 0 with a mark and no verdict", pl)
			}
			if s := w.split(); !s.Equal(registry.Split{"v1": 90, "v2": 10}) {
				t.Fatalf("split after step 0 = %v; want v1=90 v2=10", s)
			}
			if n := w.actions(); n[registry.ActionCanaryStep] != 1 || n[registry.ActionCanaryUpdate] != 0 {
				t.Fatalf("events %v; want one canary-step", n)
			}

			// Healthy evidence: 3 × 1000 canary requests, no errors.
			w.serve("v2", 1000, 0, 3*ms)
			w.serve("v1", 9000, 9, 3*ms)
			w.clk.Advance(59 * time.Second)
			p.pass(ctx)
			if pl := w.plan(); pl.Step != 0 {
				t.Fatalf("judged before Interval: %+v", pl)
			}
			w.clk.Advance(time.Second)
			p.pass(ctx)
			pl := w.plan()
			if pl.Step != 1 || pl.Healthy != 0 || pl.Verdict == nil || pl.Verdict.Decision != registry.VerdictHealthy ||
				pl.Verdict.Canary.Requests != 3000 || pl.Verdict.Baseline.Requests != 27000 || !pl.JudgedAt.Equal(w.clk.Now()) {
				t.Fatalf("after a healthy verdict: %+v %+v; want step 1, judged on 3000 canary and 27000 baseline requests", pl, pl.Verdict)
			}
			if s := w.split(); !s.Equal(registry.Split{"v1": 50, "v2": 50}) {
				t.Fatalf("split after step 1 = %v", s)
			}

			// No traffic since the new mark: inconclusive, recorded.
			w.clk.Advance(time.Minute)
			p.pass(ctx)
			if pl := w.plan(); pl.Step != 1 || pl.Verdict.Decision != registry.VerdictInconclusive || pl.Verdict.Canary.Requests != 0 {
				t.Fatalf("with no new traffic: %+v %+v; want step 1, an inconclusive verdict on nothing", pl, pl.Verdict)
			}

			w.serve("v2", 2000, 1, 3*ms)
			w.serve("v1", 2000, 2, 3*ms)
			w.clk.Advance(time.Minute)
			p.pass(ctx)
			pl = w.plan()
			if pl.State != registry.CanaryPromoted || pl.Step != 2 || pl.LastAction != registry.ActionCanaryPromote {
				t.Fatalf("at the last step: %+v; want promoted", pl)
			}
			if s := w.split(); s["v2"] != 100 || s.Total() != 100 {
				t.Fatalf("split after promotion = %v", s)
			}
			w.clk.Advance(time.Hour)
			p.pass(ctx)
			n := w.actions()
			if n[registry.ActionCanaryStep] != 2 || n[registry.ActionCanaryPromote] != 1 || n[registry.ActionCanaryUpdate] != 1 || n[registry.ActionCanaryRollback] != 0 {
				t.Fatalf("events %v; want 2 canary-step, 1 canary-update, 1 canary-promote", n)
			}
			st := p.Stats()
			if st.Judgements != 3 || st.Actions[registry.ActionCanaryStep] != 2 || st.Actions[registry.ActionCanaryPromote] != 1 ||
				st.Errors != 0 || st.Stale != 0 || !st.Leader || st.Ticks != 7 || st.Led != 7 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

// TestRollsBackOnFleetEvidence: a canary failing 5% against a 1%
// baseline, on three replicas none of which has enough requests alone, is
// rolled back once, on the fleet's sum since the step's mark.
func TestRollsBackOnFleetEvidence(t *testing.T) {
	judge := registry.CanaryJudge{MinSamples: 1000}
	rj, err := judgeOf(judge)
	if err != nil {
		t.Fatal(err)
	}
	one := newReplica("x")
	one.serve("v2", 400, 20, 3*ms)
	one.serve("v1", 4000, 40, 3*ms)
	if v := rj.Compare(one.versions["v2"].Metrics(), one.versions["v1"].Metrics()); v.Decision != route.Inconclusive {
		t.Fatalf("one replica's evidence alone gives %v; the test needs it too small to decide", v)
	}
	for _, kind := range stores {
		t.Run(kind, func(t *testing.T) {
			ctx := context.Background()
			w := newWorld(t, kind, "a", "b", "c")
			w.serve("v1", 10000, 0, 3*ms) // before the plan: not evidence
			w.start(registry.CanaryPlan{StepUp: true, Rollback: true, StepsPct: []float64{20, 100},
				Interval: time.Minute, Judge: judge})
			p := w.pilot(nil, nil)
			p.pass(ctx)

			w.serve("v2", 400, 20, 3*ms)
			w.serve("v1", 4000, 40, 3*ms)
			w.clk.Advance(time.Minute)
			p.pass(ctx)
			w.clk.Advance(time.Minute)
			p.pass(ctx) // the plan has ended: nothing more

			pl := w.plan()
			if pl.State != registry.CanaryRolledBack || pl.Verdict == nil || pl.Verdict.Decision != registry.VerdictRollback || pl.Note != pl.Verdict.Reason {
				t.Fatalf("plan %+v verdict %+v; want rolled back with the verdict's reason", pl, pl.Verdict)
			}
			v := pl.Verdict
			if v.Canary.Requests != 1200 || v.Canary.Errors != 60 || v.Baseline.Requests != 12000 || v.Baseline.Errors != 120 {
				t.Fatalf("verdict evidence canary %+v baseline %+v; want the three replicas' deltas: 1200/60 and 12000/120", v.Canary, v.Baseline)
			}
			if len(v.Replicas) != 3 {
				t.Fatalf("replica breakdown %+v; want 3 entries", v.Replicas)
			}
			var sum int64
			for _, r := range v.Replicas {
				sum += r.Canary.Requests
				if r.Canary.Requests != 400 || r.Baseline.Requests != 4000 {
					t.Errorf("replica %s: %+v", r.Replica, r)
				}
			}
			if sum != v.Canary.Requests {
				t.Fatalf("replicas sum to %d canary requests, the verdict says %d", sum, v.Canary.Requests)
			}
			if s := w.split(); s["v2"] != 0 || s["v1"] != 100 {
				t.Fatalf("split after rollback = %v; want v1=100 v2=0", s)
			}
			if n := w.actions(); n[registry.ActionCanaryRollback] != 1 || n[registry.ActionCanaryStep] != 1 {
				t.Fatalf("events %v; want one canary-step, one canary-rollback", n)
			}
		})
	}
}

// TestEqualErrorRatesNoRollback: a canary failing as often as its
// baseline is never rolled back.
func TestEqualErrorRatesNoRollback(t *testing.T) {
	for _, kind := range stores {
		t.Run(kind, func(t *testing.T) {
			ctx := context.Background()
			w := newWorld(t, kind, "a", "b", "c")
			w.start(registry.CanaryPlan{Rollback: true, Interval: time.Minute, Judge: registry.CanaryJudge{MinSamples: 500}})
			if _, err := w.reg.SetSplit(ctx, "m", registry.Split{"v1": 50, "v2": 50}); err != nil {
				t.Fatal(err)
			}
			p := w.pilot(nil, nil)
			p.pass(ctx) // a watching plan marks where its evidence starts
			if pl := w.plan(); len(pl.Mark) == 0 || pl.Step != -1 {
				t.Fatalf("watching plan %+v; want a mark, no step", pl)
			}
			for range 5 {
				w.serve("v2", 1000, 10, 3*ms)
				w.serve("v1", 1000, 10, 3*ms)
				w.clk.Advance(time.Minute)
				p.pass(ctx)
			}
			pl := w.plan()
			if pl.State != registry.CanaryRunning || pl.Verdict == nil || pl.Verdict.Decision == registry.VerdictRollback ||
				pl.Verdict.Canary.Requests != 15000 {
				t.Fatalf("plan %+v verdict %+v; want running, not rolled back, judged on all 15000 canary requests", pl, pl.Verdict)
			}
			if n := w.actions(); n[registry.ActionCanaryRollback] != 0 || n[registry.ActionCanaryUpdate] != 6 {
				t.Fatalf("events %v; want no rollback, 6 canary-update (the mark and 5 verdicts)", n)
			}
			if s := w.split(); !s.Equal(registry.Split{"v1": 50, "v2": 50}) {
				t.Fatalf("a watching plan changed the split: %v", s)
			}
		})
	}
}

// TestTwoLeadersActOnce: two pilots that both believe they lead (one of
// them deposed without knowing) each try every action; the revision check
// lets each happen once.
func TestTwoLeadersActOnce(t *testing.T) {
	for _, kind := range stores {
		t.Run(kind, func(t *testing.T) {
			ctx := context.Background()
			w := newWorld(t, kind, "a", "b")
			w.start(registry.CanaryPlan{StepUp: true, Rollback: true, StepsPct: []float64{10, 50, 100},
				Interval: time.Minute, Judge: registry.CanaryJudge{MinSamples: 500}})
			a := w.pilot(nil, nil)
			// b reads the plan, then a acts before b commits.
			b := w.pilot(nil, hookEvidence{Evidence: w.col, before: func() { a.pass(ctx) }})
			b.pass(ctx)
			if n := w.actions(); n[registry.ActionCanaryStep] != 1 {
				t.Fatalf("first step: events %v; want one canary-step", n)
			}
			if st := b.Stats(); st.Stale != 1 || len(st.Actions) != 0 {
				t.Fatalf("b's stats %+v; want its step refused as stale", st)
			}

			w.serve("v2", 1000, 0, 3*ms)
			w.serve("v1", 5000, 2, 3*ms)
			w.clk.Advance(time.Minute)
			b.pass(ctx) // a steps up while b judges; b's step is refused
			pl := w.plan()
			if pl.Step != 1 {
				t.Fatalf("plan %+v; want step 1", pl)
			}
			if n := w.actions(); n[registry.ActionCanaryStep] != 2 {
				t.Fatalf("events %v; want two canary-step", n)
			}
			if st := b.Stats(); st.Stale != 2 || len(st.Actions) != 0 {
				t.Fatalf("b's stats %+v; want both its changes refused as stale", st)
			}
			if st := a.Stats(); st.Actions[registry.ActionCanaryStep] != 2 || st.Stale != 0 {
				t.Fatalf("a's stats %+v", st)
			}
		})
	}
}

// TestLeadershipLostBeforeCommit: a pilot that stops leading between its
// read and its commit commits nothing.
func TestLeadershipLostBeforeCommit(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t, "memory", "a")
	w.start(registry.CanaryPlan{StepUp: true, Interval: time.Minute})
	lead := leading()
	p := w.pilot(lead, hookEvidence{Evidence: w.col, before: func() { lead.Store(false) }})
	p.pass(ctx)
	if pl := w.plan(); pl.Revision != 1 || pl.Step != -1 {
		t.Fatalf("plan %+v; want it untouched", pl)
	}
	if st := p.Stats(); len(st.Actions) != 0 || st.Errors != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestLeaderHandover: pilot a leads and steps once; when b leads instead,
// it continues from the stored plan without repeating a's step.
func TestLeaderHandover(t *testing.T) {
	for _, kind := range stores {
		t.Run(kind, func(t *testing.T) {
			ctx := context.Background()
			w := newWorld(t, kind, "a", "b")
			w.start(registry.CanaryPlan{StepUp: true, StepsPct: []float64{10, 50, 100}, Interval: time.Minute,
				Judge: registry.CanaryJudge{MinSamples: 500}})
			la, lb := leading(), &flag{}
			a, b := w.pilot(la, nil), w.pilot(lb, nil)
			a.pass(ctx)
			b.pass(ctx)
			if st := b.Stats(); st.Leader || st.Led != 0 || st.Ticks != 1 {
				t.Fatalf("b's stats while a leads: %+v", st)
			}
			if pl := w.plan(); pl.Step != 0 {
				t.Fatalf("plan %+v; want step 0", pl)
			}

			la.Store(false)
			lb.Store(true)
			w.serve("v2", 1000, 0, 3*ms)
			w.serve("v1", 5000, 2, 3*ms)
			a.pass(ctx)
			b.pass(ctx) // not due yet
			if pl := w.plan(); pl.Step != 0 || pl.Revision != 2 {
				t.Fatalf("plan %+v; want step 0 at revision 2: b repeated or skipped a's step", pl)
			}
			w.clk.Advance(time.Minute)
			a.pass(ctx)
			b.pass(ctx)
			pl := w.plan()
			if pl.Step != 1 || pl.Verdict == nil || pl.Verdict.Canary.Requests != 2000 {
				t.Fatalf("plan %+v verdict %+v; want b to step up on the evidence since a's mark", pl, pl.Verdict)
			}
			if n := w.actions(); n[registry.ActionCanaryStep] != 2 {
				t.Fatalf("events %v; want two canary-step", n)
			}
			if st := a.Stats(); st.Actions[registry.ActionCanaryStep] != 1 || st.Judgements != 0 {
				t.Fatalf("a's stats %+v", st)
			}
			if st := b.Stats(); st.Actions[registry.ActionCanaryStep] != 1 || st.Judgements != 1 {
				t.Fatalf("b's stats %+v", st)
			}
		})
	}
}

// TestPausedPlanNotJudged: a paused plan is neither judged nor changed;
// once resumed it is.
func TestPausedPlanNotJudged(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t, "folder", "a", "b", "c")
	w.start(registry.CanaryPlan{StepUp: true, Rollback: true, StepsPct: []float64{20, 100}, Interval: time.Minute,
		Judge: registry.CanaryJudge{MinSamples: 1000}})
	p := w.pilot(nil, nil)
	p.pass(ctx)
	if _, err := w.reg.PauseCanary(ctx, "m", "looking"); err != nil {
		t.Fatal(err)
	}
	rev := w.plan().Revision
	w.serve("v2", 400, 20, 3*ms)
	w.serve("v1", 4000, 40, 3*ms)
	for range 3 {
		w.clk.Advance(time.Minute)
		p.pass(ctx)
	}
	if pl := w.plan(); pl.Revision != rev || pl.State != registry.CanaryPaused || pl.Verdict != nil {
		t.Fatalf("paused plan %+v; want it untouched", pl)
	}
	if st := p.Stats(); st.Judgements != 0 {
		t.Fatalf("stats %+v; want no judgement of a paused plan", st)
	}
	if _, err := w.reg.ResumeCanary(ctx, "m", ""); err != nil {
		t.Fatal(err)
	}
	w.clk.Advance(time.Minute)
	p.pass(ctx)
	if pl := w.plan(); pl.State != registry.CanaryRolledBack {
		t.Fatalf("resumed plan %+v; want it judged and rolled back", pl)
	}
}

// TestCanaryLostTrafficAborts: a plan whose canary was given no traffic
// by someone else is aborted, not stepped.
func TestCanaryLostTrafficAborts(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t, "memory", "a")
	w.start(registry.CanaryPlan{StepUp: true, Interval: time.Minute})
	p := w.pilot(nil, nil)
	p.pass(ctx)
	if _, err := w.reg.SetSplit(ctx, "m", registry.Split{"v1": 100}); err != nil {
		t.Fatal(err)
	}
	w.clk.Advance(time.Minute)
	p.pass(ctx)
	pl := w.plan()
	if pl.State != registry.CanaryAborted || pl.LastAction != registry.ActionCanaryAbort || pl.Note == "" {
		t.Fatalf("plan %+v; want aborted with a note", pl)
	}
	if s := w.split(); !s.Equal(registry.Split{"v1": 100}) {
		t.Fatalf("split %v; the abort must leave it alone", s)
	}
}

// TestUnjudgeablePlanAborts: judge settings the judge refuses end the
// plan with a note instead of failing every tick.
func TestUnjudgeablePlanAborts(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t, "memory", "a")
	pl := w.start(registry.CanaryPlan{StepUp: true, Interval: time.Minute})
	if _, _, err := w.reg.UpdateCanary(ctx, "m", pl.Revision, func(c *registry.CanaryChange) error {
		c.Plan.Judge.MaxP99Ratio = 0.5
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	p := w.pilot(nil, nil)
	p.pass(ctx)
	w.clk.Advance(time.Minute)
	p.pass(ctx)
	if pl := w.plan(); pl.State != registry.CanaryAborted || !strings.Contains(pl.Note, "MaxP99Ratio") {
		t.Fatalf("plan %+v; want aborted, the note naming the setting", pl)
	}
}

// TestReplicaRestart: a replica that restarted (a new Started, counters
// lower than its mark) counts from zero, never negatively.
func TestReplicaRestart(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t, "memory", "a", "b")
	w.serve("v2", 5000, 50, 3*ms)
	w.serve("v1", 5000, 50, 3*ms)
	w.start(registry.CanaryPlan{StepUp: true, StepsPct: []float64{10, 100}, Interval: time.Minute,
		Judge: registry.CanaryJudge{MinSamples: 100}})
	p := w.pilot(nil, nil)
	p.pass(ctx) // the mark holds 5000 requests per replica and version

	a, b := w.replicas[0], w.replicas[1]
	a.restart()
	a.serve("v2", 300, 0, 3*ms)
	a.serve("v1", 300, 0, 3*ms)
	// b restarts without a new start time (a clock that went back): its
	// counters only went down.
	b.versions = map[string]route.Counters{}
	b.serve("v2", 200, 0, 3*ms)
	b.serve("v1", 200, 0, 3*ms)
	w.publish()

	v, err := p.Judge(ctx, "m", "v2", "v1", registry.CanaryJudge{MinSamples: 100})
	if err != nil {
		t.Fatal(err)
	}
	if v.Canary.Requests != 500 || v.Baseline.Requests != 500 {
		t.Fatalf("evidence canary %+v baseline %+v; want 300+200 each, counted from zero", v.Canary, v.Baseline)
	}
	for _, r := range v.Replicas {
		if r.Canary.Requests < 0 || r.Baseline.Requests < 0 || r.Canary.Errors < 0 || r.Baseline.Errors < 0 {
			t.Fatalf("negative evidence: %+v", r)
		}
	}
	w.clk.Advance(time.Minute)
	p.pass(ctx)
	if pl := w.plan(); pl.Verdict == nil || pl.Verdict.Canary.Requests != 500 {
		t.Fatalf("plan verdict %+v; want 500 canary requests", pl.Verdict)
	}
}

// TestSinceUnit: evidence per replica against a mark, for the cases a
// fleet produces.
func TestSinceUnit(t *testing.T) {
	a, b, c := newReplica("a"), newReplica("b"), newReplica("c")
	a.serve("v2", 100, 1, ms)
	b.serve("v2", 100, 1, ms)
	mk := newMark(fleetOf(a, b), "v2", "v1")
	a.serve("v2", 10, 1, 2*ms)                    // 10 more
	b.restart()                                   // restarted: counts from zero, although
	b.serve("v2", 107, 2, ms)                     // it has more than its mark
	c.serve("v2", 5, 5, ms)                       // new: counts from zero
	ev := since(fleetOf(a, b, c), mk, "v2", "v1") // v1 served nowhere
	if ev.canary.Requests != 122 || ev.canary.Errors != 8 || ev.baseline.Requests != 0 || len(ev.replicas) != 3 {
		t.Fatalf("evidence %+v", ev)
	}
	if m := ev.canary.Metrics(); m.P99 < ms || m.P99 > 3*ms {
		t.Fatalf("p99 of the evidence %v; want within the latencies served since the mark", m.P99)
	}
	// The mark survives its encoding.
	raw, err := mk.encode()
	if err != nil {
		t.Fatal(err)
	}
	back, err := decodeMark(raw)
	if err != nil {
		t.Fatal(err)
	}
	if ev2 := since(fleetOf(a, b, c), back, "v2", "v1"); ev2.canary.Requests != 122 || ev2.canary.Errors != 8 {
		t.Fatalf("evidence against the decoded mark %+v", ev2)
	}
	for _, bad := range []string{`[1]`, `{"a":{"versions":{"v2":{"requests":3,"hist":[[1,2]]}}}}`, `{"a":{"versions":{"v2":{"requests":1,"hist":[[99999,1]]}}}}`} {
		if _, err := decodeMark([]byte(bad)); err == nil {
			t.Errorf("decodeMark(%s) accepted a bad mark", bad)
		}
	}
}

// TestJudge: a verdict on demand, over the cumulative counters without a
// plan and over the evidence since the mark with one, changing nothing.
func TestJudge(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t, "memory", "a", "b")
	w.serve("v2", 1000, 100, 3*ms)
	w.serve("v1", 1000, 10, 3*ms)
	p := w.pilot(nil, nil)

	v, err := p.Judge(ctx, "m", "v2", "v1", registry.CanaryJudge{MinSamples: 500})
	if err != nil {
		t.Fatal(err)
	}
	if v.Decision != registry.VerdictRollback || v.Canary.Requests != 2000 || v.Canary.Errors != 200 || len(v.Replicas) != 2 {
		t.Fatalf("Judge without a plan = %+v; want rollback on the cumulative 2000/200", v)
	}

	w.start(registry.CanaryPlan{StepUp: true, Interval: time.Minute})
	p.pass(ctx) // step 0, marked
	w.serve("v2", 400, 0, 3*ms)
	w.serve("v1", 400, 4, 3*ms)
	seq, _ := w.reg.Seq(ctx)
	v, err = p.Judge(ctx, "m", "v2", "v1", registry.CanaryJudge{MinSamples: 500})
	if err != nil {
		t.Fatal(err)
	}
	if v.Canary.Requests != 800 || v.Canary.Errors != 0 || v.Baseline.Errors != 8 {
		t.Fatalf("Judge with a plan = %+v; want the evidence since the mark (800 requests, no errors)", v)
	}
	// Another pair than the plan's: cumulative.
	v, err = p.Judge(ctx, "m", "v1", "v2", registry.CanaryJudge{MinSamples: 500})
	if err != nil || v.Canary.Requests != 2800 {
		t.Fatalf("Judge of another pair = %+v, %v; want the cumulative 2800 requests", v, err)
	}
	if after, _ := w.reg.Seq(ctx); after != seq {
		t.Fatalf("Judge changed the registry (seq %d → %d)", seq, after)
	}
	if st := p.Stats(); st.Judgements != 0 {
		t.Fatalf("stats %+v; Judge calls are not the loop's judgements", st)
	}
	if _, err := p.Judge(ctx, "m", "../x", "v1", registry.CanaryJudge{}); !errors.Is(err, registry.ErrInvalidName) {
		t.Fatalf("Judge of a bad name = %v", err)
	}
	if _, err := p.Judge(ctx, "m", "v9", "v1", registry.CanaryJudge{}); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("Judge of an unknown version = %v; want ErrNotFound", err)
	}
	if _, err := p.Judge(ctx, "nope", "v2", "v1", registry.CanaryJudge{}); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("Judge of an unknown model = %v; want ErrNotFound", err)
	}
	if _, err := p.Judge(ctx, "m", "v2", "v1", registry.CanaryJudge{MaxP99Ratio: 0.5}); err == nil {
		t.Fatal("Judge accepted a p99 ratio below 1")
	}
}

// TestLoop: the Pilot's own loop runs a plan to promotion.
func TestLoop(t *testing.T) {
	w := newWorld(t, "memory", "a")
	w.start(registry.CanaryPlan{StepUp: true, StepsPct: []float64{50, 100}, Interval: time.Minute,
		Judge: registry.CanaryJudge{MinSamples: 500}})
	p, err := New(Config{Registry: w.reg, Evidence: w.col, Tick: 5 * ms, Now: w.clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	wait := func(what string, ok func(registry.CanaryPlan) bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !ok(w.plan()); {
			if time.Now().After(deadline) {
				t.Fatalf("gave up waiting for %s: plan %+v, stats %+v", what, w.plan(), p.Stats())
			}
			time.Sleep(5 * ms)
		}
	}
	wait("the first step", func(pl registry.CanaryPlan) bool { return pl.Step == 0 })
	w.serve("v2", 3000, 0, 3*ms)
	w.serve("v1", 3000, 3, 3*ms)
	w.clk.Advance(time.Minute)
	wait("promotion", func(pl registry.CanaryPlan) bool { return pl.State == registry.CanaryPromoted })
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if n := w.actions(); n[registry.ActionCanaryStep] != 1 || n[registry.ActionCanaryPromote] != 1 {
		t.Fatalf("events %v", n)
	}
}

func TestNewRefuses(t *testing.T) {
	w := newWorld(t, "memory")
	for _, cfg := range []Config{{Evidence: w.col}, {Registry: w.reg}, {Registry: w.reg, Evidence: w.col, Tick: -1}} {
		if p, err := New(cfg); err == nil {
			p.Close()
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}

// TestStepSplit: the canary's step takes from the baseline, and from the
// other versions in proportion only when the baseline has too little.
func TestStepSplit(t *testing.T) {
	for _, tc := range []struct {
		in   registry.Split
		pct  float64
		want registry.Split
	}{
		{registry.Split{"v1": 100}, 5, registry.Split{"v1": 95, "v2": 5}},
		{registry.Split{"v1": 60, "v2": 20, "v3": 20}, 50, registry.Split{"v1": 30, "v2": 50, "v3": 20}},
		{registry.Split{"v1": 30, "v2": 10, "v3": 60}, 70, registry.Split{"v1": 0, "v2": 70, "v3": 30}},
		{registry.Split{"v1": 50, "v3": 50}, 100, registry.Split{"v1": 0, "v2": 100, "v3": 0}},
		{registry.Split{"v3": 100}, 10, registry.Split{"v2": 10, "v3": 90}}, // v1 not production: not named
	} {
		got := stepSplit(tc.in, "v2", "v1", tc.pct)
		if hasKey(got, "v1") && !hasKey(tc.in, "v1") {
			t.Errorf("stepSplit(%v, %v%%) = %v: names a baseline that had no traffic, which would make it production", tc.in, tc.pct, got)
		}
		if !got.Equal(tc.want) {
			t.Errorf("stepSplit(%v, %v%%) = %v; want %v", tc.in, tc.pct, got, tc.want)
		}
	}
}

func hasKey(s registry.Split, k string) bool { _, ok := s[k]; return ok }

// TestMarginDecidesHealthy: the plan's margin is the judge's. At a 1%
// baseline, 1% canary and 400 requests a side, the default 0.5 pp margin
// cannot yet call the canary healthy (inconclusive), a 3 pp margin can.
func TestMarginDecidesHealthy(t *testing.T) {
	for _, tc := range []struct {
		margin float64
		want   string
	}{{0, registry.VerdictInconclusive}, {3, registry.VerdictHealthy}} {
		t.Run(fmt.Sprint(tc.margin), func(t *testing.T) {
			ctx := context.Background()
			w := newWorld(t, "memory", "a", "b")
			w.start(registry.CanaryPlan{Rollback: true, Interval: time.Minute,
				Judge: registry.CanaryJudge{MinSamples: 100, MarginPct: tc.margin}})
			if _, err := w.reg.SetSplit(ctx, "m", registry.Split{"v1": 50, "v2": 50}); err != nil {
				t.Fatal(err)
			}
			p := w.pilot(nil, nil)
			p.pass(ctx) // the mark
			w.serve("v2", 200, 2, 3*ms)
			w.serve("v1", 200, 2, 3*ms)
			w.clk.Advance(time.Minute)
			p.pass(ctx)
			pl := w.plan()
			if pl.Verdict == nil || pl.Verdict.Decision != tc.want || pl.Verdict.Canary.Requests != 400 {
				t.Fatalf("margin %v pp: verdict %+v; want %s on 400 canary requests", tc.margin, pl.Verdict, tc.want)
			}
		})
	}
}
