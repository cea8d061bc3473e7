package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"time"
)

// CanaryState is where a canary plan stands.
//
//	running → paused, promoted, rolled_back, aborted
//	paused  → running, promoted, rolled_back, aborted
//
// Promoted, rolled_back and aborted are final: the plan stays on the model
// (for its status and history) until another one is started.
type CanaryState string

// The canary plan states.
const (
	CanaryRunning    CanaryState = "running"
	CanaryPaused     CanaryState = "paused"
	CanaryPromoted   CanaryState = "promoted"
	CanaryRolledBack CanaryState = "rolled_back"
	CanaryAborted    CanaryState = "aborted"
)

func (s CanaryState) valid() bool {
	switch s {
	case CanaryRunning, CanaryPaused, CanaryPromoted, CanaryRolledBack, CanaryAborted:
		return true
	}
	return false
}

// Active reports whether the plan has not ended (running or paused).
func (s CanaryState) Active() bool { return s == CanaryRunning || s == CanaryPaused }

// CanaryJudge holds a plan's judge settings. Zero fields take the judge's
// own defaults.
type CanaryJudge struct {
	// MinSamples is the fewest requests each side needs before a verdict.
	MinSamples int `json:"min_samples,omitempty"`
	// MaxP99Ratio is the largest canary/baseline p99 latency ratio
	// tolerated; negative disables the latency check.
	MaxP99Ratio float64 `json:"max_p99_ratio,omitempty"`
	// MaxErrorRatePct, if positive, also rolls back a canary whose own
	// error rate (in percent) exceeds it.
	MaxErrorRatePct float64 `json:"max_error_rate_pct,omitempty"`
	// MarginPct is the largest excess of the canary's error rate over the
	// baseline's, in percentage points, still called healthy (the
	// non-inferiority margin). A wider margin needs fewer requests for a
	// healthy verdict: at a 1% baseline, a 0.5 pp margin needs thousands
	// per side, a 2 pp margin a few hundred. Zero takes the judge's
	// default (0.5 pp); it must stay below 100.
	MarginPct float64 `json:"margin_pct,omitempty"`
}

// CanaryPlan is one model's canary plan as the registry stores it: what to
// do (steps, hold times, judge settings) and where it stands (state, step,
// revision), so that whichever replica runs the autopilot can continue it.
type CanaryPlan struct {
	// Canary is the version being tried; Baseline the version it is
	// judged against. Both are versions of the plan's model.
	Canary   string `json:"canary"`
	Baseline string `json:"baseline"`
	// StepUp moves the canary through StepsPct; without it the split is
	// only watched (and rolled back if Rollback is set).
	StepUp bool `json:"step_up"`
	// StepsPct are the canary's traffic percentages, increasing, within
	// (0, 100]. Reaching the last step promotes the plan. StartCanary
	// fills 5, 25, 50, 100 if empty.
	StepsPct []float64 `json:"steps_pct"`
	// Interval is how long each judgement waits (the hold time between
	// verdicts). StartCanary fills 1m if zero.
	Interval time.Duration `json:"interval_ns"`
	// HealthyIntervals is how many consecutive healthy verdicts a step
	// needs before the next. StartCanary fills 1 if zero.
	HealthyIntervals int `json:"healthy_intervals"`
	// Rollback takes the canary's traffic away on a rollback verdict.
	Rollback bool `json:"rollback"`
	// Judge holds the judge's settings.
	Judge CanaryJudge `json:"judge"`

	// StartedBy is the actor who started the plan (see WithActor) and
	// StartedAt when.
	StartedBy string    `json:"started_by,omitempty"`
	StartedAt time.Time `json:"started_at"`
	// State is where the plan stands.
	State CanaryState `json:"state"`
	// Step indexes StepsPct: the step whose traffic was applied last, or
	// -1 before the first one is.
	Step int `json:"step"`
	// Healthy counts consecutive healthy verdicts at this step, kept so
	// that a replica taking over continues the count.
	Healthy int `json:"healthy,omitempty"`
	// Revision is 1 when the plan starts and grows by one with every
	// committed change; UpdateCanary refuses a change made against an
	// older revision (ErrStaleRevision), so no action is applied twice.
	// A plan started over a finished one continues its numbering.
	Revision uint64 `json:"revision"`
	// LastAction is the action of the plan's last change, LastActionAt its
	// time and Note what it said (a verdict's reason, who paused, …).
	LastAction   Action    `json:"last_action"`
	LastActionAt time.Time `json:"last_action_at"`
	Note         string    `json:"note,omitempty"`

	// Verdict is the judge's latest verdict, recorded with every
	// judgement (nil before the first).
	Verdict *CanaryVerdict `json:"verdict,omitempty"`
	// Mark is the autopilot's evidence mark: the fleet's counters when
	// the current step began, so that whichever replica judges next
	// counts only what was served since. It is opaque to the registry,
	// must be a JSON value if set, and at most MaxCanaryMark bytes.
	Mark json.RawMessage `json:"mark,omitempty"`
	// JudgedAt is when the last verdict was recorded; the next is due
	// Interval later.
	JudgedAt time.Time `json:"judged_at"`
}

