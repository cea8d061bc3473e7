package server

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/signalforge/signalforge/api"
	"github.com/signalforge/signalforge/route"
)

func TestShadowViaAdminAPI(t *testing.T) {
	ts := startServer(t, testOpts{noCache: true, adminOpen: true})
	ctx := context.Background()
	admin := &api.Client{BaseURL: ts.URL}
	if err := admin.Do(ctx, "PUT", "/v1/admin/models/forecast_mlp/shadow", map[string]any{"version": "v2.0", "rate": 1}, nil); err != nil {
		t.Fatal(err)
	}
	for i := range 40 {
		r, err := admin.Predict(ctx, "forecast_mlp", &api.PredictRequest{RequestID: fmt.Sprint(i), Version: "v1.0", Features: demoFeatures(i)})
		if err != nil {
			t.Fatal(err)
		}
		if r.Version != "v1.0" {
			t.Fatalf("pinned v1.0, answered by %s", r.Version)
		}
	}
	var st shadowView
	waitFor(t, func() bool {
		if err := admin.Do(ctx, "GET", "/v1/admin/models/forecast_mlp/shadow", nil, &st); err != nil {
			t.Fatal(err)
		}
		return st.Compared+st.Dropped >= 40
	})
	if st.Compared == 0 || st.MaxAbsDiff <= 0 || st.DirectionAgreementPct < 0 || st.DirectionAgreementPct > 100 {
		t.Fatalf("shadow stats %+v: two different models must differ", st)
	}
	if err := admin.Do(ctx, "DELETE", "/v1/admin/models/forecast_mlp/shadow", nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := admin.Do(ctx, "GET", "/v1/admin/models/forecast_mlp/shadow", nil, nil); err == nil {
		t.Fatal("shadow still reported after DELETE")
	}
	err := admin.Do(ctx, "PUT", "/v1/admin/models/forecast_mlp/shadow", map[string]any{"version": "v9"}, nil)
	if ae, ok := err.(*api.Error); !ok || ae.Status != 400 {
		t.Fatalf("shadow of an unknown version: %v", err)
	}
}

func TestCanaryPlanWritesRegistry(t *testing.T) {
	ts := startServer(t, testOpts{noCache: true, adminOpen: true})
	ctx := context.Background()
	admin := &api.Client{BaseURL: ts.URL}
	var st struct {
		State string
		Step  int
	}
	err := admin.Do(ctx, "POST", "/v1/admin/models/forecast_mlp/canary", map[string]any{
		"canary": "v2.0", "baseline": "v1.0", "step_up": true, "steps_pct": []float64{10, 100}, "interval": "1h",
	}, &st)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != route.Running.String() || st.Step != 0 {
		t.Fatalf("status %+v", st)
	}
	// The first step is applied at once, through the registry.
	split, err := ts.reg.Split(ctx, "forecast_mlp")
	if err != nil {
		t.Fatal(err)
	}
	if split["v2.0"] < 9.99 || split["v2.0"] > 10.01 {
		t.Fatalf("registry split %v, want v2.0 at 10%%", split)
	}
	hist, _ := ts.reg.History(ctx, "forecast_mlp")
	if last := hist[len(hist)-1]; last.Actor != "autopilot" {
		t.Fatalf("last audit event %+v, want actor autopilot", last)
	}
	waitFor(t, func() bool { s, _ := ts.srv.router.Split("forecast_mlp"); return s["v2.0"] > 0.09 && s["v2.0"] < 0.11 })
	var v struct{ Decision, Reason string }
	if err := admin.Do(ctx, "GET", "/v1/admin/models/forecast_mlp/judge?canary=v2.0&baseline=v1.0", nil, &v); err != nil {
		t.Fatal(err)
	}
	if v.Decision != route.Inconclusive.String() {
		t.Fatalf("verdict with no traffic: %+v", v)
	}
	if err := admin.Do(ctx, "DELETE", "/v1/admin/models/forecast_mlp/canary", nil, nil); err != nil {
		t.Fatal(err)
	}
	err = admin.Do(ctx, "POST", "/v1/admin/models/forecast_mlp/canary", map[string]any{"canary": "v7", "baseline": "v1.0"}, nil)
	if ae, ok := err.(*api.Error); !ok || ae.Status != 400 {
		t.Fatalf("canary of an unknown version: %v", err)
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
