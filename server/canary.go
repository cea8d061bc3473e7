package server

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/signalforge/signalforge/api"
	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/registry"
	"github.com/signalforge/signalforge/route"
	"github.com/signalforge/signalforge/tensor"
)

// Canary automation and shadow traffic, driven through the admin API.
//
//	POST   /v1/admin/models/{name}/canary   start a plan (step-up and/or auto rollback)
//	GET    /v1/admin/models/{name}/canary   the plan's status and last verdict
//	DELETE /v1/admin/models/{name}/canary   stop it
//	GET    /v1/admin/models/{name}/judge?canary=v2&baseline=v1   one verdict now
//	PUT    /v1/admin/models/{name}/shadow   mirror a share of traffic to a version
//	GET    /v1/admin/models/{name}/shadow   how the shadow's answers differ
//	DELETE /v1/admin/models/{name}/shadow   stop mirroring
//
// Autopilot split changes are written to the registry (actor "autopilot"),
// so the audit log records them and every replica follows.

type shadowSet struct {
	mu sync.Mutex // guards m
	m  map[string]*route.Shadow[[]api.Features]
}

func (s *Server) shadowFor(model string) *route.Shadow[[]api.Features] {
	s.shadows.mu.Lock()
	defer s.shadows.mu.Unlock()
	return s.shadows.m[model]
}

// autopilotAction writes an autopilot split change to the registry.
func (s *Server) autopilotAction(ctx context.Context, a route.Action) error {
	split := registry.Split{}
	for v, w := range a.To {
		split[v] = w * 100
	}
	ctx = registry.WithActor(ctx, "autopilot")
	_, err := s.reg.SetSplit(ctx, a.Model, split)
	s.log.Info("autopilot", "model", a.Model, "action", a.Kind.String(), "canary", a.Canary, "split", registry.Split(split).String(), "reason", a.Verdict.Reason)
	return err
}

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
}

func (s *Server) handleCanaryStart(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	var b canaryBody
	if err := s.decodeJSON(w, r, &b); err != nil {
		return err
	}
	p := route.Plan{Model: name, Canary: b.Canary, Baseline: b.Baseline, Rollback: b.Rollback == nil || *b.Rollback, StepUp: b.StepUp,
		HealthyIntervals: b.HealthyIntervals,
		Judge:            route.Judge{MinSamples: b.MinSamples, MaxP99Ratio: b.MaxP99Ratio, MaxErrorRatePct: b.MaxErrorRatePct}}
	if b.IntervalText != "" {
		d, err := time.ParseDuration(b.IntervalText)
		if err != nil || d < time.Second {
			return badRequest("field \"interval\": %q must be a duration of at least 1s (e.g. \"5m\")", b.IntervalText)
		}
		p.Interval = d
	}
	switch {
	case b.MinSamples < 0:
		return badRequest("field \"min_samples\" must not be negative, got %d", b.MinSamples)
	case b.MaxP99Ratio < 0:
		return badRequest("field \"max_p99_ratio\" must not be negative, got %v", b.MaxP99Ratio)
	case b.MaxErrorRatePct < 0 || b.MaxErrorRatePct > 100:
		return badRequest("field \"max_error_rate_pct\" must be in [0, 100], got %v", b.MaxErrorRatePct)
	case b.HealthyIntervals < 0:
		return badRequest("field \"healthy_intervals\" must not be negative, got %d", b.HealthyIntervals)
	}
	for i, pct := range b.StepsPct {
		if !(pct > 0 && pct <= 100) || (i > 0 && pct <= b.StepsPct[i-1]) {
			return badRequest("field \"steps_pct\": %v must increase within (0, 100]", b.StepsPct)
		}
		p.Steps = append(p.Steps, pct/100)
	}
	for _, v := range []string{b.Canary, b.Baseline} {
		l, ok := s.models.Acquire(name, v)
		if !ok {
			return badRequest("version %q of model %q is not loaded; canary and baseline must be serving", v, name)
		}
		l.Release()
	}
	if err := s.autopilot.Start(r.Context(), p); err != nil {
		return &HTTPError{Status: http.StatusBadRequest, Code: api.CodeInvalidInput, Msg: err.Error(), Err: err}
	}
	st, _ := s.autopilot.Status(r.Context(), name)
	writeJSON(w, http.StatusOK, viewCanary(st))
	return nil
}

