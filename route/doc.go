// Package route decides which version of a model serves a request, measures
// every version, judges canaries against their baseline, automates rollback
// and step-up, and mirrors traffic to shadow versions.
//
// It is the Go form of the seed's ModelRouter:
//
//	r, _ := route.New(route.Config{})
//	r.AddVersions("lstm_model", "v1.0", "v2.0")
//	_ = r.SetSplit("lstm_model", route.Split{"v1.0": 0.8, "v2.0": 0.2})
//	v, _ := r.Route("lstm_model", "req_123")      // sticky, 0 allocs
//	r.Record("lstm_model", v, 12*time.Millisecond, err)
//	if r.ShouldRollback("lstm_model", "v2.0", 5.0) { … }
//	st, _ := r.VersionStats("lstm_model", "v2.0")  // error rate %, avg/p50/p95/p99
//
// # Sticky routing
//
// A request id (or user id) is hashed with a per-model salt, then each
// version gets a score by weighted rendezvous hashing: with u_v the id's
// uniform hash for version v, the version with the smallest -ln(u_v)/w_v
// wins. -ln(u_v) is Exp(1), so version v wins with probability w_v/Σw.
// The same id always reaches the same version while the split is unchanged,
// on every replica (the hash is fixed, not seeded per process).
//
// Why rendezvous and not "one uniform point in [0,1) against cumulative
// ranges": with two versions, an id goes to A exactly when
// -ln(u_A)/-ln(u_B) < w_A/w_B; lowering w_A/w_B shrinks A's set of ids
// monotonically, so moving 80/20 to 70/30 moves exactly the 10% of ids that
// must move, all from A to B (measured on 100k ids: 9.92%). Cumulative
// ranges do as well in that case, but a version's range depends on its
// neighbours': giving a new version 10% (80/20 → 72/18/10) moves 18% of ids
// with ranges and 10.0% with rendezvous, whose score for a version depends
// only on that version's own weight; a 0-weight version moves nothing.
// When three weights change at once, rendezvous is close to, not at, the
// minimum: 50/30/20 → 40/40/20 moves 11.8% against the theoretical 10%
// (ranges happen to hit 9.8% there because the shrinking and growing
// versions are neighbours). See TestMinimalMovement.
//
// Experiments on different models are independent because the model name
// (and the optional Config.Salt) is mixed into every hash.
//
// # Splits and the registry
//
// A split maps versions to weights that are non-negative and total 1 within
// Config.Epsilon. SetSplit only accepts versions declared with AddVersions.
// When a registry is attached, it is the source of truth: the server runs
//
//	go r.Follow(ctx, src) // src adapts the registry's Watch to SplitSource
//
// or calls r.Apply(model, split) on every registry traffic change (the
// registry's percentages divided by 100). Apply trusts the source for the
// version list. The router never imports the registry.
//
// # Canary automation
//
// Judge compares a canary with its baseline (minimum samples, a one-sided
// Fisher exact test on error rates, an Agresti–Caffo bound for the
// "healthy" verdict, and a p99 latency ratio). Autopilot runs a canary plan
// on one goroutine: it judges every interval, sets the canary's weight to 0
// on a rollback verdict and steps it up (5% → 25% → 50% → 100% by default)
// after healthy intervals. Every weight change it makes is reported through
// AutopilotConfig.OnAction; when a registry is attached, the server must
// write the new traffic and an audit-log entry there, otherwise the
// registry's next Watch event would restore the old weights. With this
// project's registry that is one call, which also appends the audit event:
//
//	OnAction: func(ctx context.Context, a route.Action) error {
//		pct := registry.Split{}
//		for v, w := range a.To {
//			pct[v] = 100 * w
//		}
//		ctx = registry.WithActor(ctx, "autopilot "+a.Kind.String()+": "+a.Verdict.Reason)
//		_, err := reg.SetSplit(ctx, a.Model, pct)
//		return err
//	},
//
// # Shadow mode
//
// Shadow sends a sampled copy of traffic to a shadow version through a
// bounded queue that drops instead of blocking, runs it with a function the
// caller supplies (the router does not depend on infer or batch), never
// returns its answers, and records how they differ from the primary's.
package route