// MaxCanaryMark is the largest CanaryPlan.Mark the registry stores.
const MaxCanaryMark = 256 << 10

// UnmarshalJSON reads a plan, keeping its Mark compact whatever the
// indentation of the document it came from (the folder store indents
// state.json), so that a plan reads back as it was committed.
func (p *CanaryPlan) UnmarshalJSON(b []byte) error {
	type plain CanaryPlan
	if err := json.Unmarshal(b, (*plain)(p)); err != nil {
		return err
	}
	p.Mark = compactMark(p.Mark)
	return nil
}

// compactMark returns m without insignificant space (nil for nil or
// JSON null); a mark that is not JSON is returned as is, for checkPlan
// to refuse.
func compactMark(m json.RawMessage) json.RawMessage {
	if len(m) == 0 || string(m) == "null" {
		return nil
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, m); err != nil {
		return m
	}
	return buf.Bytes()
}

// The decisions a CanaryVerdict records.
const (
	VerdictHealthy      = "healthy"
	VerdictRollback     = "rollback"
	VerdictInconclusive = "inconclusive"
)

// CanaryVerdict is a judgement of a canary against its baseline over the
// fleet's traffic, with the numbers behind it.
type CanaryVerdict struct {
	// Decision is VerdictHealthy, VerdictRollback or VerdictInconclusive.
	Decision string `json:"decision"`
	// Reason says why, in words.
	Reason string `json:"reason"`
	// Canary and Baseline are the evidence judged: what each version
	// served over the judged span, summed over the fleet.
	Canary   VerdictSide `json:"canary"`
	Baseline VerdictSide `json:"baseline"`
	// PValue is the one-sided test's p-value for "the canary's error
	// rate is higher" (1 when not computed); UpperBound the confidence
	// bound on the error-rate excess (a fraction); P99Ratio canary p99 /
	// baseline p99 (0 when not computed).
	PValue     float64 `json:"p_value"`
	UpperBound float64 `json:"upper_bound"`
	P99Ratio   float64 `json:"p99_ratio"`
	// Replicas breaks the evidence down per replica.
	Replicas []ReplicaEvidence `json:"replicas"`
	// At is when the verdict was made.
	At time.Time `json:"at"`
}

// VerdictSide is one version's evidence in a verdict.
type VerdictSide struct {
	Requests  int64   `json:"requests"`
	Errors    int64   `json:"errors"`
	NonFinite int64   `json:"non_finite"`
	P99Ms     float64 `json:"p99_ms"`
}

// ReplicaEvidence is one replica's share of a verdict's evidence.
type ReplicaEvidence struct {
	Replica  string      `json:"replica"`
	Canary   VerdictSide `json:"canary"`
	Baseline VerdictSide `json:"baseline"`
	// Age is how old the replica's counters were when judged.
	Age time.Duration `json:"age_ns"`
}

func (v *CanaryVerdict) clone() *CanaryVerdict {
	if v == nil {
		return nil
	}
	c := *v
	c.Replicas = slices.Clone(v.Replicas)
	return &c
}

// clone returns a deep copy (nil for nil).
func (p *CanaryPlan) clone() *CanaryPlan {
	if p == nil {
		return nil
	}
	c := *p
	c.StepsPct = slices.Clone(p.StepsPct)
	c.Verdict = p.Verdict.clone()
	c.Mark = bytes.Clone(p.Mark)
	return &c
}

