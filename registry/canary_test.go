package registry_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/signalforge/signalforge/registry"
)

// canarySetup: v1 production 100%, v2 staging, v3 staging, v4 archived,
// and a running plan v2 against v1 started by "alice".
func canarySetup(t *testing.T) (*registry.Registry, string, registry.CanaryPlan) {
	t.Helper()
	r, dir := setup(t, 4, registry.Split{"v1": 100}, "v4")
	ctx := registry.WithActor(context.Background(), "alice")
	p, err := r.StartCanary(ctx, "m", registry.CanaryPlan{Canary: "v2", Baseline: "v1", StepUp: true, Rollback: true,
		Judge: registry.CanaryJudge{MinSamples: 50, MaxErrorRatePct: 2}})
	if err != nil {
		t.Fatal(err)
	}
	return r, dir, p
}

func TestStartCanary(t *testing.T) {
	r, _, p := canarySetup(t)
	if p.State != registry.CanaryRunning || p.Step != -1 || p.Revision != 1 || p.StartedBy != "alice" || p.StartedAt.IsZero() ||
		p.LastAction != registry.ActionCanaryStart || len(p.StepsPct) != 4 || p.Interval != time.Minute || p.HealthyIntervals != 1 {
		t.Fatalf("started plan = %+v; want running, step -1, revision 1, by alice, default steps, 1m, 1 healthy interval", p)
	}
	got, err := r.Canary(context.Background(), "m")
	if err != nil || got.Revision != 1 || got.Judge.MinSamples != 50 {
		t.Fatalf("Canary = %+v, %v", got, err)
	}
	evs, _ := r.History(context.Background(), "m")
	last := evs[len(evs)-1]
	if last.Action != registry.ActionCanaryStart || last.Actor != "alice" || last.Canary == nil || last.Canary.Revision != 1 || last.Detail == "" {
		t.Fatalf("last event = %+v; want canary-start by alice carrying the plan at revision 1", last)
	}
	if !last.SplitAfter.Equal(registry.Split{"v1": 100}) {
		t.Fatalf("starting a plan changed the split: %v", last.SplitAfter)
	}
}

func TestStartCanaryRefused(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		plan    registry.CanaryPlan
		running bool // a plan runs already
		want    []error
	}{
		{"double start", registry.CanaryPlan{Canary: "v3", Baseline: "v1"}, true, []error{registry.ErrCanary, registry.ErrTransition}},
		{"archived canary", registry.CanaryPlan{Canary: "v4", Baseline: "v1"}, false, []error{registry.ErrCanary, registry.ErrTransition}},
		{"archived baseline", registry.CanaryPlan{Canary: "v2", Baseline: "v4"}, false, []error{registry.ErrCanary, registry.ErrTransition}},
		{"unknown canary", registry.CanaryPlan{Canary: "v9", Baseline: "v1"}, false, []error{registry.ErrNotFound}},
		{"canary is baseline", registry.CanaryPlan{Canary: "v1", Baseline: "v1"}, false, []error{registry.ErrCanary}},
		{"steps decrease", registry.CanaryPlan{Canary: "v2", Baseline: "v1", StepsPct: []float64{50, 25}}, false, []error{registry.ErrCanary}},
		{"step above 100", registry.CanaryPlan{Canary: "v2", Baseline: "v1", StepsPct: []float64{50, 150}}, false, []error{registry.ErrCanary}},
		{"step 0", registry.CanaryPlan{Canary: "v2", Baseline: "v1", StepsPct: []float64{0, 50}}, false, []error{registry.ErrCanary}},
		{"error rate above 100", registry.CanaryPlan{Canary: "v2", Baseline: "v1", Judge: registry.CanaryJudge{MaxErrorRatePct: 101}}, false, []error{registry.ErrCanary}},
		{"margin of 100 pp", registry.CanaryPlan{Canary: "v2", Baseline: "v1", Judge: registry.CanaryJudge{MarginPct: 100}}, false, []error{registry.ErrCanary}},
		{"negative margin", registry.CanaryPlan{Canary: "v2", Baseline: "v1", Judge: registry.CanaryJudge{MarginPct: -1}}, false, []error{registry.ErrCanary}},
		{"p99 ratio below 1", registry.CanaryPlan{Canary: "v2", Baseline: "v1", Judge: registry.CanaryJudge{MaxP99Ratio: 0.5}}, false, []error{registry.ErrCanary}},
		{"invalid name", registry.CanaryPlan{Canary: "../x", Baseline: "v1"}, false, []error{registry.ErrInvalidName}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, dir := setup(t, 4, registry.Split{"v1": 100}, "v4")
			if tc.running {
				if _, err := r.StartCanary(ctx, "m", registry.CanaryPlan{Canary: "v2", Baseline: "v1"}); err != nil {
					t.Fatal(err)
				}
			}
			before := snapshot(t, dir)
			_, err := r.StartCanary(ctx, "m", tc.plan)
			for _, want := range tc.want {
				if !errors.Is(err, want) {
					t.Fatalf("StartCanary = %v; want an error wrapping %v", err, want)
				}
			}
			if after := snapshot(t, dir); after != before {
				t.Fatalf("a refused StartCanary changed the registry")
			}
		})
	}
	t.Run("after the last plan ended", func(t *testing.T) {
		r, _, _ := canarySetup(t)
		if _, err := r.AbortCanary(ctx, "m", "no"); err != nil {
			t.Fatal(err)
		}
		p, err := r.StartCanary(ctx, "m", registry.CanaryPlan{Canary: "v3", Baseline: "v1"})
		if err != nil || p.Revision != 3 || p.State != registry.CanaryRunning {
			t.Fatalf("StartCanary over an aborted plan = %+v, %v; want running at revision 3", p, err)
		}
	})
}

