package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/signalforge/signalforge/registry"
)

// canaryLease is the lease the replicas' autopilots contend on (the
// registry Elector's default name).
const canaryLease = "autopilot"

// canaryLiveNote says where the numbers the registry does not hold come
// from.
const canaryLiveNote = "live judge numbers (samples, error rates, latency, a verdict now) are not registry state: they come from a running server's fleet (signalforge judge MODEL --canary V --baseline V --server URL; signalforge stats MODEL --server URL)"

// planSub is one subcommand of `signalforge canary` or `signalforge shadow`.
type planSub struct {
	name, synopsis, summary string
	mutates                 bool
	examples                []string
	run                     func(ctx context.Context, e *env, mc *modelsCmd, fs *flag.FlagSet, args []string) error
}

func canarySubs() []planSub {
	return []planSub{
		{"start", "--canary VERSION --baseline VERSION [flags] MODEL", "start a canary plan: the canary's traffic goes through the steps while the judge finds it as healthy as the baseline", true,
			[]string{
				"signalforge canary start forecast_mlp --canary v2.0 --baseline v1.0",
				"signalforge canary start forecast_mlp --canary v2.0 --baseline v1.0 --steps 10,50,100 --interval 5m --max-error-rate-pct 2",
			}, canaryStart},
		{"status", "[--json] [flags] MODEL", "show the plan (state, step, revision, who started it, last action), the traffic split and which replica leads the autopilot", false,
			[]string{"signalforge canary status forecast_mlp", "signalforge canary status forecast_mlp --json"}, canaryStatus},
		{"pause", "[--note TEXT] [--revision N] [flags] MODEL", "pause a running plan: the autopilot stops judging and stepping", true,
			[]string{"signalforge canary pause forecast_mlp --note 'market open, hold'"}, canaryStateCmd(registry.CanaryPaused)},
		{"resume", "[--note TEXT] [--revision N] [flags] MODEL", "resume a paused plan", true,
			[]string{"signalforge canary resume forecast_mlp"}, canaryStateCmd(registry.CanaryRunning)},
		{"abort", "[--note TEXT] [--revision N] [flags] MODEL", "end a running or paused plan, leaving the traffic as it is", true,
			[]string{"signalforge canary abort forecast_mlp --note 'wrong baseline'", "signalforge models traffic forecast_mlp v1.0=100,v2.0=0   # then take the canary's traffic away"}, canaryStateCmd(registry.CanaryAborted)},
	}
}

func shadowSubs() []planSub {
	return []planSub{
		{"set", "--version VERSION [--rate R] [--max-busy B] [flags] MODEL", "mirror a share of the model's requests to a version whose answers are compared and thrown away", true,
			[]string{"signalforge shadow set forecast_mlp --version v3.0 --rate 0.1", "signalforge shadow set forecast_mlp --version v3.0 --rate 1 --max-busy 0.25"}, shadowSet},
		{"clear", "[flags] MODEL", "stop mirroring the model's requests", true,
			[]string{"signalforge shadow clear forecast_mlp"}, shadowClear},
		{"status", "[--json] [flags] MODEL", "show the model's shadow setting", false,
			[]string{"signalforge shadow status forecast_mlp --json"}, shadowStatus},
	}
}

func cmdCanary(ctx context.Context, e *env, args []string) error {
	return planDispatch(ctx, e, "canary", canarySubs(), args,
		"Canary plans are registry state (--registry a folder or postgres:// URL, or $"+modelsEnvRegistry+"): every replica sharing\n"+
			"the registry sees the same plan, and it survives restarts. Traffic is in percent (5 = 5%).\n"+
			"Running servers follow the plans: the replica holding the autopilot lease steps and rolls back the\n"+
			"canary on the whole fleet's counters. A server's admin API does the same (POST /v1/admin/models/NAME/canary).\n"+
			strings.ToUpper(canaryLiveNote[:1])+canaryLiveNote[1:]+".")
}

func cmdShadow(ctx context.Context, e *env, args []string) error {
	return planDispatch(ctx, e, "shadow", shadowSubs(), args,
		"Shadow settings are registry state (--registry a folder or postgres:// URL, or $"+modelsEnvRegistry+").\n"+
			"Every running server follows them and mirrors its own share of the requests; a server's admin API\n"+
			"sets them too (PUT /v1/admin/models/NAME/shadow) and reports that replica's comparison (GET …/shadow).")
}

