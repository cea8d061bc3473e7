// Package canary is the fleet's canary autopilot: it moves the canary
// plans stored in the registry through their steps, judging each canary
// on the traffic the whole fleet served, and rolls a bad canary back.
//
// A plan lives in the registry (registry.StartCanary, PauseCanary,
// ResumeCanary, AbortCanary), so every replica sees it and whichever
// replica runs the autopilot can continue it. Every replica may run a
// Pilot; only the one its Leader names acts (a registry.Elector on the
// registry's lease store), and each action is committed with
// registry.UpdateCanary against the plan revision it was decided on, so
// that two pilots that both believe they lead — a deposed leader that has
// not noticed yet — still apply each step or rollback once: the loser's
// change is refused as stale and dropped, and it re-reads the plan on its
// next tick.
//
// On every tick, for each running plan:
//
//   - a step-up plan with no step applied yet gets its first step's
//     traffic (canary-step, or canary-promote for a one-step plan), and the
//     fleet's counters at that moment are recorded in the plan as its mark;
//   - once Interval has passed since the last verdict (or the last
//     action), the canary is judged (route.Judge.Compare) on what the fleet
//     served since the mark, replica by replica: the fleet's counters now
//     minus the mark's, where a replica that restarted or is not in the
//     mark counts from zero. A rollback verdict takes the canary's traffic
//     away (canary-rollback) when the plan says so; enough consecutive
//     healthy verdicts move it to the next step (canary-step, with a new
//     mark) or, at the last step, promote it (canary-promote); any other
//     verdict is recorded (canary-update);
//   - a plan whose canary lost its traffic outside the autopilot is
//     aborted. Paused plans are left alone.
//
// Usage, on each replica:
//
//	col, _ := fleet.NewCollector(store, fleet.CollectorConfig{})
//	el, _ := registry.NewElector(registry.ElectorConfig{Leaser: leaser, Holder: replica})
//	p, err := canary.New(canary.Config{Registry: reg, Evidence: col, Leader: el})
//	if err != nil { … }
//	defer p.Close()
//	v, _ := p.Judge(ctx, "fraud", "v2", "v1", registry.CanaryJudge{}) // a verdict now, changing nothing
package canary