// ShadowSetting is one model's shadow: a version that gets a copy of a
// share of the model's requests, whose answers are compared and thrown
// away.
type ShadowSetting struct {
	// Version is the shadow version.
	Version string `json:"version"`
	// Rate is the share of requests mirrored, within (0, 1]. SetShadow
	// fills 1 if zero.
	Rate float64 `json:"rate"`
	// MaxBusy caps the share of a core the shadow may use, within [0, 1]
	// (0: the server's default).
	MaxBusy float64 `json:"max_busy,omitempty"`
	// SetBy is the actor who set it and SetAt when.
	SetBy string    `json:"set_by,omitempty"`
	SetAt time.Time `json:"set_at"`
}

func (s *ShadowSetting) clone() *ShadowSetting {
	if s == nil {
		return nil
	}
	c := *s
	return &c
}

// CanaryError explains a refused canary plan or shadow setting. It wraps
// ErrCanary, and Err when set (ErrTransition for a plan already running or
// ended, or an archived version).
type CanaryError struct {
	Model string
	// Field names what is wrong ("steps_pct", "canary", "state", "rate", …).
	Field   string
	Problem string
	Err     error
}

func (e *CanaryError) Error() string {
	return fmt.Sprintf("registry: model %s: canary/shadow %s: %s", e.Model, e.Field, e.Problem)
}

// Unwrap returns ErrCanary and Err.
func (e *CanaryError) Unwrap() []error {
	if e.Err != nil {
		return []error{ErrCanary, e.Err}
	}
	return []error{ErrCanary}
}

// StaleRevisionError refuses a plan change made against a revision that is
// no longer current. It wraps ErrStaleRevision.
type StaleRevisionError struct {
	Model          string
	Expected, Have uint64
}

func (e *StaleRevisionError) Error() string {
	return fmt.Sprintf("registry: model %s: canary plan is at revision %d, not %d: it changed since it was read", e.Model, e.Have, e.Expected)
}

// Unwrap returns ErrStaleRevision.
func (e *StaleRevisionError) Unwrap() error { return ErrStaleRevision }

// checkPlan returns the field and problem of a plan that breaks the rules
// for model m, or "" if it keeps them.
func checkPlan(m *Model, p *CanaryPlan) (field, problem string) {
	if !p.State.valid() {
		return "state", fmt.Sprintf("%q is not running, paused, promoted, rolled_back or aborted", p.State)
	}
	for _, f := range []struct{ field, v string }{{"canary", p.Canary}, {"baseline", p.Baseline}} {
		if err := ValidateName(f.v); err != nil {
			return f.field, err.Error()
		}
		v := m.version(f.v)
		if v == nil {
			return f.field, fmt.Sprintf("version %s:%s does not exist", m.Name, f.v)
		}
		if v.Status == StatusArchived && p.State.Active() {
			return f.field, fmt.Sprintf("version %s:%s is archived", m.Name, f.v)
		}
	}
	if p.Canary == p.Baseline {
		return "baseline", fmt.Sprintf("canary and baseline are the same version %q", p.Canary)
	}
	if len(p.StepsPct) == 0 {
		return "steps_pct", "no steps"
	}
	for i, s := range p.StepsPct {
		if !(s > 0 && s <= 100) || (i > 0 && s <= p.StepsPct[i-1]) {
			return "steps_pct", fmt.Sprintf("%v must increase within (0, 100]", p.StepsPct)
		}
	}
	switch {
	case p.Step < -1 || p.Step >= len(p.StepsPct):
		return "step", fmt.Sprintf("%d is not -1 or an index of the %d steps", p.Step, len(p.StepsPct))
	case p.Interval < 0:
		return "interval_ns", fmt.Sprintf("%v is negative", p.Interval)
	case p.HealthyIntervals < 0:
		return "healthy_intervals", fmt.Sprintf("%d is negative", p.HealthyIntervals)
	case p.Healthy < 0:
		return "healthy", fmt.Sprintf("%d is negative", p.Healthy)
	case p.Judge.MinSamples < 0:
		return "judge.min_samples", fmt.Sprintf("%d is negative", p.Judge.MinSamples)
	case math.IsNaN(p.Judge.MaxP99Ratio) || math.IsInf(p.Judge.MaxP99Ratio, 0):
		return "judge.max_p99_ratio", fmt.Sprintf("%v is not a finite number", p.Judge.MaxP99Ratio)
	case !(p.Judge.MaxErrorRatePct >= 0 && p.Judge.MaxErrorRatePct <= 100):
		return "judge.max_error_rate_pct", fmt.Sprintf("%v is not a percentage between 0 and 100", p.Judge.MaxErrorRatePct)
	case !(p.Judge.MarginPct >= 0 && p.Judge.MarginPct < 100):
		return "judge.margin_pct", fmt.Sprintf("%v is not a percentage point margin within [0, 100)", p.Judge.MarginPct)
	case p.Revision == 0:
		return "revision", "0 (a stored plan's revision starts at 1)"
	case len(p.Mark) > MaxCanaryMark:
		return "mark", fmt.Sprintf("%d bytes, more than %d", len(p.Mark), MaxCanaryMark)
	case len(p.Mark) > 0 && !json.Valid(p.Mark):
		return "mark", "not a JSON value"
	}
	if v := p.Verdict; v != nil {
		switch v.Decision {
		case VerdictHealthy, VerdictRollback, VerdictInconclusive:
		default:
			return "verdict.decision", fmt.Sprintf("%q is not healthy, rollback or inconclusive", v.Decision)
		}
	}
	return "", ""
}