// planDispatch runs `signalforge CMD SUB …`.
func planDispatch(ctx context.Context, e *env, cmd string, subs []planSub, args []string, about string) error {
	usage := func(w io.Writer) {
		fmt.Fprintf(w, "Usage: signalforge %s <command> [flags] MODEL\n\nCommands:\n", cmd)
		for _, s := range subs {
			fmt.Fprintf(w, "  %-7s %s\n", s.name, s.summary)
		}
		fmt.Fprintf(w, "\n%s\n\nRun `signalforge %s <command> -h` for a command's flags and examples.\n", about, cmd)
	}
	known := func(name string) bool {
		return slices.ContainsFunc(subs, func(s planSub) bool { return s.name == name })
	}
	return dispatch(e, cmd, args, usage, known, func(name string, rest []string) error {
		s := subs[slices.IndexFunc(subs, func(s planSub) bool { return s.name == name })]
		mc := &modelsCmd{mutates: s.mutates}
		fs := flag.NewFlagSet("signalforge "+cmd+" "+s.name, flag.ContinueOnError)
		fs.SetOutput(e.stderr)
		fs.Usage = func() {
			fmt.Fprintf(e.stderr, "Usage: signalforge %s %s %s\n\n%s.\n", cmd, s.name, s.synopsis, s.summary)
			if cmd == "canary" && s.name == "status" {
				fmt.Fprintf(e.stderr, "Note: %s.\n", canaryLiveNote)
			}
			fmt.Fprintln(e.stderr, "\nExamples:")
			for _, ex := range s.examples {
				fmt.Fprintf(e.stderr, "  %s\n", ex)
			}
			fmt.Fprintln(e.stderr, "\nFlags:")
			fs.PrintDefaults()
		}
		mc.commonFlags(e, fs)
		if s.mutates {
			mc.actorFlag(e, fs)
		}
		return s.run(ctx, e, mc, fs, rest)
	})
}

// planModel parses the flags and the one argument, the model name.
func planModel(fs *flag.FlagSet, args []string) (string, error) {
	pos, err := modelsParse(fs, args, 1, 1)
	if err != nil {
		return "", err
	}
	if err := registry.ValidateName(pos[0]); err != nil {
		return "", fmt.Errorf("model name: %w", err)
	}
	return pos[0], nil
}

// parseSteps parses --steps: increasing percentages, "5,25,50,100" (a
// trailing % is allowed).
func parseSteps(s string) ([]float64, error) {
	var steps []float64
	for _, part := range strings.Split(s, ",") {
		p, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(part), "%"), 64)
		if err != nil {
			return nil, fmt.Errorf("--steps %q: %q is not a percentage (want e.g. 5,25,50,100)", s, part)
		}
		steps = append(steps, p)
	}
	return steps, nil
}

// canaryHint adds the CLI's way forward to a refusal; other errors, and
// nil, are returned as they are.
func canaryHint(err error, name string) error {
	var ce *registry.CanaryError
	switch {
	case err == nil:
		return nil
	case errors.Is(err, registry.ErrStaleRevision):
		return fmt.Errorf("%w (run: signalforge canary status %s, then retry with its revision)", err, name)
	case errors.As(err, &ce) && ce.Field == "state" && errors.Is(err, registry.ErrTransition) && strings.Contains(ce.Problem, "already"):
		return fmt.Errorf("%w (run: signalforge canary abort %s)", err, name)
	case errors.Is(err, registry.ErrNotFound) && strings.Contains(err.Error(), "no canary plan"):
		return fmt.Errorf("%w (start one: signalforge canary start %s --canary VERSION --baseline VERSION)", err, name)
	}
	return err
}