// TestUpdateCanaryStepsWithTraffic: a step and its traffic are one event,
// and the same step attempted again at the old revision is refused.
func TestUpdateCanaryStepsWithTraffic(t *testing.T) {
	r, dir, p := canarySetup(t)
	ctx := registry.WithActor(context.Background(), "autopilot")
	step := func(c *registry.CanaryChange) error {
		c.Plan.Step++
		pct := c.Plan.StepsPct[c.Plan.Step]
		c.Split = registry.Split{"v1": 100 - pct, "v2": pct}
		c.Plan.Note = "healthy"
		c.Action = registry.ActionCanaryStep
		return nil
	}
	got, split, err := r.UpdateCanary(ctx, "m", p.Revision, step)
	if err != nil {
		t.Fatal(err)
	}
	if got.Revision != 2 || got.Step != 0 || got.LastAction != registry.ActionCanaryStep || !split.Equal(registry.Split{"v1": 95, "v2": 5}) {
		t.Fatalf("after a step: plan %+v split %v; want revision 2, step 0, v1=95 v2=5", got, split)
	}
	if s := states(t, r); s != "v1:production:95 v2:production:5 v3:staging:0 v4:archived:0 " {
		t.Fatalf("states = %s", s)
	}
	before := snapshot(t, dir)
	_, _, err = r.UpdateCanary(ctx, "m", p.Revision, step) // the same action again
	var se *registry.StaleRevisionError
	if !errors.Is(err, registry.ErrStaleRevision) || !errors.As(err, &se) || se.Have != 2 || se.Expected != 1 {
		t.Fatalf("repeated step at revision 1 = %v; want a *StaleRevisionError (have 2)", err)
	}
	if snapshot(t, dir) != before {
		t.Fatal("a stale UpdateCanary changed the registry")
	}
	evs, _ := r.History(ctx, "m")
	last := evs[len(evs)-1]
	if last.Action != registry.ActionCanaryStep || last.Actor != "autopilot" || last.Canary == nil || last.Canary.Revision != 2 ||
		len(last.Changes) != 2 || !last.SplitAfter.Equal(registry.Split{"v1": 95, "v2": 5}) || last.Detail != "healthy" {
		t.Fatalf("step event = %+v; want one canary-step event with the traffic change and the plan at revision 2", last)
	}

	// Roll back: traffic away and the plan ended, in one event.
	got, split, err = r.UpdateCanary(ctx, "m", 2, func(c *registry.CanaryChange) error {
		c.Split = registry.Split{"v1": 100, "v2": 0}
		c.Plan.State, c.Plan.Note, c.Action = registry.CanaryRolledBack, "error rate 5% vs 1%", registry.ActionCanaryRollback
		return nil
	})
	if err != nil || got.State != registry.CanaryRolledBack || got.Revision != 3 || !split.Equal(registry.Split{"v1": 100}) {
		t.Fatalf("rollback = %+v %v, %v", got, split, err)
	}
	// An ended plan does not change, whatever the revision.
	if _, _, err := r.UpdateCanary(ctx, "m", 3, step); !errors.Is(err, registry.ErrTransition) {
		t.Fatalf("UpdateCanary on a rolled-back plan = %v; want ErrTransition", err)
	}
	evs, _ = r.History(ctx, "m")
	n := 0
	for _, e := range evs {
		if e.Action == registry.ActionCanaryRollback {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d canary-rollback events; want 1", n)
	}
}

func TestUpdateCanaryRefused(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		fn   func(c *registry.CanaryChange) error
		want error
	}{
		{"change canary", func(c *registry.CanaryChange) error { c.Plan.Canary = "v3"; return nil }, registry.ErrCanary},
		{"step out of range", func(c *registry.CanaryChange) error { c.Plan.Step = 9; return nil }, registry.ErrCanary},
		{"unknown state", func(c *registry.CanaryChange) error { c.Plan.State = "done"; return nil }, registry.ErrCanary},
		{"split not 100", func(c *registry.CanaryChange) error { c.Split = registry.Split{"v1": 90, "v2": 5}; return nil }, registry.ErrTraffic},
		{"split on archived", func(c *registry.CanaryChange) error { c.Split = registry.Split{"v1": 90, "v4": 10}; return nil }, registry.ErrTransition},
		{"start action", func(c *registry.CanaryChange) error { c.Action = registry.ActionCanaryStart; return nil }, registry.ErrCanary},
		{"fn error", func(c *registry.CanaryChange) error { return registry.ErrTraffic }, registry.ErrTraffic},
		{"mark too large", func(c *registry.CanaryChange) error {
			c.Plan.Mark = json.RawMessage(`"` + strings.Repeat("x", registry.MaxCanaryMark-1) + `"`)
			return nil
		}, registry.ErrCanary},
		{"mark not JSON", func(c *registry.CanaryChange) error { c.Plan.Mark = json.RawMessage(`{"a":`); return nil }, registry.ErrCanary},
		{"unknown decision", func(c *registry.CanaryChange) error {
			c.Plan.Verdict = &registry.CanaryVerdict{Decision: "promote"}
			return nil
		}, registry.ErrCanary},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, dir, p := canarySetup(t)
			before := snapshot(t, dir)
			if _, _, err := r.UpdateCanary(ctx, "m", p.Revision, tc.fn); !errors.Is(err, tc.want) {
				t.Fatalf("UpdateCanary = %v; want %v", err, tc.want)
			}
			if snapshot(t, dir) != before {
				t.Fatal("a refused UpdateCanary changed the registry")
			}
		})
	}
	t.Run("no plan", func(t *testing.T) {
		r, _ := setup(t, 2, registry.Split{"v1": 100})
		if _, _, err := r.UpdateCanary(ctx, "m", 0, func(*registry.CanaryChange) error { return nil }); !errors.Is(err, registry.ErrNotFound) {
			t.Fatalf("UpdateCanary without a plan = %v; want ErrNotFound", err)
		}
		if _, err := r.Canary(ctx, "m"); !errors.Is(err, registry.ErrNotFound) {
			t.Fatalf("Canary without a plan = %v; want ErrNotFound", err)
		}
	})
}

