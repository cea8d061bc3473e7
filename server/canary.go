package server

import (
	"context"
	"fmt"
	"maps"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/signalforge/signalforge/api"
	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/registry"
	"github.com/signalforge/signalforge/route"
	"github.com/signalforge/signalforge/tensor"
)

// Canary plans and shadow settings, driven through the admin API. Both are
// registry state: any replica's admin API writes them, every replica
// reports the same plan, every replica runs the model's shadow, and the
// replica that leads the autopilot judges the plan on the fleet's counters
// and writes its steps and rollbacks to the registry (actor "autopilot").
//
//	POST   /v1/admin/models/{name}/canary          start a plan (step-up and/or auto rollback)
//	GET    /v1/admin/models/{name}/canary          the plan, its last verdict and who runs the autopilot
//	POST   /v1/admin/models/{name}/canary/pause    pause a running plan
//	POST   /v1/admin/models/{name}/canary/resume   resume a paused plan
//	DELETE /v1/admin/models/{name}/canary          abort it (the traffic stays as it is)
//	GET    /v1/admin/models/{name}/judge?canary=v2&baseline=v1   one verdict now, on the fleet's counters
//	PUT    /v1/admin/models/{name}/shadow          mirror a share of traffic to a version
//	GET    /v1/admin/models/{name}/shadow          the setting and how this replica's shadow answers differ
//	DELETE /v1/admin/models/{name}/shadow          stop mirroring

// adminActor is who the admin API's canary and shadow changes are
// attributed to in the audit log.
const adminActor = "admin"

type canaryBody struct {
	Canary           string    `json:"canary"`
	Baseline         string    `json:"baseline"`
	Rollback         *bool     `json:"rollback"` // default true
	StepUp           bool      `json:"step_up"`
	StepsPct         []float64 `json:"steps_pct"` // default 5, 25, 50, 100
	IntervalText     string    `json:"interval"`  // e.g. "5m"; default 1m
	HealthyIntervals int       `json:"healthy_intervals"`
	MinSamples       int       `json:"min_samples"`
	MaxP99Ratio      float64   `json:"max_p99_ratio"`
	MaxErrorRatePct  float64   `json:"max_error_rate_pct"`
	MarginPct        float64   `json:"margin_pct"`
	Note             string    `json:"note"`
}

// canaryView is the answer of the canary endpoints: the registry's plan
// (the same on every replica) and who runs the autopilot.
type canaryView struct {
	Model string `json:"model"`
	registry.CanaryPlan
	Autopilot autopilotView `json:"autopilot"`
}

func (s *Server) canaryAnswer(w http.ResponseWriter, r *http.Request, name string, p registry.CanaryPlan) {
	writeJSON(w, http.StatusOK, canaryView{Model: name, CanaryPlan: p, Autopilot: s.autopilotStatus(r.Context())})
}