// checkShadow returns the field and problem of a shadow setting that
// breaks the rules for model m, or "" if it keeps them.
func checkShadow(m *Model, s *ShadowSetting) (field, problem string) {
	if err := ValidateName(s.Version); err != nil {
		return "version", err.Error()
	}
	v := m.version(s.Version)
	switch {
	case v == nil:
		return "version", fmt.Sprintf("version %s:%s does not exist", m.Name, s.Version)
	case v.Status == StatusArchived:
		return "version", fmt.Sprintf("version %s:%s is archived", m.Name, s.Version)
	case !(s.Rate > 0 && s.Rate <= 1):
		return "rate", fmt.Sprintf("%v is not within (0, 1]", s.Rate)
	case !(s.MaxBusy >= 0 && s.MaxBusy <= 1):
		return "max_busy", fmt.Sprintf("%v is not within [0, 1]", s.MaxBusy)
	}
	return "", ""
}

// guardPlans refuses a lifecycle change (not itself a canary or shadow
// change) that archives a version an active canary plan or the shadow
// uses: stop those first. before is the model before the change.
func guardPlans(before, m *Model, ev *Event) error {
	archived := func(v string) error {
		x := m.version(v)
		if x == nil || x.Status != StatusArchived {
			return nil
		}
		from := StatusStaging
		if old := before.version(v); old != nil {
			from = old.Status
		}
		if p := m.Canary; p != nil && p.State.Active() && !ev.Action.IsCanary() && (v == p.Canary || v == p.Baseline) {
			return &TransitionError{x.Ref(), from, StatusArchived,
				fmt.Sprintf("the %s canary plan of %s (%s against %s) uses it; abort the plan first", p.State, m.Name, p.Canary, p.Baseline)}
		}
		if s := m.Shadow; s != nil && !ev.Action.IsShadow() && v == s.Version {
			return &TransitionError{x.Ref(), from, StatusArchived,
				fmt.Sprintf("traffic of %s is mirrored to it; clear the shadow first", m.Name)}
		}
		return nil
	}
	for _, v := range m.Versions {
		if err := archived(v.Version); err != nil {
			return err
		}
	}
	return nil
}

