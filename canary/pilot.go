package canary

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/signalforge/signalforge/registry"
	"github.com/signalforge/signalforge/route/fleet"
)

// Leader says whether this process may act for the fleet now.
// *registry.Elector satisfies it.
type Leader interface{ IsLeader() bool }

var (
	_ Leader   = (*registry.Elector)(nil)
	_ Evidence = (*fleet.Collector)(nil)
)

// Evidence reads the fleet's per-version counters of a model.
// *fleet.Collector satisfies it.
type Evidence interface {
	Collect(ctx context.Context, model string) (fleet.Fleet, error)
}

// Config configures a Pilot. Registry and Evidence are required.
type Config struct {
	// Registry holds the plans the Pilot runs. Required.
	Registry *registry.Registry
	// Evidence reads the fleet's counters. Required.
	Evidence Evidence
	// Leader says when this Pilot may act. If nil, it always may (this
	// process is the whole fleet).
	Leader Leader
	// Tick is how often the plans are looked at. If zero, 1s.
	Tick time.Duration
	// Logger receives actions and errors. If nil, they are discarded.
	Logger *slog.Logger
	// Now is the clock verdicts and hold times are measured by. If nil,
	// time.Now.
	Now func() time.Time
}

// Stats is a snapshot of a Pilot's counters.
type Stats struct {
	// Ticks counts the loop's passes; Led those on which it was leader.
	Ticks, Led int64
	// Judgements counts the verdicts the loop made (Judge calls are not
	// counted).
	Judgements int64
	// Actions counts the plan changes committed, by their action
	// (registry.ActionCanaryStep, …Promote, …Rollback, …Update, …Abort).
	Actions map[registry.Action]int64
	// Stale counts changes the registry refused because the plan had
	// changed since it was read (another pilot or a person acted first);
	// they are dropped, never retried.
	Stale int64
	// Errors counts the failures (registry, evidence, a bad plan), and
	// LastError is the last one ("" if none).
	Errors    int64
	LastError string
	// Leader reports whether this Pilot led on its last tick.
	Leader bool
}

// Pilot runs the registry's canary plans; see the package documentation.
// Its loop runs on one goroutine from New until Close.
type Pilot struct {
	reg    *registry.Registry
	ev     Evidence
	leader Leader
	tick   time.Duration
	log    *slog.Logger
	now    func() time.Time

	cancel    context.CancelFunc
	closeOnce sync.Once
	done      chan struct{} // closed when the loop has returned

	mu    sync.Mutex // guards stats
	stats Stats
}

// errNotLeader aborts a change when leadership was lost before the
// commit.
var errNotLeader = errors.New("canary: no longer the leader")

// New starts a Pilot. Close stops it.
func New(cfg Config) (*Pilot, error) {
	switch {
	case cfg.Registry == nil:
		return nil, errors.New("canary: New needs a Registry")
	case cfg.Evidence == nil:
		return nil, errors.New("canary: New needs an Evidence source")
	case cfg.Tick < 0:
		return nil, fmt.Errorf("canary: negative Tick %v", cfg.Tick)
	}
	if cfg.Tick == 0 {
		cfg.Tick = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Pilot{
		reg: cfg.Registry, ev: cfg.Evidence, leader: cfg.Leader, tick: cfg.Tick, log: cfg.Logger, now: cfg.Now,
		cancel: cancel, done: make(chan struct{}),
		stats: Stats{Actions: map[registry.Action]int64{}},
	}
	go p.run(ctx)
	return p, nil
}

// Close stops the Pilot and waits for its loop; a change being committed
// is finished or not made at all. Plans and traffic stay as they are.
// Close is idempotent.
func (p *Pilot) Close() error {
	p.closeOnce.Do(p.cancel)
	<-p.done
	return nil
}

// Stats returns a snapshot of the Pilot's counters.
func (p *Pilot) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.stats
	s.Actions = maps.Clone(p.stats.Actions)
	return s
}

// Judge returns a verdict on model's canary against baseline now, judged
// with j over the fleet's evidence: what was served since the current
// step's mark when the model has an active plan on this canary and
// baseline, else everything the fleet's replicas counted since they
// started. It changes nothing. The error wraps registry.ErrNotFound for a
// model or version the registry does not have, registry.ErrInvalidName
// for a bad name.
func (p *Pilot) Judge(ctx context.Context, model, canary, baseline string, j registry.CanaryJudge) (registry.CanaryVerdict, error) {
	for _, n := range []string{model, canary, baseline} {
		if err := registry.ValidateName(n); err != nil {
			return registry.CanaryVerdict{}, err
		}
	}
	rj, err := judgeOf(j)
	if err != nil {
		return registry.CanaryVerdict{}, err
	}
	vs, err := p.reg.Versions(ctx, model)
	if err != nil {
		return registry.CanaryVerdict{}, err
	}
	for _, v := range []string{canary, baseline} {
		if !slices.ContainsFunc(vs, func(x registry.Version) bool { return x.Version == v }) {
			return registry.CanaryVerdict{}, fmt.Errorf("%w: version %s:%s", registry.ErrNotFound, model, v)
		}
	}
	m := mark{}
	switch plan, err := p.reg.Canary(ctx, model); {
	case errors.Is(err, registry.ErrNotFound):
	case err != nil:
		return registry.CanaryVerdict{}, err
	case plan.State.Active() && plan.Canary == canary && plan.Baseline == baseline:
		if m, err = decodeMark(plan.Mark); err != nil {
			return registry.CanaryVerdict{}, err
		}
	}
	f, err := p.ev.Collect(ctx, model)
	if err != nil {
		return registry.CanaryVerdict{}, fmt.Errorf("canary: fleet counters of %s: %w", model, err)
	}
	return verdict(rj, since(f, m, canary, baseline), p.now()), nil
}