func canaryStart(ctx context.Context, e *env, mc *modelsCmd, fs *flag.FlagSet, args []string) error {
	var p registry.CanaryPlan
	fs.StringVar(&p.Canary, "canary", "", "the version to try (required)")
	fs.StringVar(&p.Baseline, "baseline", "", "the version it is judged against (required)")
	steps := fs.String("steps", "5,25,50,100", "the canary's traffic percentages, increasing within (0, 100]; reaching the last promotes the plan")
	fs.DurationVar(&p.Interval, "interval", time.Minute, "how long each judgement waits (hold time between verdicts)")
	fs.IntVar(&p.HealthyIntervals, "healthy-intervals", 1, "consecutive healthy verdicts a step needs before the next")
	noRollback := fs.Bool("no-rollback", false, "do not take the canary's traffic away on a bad verdict (only report it)")
	noStepUp := fs.Bool("no-step-up", false, "do not move through the steps: only watch the current split (and roll back unless --no-rollback)")
	fs.IntVar(&p.Judge.MinSamples, "min-samples", 0, "the fewest requests each side needs before a verdict (0: the judge's default)")
	fs.Float64Var(&p.Judge.MaxP99Ratio, "max-p99-ratio", 0, "the largest canary/baseline p99 latency ratio tolerated (0: the judge's default; negative: no latency check)")
	fs.Float64Var(&p.Judge.MaxErrorRatePct, "max-error-rate-pct", 0, "also roll back a canary whose own error rate exceeds this percentage (0: off)")
	fs.Float64Var(&p.Judge.MarginPct, "margin-pct", 0, "the largest error-rate excess over the baseline, in percentage points, still called healthy (0: the judge's default, 0.5); wider margins step up on fewer requests")
	fs.StringVar(&p.Note, "note", "", "a note recorded with the plan")
	name, err := planModel(fs, args)
	if err != nil {
		return err
	}
	if p.Canary == "" || p.Baseline == "" {
		fmt.Fprintln(e.stderr, "signalforge canary start: --canary and --baseline are required")
		fs.Usage()
		return errUsage
	}
	if p.StepsPct, err = parseSteps(*steps); err != nil {
		return err
	}
	if p.Interval <= 0 {
		return fmt.Errorf("--interval %v must be positive", p.Interval)
	}
	if p.HealthyIntervals < 1 {
		return fmt.Errorf("--healthy-intervals %d must be at least 1", p.HealthyIntervals)
	}
	p.Rollback, p.StepUp = !*noRollback, !*noStepUp
	return mc.with(ctx, func(ctx context.Context, r *registry.Registry) error {
		plan, err := r.StartCanary(ctx, name, p)
		if err != nil {
			return canaryHint(err, name)
		}
		split, err := r.Split(ctx, name)
		if err != nil {
			return err
		}
		st := canaryStatusOf(ctx, r, name, &plan, split)
		if mc.json {
			return modelsJSON(e.stdout, st)
		}
		fmt.Fprintf(e.stdout, "started a canary plan for %s: %s against %s (revision %d)\n", name, plan.Canary, plan.Baseline, plan.Revision)
		return mc.print(e, st, func(tw io.Writer) { canaryTable(tw, st) })
	})
}

// canaryView is what `canary status` shows, and its JSON.
type canaryView struct {
	Model string               `json:"model"`
	Plan  *registry.CanaryPlan `json:"plan"` // null: no plan was ever started
	Split registry.Split       `json:"split"`
	// Autopilot is who leads the fleet's autopilot.
	Autopilot autopilotStatus `json:"autopilot"`
}

// autopilotStatus is the autopilot lease as the registry's store answered.
type autopilotStatus struct {
	Lease string `json:"lease"`
	// Elects is false for a store that grants no leases.
	Elects bool `json:"elects"`
	// Leader holds the lease now ("" if nobody does: never taken,
	// expired or released).
	Leader string `json:"leader,omitempty"`
	// ExpiresInSec is how long the leader's lease has left.
	ExpiresInSec float64 `json:"expires_in_s,omitempty"`
	// Epoch counts the times the lease was taken.
	Epoch uint64 `json:"epoch"`
	// Error is why the lease could not be read.
	Error string `json:"error,omitempty"`
}

func canaryStatusOf(ctx context.Context, r *registry.Registry, name string, plan *registry.CanaryPlan, split registry.Split) canaryView {
	st := canaryView{Model: name, Plan: plan, Split: split, Autopilot: autopilotStatus{Lease: canaryLease}}
	l, ok := r.Store().(registry.Leaser)
	if !ok {
		return st
	}
	st.Autopilot.Elects = true
	lease, err := l.ReadLease(ctx, canaryLease)
	if err != nil {
		st.Autopilot.Error = err.Error()
		return st
	}
	st.Autopilot.Epoch = lease.Epoch
	if lease.Left > 0 {
		st.Autopilot.Leader = lease.Holder
		st.Autopilot.ExpiresInSec = lease.Left.Round(time.Millisecond).Seconds()
	}
	return st
}

func canaryStatus(ctx context.Context, e *env, mc *modelsCmd, fs *flag.FlagSet, args []string) error {
	name, err := planModel(fs, args)
	if err != nil {
		return err
	}
	return mc.with(ctx, func(ctx context.Context, r *registry.Registry) error {
		split, err := r.Split(ctx, name) // ErrNotFound for an unknown model
		if err != nil {
			return err
		}
		var plan *registry.CanaryPlan
		switch p, err := r.Canary(ctx, name); {
		case err == nil:
			plan = &p
		case !errors.Is(err, registry.ErrNotFound):
			return err
		}
		st := canaryStatusOf(ctx, r, name, plan, split)
		return mc.print(e, st, func(tw io.Writer) { canaryTable(tw, st) })
	})
}