func (s *Server) handleCanaryStart(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	var b canaryBody
	if err := s.decodeJSON(w, r, &b); err != nil {
		return err
	}
	p := registry.CanaryPlan{Canary: b.Canary, Baseline: b.Baseline, Rollback: b.Rollback == nil || *b.Rollback, StepUp: b.StepUp,
		StepsPct: b.StepsPct, HealthyIntervals: b.HealthyIntervals, Note: b.Note,
		Judge: registry.CanaryJudge{MinSamples: b.MinSamples, MaxP99Ratio: b.MaxP99Ratio, MaxErrorRatePct: b.MaxErrorRatePct, MarginPct: b.MarginPct}}
	if b.IntervalText != "" {
		d, err := time.ParseDuration(b.IntervalText)
		if err != nil || d < time.Second {
			return badRequest("field \"interval\": %q must be a duration of at least 1s (e.g. \"5m\")", b.IntervalText)
		}
		p.Interval = d
	}
	switch {
	case b.Canary == "" || b.Baseline == "":
		return badRequest("fields \"canary\" and \"baseline\" are required: the version to try and the version it is judged against")
	case b.MinSamples < 0:
		return badRequest("field \"min_samples\" must not be negative, got %d", b.MinSamples)
	case b.MaxP99Ratio < 0:
		return badRequest("field \"max_p99_ratio\" must not be negative, got %v", b.MaxP99Ratio)
	case b.MaxErrorRatePct < 0 || b.MaxErrorRatePct > 100:
		return badRequest("field \"max_error_rate_pct\" must be in [0, 100], got %v", b.MaxErrorRatePct)
	case !(b.MarginPct >= 0 && b.MarginPct < 100):
		return badRequest("field \"margin_pct\" must be in [0, 100), got %v", b.MarginPct)
	case b.HealthyIntervals < 0:
		return badRequest("field \"healthy_intervals\" must not be negative, got %d", b.HealthyIntervals)
	}
	plan, err := s.reg.StartCanary(registry.WithActor(r.Context(), adminActor), name, p)
	if err != nil {
		return err
	}
	s.log.Info("canary plan started", "model", name, "canary", plan.Canary, "baseline", plan.Baseline, "steps_pct", plan.StepsPct, "revision", plan.Revision)
	s.canaryAnswer(w, r, name, plan)
	return nil
}

func (s *Server) handleCanaryStatus(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	p, err := s.reg.Canary(r.Context(), name)
	if err != nil {
		return err
	}
	s.canaryAnswer(w, r, name, p)
	return nil
}

// canaryNote reads the optional {"note": "..."} body of pause, resume and
// abort.
func (s *Server) canaryNote(w http.ResponseWriter, r *http.Request) (string, error) {
	var b struct {
		Note string `json:"note"`
	}
	if r.ContentLength != 0 {
		if err := s.decodeJSON(w, r, &b); err != nil {
			return "", err
		}
	}
	return b.Note, nil
}

// canaryStateHandler returns the handler of pause, resume or abort.
func (s *Server) canaryStateHandler(change func(ctx context.Context, name, note string) (registry.CanaryPlan, error)) func(w http.ResponseWriter, r *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		name := r.PathValue("name")
		note, err := s.canaryNote(w, r)
		if err != nil {
			return err
		}
		p, err := change(registry.WithActor(r.Context(), adminActor), name, note)
		if err != nil {
			return err
		}
		s.canaryAnswer(w, r, name, p)
		return nil
	}
}

// judgeView is the answer of GET …/judge.
type judgeView struct {
	Model string `json:"model"`
	registry.CanaryVerdict
}

// handleJudge judges a canary on the fleet's counters now, changing
// nothing: over what the fleet served since the current step began when
// the model's active plan is on these versions (with the plan's judge
// settings), else over everything the replicas counted. Query parameters
// min_samples, max_p99_ratio, max_error_rate_pct and margin_pct override
// the settings.
func (s *Server) handleJudge(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	q := r.URL.Query()
	canaryV, baseline := q.Get("canary"), q.Get("baseline")
	if canaryV == "" || baseline == "" {
		return badRequest("query parameters \"canary\" and \"baseline\" are required")
	}
	if canaryV == baseline {
		return badRequest("canary and baseline are the same version %q", canaryV)
	}
	for _, v := range []string{canaryV, baseline} {
		if _, err := s.reg.Get(r.Context(), registry.Ref{Name: name, Version: v}); err != nil {
			return err
		}
	}
	var j registry.CanaryJudge
	if p, err := s.reg.Canary(r.Context(), name); err == nil && p.State.Active() && p.Canary == canaryV && p.Baseline == baseline {
		j = p.Judge
	}
	if err := judgeQuery(q, &j); err != nil {
		return err
	}
	fp := s.fleet.Load()
	if fp == nil {
		return &HTTPError{Status: http.StatusServiceUnavailable, Code: api.CodeUnavailable, Msg: "the server is not serving yet", RetryAfter: time.Second}
	}
	v, err := fp.pilot.Judge(r.Context(), name, canaryV, baseline, j)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, judgeView{Model: name, CanaryVerdict: v})
	return nil
}