func (p *Pilot) run(ctx context.Context) {
	defer close(p.done)
	t := time.NewTicker(p.tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			p.pass(ctx)
		}
	}
}

// pass looks at every running plan once, if this Pilot leads.
func (p *Pilot) pass(ctx context.Context) {
	leads := p.leads()
	p.mu.Lock()
	p.stats.Ticks++
	p.stats.Leader = leads
	if leads {
		p.stats.Led++
	}
	p.mu.Unlock()
	if !leads {
		return
	}
	models, err := p.reg.Models(ctx)
	if err != nil {
		p.failed("", fmt.Errorf("canary: reading the plans: %w", err))
		return
	}
	for _, m := range models {
		if ctx.Err() != nil {
			return
		}
		if m.Canary != nil && m.Canary.State == registry.CanaryRunning {
			p.plan(ctx, &m)
		}
	}
}

func (p *Pilot) leads() bool { return p.leader == nil || p.leader.IsLeader() }

// plan advances model m's running plan by at most one action.
func (p *Pilot) plan(ctx context.Context, m *registry.Model) {
	pl, split, now := m.Canary, m.Split(), p.now()
	name := m.Name
	if pl.StepUp && pl.Step == -1 {
		f, err := p.ev.Collect(ctx, name)
		if err != nil {
			p.failed(name, fmt.Errorf("canary: fleet counters of %s: %w", name, err))
			return
		}
		mk, err := newMark(f, pl.Canary, pl.Baseline).encode()
		if err != nil {
			p.failed(name, err)
			return
		}
		p.commit(ctx, name, pl.Revision, func(c *registry.CanaryChange) error {
			stepTo(c, 0, mk, fmt.Sprintf("first step: %s%% to %s", registry.FormatPercent(pl.StepsPct[0]), pl.Canary))
			return nil
		})
		return
	}
	if !pl.StepUp && len(pl.Mark) == 0 && pl.JudgedAt.IsZero() {
		// A plan that only watches counts from when it is first seen.
		f, err := p.ev.Collect(ctx, name)
		if err != nil {
			p.failed(name, fmt.Errorf("canary: fleet counters of %s: %w", name, err))
			return
		}
		mk, err := newMark(f, pl.Canary, pl.Baseline).encode()
		if err != nil {
			p.failed(name, err)
			return
		}
		p.commit(ctx, name, pl.Revision, func(c *registry.CanaryChange) error {
			c.Plan.Mark, c.Plan.Note = mk, "watching "+pl.Canary+" against "+pl.Baseline+": evidence counts from now"
			return nil
		})
		return
	}
	base := pl.JudgedAt
	if base.IsZero() {
		base = pl.LastActionAt
	}
	if base.IsZero() {
		base = pl.StartedAt
	}
	if now.Before(base.Add(pl.Interval)) {
		return
	}
	if split[pl.Canary] <= 0 {
		p.commit(ctx, name, pl.Revision, func(c *registry.CanaryChange) error {
			c.Plan.State, c.Action = registry.CanaryAborted, registry.ActionCanaryAbort
			c.Plan.Note = fmt.Sprintf("%s has no traffic: the split was changed outside the autopilot", pl.Canary)
			return nil
		})
		return
	}
	rj, err := judgeOf(pl.Judge)
	if err != nil {
		p.commit(ctx, name, pl.Revision, func(c *registry.CanaryChange) error {
			c.Plan.State, c.Action = registry.CanaryAborted, registry.ActionCanaryAbort
			c.Plan.Note = "the plan cannot be judged: " + err.Error()
			return nil
		})
		return
	}
	mk, err := decodeMark(pl.Mark)
	if err != nil {
		// Count from now rather than judge on wrong evidence.
		p.failed(name, err)
		mk = nil
	}
	f, err := p.ev.Collect(ctx, name)
	if err != nil {
		p.failed(name, fmt.Errorf("canary: fleet counters of %s: %w", name, err))
		return
	}
	if mk == nil {
		fresh, err := newMark(f, pl.Canary, pl.Baseline).encode()
		if err != nil {
			p.failed(name, err)
			return
		}
		p.commit(ctx, name, pl.Revision, func(c *registry.CanaryChange) error {
			c.Plan.Mark, c.Plan.JudgedAt, c.Plan.Healthy = fresh, now.UTC(), 0
			c.Plan.Note = "the evidence mark was unreadable: evidence counts from now"
			return nil
		})
		return
	}
	v := verdict(rj, since(f, mk, pl.Canary, pl.Baseline), now)
	p.mu.Lock()
	p.stats.Judgements++
	p.mu.Unlock()
	p.log.Debug("canary: verdict", "model", name, "canary", pl.Canary, "baseline", pl.Baseline,
		"decision", v.Decision, "reason", v.Reason)

	var next json.RawMessage
	if v.Decision == registry.VerdictHealthy && pl.StepUp && pl.Healthy+1 >= pl.HealthyIntervals && pl.Step+1 < len(pl.StepsPct) {
		if next, err = newMark(f, pl.Canary, pl.Baseline).encode(); err != nil {
			p.failed(name, err)
			return
		}
	}
	p.commit(ctx, name, pl.Revision, func(c *registry.CanaryChange) error {
		c.Plan.Verdict, c.Plan.JudgedAt, c.Plan.Note = &v, now.UTC(), v.Reason
		switch v.Decision {
		case registry.VerdictRollback:
			c.Plan.Healthy = 0
			if pl.Rollback {
				c.Split[pl.Baseline] += c.Split[pl.Canary]
				c.Split[pl.Canary] = 0
				c.Plan.State, c.Action = registry.CanaryRolledBack, registry.ActionCanaryRollback
			}
		case registry.VerdictHealthy:
			c.Plan.Healthy++
			if next != nil {
				stepTo(c, pl.Step+1, next, v.Reason)
			}
		default:
			c.Plan.Healthy = 0
		}
		return nil
	})
}

