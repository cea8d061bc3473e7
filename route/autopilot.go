package route

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"
)

// ActionKind says what Autopilot did to a split.
type ActionKind int

// Actions.
const (
	// StepUp raised the canary's weight to the plan's next step (the first
	// step is applied when the plan starts).
	StepUp ActionKind = iota + 1
	// RolledBack set the canary's weight to 0 after a rollback verdict.
	RolledBack
	// Promoted raised the canary to its last step (weight 1 by default).
	Promoted
)

// MarshalText makes an ActionKind read as its name in JSON.
func (k ActionKind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

func (k ActionKind) String() string {
	switch k {
	case StepUp:
		return "step-up"
	case RolledBack:
		return "rollback"
	case Promoted:
		return "promoted"
	}
	return fmt.Sprintf("ActionKind(%d)", int(k))
}

// Action is one split change made by Autopilot, already applied to the
// router when it is reported.
type Action struct {
	Kind             ActionKind
	Model            string
	Canary, Baseline string
	From, To         Split
	// Verdict is the judgement that triggered the change (zero for the
	// plan's first step).
	Verdict Verdict
	At      time.Time
}

// AutopilotConfig configures an Autopilot.
type AutopilotConfig struct {
	// OnAction is called, on the Autopilot's goroutine, after every split
	// change it makes. With a registry attached, the server must write To
	// as the model's traffic and an audit-log entry (actor "autopilot",
	// the Kind and the Verdict's reason) there; otherwise the registry's
	// next Watch event restores the old split. An error is logged; the
	// router keeps the new split (rolling back locally is the safe side).
	// If nil, actions are only logged.
	OnAction func(ctx context.Context, a Action) error
	// Logger receives actions and callback errors. If nil, discarded.
	Logger *slog.Logger
}

// Plan is one model's canary automation. Both automations are opt-in.
type Plan struct {
	Model, Canary, Baseline string
	// Rollback sets the canary's weight to 0 on a Rollback verdict.
	Rollback bool
	// StepUp applies Steps[0] when the plan starts and moves to the next
	// step after HealthyIntervals consecutive Healthy verdicts. Without it
	// the split is left as it is and only watched.
	StepUp bool
	// Steps are the canary's weights, increasing, in (0, 1]. If nil,
	// 0.05, 0.25, 0.5, 1. Reaching the last step ends the plan.
	Steps []float64
	// Interval is how often the canary is judged. If zero, 1m.
	Interval time.Duration
	// HealthyIntervals is how many consecutive Healthy verdicts a step
	// needs. An Inconclusive verdict restarts the count. If zero, 1.
	HealthyIntervals int
	// Judge decides; its zero value is the documented defaults.
	Judge Judge
}

func (p *Plan) setDefaults() error {
	if p.Steps == nil {
		p.Steps = []float64{0.05, 0.25, 0.5, 1}
	}
	if p.Interval == 0 {
		p.Interval = time.Minute
	}
	if p.HealthyIntervals == 0 {
		p.HealthyIntervals = 1
	}
	switch {
	case !validName(p.Model) || !validName(p.Canary) || !validName(p.Baseline):
		return fmt.Errorf("%w: plan %q %q %q", ErrInvalidName, p.Model, p.Canary, p.Baseline)
	case p.Canary == p.Baseline:
		return errors.New("route: plan canary and baseline are the same version")
	case p.Interval < 0 || p.HealthyIntervals < 0:
		return errors.New("route: plan Interval and HealthyIntervals must be positive")
	case len(p.Steps) == 0:
		return errors.New("route: plan has no steps")
	}
	for i, w := range p.Steps {
		if !(w > 0 && w <= 1) || (i > 0 && w <= p.Steps[i-1]) {
			return fmt.Errorf("route: plan steps %v must increase within (0, 1]", p.Steps)
		}
	}
	return p.Judge.Validate()
}

// CanaryState is where a plan stands.
type CanaryState int

// Plan states.
const (
	Running CanaryState = iota
	RolledBackState
	PromotedState
	Stopped
)

// MarshalText makes a CanaryState read as its name in JSON.
func (s CanaryState) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

func (s CanaryState) String() string {
	switch s {
	case Running:
		return "running"
	case RolledBackState:
		return "rolled back"
	case PromotedState:
		return "promoted"
	default:
		return "stopped"
	}
}

// CanaryStatus is a snapshot of one plan.
type CanaryStatus struct {
	Plan  Plan
	State CanaryState
	// Step indexes Plan.Steps (-1 while the plan does not step up).
	Step int
	// Healthy counts consecutive Healthy verdicts at this step.
	Healthy int
	// Last is the latest verdict; Judged is how many were made.
	Last   Verdict
	Judged int
	// Note explains a Stopped state.
	Note string
}

// Autopilot runs canary plans on one goroutine that owns all their state.
type Autopilot struct {
	r    *Router
	cfg  AutopilotConfig
	reqs chan func(plans map[string]*canary)

	// finished holds ended plans for Status; owned by the loop goroutine
	// (it is only touched from functions the loop runs).
	finished map[string]*canary

	cancel    context.CancelFunc
	closeOnce sync.Once
	stopped   chan struct{} // closed when the loop has returned
}

type canary struct {
	st   CanaryStatus
	next time.Time
}

// NewAutopilot starts an Autopilot for r. Close stops it.
func NewAutopilot(r *Router, cfg AutopilotConfig) (*Autopilot, error) {
	if r == nil {
		return nil, errors.New("route: NewAutopilot needs a Router")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &Autopilot{
		r:        r,
		cfg:      cfg,
		reqs:     make(chan func(map[string]*canary)),
		cancel:   cancel,
		stopped:  make(chan struct{}),
		finished: map[string]*canary{},
	}
	go a.run(ctx)
	return a, nil
}

// Close stops the Autopilot and waits for its goroutine. Splits stay as
// they are. Close is idempotent.
func (a *Autopilot) Close() error {
	a.closeOnce.Do(a.cancel)
	<-a.stopped
	return nil
}

// call runs fn on the loop goroutine and waits for its result, which
// travels back on a buffered channel so that a caller giving up on ctx
// shares nothing with fn.
func call[T any](ctx context.Context, a *Autopilot, fn func(map[string]*canary) (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	var zero T
	if err := ctx.Err(); err != nil {
		return zero, err
	}
	res := make(chan result, 1)
	req := func(plans map[string]*canary) {
		v, err := fn(plans)
		res <- result{v, err}
	}
	select {
	case a.reqs <- req:
	case <-ctx.Done():
		return zero, ctx.Err()
	case <-a.stopped:
		return zero, ErrClosed
	}
	select {
	case r := <-res:
		return r.v, r.err
	case <-ctx.Done():
		return zero, ctx.Err()
	}
}

func (a *Autopilot) do(ctx context.Context, fn func(map[string]*canary) error) error {
	_, err := call(ctx, a, func(plans map[string]*canary) (struct{}, error) {
		return struct{}{}, fn(plans)
	})
	return err
}

// Start runs plan p, replacing any plan for the same model. The model must
// have a split. With StepUp, the canary's weight becomes Steps[0] now.
func (a *Autopilot) Start(ctx context.Context, p Plan) error {
	p.Steps = slices.Clone(p.Steps)
	if err := p.setDefaults(); err != nil {
		return err
	}
	if _, ok := a.r.Split(p.Model); !ok {
		return fmt.Errorf("%w: %s", ErrUnknownModel, p.Model)
	}
	return a.do(ctx, func(plans map[string]*canary) error {
		delete(a.finished, p.Model)
		c := &canary{st: CanaryStatus{Plan: p, Step: -1}, next: time.Now().Add(p.Interval)}
		if p.StepUp {
			c.st.Step = 0
			kind := StepUp
			if len(p.Steps) == 1 {
				kind = Promoted
			}
			if err := a.apply(ctx, c, kind, p.Steps[0], Verdict{}); err != nil {
				return err
			}
		}
		if c.st.State == Running {
			plans[p.Model] = c
		}
		return nil
	})
}

// Stop ends the model's plan without changing its split.
func (a *Autopilot) Stop(ctx context.Context, model string) error {
	return a.do(ctx, func(plans map[string]*canary) error {
		c, ok := plans[model]
		if !ok {
			return fmt.Errorf("%w: no plan for %s", ErrUnknownModel, model)
		}
		a.finish(c, Stopped, "stopped by caller")
		return nil
	})
}

// Status returns the model's plan, also after it ended (until replaced).
func (a *Autopilot) Status(ctx context.Context, model string) (CanaryStatus, error) {
	return call(ctx, a, func(plans map[string]*canary) (CanaryStatus, error) {
		c, ok := plans[model]
		if !ok {
			c, ok = a.finished[model]
		}
		if !ok {
			return CanaryStatus{}, fmt.Errorf("%w: no plan for %s", ErrUnknownModel, model)
		}
		st := c.st
		st.Plan.Steps = slices.Clone(st.Plan.Steps)
		return st, nil
	})
}

func (a *Autopilot) run(ctx context.Context) {
	defer close(a.stopped)
	plans := map[string]*canary{}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		// Arm the timer for the earliest due plan; nil disables the case.
		var due <-chan time.Time
		if len(plans) > 0 {
			earliest := time.Time{}
			for _, c := range plans {
				if earliest.IsZero() || c.next.Before(earliest) {
					earliest = c.next
				}
			}
			timer.Reset(time.Until(earliest))
			due = timer.C
		}
		select {
		case <-ctx.Done():
			return
		case fn := <-a.reqs:
			fn(plans)
			a.reap(plans)
		case now := <-due:
			for _, m := range slices.Sorted(maps.Keys(plans)) {
				if c := plans[m]; !now.Before(c.next) {
					a.tick(ctx, c, now)
				}
			}
			a.reap(plans)
		}
		timer.Stop()
	}
}

// reap moves ended plans out of plans.
func (a *Autopilot) reap(plans map[string]*canary) {
	for m, c := range plans {
		if c.st.State != Running {
			delete(plans, m)
		}
	}
}

func (a *Autopilot) tick(ctx context.Context, c *canary, now time.Time) {
	p := &c.st.Plan
	c.next = now.Add(p.Interval)
	split, ok := a.r.Split(p.Model)
	if !ok || split[p.Canary] == 0 {
		a.finish(c, Stopped, "canary no longer has traffic (changed outside the autopilot)")
		return
	}
	v := a.r.Judge(p.Model, p.Canary, p.Baseline, p.Judge)
	c.st.Last, c.st.Judged = v, c.st.Judged+1
	switch v.Decision {
	case Rollback:
		c.st.Healthy = 0
		if p.Rollback {
			if err := a.apply(ctx, c, RolledBack, 0, v); err != nil {
				a.cfg.Logger.Error("route: autopilot rollback failed", "model", p.Model, "err", err)
			}
		}
	case Healthy:
		c.st.Healthy++
		if p.StepUp && c.st.Healthy >= p.HealthyIntervals && c.st.Step+1 < len(p.Steps) {
			c.st.Step++
			c.st.Healthy = 0
			kind := StepUp
			if c.st.Step == len(p.Steps)-1 {
				kind = Promoted
			}
			if err := a.apply(ctx, c, kind, p.Steps[c.st.Step], v); err != nil {
				a.cfg.Logger.Error("route: autopilot step-up failed", "model", p.Model, "err", err)
			}
		}
	default:
		c.st.Healthy = 0
	}
}

// apply sets the canary's weight and reports the action.
func (a *Autopilot) apply(ctx context.Context, c *canary, kind ActionKind, w float64, v Verdict) error {
	p := &c.st.Plan
	from, to, err := a.r.setWeight(p.Model, p.Canary, p.Baseline, w)
	if err != nil {
		return err
	}
	switch kind {
	case RolledBack:
		a.finish(c, RolledBackState, v.Reason)
	case Promoted:
		a.finish(c, PromotedState, "")
	}
	act := Action{Kind: kind, Model: p.Model, Canary: p.Canary, Baseline: p.Baseline,
		From: from, To: to, Verdict: v, At: time.Now()}
	a.cfg.Logger.Info("route: autopilot", "action", kind.String(), "model", p.Model,
		"canary", p.Canary, "weight", w, "reason", v.Reason)
	if a.cfg.OnAction != nil {
		if err := a.cfg.OnAction(ctx, act); err != nil {
			a.cfg.Logger.Error("route: autopilot action not recorded", "model", p.Model,
				"action", kind.String(), "err", err)
		}
	}
	return nil
}

func (a *Autopilot) finish(c *canary, s CanaryState, note string) {
	c.st.State, c.st.Note = s, note
	a.finished[c.st.Plan.Model] = c
}