// judgeQuery reads the judge settings a query overrides.
func judgeQuery(q url.Values, j *registry.CanaryJudge) error {
	if v := q.Get("min_samples"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return badRequest("query parameter \"min_samples\": %q is not a count", v)
		}
		j.MinSamples = n
	}
	for _, f := range []struct {
		name   string
		dst    *float64
		lo, hi float64
	}{
		{"max_p99_ratio", &j.MaxP99Ratio, math.Inf(-1), math.Inf(1)},
		{"max_error_rate_pct", &j.MaxErrorRatePct, 0, 100},
		{"margin_pct", &j.MarginPct, 0, 99.999},
	} {
		v := q.Get(f.name)
		if v == "" {
			continue
		}
		x, err := strconv.ParseFloat(v, 64)
		if err != nil || math.IsNaN(x) || math.IsInf(x, 0) || x < f.lo || x > f.hi {
			return badRequest("query parameter %q: %q is not a number in range", f.name, v)
		}
		*f.dst = x
	}
	return nil
}

type shadowBody struct {
	Version string  `json:"version"`
	Rate    float64 `json:"rate"`     // share of requests mirrored, (0, 1]; default 1
	MaxBusy float64 `json:"max_busy"` // share of a core the shadow may use; 0: defaultShadowBusy
}

// defaultShadowBusy is the share of a core a shadow may use when its
// setting leaves MaxBusy zero.
const defaultShadowBusy = 0.5

// shadowView is the answer of the shadow endpoints: the registry's
// setting and this replica's shadow statistics (every replica mirrors its
// own share of the traffic; Running is false until this replica has
// followed the setting).
type shadowView struct {
	Setting registry.ShadowSetting `json:"setting"`
	Replica string                 `json:"replica"`
	Running bool                   `json:"running"`
	shadowStatsView
}

func (s *Server) shadowAnswer(w http.ResponseWriter, name string, set registry.ShadowSetting) {
	v := shadowView{Setting: set, Replica: s.cfg.Replica}
	v.shadowStatsView = shadowStatsView{Model: name, Version: set.Version}
	if e := s.shadowEntry(name); e != nil && e.setting.Version == set.Version {
		v.Running = true
		v.shadowStatsView = viewShadow(e.sh.Stats())
	}
	writeJSON(w, http.StatusOK, v)
}

func (s *Server) handleShadowStart(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	var b shadowBody
	if err := s.decodeJSON(w, r, &b); err != nil {
		return err
	}
	if err := registry.ValidateName(b.Version); err != nil {
		return badRequest("field \"version\": %v", err)
	}
	set, err := s.reg.SetShadow(registry.WithActor(r.Context(), adminActor), name,
		registry.ShadowSetting{Version: b.Version, Rate: b.Rate, MaxBusy: b.MaxBusy})
	if err != nil {
		return err
	}
	s.shadowAnswer(w, name, set)
	return nil
}

func (s *Server) handleShadowStats(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	set, err := s.reg.Shadow(r.Context(), name)
	if err != nil {
		return err
	}
	s.shadowAnswer(w, name, set)
	return nil
}

func (s *Server) handleShadowStop(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	set, err := s.reg.Shadow(r.Context(), name)
	if err != nil {
		return err
	}
	if err := s.reg.ClearShadow(registry.WithActor(r.Context(), adminActor), name); err != nil {
		return err
	}
	v := shadowView{Setting: set, Replica: s.cfg.Replica, shadowStatsView: shadowStatsView{Model: name, Version: set.Version}}
	if e := s.shadowEntry(name); e != nil && e.setting.Version == set.Version {
		v.shadowStatsView = viewShadow(e.sh.Stats()) // the last numbers before it stops
	}
	writeJSON(w, http.StatusOK, v)
	return nil
}

// shadowSet holds the shadows this replica runs, one per model whose
// registry Model.Shadow is set. The follow goroutine replaces the map
// (copy on write); predictions read it.
type shadowSet struct {
	mu sync.Mutex // guards m
	m  map[string]*shadowEntry
}