// canaryTable writes a status as "key:  value" lines.
func canaryTable(tw io.Writer, st canaryView) {
	row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	row("model", st.Model)
	if p := st.Plan; p == nil {
		row("plan", "none (start one: signalforge canary start "+st.Model+" --canary VERSION --baseline VERSION)")
	} else {
		row("canary", p.Canary+" against baseline "+p.Baseline)
		row("state", string(p.State))
		n := len(p.StepsPct)
		pcts := make([]string, n)
		for i, s := range p.StepsPct {
			pcts[i] = registry.FormatPercent(s) + "%"
		}
		if p.Step < 0 {
			row("step", fmt.Sprintf("0/%d (no step applied yet; the first is %s)", n, pcts[0]))
		} else {
			row("step", fmt.Sprintf("%d/%d (%s)", p.Step+1, n, pcts[p.Step]))
		}
		mode := "step up"
		if !p.StepUp {
			mode = "watch only"
		}
		row("steps", strings.Join(pcts, ", ")+" ("+mode+")")
		row("interval", fmt.Sprintf("%v; %d healthy verdict(s) per step, %d so far", p.Interval, p.HealthyIntervals, p.Healthy))
		rb := "yes"
		if !p.Rollback {
			rb = "no (a bad verdict is only reported)"
		}
		row("rollback", rb)
		row("judge", canaryJudgeText(p.Judge))
		row("revision", strconv.FormatUint(p.Revision, 10))
		row("started", p.StartedAt.Local().Format(time.RFC3339)+modelsBy(modelsActor(p.StartedBy)))
		last := string(p.LastAction) + " at " + p.LastActionAt.Local().Format(time.RFC3339)
		if p.Note != "" {
			last += ": " + p.Note
		}
		row("last action", last)
	}
	row("traffic", st.Split.String())
	a := st.Autopilot
	switch {
	case !a.Elects:
		row("autopilot", "this registry store elects no leader")
	case a.Error != "":
		row("autopilot", "leader unknown: "+a.Error)
	case a.Leader == "":
		row("autopilot", fmt.Sprintf("no leader (lease %q, epoch %d)", a.Lease, a.Epoch))
	default:
		row("autopilot", fmt.Sprintf("led by %s (lease %q expires in %s, epoch %d)", a.Leader, a.Lease,
			time.Duration(a.ExpiresInSec*float64(time.Second)).Round(100*time.Millisecond), a.Epoch))
	}
	row("live numbers", "from a running server, not the registry")
}

func canaryJudgeText(j registry.CanaryJudge) string {
	var parts []string
	if j.MinSamples > 0 {
		parts = append(parts, fmt.Sprintf("min samples %d", j.MinSamples))
	} else {
		parts = append(parts, "min samples: default")
	}
	switch {
	case j.MaxP99Ratio < 0:
		parts = append(parts, "no latency check")
	case j.MaxP99Ratio > 0:
		parts = append(parts, "max p99 ratio "+strconv.FormatFloat(j.MaxP99Ratio, 'g', -1, 64))
	default:
		parts = append(parts, "max p99 ratio: default")
	}
	if j.MaxErrorRatePct > 0 {
		parts = append(parts, "max error rate "+registry.FormatPercent(j.MaxErrorRatePct)+"%")
	}
	if j.MarginPct > 0 {
		parts = append(parts, "healthy margin "+registry.FormatPercent(j.MarginPct)+" pp")
	}
	return strings.Join(parts, ", ")
}

// canaryStateCmd returns the run function of pause (to paused), resume (to
// running) and abort (to aborted).
func canaryStateCmd(to registry.CanaryState) func(ctx context.Context, e *env, mc *modelsCmd, fs *flag.FlagSet, args []string) error {
	action, from, verb := registry.ActionCanaryPause, []registry.CanaryState{registry.CanaryRunning}, "paused"
	switch to {
	case registry.CanaryRunning:
		action, from, verb = registry.ActionCanaryResume, []registry.CanaryState{registry.CanaryPaused}, "resumed"
	case registry.CanaryAborted:
		action, from, verb = registry.ActionCanaryAbort, []registry.CanaryState{registry.CanaryRunning, registry.CanaryPaused}, "aborted"
	}
	return func(ctx context.Context, e *env, mc *modelsCmd, fs *flag.FlagSet, args []string) error {
		note := fs.String("note", "", "why, recorded with the plan and in the audit log")
		rev := fs.Uint64("revision", 0, "act only if the plan is still at this revision (from canary status); 0: whatever it is")
		name, err := planModel(fs, args)
		if err != nil {
			return err
		}
		return mc.with(ctx, func(ctx context.Context, r *registry.Registry) error {
			plan, _, err := r.UpdateCanary(ctx, name, *rev, func(c *registry.CanaryChange) error {
				if !slices.Contains(from, c.Plan.State) {
					return &registry.CanaryError{Model: name, Field: "state", Err: registry.ErrTransition,
						Problem: fmt.Sprintf("the plan is %s; only a %s plan can be %s", c.Plan.State, canaryStates(from), verb)}
				}
				c.Plan.State, c.Plan.Note, c.Action = to, *note, action
				return nil
			})
			if err != nil {
				return canaryHint(err, name)
			}
			if mc.json {
				return modelsJSON(e.stdout, plan)
			}
			fmt.Fprintf(e.stdout, "%s the canary plan of %s (%s against %s): now %s, revision %d\n", verb, name, plan.Canary, plan.Baseline, plan.State, plan.Revision)
			return nil
		})
	}
}