// stepTo moves the plan in c to step i: its traffic, a new mark, a fresh
// healthy count; canary-promote and state promoted at the last step.
func stepTo(c *registry.CanaryChange, i int, mk []byte, note string) {
	pl := c.Plan
	pl.Step, pl.Healthy, pl.Mark, pl.Note = i, 0, mk, note
	c.Split = stepSplit(c.Split, pl.Canary, pl.Baseline, pl.StepsPct[i])
	c.Action = registry.ActionCanaryStep
	if i == len(pl.StepsPct)-1 {
		pl.State, c.Action = registry.CanaryPromoted, registry.ActionCanaryPromote
	}
}

// stepSplit gives canary pct of the traffic and baseline the rest of what
// the two had; when the two had less than pct, the baseline gets none and
// the other versions give up the difference in proportion to their shares.
func stepSplit(s registry.Split, canary, baseline string, pct float64) registry.Split {
	out := maps.Clone(s)
	pair := s[canary] + s[baseline]
	out[canary] = pct
	if pct <= pair {
		out[baseline] = pair - pct
	} else {
		out[baseline] = 0
		rest := 100 - pair // > 0, since pct <= 100
		for v, x := range s {
			if v != canary && v != baseline {
				out[v] = x * (100 - pct) / rest
			}
		}
	}
	if _, had := s[baseline]; !had && out[baseline] == 0 {
		delete(out, baseline) // naming it would make it production
	}
	return out
}

// commit applies fn to model's plan if it is still at revision rev and
// this Pilot still leads, and counts the outcome.
func (p *Pilot) commit(ctx context.Context, model string, rev uint64, fn func(c *registry.CanaryChange) error) {
	ctx = registry.WithActor(ctx, "autopilot")
	var action registry.Action
	plan, split, err := p.reg.UpdateCanary(ctx, model, rev, func(c *registry.CanaryChange) error {
		if !p.leads() {
			return errNotLeader
		}
		if err := fn(c); err != nil {
			return err
		}
		if c.Action == "" {
			c.Action = registry.ActionCanaryUpdate
		}
		action = c.Action
		return nil
	})
	switch {
	case err == nil:
		p.mu.Lock()
		p.stats.Actions[action]++
		p.mu.Unlock()
		p.log.Info("canary: autopilot", "action", string(action), "model", model, "canary", plan.Canary,
			"step", plan.Step, "state", string(plan.State), "split", split.String(), "note", plan.Note)
	case errors.Is(err, errNotLeader):
		p.log.Info("canary: leadership lost before a change was committed", "model", model)
	case errors.Is(err, registry.ErrStaleRevision):
		p.mu.Lock()
		p.stats.Stale++
		p.mu.Unlock()
		p.log.Info("canary: the plan changed since it was read; left for the next tick", "model", model, "err", err)
	default:
		p.failed(model, fmt.Errorf("canary: changing the plan of %s: %w", model, err))
	}
}

func (p *Pilot) failed(model string, err error) {
	if errors.Is(err, context.Canceled) {
		return
	}
	p.mu.Lock()
	p.stats.Errors++
	p.stats.LastError = err.Error()
	p.mu.Unlock()
	p.log.Error("canary: autopilot", "model", model, "err", err)
}