// StartCanary starts a canary plan for model name and returns it as
// stored: state running, step -1 (no step applied yet: the autopilot
// applies StepsPct[0] with UpdateCanary), revision one more than the
// previous plan's, started by the context's actor (see WithActor). Empty
// StepsPct, Interval and HealthyIntervals get their defaults; State, Step,
// Healthy, Revision and the Started and LastAction fields are set by the
// registry, whatever p says; a new plan has no Verdict, Mark or JudgedAt.
//
// It is refused with a *CanaryError when a plan is already running or
// paused (abort it first), the canary and baseline are the same version or
// one of them is archived, or the steps do not increase within (0, 100];
// with ErrNotFound when a version does not exist.
func (r *Registry) StartCanary(ctx context.Context, name string, p CanaryPlan) (CanaryPlan, error) {
	if err := ValidateName(name); err != nil {
		return CanaryPlan{}, err
	}
	for _, v := range []string{p.Canary, p.Baseline} {
		if err := ValidateName(v); err != nil {
			return CanaryPlan{}, fmt.Errorf("canary plan of %s: %w", name, err)
		}
	}
	plan := p.clone()
	if len(plan.StepsPct) == 0 {
		plan.StepsPct = []float64{5, 25, 50, 100}
	}
	if plan.Interval == 0 {
		plan.Interval = time.Minute
	}
	if plan.HealthyIntervals == 0 {
		plan.HealthyIntervals = 1
	}
	plan.State, plan.Step, plan.Healthy, plan.Note = CanaryRunning, -1, 0, p.Note
	plan.Verdict, plan.Mark, plan.JudgedAt = nil, nil, time.Time{}
	if r := plan.Judge.MaxP99Ratio; r > 0 && r < 1 {
		return CanaryPlan{}, &CanaryError{Model: name, Field: "judge.max_p99_ratio",
			Problem: fmt.Sprintf("%v is below 1 (a canary as fast as its baseline would fail); use a negative ratio to disable the check", r)}
	}
	plan.StartedBy, plan.StartedAt = ActorFrom(ctx), r.now().UTC()
	var out CanaryPlan
	err := r.update(ctx, name, func(m *Model, ev *Event) error {
		if len(m.Versions) == 0 {
			return fmt.Errorf("%w: model %q", ErrNotFound, name)
		}
		ev.Action, ev.Version, ev.Detail = ActionCanaryStart, plan.Canary, fmt.Sprintf("canary %s against %s, steps %v%%", plan.Canary, plan.Baseline, plan.StepsPct)
		if old := m.Canary; old != nil && old.State.Active() {
			return &CanaryError{Model: name, Field: "state", Err: ErrTransition,
				Problem: fmt.Sprintf("a canary plan (%s against %s) is already %s; abort it first", old.Canary, old.Baseline, old.State)}
		}
		for _, v := range []string{plan.Canary, plan.Baseline} {
			if m.version(v) == nil {
				return fmt.Errorf("%w: version %s:%s", ErrNotFound, name, v)
			}
		}
		next := plan.clone()
		next.Revision = 1 // checked here; update sets the real one
		if field, problem := checkPlan(m, next); field != "" {
			err := &CanaryError{Model: name, Field: field, Problem: problem}
			if m.version(plan.Canary).Status == StatusArchived || m.version(plan.Baseline).Status == StatusArchived {
				err.Err = ErrTransition
			}
			return err
		}
		m.Canary = next
		return nil
	}, func(m *Model) { out = *m.Canary.clone() })
	if err != nil {
		return CanaryPlan{}, err
	}
	return out, nil
}

// CanaryChange is what UpdateCanary's function edits: the plan, and the
// model's traffic, changed in the same transaction so that "step up to 25%
// and record it" or "roll back and record it" is one commit.
type CanaryChange struct {
	// Plan is a copy of the stored plan to edit in place: its state,
	// step, healthy count, note, verdict, mark and judgement time. Its
	// Canary, Baseline, StartedBy, StartedAt, Revision and LastAction
	// fields are the registry's: changing them is refused (or ignored, for
	// Revision and LastAction, which the commit sets).
	Plan *CanaryPlan
	// Split is the model's traffic now (a copy). Replace or edit it to
	// change the traffic: the new split must total 100 and is applied as
	// SetSplit applies one (staging versions named are promoted,
	// production versions not named keep production with 0%).
	Split Split
	// Action is the audit event's action: one of the canary actions (if
	// empty, ActionCanaryUpdate). Its Detail is Plan.Note.
	Action Action
}

