package server

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/signalforge/signalforge/api"
	"github.com/signalforge/signalforge/registry"
)

func TestShadowViaAdminAPI(t *testing.T) {
	ts := startServer(t, testOpts{noCache: true, adminOpen: true})
	ctx := context.Background()
	admin := &api.Client{BaseURL: ts.URL}
	if err := admin.Do(ctx, "PUT", "/v1/admin/models/forecast_mlp/shadow", map[string]any{"version": "v2.0", "rate": 1}, nil); err != nil {
		t.Fatal(err)
	}
	// The setting is registry state, written by the admin actor.
	set, err := ts.reg.Shadow(ctx, "forecast_mlp")
	if err != nil || set.Version != "v2.0" || set.Rate != 1 || set.SetBy != adminActor {
		t.Fatalf("registry shadow %+v, %v", set, err)
	}
	var st shadowView
	waitFor(t, func() bool {
		if err := admin.Do(ctx, "GET", "/v1/admin/models/forecast_mlp/shadow", nil, &st); err != nil {
			t.Fatal(err)
		}
		return st.Running
	})
	for i := range 40 {
		r, err := admin.Predict(ctx, "forecast_mlp", &api.PredictRequest{RequestID: fmt.Sprint(i), Version: "v1.0", Features: demoFeatures(i)})
		if err != nil {
			t.Fatal(err)
		}
		if r.Version != "v1.0" {
			t.Fatalf("pinned v1.0, answered by %s", r.Version)
		}
	}
	waitFor(t, func() bool {
		if err := admin.Do(ctx, "GET", "/v1/admin/models/forecast_mlp/shadow", nil, &st); err != nil {
			t.Fatal(err)
		}
		return st.Compared+st.Dropped >= 40
	})
	if st.Compared == 0 || st.MaxAbsDiff <= 0 || st.DirectionAgreementPct < 0 || st.DirectionAgreementPct > 100 {
		t.Fatalf("shadow stats %+v: two different models must differ", st)
	}
	if st.Setting.Version != "v2.0" || st.Replica != ts.srv.cfg.Replica {
		t.Fatalf("shadow answer %+v: want the registry setting and this replica", st)
	}
	if err := admin.Do(ctx, "DELETE", "/v1/admin/models/forecast_mlp/shadow", nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := admin.Do(ctx, "GET", "/v1/admin/models/forecast_mlp/shadow", nil, nil); err == nil {
		t.Fatal("shadow still reported after DELETE")
	}
	waitFor(t, func() bool { return ts.srv.shadowFor("forecast_mlp") == nil })
	hist, _ := ts.reg.History(ctx, "forecast_mlp")
	if last := hist[len(hist)-1]; last.Action != registry.ActionShadowClear || last.Actor != adminActor {
		t.Fatalf("last audit event %+v, want shadow-clear by %s", last, adminActor)
	}
	for _, c := range []struct {
		body   map[string]any
		status int
	}{
		{map[string]any{"version": "v9"}, 404},                   // no such version
		{map[string]any{"version": "v2.0", "rate": 1.5}, 400},    // rate outside (0, 1]
		{map[string]any{"version": "v2.0", "max_busy": -1}, 400}, // max_busy outside [0, 1]
		{map[string]any{"version": "../x"}, 400},                 // not a version name
	} {
		err := admin.Do(ctx, "PUT", "/v1/admin/models/forecast_mlp/shadow", c.body, nil)
		if ae, ok := err.(*api.Error); !ok || ae.Status != c.status {
			t.Fatalf("shadow %v: %v, want %d", c.body, err, c.status)
		}
	}
	if _, err := ts.reg.Shadow(ctx, "forecast_mlp"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("a refused shadow left a setting: %v", err)
	}
}

// canaryAnswer is the JSON of the canary endpoints as a client reads it.
type canaryAnswer struct {
	Model     string
	Canary    string
	Baseline  string
	State     string
	Step      int
	Revision  uint64
	StepsPct  []float64 `json:"steps_pct"`
	StartedBy string    `json:"started_by"`
	Note      string
	Autopilot autopilotView
}

func TestCanaryPlanWritesRegistry(t *testing.T) {
	ts := startServer(t, testOpts{noCache: true, adminOpen: true})
	ctx := context.Background()
	admin := &api.Client{BaseURL: ts.URL}
	var st canaryAnswer
	err := admin.Do(ctx, "POST", "/v1/admin/models/forecast_mlp/canary", map[string]any{
		"canary": "v2.0", "baseline": "v1.0", "step_up": true, "steps_pct": []float64{10, 100}, "interval": "1h",
	}, &st)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != string(registry.CanaryRunning) || st.Revision != 1 || st.StartedBy != adminActor || len(st.StepsPct) != 2 {
		t.Fatalf("status %+v", st)
	}
	// Without a Leaser this process is the fleet and leads.
	if a := st.Autopilot; a.Elected || !a.Leads || a.Leader != ts.srv.cfg.Replica || a.ThisReplica != ts.srv.cfg.Replica {
		t.Fatalf("autopilot %+v", a)
	}
	plan, err := ts.reg.Canary(ctx, "forecast_mlp")
	if err != nil || plan.Canary != "v2.0" || plan.Baseline != "v1.0" || !plan.StepUp || !plan.Rollback || plan.Interval != time.Hour {
		t.Fatalf("registry plan %+v, %v", plan, err)
	}
	// The autopilot applies the first step at once, through the registry.
	waitFor(t, func() bool { p, _ := ts.reg.Canary(ctx, "forecast_mlp"); return p.Step == 0 })
	split, err := ts.reg.Split(ctx, "forecast_mlp")
	if err != nil {
		t.Fatal(err)
	}
	if split["v2.0"] < 9.99 || split["v2.0"] > 10.01 {
		t.Fatalf("registry split %v, want v2.0 at 10%%", split)
	}
	hist, _ := ts.reg.History(ctx, "forecast_mlp")
	start, step := hist[len(hist)-2], hist[len(hist)-1]
	if start.Action != registry.ActionCanaryStart || start.Actor != adminActor || step.Action != registry.ActionCanaryStep || step.Actor != "autopilot" {
		t.Fatalf("audit events %+v, %+v: want canary-start by %s, then canary-step by autopilot", start, step, adminActor)
	}
	waitFor(t, func() bool { s, _ := ts.srv.router.Split("forecast_mlp"); return s["v2.0"] > 0.09 && s["v2.0"] < 0.11 })
	if err := admin.Do(ctx, "GET", "/v1/admin/models/forecast_mlp/canary", nil, &st); err != nil || st.Step != 0 || st.Revision != 2 {
		t.Fatalf("status after the first step: %+v, %v", st, err)
	}
	var v judgeView
	if err := admin.Do(ctx, "GET", "/v1/admin/models/forecast_mlp/judge?canary=v2.0&baseline=v1.0", nil, &v); err != nil {
		t.Fatal(err)
	}
	if v.Decision != registry.VerdictInconclusive || v.Model != "forecast_mlp" || v.Reason == "" {
		t.Fatalf("verdict with no traffic: %+v", v)
	}
	for _, q := range []string{"canary=v2.0", "canary=v2.0&baseline=v2.0", "canary=v2.0&baseline=v1.0&min_samples=-1", "canary=v2.0&baseline=v1.0&max_error_rate_pct=101"} {
		err := admin.Do(ctx, "GET", "/v1/admin/models/forecast_mlp/judge?"+q, nil, nil)
		if ae, ok := err.(*api.Error); !ok || ae.Status != 400 {
			t.Fatalf("judge?%s: %v, want 400", q, err)
		}
	}
	err = admin.Do(ctx, "GET", "/v1/admin/models/forecast_mlp/judge?canary=v9&baseline=v1.0", nil, nil)
	if ae, ok := err.(*api.Error); !ok || ae.Status != 404 {
		t.Fatalf("judge of an unknown version: %v, want 404", err)
	}
	// A second plan while one is active is a conflict.
	err = admin.Do(ctx, "POST", "/v1/admin/models/forecast_mlp/canary", map[string]any{"canary": "v2.0", "baseline": "v1.0"}, nil)
	if ae, ok := err.(*api.Error); !ok || ae.Status != 409 {
		t.Fatalf("a second plan: %v", err)
	}
	if err := admin.Do(ctx, "POST", "/v1/admin/models/forecast_mlp/canary/pause", map[string]any{"note": "market open"}, &st); err != nil {
		t.Fatal(err)
	}
	if st.State != string(registry.CanaryPaused) || st.Note != "market open" {
		t.Fatalf("after pause: %+v", st)
	}
	err = admin.Do(ctx, "POST", "/v1/admin/models/forecast_mlp/canary/pause", nil, nil)
	if ae, ok := err.(*api.Error); !ok || ae.Status != 409 {
		t.Fatalf("pausing a paused plan: %v", err)
	}
	if err := admin.Do(ctx, "POST", "/v1/admin/models/forecast_mlp/canary/resume", nil, &st); err != nil || st.State != string(registry.CanaryRunning) {
		t.Fatalf("resume: %+v, %v", st, err)
	}
	if err := admin.Do(ctx, "DELETE", "/v1/admin/models/forecast_mlp/canary", nil, &st); err != nil || st.State != string(registry.CanaryAborted) {
		t.Fatalf("abort: %+v, %v", st, err)
	}
	if p, _ := ts.reg.Canary(ctx, "forecast_mlp"); p.State != registry.CanaryAborted {
		t.Fatalf("registry plan after DELETE: %+v", p)
	}
	for _, c := range []struct {
		body   map[string]any
		status int
	}{
		{map[string]any{"canary": "v7", "baseline": "v1.0"}, 404},                                   // no such version
		{map[string]any{"canary": "v2.0", "baseline": "v2.0"}, 400},                                 // the same version
		{map[string]any{"canary": "v2.0", "baseline": "v1.0", "steps_pct": []float64{50, 10}}, 400}, // steps must increase
		{map[string]any{"canary": "v2.0", "baseline": "v1.0", "interval": "1ms"}, 400},
		{map[string]any{"baseline": "v1.0"}, 400},
	} {
		err := admin.Do(ctx, "POST", "/v1/admin/models/forecast_mlp/canary", c.body, nil)
		if ae, ok := err.(*api.Error); !ok || ae.Status != c.status {
			t.Fatalf("canary %v: %v, want %d", c.body, err, c.status)
		}
	}
	err = admin.Do(ctx, "GET", "/v1/admin/models/forecast_lstm/canary", nil, nil)
	if ae, ok := err.(*api.Error); !ok || ae.Status != 404 {
		t.Fatalf("status of a model without a plan: %v", err)
	}
}

// TestClientFailuresDoNotCountAgainstVersion: a client's own short
// timeout or bad input must not raise a version's error rate (else any
// client could roll back a healthy canary).
func TestClientFailuresDoNotCountAgainstVersion(t *testing.T) {
	ts := startServer(t, testOpts{noCache: true})
	for i := range 50 {
		body := mustJSON(t, map[string]any{"version": "v2.0", "timeout_ms": 1, "request_id": fmt.Sprint(i), "features": demoFeatures(i)})
		post(t, ts.URL+"/v1/models/forecast_mlp/predict", body)
		post(t, ts.URL+"/v1/models/forecast_mlp/predict", `{"version":"v2.0","features":{"rsi_14":1}}`)
	}
	vs, _ := ts.srv.router.VersionStats("forecast_mlp", "v2.0")
	if vs.Total.Errors != 0 {
		t.Fatalf("client-caused failures counted against v2.0: %+v", vs.Total)
	}
}

// TestNonFiniteOutput: inputs that overflow the model give a clear 422,
// not a 200 with an empty body.
func TestNonFiniteOutput(t *testing.T) {
	ts := startServer(t, testOpts{})
	f := api.Features{}
	for name := range demoFeatures(0) {
		f[name] = api.Scalar(3e38)
	}
	code, body, _ := post(t, ts.URL+"/v1/models/forecast_mlp/predict", mustJSON(t, api.PredictRequest{Version: "v1.0", Features: f}))
	if code != 422 || !strings.Contains(string(body), "non_finite_output") {
		t.Fatalf("%d %s", code, body)
	}
	data := make([]float32, 8)
	for i := range data {
		data[i] = 3e38
	}
	code, body, _ = post(t, ts.URL+"/v2/models/forecast_mlp/versions/v1.0/infer", `{"inputs":[{"name":"x","shape":[1,8],"datatype":"FP32","data":`+mustJSON(t, data)+`}]}`)
	if code != 422 || !strings.Contains(string(body), "produced") {
		t.Fatalf("v2: %d %s", code, body)
	}
}