func canaryStates(s []registry.CanaryState) string {
	parts := make([]string, len(s))
	for i, x := range s {
		parts[i] = string(x)
	}
	return strings.Join(parts, " or ")
}

func shadowSet(ctx context.Context, e *env, mc *modelsCmd, fs *flag.FlagSet, args []string) error {
	var s registry.ShadowSetting
	fs.StringVar(&s.Version, "version", "", "the shadow version (required)")
	fs.Float64Var(&s.Rate, "rate", 1, "the share of requests mirrored, within (0, 1]")
	fs.Float64Var(&s.MaxBusy, "max-busy", 0, "the share of a core the shadow may use, within [0, 1] (0: the server's default)")
	name, err := planModel(fs, args)
	if err != nil {
		return err
	}
	if s.Version == "" {
		fmt.Fprintln(e.stderr, "signalforge shadow set: --version is required")
		fs.Usage()
		return errUsage
	}
	if !(s.Rate > 0 && s.Rate <= 1) {
		return fmt.Errorf("--rate %v is not within (0, 1] (0.1 mirrors 10%% of requests)", s.Rate)
	}
	return mc.with(ctx, func(ctx context.Context, r *registry.Registry) error {
		got, err := r.SetShadow(ctx, name, s)
		if err != nil {
			return err
		}
		if mc.json {
			return modelsJSON(e.stdout, shadowStatusJSON{Model: name, Shadow: &got})
		}
		fmt.Fprintf(e.stdout, "%s: mirroring %s%% of requests to %s\n", name, registry.FormatPercent(got.Rate*100), got.Version)
		return nil
	})
}

func shadowClear(ctx context.Context, e *env, mc *modelsCmd, fs *flag.FlagSet, args []string) error {
	name, err := planModel(fs, args)
	if err != nil {
		return err
	}
	return mc.with(ctx, func(ctx context.Context, r *registry.Registry) error {
		if err := r.ClearShadow(ctx, name); err != nil {
			return err
		}
		if mc.json {
			return modelsJSON(e.stdout, shadowStatusJSON{Model: name})
		}
		fmt.Fprintf(e.stdout, "%s: shadow cleared\n", name)
		return nil
	})
}

// shadowStatusJSON is what `shadow status --json` prints.
type shadowStatusJSON struct {
	Model  string                  `json:"model"`
	Shadow *registry.ShadowSetting `json:"shadow"` // null: none
}

func shadowStatus(ctx context.Context, e *env, mc *modelsCmd, fs *flag.FlagSet, args []string) error {
	name, err := planModel(fs, args)
	if err != nil {
		return err
	}
	return mc.with(ctx, func(ctx context.Context, r *registry.Registry) error {
		if _, err := r.Split(ctx, name); err != nil { // ErrNotFound for an unknown model
			return err
		}
		st := shadowStatusJSON{Model: name}
		switch s, err := r.Shadow(ctx, name); {
		case err == nil:
			st.Shadow = &s
		case !errors.Is(err, registry.ErrNotFound):
			return err
		}
		return mc.print(e, st, func(tw io.Writer) {
			row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
			row("model", name)
			s := st.Shadow
			if s == nil {
				row("shadow", "none (set one: signalforge shadow set "+name+" --version VERSION --rate 0.1)")
				return
			}
			row("shadow", s.Version)
			row("rate", registry.FormatPercent(s.Rate*100)+"% of requests")
			busy := "the server's default"
			if s.MaxBusy > 0 {
				busy = registry.FormatPercent(s.MaxBusy*100) + "% of a core"
			}
			row("max busy", busy)
			row("set", s.SetAt.Local().Format(time.RFC3339)+modelsBy(modelsActor(s.SetBy)))
		})
	})
}