// UpdateCanary changes model name's canary plan in one transaction: fn
// edits a CanaryChange, and the plan, the split if fn changed it, and an
// audit event with the resulting plan are committed together. The plan's
// Revision must still be expectRevision — otherwise nothing is done and
// the error is a *StaleRevisionError wrapping ErrStaleRevision — so an
// actor that read revision n and acts on it cannot act twice, nor over
// another actor's change; expectRevision 0 skips the check (for a
// person's pause or abort). A plan that has ended (promoted, rolled back,
// aborted) cannot change. An error from fn is returned as is and nothing
// is committed; if fn changes nothing, nothing is committed either.
//
// It returns the plan and the split as committed.
func (r *Registry) UpdateCanary(ctx context.Context, name string, expectRevision uint64, fn func(c *CanaryChange) error) (CanaryPlan, Split, error) {
	if err := ValidateName(name); err != nil {
		return CanaryPlan{}, nil, err
	}
	var out CanaryPlan
	var split Split
	err := r.update(ctx, name, sameInputs(func(m *Model, ev *Event) error {
		if len(m.Versions) == 0 || m.Canary == nil {
			return fmt.Errorf("%w: no canary plan for model %q", ErrNotFound, name)
		}
		old := m.Canary
		if expectRevision != 0 && old.Revision != expectRevision {
			return &StaleRevisionError{Model: name, Expected: expectRevision, Have: old.Revision}
		}
		if !old.State.Active() {
			return &CanaryError{Model: name, Field: "state", Err: ErrTransition,
				Problem: fmt.Sprintf("the plan (%s against %s) has ended (%s); start a new one", old.Canary, old.Baseline, old.State)}
		}
		before := m.Split()
		c := &CanaryChange{Plan: old.clone(), Split: maps.Clone(before)}
		if err := fn(c); err != nil {
			return err
		}
		if c.Plan == nil {
			return &CanaryError{Model: name, Field: "plan", Problem: "the change removed the plan"}
		}
		p := c.Plan
		p.Revision, p.LastAction, p.LastActionAt = old.Revision, old.LastAction, old.LastActionAt
		p.Mark = compactMark(p.Mark)
		switch {
		case p.Canary != old.Canary || p.Baseline != old.Baseline:
			return &CanaryError{Model: name, Field: "canary", Problem: "a plan's canary and baseline cannot change; start a new plan"}
		case p.StartedBy != old.StartedBy || !p.StartedAt.Equal(old.StartedAt):
			return &CanaryError{Model: name, Field: "started_by", Problem: "who started the plan and when cannot change"}
		}
		if c.Action == "" {
			c.Action = ActionCanaryUpdate
		}
		if !c.Action.IsCanary() || c.Action == ActionCanaryStart {
			return &CanaryError{Model: name, Field: "action", Problem: fmt.Sprintf("%q is not a canary plan change", c.Action)}
		}
		ev.Action, ev.Version, ev.Detail = c.Action, p.Canary, p.Note
		if field, problem := checkPlan(m, p); field != "" {
			return &CanaryError{Model: name, Field: field, Problem: problem}
		}
		if !c.Split.Equal(before) {
			if err := checkSplit(name, c.Split); err != nil {
				return err
			}
			if err := applySplit(m, c.Split, false); err != nil {
				return err
			}
		}
		m.Canary = p
		return nil
	}), func(m *Model) { out, split = *m.Canary.clone(), m.Split() })
	if err != nil {
		return CanaryPlan{}, nil, err
	}
	return out, split, nil
}

// PauseCanary pauses model name's running canary plan: the autopilot stops
// judging and stepping until ResumeCanary. note goes to the audit event.
func (r *Registry) PauseCanary(ctx context.Context, name, note string) (CanaryPlan, error) {
	return r.setCanaryState(ctx, name, ActionCanaryPause, CanaryPaused, note, CanaryRunning)
}

// ResumeCanary resumes model name's paused canary plan.
func (r *Registry) ResumeCanary(ctx context.Context, name, note string) (CanaryPlan, error) {
	return r.setCanaryState(ctx, name, ActionCanaryResume, CanaryRunning, note, CanaryPaused)
}

// AbortCanary ends model name's running or paused canary plan without
// changing its traffic (set a split or roll back for that).
func (r *Registry) AbortCanary(ctx context.Context, name, note string) (CanaryPlan, error) {
	return r.setCanaryState(ctx, name, ActionCanaryAbort, CanaryAborted, note, CanaryRunning, CanaryPaused)
}

func (r *Registry) setCanaryState(ctx context.Context, name string, action Action, to CanaryState, note string, from ...CanaryState) (CanaryPlan, error) {
	p, _, err := r.UpdateCanary(ctx, name, 0, func(c *CanaryChange) error {
		if !slices.Contains(from, c.Plan.State) {
			return &CanaryError{Model: name, Field: "state", Err: ErrTransition,
				Problem: fmt.Sprintf("the plan is %s; cannot go to %s", c.Plan.State, to)}
		}
		c.Plan.State, c.Plan.Note, c.Action = to, note, action
		return nil
	})
	return p, err
}