func TestPauseResumeAbort(t *testing.T) {
	ctx := registry.WithActor(context.Background(), "bob")
	r, _, _ := canarySetup(t)
	type call struct {
		name   string
		do     func() (registry.CanaryPlan, error)
		state  registry.CanaryState
		action registry.Action
		err    error
	}
	pause := func() (registry.CanaryPlan, error) { return r.PauseCanary(ctx, "m", "lunch") }
	resume := func() (registry.CanaryPlan, error) { return r.ResumeCanary(ctx, "m", "back") }
	abort := func() (registry.CanaryPlan, error) { return r.AbortCanary(ctx, "m", "enough") }
	rev := uint64(1)
	for _, c := range []call{
		{"resume a running plan", resume, "", "", registry.ErrTransition},
		{"pause", pause, registry.CanaryPaused, registry.ActionCanaryPause, nil},
		{"pause again", pause, "", "", registry.ErrTransition},
		{"resume", resume, registry.CanaryRunning, registry.ActionCanaryResume, nil},
		{"pause", pause, registry.CanaryPaused, registry.ActionCanaryPause, nil},
		{"abort a paused plan", abort, registry.CanaryAborted, registry.ActionCanaryAbort, nil},
		{"abort again", abort, "", "", registry.ErrTransition},
		{"resume an aborted plan", resume, "", "", registry.ErrTransition},
	} {
		p, err := c.do()
		if c.err != nil {
			if !errors.Is(err, c.err) {
				t.Fatalf("%s = %v; want %v", c.name, err, c.err)
			}
			continue
		}
		rev++
		if err != nil || p.State != c.state || p.Revision != rev || p.LastAction != c.action {
			t.Fatalf("%s = %+v, %v; want %s at revision %d", c.name, p, err, c.state, rev)
		}
	}
	evs, _ := r.History(ctx, "m")
	var got []registry.Action
	for _, e := range evs {
		if e.Action.IsCanary() {
			got = append(got, e.Action)
			if e.Actor == "bob" && (e.Canary == nil || e.Detail == "") {
				t.Fatalf("event %+v carries no plan or note", e)
			}
		}
	}
	want := []registry.Action{registry.ActionCanaryStart, registry.ActionCanaryPause, registry.ActionCanaryResume, registry.ActionCanaryPause, registry.ActionCanaryAbort}
	if len(got) != len(want) {
		t.Fatalf("canary events %v; want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("canary events %v; want %v", got, want)
		}
	}
	if s := states(t, r); s != "v1:production:100 v2:staging:0 v3:staging:0 v4:archived:0 " {
		t.Fatalf("pause/resume/abort changed traffic: %s", s)
	}
}