func (s *Server) handleCanaryStatus(w http.ResponseWriter, r *http.Request) error {
	st, err := s.autopilot.Status(r.Context(), r.PathValue("name"))
	if err != nil {
		return notFound("no canary plan for model %q", r.PathValue("name"))
	}
	writeJSON(w, http.StatusOK, viewCanary(st))
	return nil
}

func (s *Server) handleCanaryStop(w http.ResponseWriter, r *http.Request) error {
	if err := s.autopilot.Stop(r.Context(), r.PathValue("name")); err != nil {
		return notFound("no running canary plan for model %q", r.PathValue("name"))
	}
	writeJSON(w, http.StatusOK, map[string]any{"stopped": true})
	return nil
}

func (s *Server) handleJudge(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	q := r.URL.Query()
	canary, baseline := q.Get("canary"), q.Get("baseline")
	if canary == "" || baseline == "" {
		return badRequest("query parameters \"canary\" and \"baseline\" are required")
	}
	if canary == baseline {
		return badRequest("canary and baseline are the same version %q", canary)
	}
	for _, v := range []string{canary, baseline} {
		if _, ok := s.router.VersionStats(name, v); !ok {
			if s.models.Current().Get(name, v) == nil {
				return notFound("version %q of model %q is not serving", v, name)
			}
		}
	}
	v := s.router.Judge(name, canary, baseline, route.Judge{})
	writeJSON(w, http.StatusOK, viewVerdict(v))
	return nil
}

type shadowBody struct {
	Version string  `json:"version"`
	Rate    float64 `json:"rate"`     // share of requests mirrored, (0, 1]; default 1
	MaxBusy float64 `json:"max_busy"` // share of a core the shadow may use; default 0.5
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
	l, ok := s.models.Acquire(name, b.Version)
	if !ok {
		return badRequest("version %q of model %q is not loaded (staging versions are loaded when serve_staging is on)", b.Version, name)
	}
	l.Release()
	if b.MaxBusy == 0 {
		b.MaxBusy = 0.5
	}
	ver := b.Version
	sh, err := route.NewShadow(route.ShadowConfig[[]api.Features]{
		Model: name, Version: ver, Rate: b.Rate, MaxBusy: b.MaxBusy, Logger: s.log,
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
	if err != nil {
		return &HTTPError{Status: http.StatusBadRequest, Code: api.CodeInvalidInput, Msg: err.Error(), Err: err}
	}
	s.shadows.mu.Lock()
	old := s.shadows.m[name]
	m := maps.Clone(s.shadows.m)
	if m == nil {
		m = map[string]*route.Shadow[[]api.Features]{}
	}
	m[name] = sh
	s.shadows.m = m
	s.shadows.mu.Unlock()
	if old != nil {
		old.Close()
	}
	writeJSON(w, http.StatusOK, viewShadow(sh.Stats()))
	return nil
}

func (s *Server) handleShadowStats(w http.ResponseWriter, r *http.Request) error {
	sh := s.shadowFor(r.PathValue("name"))
	if sh == nil {
		return notFound("no shadow for model %q", r.PathValue("name"))
	}
	writeJSON(w, http.StatusOK, viewShadow(sh.Stats()))
	return nil
}

func (s *Server) handleShadowStop(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	s.shadows.mu.Lock()
	sh := s.shadows.m[name]
	if sh != nil {
		m := maps.Clone(s.shadows.m)
		delete(m, name)
		s.shadows.m = m
	}
	s.shadows.mu.Unlock()
	if sh == nil {
		return notFound("no shadow for model %q", name)
	}
	sh.Close()
	writeJSON(w, http.StatusOK, viewShadow(sh.Stats()))
	return nil
}

// closeShadows stops every shadow (shutdown).
func (s *Server) closeShadows() {
	s.shadows.mu.Lock()
	m := s.shadows.m
	s.shadows.m = nil
	s.shadows.mu.Unlock()
	for _, sh := range m {
		sh.Close()
	}
}