// shadowEntry is a running shadow and the setting it was made from.
type shadowEntry struct {
	setting registry.ShadowSetting
	sh      *route.Shadow[[]api.Features]
}

func (s *Server) shadowEntry(model string) *shadowEntry {
	s.shadows.mu.Lock()
	defer s.shadows.mu.Unlock()
	return s.shadows.m[model]
}

func (s *Server) shadowFor(model string) *route.Shadow[[]api.Features] {
	if e := s.shadowEntry(model); e != nil {
		return e.sh
	}
	return nil
}

// syncShadows makes the running shadows match the registry's settings:
// a shadow is started for a model that has a setting, replaced when the
// setting changed, and closed when it was cleared (or the model is gone).
// Only the follow goroutine calls it.
func (s *Server) syncShadows(want map[string]registry.Model) {
	s.shadows.mu.Lock()
	old := s.shadows.m
	s.shadows.mu.Unlock()
	next := map[string]*shadowEntry{}
	var stop []*shadowEntry
	for name, e := range old {
		md, ok := want[name]
		if ok && md.Shadow != nil && sameShadow(*md.Shadow, e.setting) {
			next[name] = e
			continue
		}
		stop = append(stop, e)
	}
	for _, name := range slices.Sorted(maps.Keys(want)) {
		set := want[name].Shadow
		if set == nil || next[name] != nil {
			continue
		}
		sh, err := s.newShadow(name, *set)
		if err != nil {
			s.log.Error("shadow: cannot start", "model", name, "version", set.Version, "err", err)
			continue
		}
		s.log.Info("shadow started", "model", name, "version", set.Version, "rate", set.Rate, "set_by", set.SetBy)
		next[name] = &shadowEntry{setting: *set, sh: sh}
	}
	s.shadows.mu.Lock()
	s.shadows.m = next
	s.shadows.mu.Unlock()
	for _, e := range stop {
		e.sh.Close()
		s.log.Info("shadow stopped", "model", e.sh.Stats().Model, "version", e.setting.Version)
	}
}

// sameShadow reports whether two settings run the same shadow.
func sameShadow(a, b registry.ShadowSetting) bool {
	return a.Version == b.Version && a.Rate == b.Rate && a.MaxBusy == b.MaxBusy && a.SetAt.Equal(b.SetAt)
}

// newShadow starts a shadow of model per set: sampled requests are run on
// the shadow version's session (loaded by reconcile like a serving one).
func (s *Server) newShadow(name string, set registry.ShadowSetting) (*route.Shadow[[]api.Features], error) {
	busy := set.MaxBusy
	if busy == 0 {
		busy = defaultShadowBusy
	}
	ver := set.Version
	return route.NewShadow(route.ShadowConfig[[]api.Features]{
		Model: name, Version: ver, Rate: set.Rate, MaxBusy: busy, Logger: s.log,
		Run: func(ctx context.Context, rows []api.Features) ([]float32, error) {
			l, ok := s.models.Acquire(name, ver)
			if !ok {
				return nil, fmt.Errorf("shadow %s:%s is not loaded", name, ver)
			}
			defer l.Release()
			if l.Predictor() == nil {
				return nil, l.PredictorErr()
			}
			x, err := infer.EncodeRows(l.Predictor(), rows)
			if err != nil {
				return nil, err
			}
			out, err := l.Session().Run(ctx, []tensor.Tensor{x})
			if err != nil {
				return nil, err
			}
			preds, err := l.Predictor().Decode(out)
			if err != nil {
				return nil, err
			}
			return slices.Concat(preds...), nil
		},
	})
}

// closeShadows stops every shadow (shutdown, after the follow goroutine
// stopped).
func (s *Server) closeShadows() {
	s.shadows.mu.Lock()
	m := s.shadows.m
	s.shadows.m = nil
	s.shadows.mu.Unlock()
	for _, e := range m {
		e.sh.Close()
	}
}