func TestArchiveRefusedWhilePlanOrShadowUsesIt(t *testing.T) {
	ctx := context.Background()
	r, _, _ := canarySetup(t)
	if _, err := r.Archive(ctx, ref("m:v2"), false); !errors.Is(err, registry.ErrTransition) {
		t.Fatalf("archiving the canary of a running plan = %v; want ErrTransition", err)
	}
	if _, err := r.AbortCanary(ctx, "m", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := r.SetShadow(ctx, "m", registry.ShadowSetting{Version: "v3"}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Archive(ctx, ref("m:v3"), false); !errors.Is(err, registry.ErrTransition) {
		t.Fatalf("archiving the shadow version = %v; want ErrTransition", err)
	}
	// The ended plan keeps naming v2, which may now be archived.
	if _, err := r.Archive(ctx, ref("m:v2"), false); err != nil {
		t.Fatalf("archiving the canary of an aborted plan: %v", err)
	}
	if p, err := r.Canary(ctx, "m"); err != nil || p.Canary != "v2" {
		t.Fatalf("Canary after archiving its version = %+v, %v", p, err)
	}
}

func TestShadow(t *testing.T) {
	ctx := registry.WithActor(context.Background(), "carol")
	r, dir := setup(t, 4, registry.Split{"v1": 100}, "v4")
	if _, err := r.Shadow(ctx, "m"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("Shadow before any = %v; want ErrNotFound", err)
	}
	if err := r.ClearShadow(ctx, "m"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("ClearShadow before any = %v; want ErrNotFound", err)
	}
	for _, tc := range []struct {
		name string
		s    registry.ShadowSetting
		want error
	}{
		{"rate above 1", registry.ShadowSetting{Version: "v2", Rate: 1.5}, registry.ErrCanary},
		{"negative rate", registry.ShadowSetting{Version: "v2", Rate: -0.1}, registry.ErrCanary},
		{"max busy above 1", registry.ShadowSetting{Version: "v2", MaxBusy: 2}, registry.ErrCanary},
		{"archived", registry.ShadowSetting{Version: "v4"}, registry.ErrTransition},
		{"unknown", registry.ShadowSetting{Version: "v9"}, registry.ErrNotFound},
	} {
		before := snapshot(t, dir)
		if _, err := r.SetShadow(ctx, "m", tc.s); !errors.Is(err, tc.want) {
			t.Fatalf("%s: SetShadow = %v; want %v", tc.name, err, tc.want)
		}
		if snapshot(t, dir) != before {
			t.Fatalf("%s: a refused SetShadow changed the registry", tc.name)
		}
	}
	s, err := r.SetShadow(ctx, "m", registry.ShadowSetting{Version: "v2", MaxBusy: 0.5})
	if err != nil || s.Rate != 1 || s.SetBy != "carol" {
		t.Fatalf("SetShadow = %+v, %v; want rate 1 by carol", s, err)
	}
	if got, err := r.Shadow(ctx, "m"); err != nil || got.Version != "v2" || got.MaxBusy != 0.5 {
		t.Fatalf("Shadow = %+v, %v", got, err)
	}
	if err := r.ClearShadow(ctx, "m"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Shadow(ctx, "m"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("Shadow after clear = %v; want ErrNotFound", err)
	}
	evs, _ := r.History(ctx, "m")
	set, clear := evs[len(evs)-2], evs[len(evs)-1]
	if set.Action != registry.ActionShadowSet || set.Shadow == nil || set.Shadow.Version != "v2" || set.Actor != "carol" ||
		clear.Action != registry.ActionShadowClear || clear.Shadow != nil {
		t.Fatalf("shadow events %+v, %+v", set, clear)
	}
}

// TestRepairRebuildsPlans: Repair of a lost state.json gives back the
// canary plan (at its revision) and the shadow setting.
func TestRepairRebuildsPlans(t *testing.T) {
	ctx := context.Background()
	r, dir, p := canarySetup(t)
	if _, _, err := r.UpdateCanary(ctx, "m", p.Revision, func(c *registry.CanaryChange) error {
		c.Plan.Step, c.Plan.Healthy = 0, 0
		c.Split, c.Action = registry.Split{"v1": 95, "v2": 5}, registry.ActionCanaryStep
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.PauseCanary(ctx, "m", "hold"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.SetShadow(ctx, "m", registry.ShadowSetting{Version: "v3", Rate: 0.25}); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	want := snapshot(t, dir)
	if err := os.Remove(filepath.Join(dir, "state.json")); err != nil {
		t.Fatal(err)
	}
	rep, err := registry.Repair(ctx, dir, registry.RepairOptions{})
	if err != nil || !rep.Wrote || len(rep.Problems) != 0 {
		t.Fatalf("Repair = %+v, %v", rep, err)
	}
	r2 := openReg(t, dir)
	got, err := r2.Canary(ctx, "m")
	if err != nil || got.Revision != 3 || got.State != registry.CanaryPaused || got.Step != 0 || got.Note != "hold" {
		t.Fatalf("rebuilt plan = %+v, %v; want paused at step 0, revision 3", got, err)
	}
	if s, err := r2.Shadow(ctx, "m"); err != nil || s.Version != "v3" || s.Rate != 0.25 {
		t.Fatalf("rebuilt shadow = %+v, %v", s, err)
	}
	if snapshot(t, dir) != want {
		t.Fatalf("the repaired state differs from the one lost:\n%s\nwant\n%s", snapshot(t, dir), want)
	}
}

// TestValidateModelChecksPlanAndShadow: a stored plan or shadow that
// breaks the rules (a hand-edited state) is refused, naming the field.
func TestValidateModelChecksPlanAndShadow(t *testing.T) {
	ctx := context.Background()
	r, _, _ := canarySetup(t)
	if _, err := r.SetShadow(ctx, "m", registry.ShadowSetting{Version: "v3"}); err != nil {
		t.Fatal(err)
	}
	good, err := r.Store().Model(ctx, "m")
	if err != nil {
		t.Fatal(err)
	}
	if err := registry.ValidateModel(good); err != nil {
		t.Fatalf("ValidateModel of a committed plan: %v", err)
	}
	for _, tc := range []struct {
		name, field string
		edit        func(m *registry.Model)
	}{
		{"unknown state", "canary.state", func(m *registry.Model) { m.Canary.State = "done" }},
		{"unknown canary", "canary.canary", func(m *registry.Model) { m.Canary.Canary = "v9" }},
		{"archived canary of a running plan", "canary.canary", func(m *registry.Model) { m.Canary.Canary = "v4" }},
		{"canary is baseline", "canary.baseline", func(m *registry.Model) { m.Canary.Baseline = "v2" }},
		{"steps decrease", "canary.steps_pct", func(m *registry.Model) { m.Canary.StepsPct = []float64{50, 10} }},
		{"step index", "canary.step", func(m *registry.Model) { m.Canary.Step = 4 }},
		{"revision 0", "canary.revision", func(m *registry.Model) { m.Canary.Revision = 0 }},
		{"mark not JSON", "canary.mark", func(m *registry.Model) { m.Canary.Mark = json.RawMessage("{") }},
		{"unknown decision", "canary.verdict.decision", func(m *registry.Model) { m.Canary.Verdict = &registry.CanaryVerdict{Decision: "maybe"} }},
		{"shadow rate 2", "shadow.rate", func(m *registry.Model) { m.Shadow.Rate = 2 }},
		{"shadow archived", "shadow.version", func(m *registry.Model) { m.Shadow.Version = "v4" }},
		{"shadow unknown", "shadow.version", func(m *registry.Model) { m.Shadow.Version = "v9" }},
	} {
		m := good.Clone()
		tc.edit(&m)
		var se *registry.StateError
		if err := registry.ValidateModel(m); !errors.As(err, &se) || se.Field != tc.field {
			t.Errorf("%s: ValidateModel = %v; want a *StateError on %s", tc.name, err, tc.field)
		}
	}
	// Clone is deep: editing the copy's plan left the original alone.
	if err := registry.ValidateModel(good); err != nil {
		t.Fatalf("editing clones changed the original: %v", err)
	}
}

// judged records a verdict, a mark and a judgement time on m's plan, as
// the autopilot does, and returns the plan as committed.
func judged(t *testing.T, r *registry.Registry, rev uint64) registry.CanaryPlan {
	t.Helper()
	at := time.Date(2026, 12, 4, 18, 30, 0, 0, time.UTC)
	v := registry.CanaryVerdict{
		Decision: registry.VerdictInconclusive, Reason: "not enough samples",
		Canary:   registry.VerdictSide{Requests: 90, Errors: 3, NonFinite: 1, P99Ms: 12.5},
		Baseline: registry.VerdictSide{Requests: 900, Errors: 9, P99Ms: 11},
		PValue:   0.2, UpperBound: 0.03, P99Ratio: 1.13,
		Replicas: []registry.ReplicaEvidence{
			{Replica: "a", Canary: registry.VerdictSide{Requests: 40, Errors: 1}, Baseline: registry.VerdictSide{Requests: 400, Errors: 4}, Age: 1500 * time.Millisecond},
			{Replica: "b", Canary: registry.VerdictSide{Requests: 50, Errors: 2, NonFinite: 1}, Baseline: registry.VerdictSide{Requests: 500, Errors: 5}},
		},
		At: at,
	}
	mark := json.RawMessage(`{"a":{"started":"2026-12-04T18:00:00Z","versions":{"v2":{"requests":7,"hist":[[3,7]]}}}}`)
	p, _, err := r.UpdateCanary(context.Background(), "m", rev, func(c *registry.CanaryChange) error {
		c.Plan.Verdict, c.Plan.Mark, c.Plan.JudgedAt, c.Plan.Note = &v, mark, at, v.Reason
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(p.Verdict, &v) || string(p.Mark) != string(mark) || !p.JudgedAt.Equal(at) {
		t.Fatalf("committed plan = %+v; want the verdict, mark and time recorded", p)
	}
	return p
}

// TestVerdictAndMarkRoundTrip: the autopilot's verdict, mark and
// judgement time survive the memory store, the folder store (reopened),
// and a rebuild of the folder's state from its audit log.
func TestVerdictAndMarkRoundTrip(t *testing.T) {
	ctx := context.Background()
	t.Run("memory", func(t *testing.T) {
		r, err := registry.Open(ctx, registry.Config{Store: registry.NewMemStore(), PollInterval: -1})
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		for range 2 {
			if _, err := r.Register(ctx, registry.RegisterRequest{Name: "m", ONNX: onnxModel(t, 1, feats...)}); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := r.Promote(ctx, ref("m:v1"), 100); err != nil {
			t.Fatal(err)
		}
		p, err := r.StartCanary(ctx, "m", registry.CanaryPlan{Canary: "v2", Baseline: "v1"})
		if err != nil {
			t.Fatal(err)
		}
		want := judged(t, r, p.Revision)
		got, err := r.Canary(ctx, "m")
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("Canary = %+v, %v; want %+v", got, err, want)
		}
		evs, _ := r.History(ctx, "m")
		if last := evs[len(evs)-1]; last.Canary == nil || !reflect.DeepEqual(*last.Canary, want) {
			t.Fatalf("the canary-update event carries %+v; want %+v", last.Canary, want)
		}
	})
	t.Run("folder and repair", func(t *testing.T) {
		r, dir, p := canarySetup(t)
		want := judged(t, r, p.Revision)
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		r2 := openReg(t, dir)
		got, err := r2.Canary(ctx, "m")
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("reopened Canary = %+v, %v; want %+v", got, err, want)
		}
		r2.Close()
		state := snapshot(t, dir)
		if err := os.Remove(filepath.Join(dir, "state.json")); err != nil {
			t.Fatal(err)
		}
		if rep, err := registry.Repair(ctx, dir, registry.RepairOptions{}); err != nil || !rep.Wrote || len(rep.Problems) != 0 {
			t.Fatalf("Repair = %+v, %v", rep, err)
		}
		if snapshot(t, dir) != state {
			t.Fatalf("the repaired state differs from the one lost:\n%s\nwant\n%s", snapshot(t, dir), state)
		}
		got, err = openReg(t, dir).Canary(ctx, "m")
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("repaired Canary = %+v, %v; want %+v", got, err, want)
		}
	})
	t.Run("a new plan starts without them", func(t *testing.T) {
		r, _, p := canarySetup(t)
		judged(t, r, p.Revision)
		if _, err := r.AbortCanary(ctx, "m", ""); err != nil {
			t.Fatal(err)
		}
		n, err := r.StartCanary(ctx, "m", registry.CanaryPlan{Canary: "v3", Baseline: "v1",
			Verdict: &registry.CanaryVerdict{Decision: registry.VerdictHealthy}, Mark: json.RawMessage(`{}`), JudgedAt: time.Now()})
		if err != nil || n.Verdict != nil || n.Mark != nil || !n.JudgedAt.IsZero() {
			t.Fatalf("StartCanary = %+v, %v; want no verdict, mark or judgement time", n, err)
		}
	})
}