// Canary returns model name's canary plan: the running or paused one, or
// the last one that ended. ErrNotFound if none was ever started.
func (r *Registry) Canary(ctx context.Context, name string) (CanaryPlan, error) {
	m, err := r.model(ctx, name)
	if err != nil {
		return CanaryPlan{}, err
	}
	if m.Canary == nil {
		return CanaryPlan{}, fmt.Errorf("%w: no canary plan for model %q", ErrNotFound, name)
	}
	return *m.Canary.clone(), nil
}

// SetShadow mirrors a share of model name's requests to a version
// (replacing any shadow setting it had), set by the context's actor. A
// zero Rate means 1. It is refused with a *CanaryError for a rate outside
// (0, 1], a MaxBusy outside [0, 1] or an archived version, and with
// ErrNotFound for a version that does not exist.
func (r *Registry) SetShadow(ctx context.Context, name string, s ShadowSetting) (ShadowSetting, error) {
	if err := ValidateName(name); err != nil {
		return ShadowSetting{}, err
	}
	if err := ValidateName(s.Version); err != nil {
		return ShadowSetting{}, fmt.Errorf("shadow of %s: %w", name, err)
	}
	if s.Rate == 0 {
		s.Rate = 1
	}
	s.SetBy, s.SetAt = ActorFrom(ctx), r.now().UTC()
	err := r.update(ctx, name, func(m *Model, ev *Event) error {
		if len(m.Versions) == 0 {
			return fmt.Errorf("%w: model %q", ErrNotFound, name)
		}
		ev.Action, ev.Version = ActionShadowSet, s.Version
		ev.Detail = fmt.Sprintf("mirror %s of requests to %s", FormatPercent(s.Rate*100)+"%", s.Version)
		if m.version(s.Version) == nil {
			return fmt.Errorf("%w: version %s:%s", ErrNotFound, name, s.Version)
		}
		if field, problem := checkShadow(m, &s); field != "" {
			err := &CanaryError{Model: name, Field: field, Problem: problem}
			if m.version(s.Version).Status == StatusArchived {
				err.Err = ErrTransition
			}
			return err
		}
		m.Shadow = s.clone()
		return nil
	})
	if err != nil {
		return ShadowSetting{}, err
	}
	return s, nil
}

// ClearShadow stops mirroring model name's requests. ErrNotFound if it had
// no shadow.
func (r *Registry) ClearShadow(ctx context.Context, name string) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	return r.update(ctx, name, func(m *Model, ev *Event) error {
		if len(m.Versions) == 0 || m.Shadow == nil {
			return fmt.Errorf("%w: no shadow for model %q", ErrNotFound, name)
		}
		ev.Action, ev.Version, ev.Detail = ActionShadowClear, m.Shadow.Version, "stopped mirroring to "+m.Shadow.Version
		m.Shadow = nil
		return nil
	})
}

// Shadow returns model name's shadow setting; ErrNotFound if it has none.
func (r *Registry) Shadow(ctx context.Context, name string) (ShadowSetting, error) {
	m, err := r.model(ctx, name)
	if err != nil {
		return ShadowSetting{}, err
	}
	if m.Shadow == nil {
		return ShadowSetting{}, fmt.Errorf("%w: no shadow for model %q", ErrNotFound, name)
	}
	return *m.Shadow, nil
}

func (r *Registry) model(ctx context.Context, name string) (Model, error) {
	if err := ValidateName(name); err != nil {
		return Model{}, err
	}
	return r.store.Model(ctx, name)
}

// checkSplit checks a split given by a caller: valid version names,
// percentages, a total of 100.
func checkSplit(name string, split Split) error {
	for _, k := range sortedVersions(split) {
		if err := ValidateName(k); err != nil {
			return fmt.Errorf("version of %s: %w", name, err)
		}
		if err := checkPct(split[k]); err != nil {
			return fmt.Errorf("%s:%s: %w", name, k, err)
		}
	}
	if t := split.Total(); math.Abs(t-100) > eps {
		return fmt.Errorf("%w: the split %v totals %s%%; it must total 100%%", ErrTraffic, split, FormatPercent(t))
	}
	return nil
}

var errCanaryOutsideAction = errors.New("registry: internal: a canary plan or shadow setting changed outside a canary or shadow action")
