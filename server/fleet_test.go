package server

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/signalforge/signalforge/api"
	"github.com/signalforge/signalforge/registry"
	"github.com/signalforge/signalforge/route/fleet"
)

// startFleet starts two servers, replicas "a" and "b", on one registry
// folder and one fleet store, contending for the autopilot on the folder
// store's lease.
func startFleet(t *testing.T) (a, b *testServer, store *fleet.Memory) {
	t.Helper()
	store = fleet.NewMemory()
	dir := t.TempDir()
	opts := func(id string) testOpts {
		return testOpts{noCache: true, adminOpen: true, dir: dir, mutate: func(c *Config) {
			c.Fleet, c.Replica, c.FleetInterval = store, id, 50*time.Millisecond
			c.Leaser = c.Registry.Store().(registry.Leaser)
			// Renewed every 5s: a released lease is taken within 5s, an
			// abandoned one only after it expires, 10s or more later.
			c.LeaseTTL = 15 * time.Second
		}}
	}
	a = startServer(t, opts("a"))
	b = startServer(t, opts("b"))
	return a, b, store
}

// getJSON GETs path from a server's admin API into a generic map.
func getJSON(t *testing.T, url, path string) map[string]any {
	t.Helper()
	var out map[string]any
	if err := (&api.Client{BaseURL: url}).Do(context.Background(), "GET", path, nil, &out); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return out
}

// TestFleetCanaryOnEveryReplica: a plan started through one replica's
// admin API is the plan every replica reports, changes made through
// either are seen by both, and exactly one replica leads the autopilot.
func TestFleetCanaryOnEveryReplica(t *testing.T) {
	a, b, _ := startFleet(t)
	ctx := context.Background()
	ca, cb := &api.Client{BaseURL: a.URL}, &api.Client{BaseURL: b.URL}
	var started canaryAnswer
	if err := ca.Do(ctx, "POST", "/v1/admin/models/forecast_mlp/canary", map[string]any{
		"canary": "v2.0", "baseline": "v1.0", "step_up": true, "steps_pct": []float64{10, 100}, "interval": "1h", "min_samples": 50,
	}, &started); err != nil {
		t.Fatal(err)
	}
	// The plan part of the answer (everything but "autopilot") is the same
	// on both replicas; the autopilot part names the same leader, and
	// exactly one of them leads.
	var pa, pb map[string]any
	var apa, apb autopilotView
	defer func() {
		if t.Failed() {
			t.Logf("a: %v %+v\nb: %v %+v", pa, apa, pb, apb)
		}
	}()
	waitFor(t, func() bool {
		pa, pb = getJSON(t, a.URL, "/v1/admin/models/forecast_mlp/canary"), getJSON(t, b.URL, "/v1/admin/models/forecast_mlp/canary")
		apa, apb = autopilotOf(t, pa), autopilotOf(t, pb)
		delete(pa, "autopilot")
		delete(pb, "autopilot")
		// Once the leader applied the first step, nothing changes for an
		// hour (the plan's interval).
		return apa.Leader != "" && apa.Leader == apb.Leader && apa.Leads != apb.Leads &&
			pa["step"] == float64(0) && reflect.DeepEqual(pa, pb)
	})
	if pa["canary"] != "v2.0" || pa["state"] != "running" || pa["revision"] != float64(started.Revision+1) || pa["last_action"] != "canary-step" {
		t.Fatalf("plan %v", pa)
	}
	// Both replicas route by the step's split.
	for _, ts := range []*testServer{a, b} {
		waitFor(t, func() bool { s, _ := ts.srv.router.Split("forecast_mlp"); return s["v2.0"] > 0.09 && s["v2.0"] < 0.11 })
	}
	if !apa.Elected || apa.ThisReplica != "a" || apb.ThisReplica != "b" || (apa.Leader != "a" && apa.Leader != "b") {
		t.Fatalf("autopilot on a %+v, on b %+v", apa, apb)
	}
	leader, follower := a, b
	if apb.Leads {
		leader, follower = b, a
	}
	// A verdict from either replica judges the same fleet evidence.
	var ja, jb judgeView
	waitFor(t, func() bool {
		if err := ca.Do(ctx, "GET", "/v1/admin/models/forecast_mlp/judge?canary=v2.0&baseline=v1.0", nil, &ja); err != nil {
			t.Fatal(err)
		}
		if err := cb.Do(ctx, "GET", "/v1/admin/models/forecast_mlp/judge?canary=v2.0&baseline=v1.0", nil, &jb); err != nil {
			t.Fatal(err)
		}
		return len(ja.Replicas) == 2 && len(jb.Replicas) == 2
	})
	if ja.Decision != jb.Decision || ja.Canary != jb.Canary || ja.Baseline != jb.Baseline || ja.Replicas[0].Replica != "a" || ja.Replicas[1].Replica != "b" {
		t.Fatalf("verdict from a %+v\nfrom b %+v", ja, jb)
	}

	// Paused through b, seen by a; aborted through a, seen by b.
	if err := cb.Do(ctx, "POST", "/v1/admin/models/forecast_mlp/canary/pause", map[string]any{"note": "hold"}, nil); err != nil {
		t.Fatal(err)
	}
	if p := getJSON(t, a.URL, "/v1/admin/models/forecast_mlp/canary"); p["state"] != "paused" || p["note"] != "hold" {
		t.Fatalf("a after b paused: %v", p)
	}
	if err := ca.Do(ctx, "DELETE", "/v1/admin/models/forecast_mlp/canary", nil, nil); err != nil {
		t.Fatal(err)
	}
	if p := getJSON(t, b.URL, "/v1/admin/models/forecast_mlp/canary"); p["state"] != "aborted" {
		t.Fatalf("b after a aborted: %v", p)
	}

	// The leader shutting down releases the lease: the other replica
	// leads at its next attempt (within 5s), not once the lease expired
	// (10s or more).
	stopped := time.Now()
	leader.stop(t)
	waitFor(t, func() bool {
		return autopilotOf(t, getJSON(t, follower.URL, "/v1/admin/models/forecast_mlp/canary")).Leads
	})
	if d := time.Since(stopped); d >= 10*time.Second {
		t.Fatalf("took over after %v", d)
	}
}

func autopilotOf(t *testing.T, m map[string]any) autopilotView {
	t.Helper()
	b, _ := json.Marshal(m["autopilot"])
	var v autopilotView
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// TestFleetShadowOnEveryReplica: a shadow set through one replica runs on
// the other, and clearing it through the other stops it on both.
func TestFleetShadowOnEveryReplica(t *testing.T) {
	a, b, _ := startFleet(t)
	ctx := context.Background()
	ca, cb := &api.Client{BaseURL: a.URL}, &api.Client{BaseURL: b.URL}
	if err := ca.Do(ctx, "PUT", "/v1/admin/models/forecast_mlp/shadow", map[string]any{"version": "v2.0", "rate": 1, "max_busy": 1}, nil); err != nil {
		t.Fatal(err)
	}
	var st shadowView
	waitFor(t, func() bool {
		if err := cb.Do(ctx, "GET", "/v1/admin/models/forecast_mlp/shadow", nil, &st); err != nil {
			t.Fatal(err)
		}
		return st.Running
	})
	for i := range 30 {
		if _, err := cb.Predict(ctx, "forecast_mlp", &api.PredictRequest{RequestID: fmt.Sprint(i), Version: "v1.0", Features: demoFeatures(i)}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, func() bool {
		if err := cb.Do(ctx, "GET", "/v1/admin/models/forecast_mlp/shadow", nil, &st); err != nil {
			t.Fatal(err)
		}
		return st.Compared+st.Dropped >= 30
	})
	if st.Compared == 0 || st.Replica != "b" || st.Setting.Version != "v2.0" || st.Setting.SetBy != adminActor {
		t.Fatalf("b's shadow %+v", st)
	}
	// a mirrored nothing: the requests went to b.
	var sa shadowView
	if err := ca.Do(ctx, "GET", "/v1/admin/models/forecast_mlp/shadow", nil, &sa); err != nil || !sa.Running || sa.Offered != 0 {
		t.Fatalf("a's shadow %+v, %v", sa, err)
	}
	// A changed setting replaces the running shadow.
	if err := ca.Do(ctx, "PUT", "/v1/admin/models/forecast_mlp/shadow", map[string]any{"version": "v2.0", "rate": 0.5}, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		e := b.srv.shadowEntry("forecast_mlp")
		return e != nil && e.setting.Rate == 0.5
	})
	if err := cb.Do(ctx, "DELETE", "/v1/admin/models/forecast_mlp/shadow", nil, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return a.srv.shadowFor("forecast_mlp") == nil && b.srv.shadowFor("forecast_mlp") == nil })
}

// TestFleetEndpoint: /fleet on either replica lists both, with the
// requests each served.
func TestFleetEndpoint(t *testing.T) {
	a, b, _ := startFleet(t)
	ctx := context.Background()
	for i, ts := range []*testServer{a, b, b} {
		c := &api.Client{BaseURL: ts.URL}
		if _, err := c.Predict(ctx, "forecast_mlp", &api.PredictRequest{RequestID: fmt.Sprint(i), Version: "v1.0", Features: demoFeatures(i)}); err != nil {
			t.Fatal(err)
		}
	}
	var f fleetView
	waitFor(t, func() bool {
		if err := (&api.Client{BaseURL: a.URL}).Do(ctx, "GET", "/v1/admin/models/forecast_mlp/fleet", nil, &f); err != nil {
			t.Fatal(err)
		}
		return f.Versions["v1.0"].Requests == 3
	})
	if f.ThisReplica != "a" || len(f.Replicas) != 2 || f.Replicas[0].Replica != "a" || f.Replicas[1].Replica != "b" {
		t.Fatalf("fleet %+v: want replicas a and b", f)
	}
	if ra, rb := f.Replicas[0].Versions["v1.0"].Requests, f.Replicas[1].Versions["v1.0"].Requests; ra != 1 || rb != 2 {
		t.Fatalf("per replica: a served %d, b %d; want 1 and 2", ra, rb)
	}
	if v := f.Versions["v1.0"]; v.Errors != 0 || v.P99MS <= 0 {
		t.Fatalf("fleet counters of v1.0 %+v", v)
	}
	var fb fleetView
	if err := (&api.Client{BaseURL: b.URL}).Do(ctx, "GET", "/v1/admin/models/forecast_mlp/fleet", nil, &fb); err != nil {
		t.Fatal(err)
	}
	if fb.ThisReplica != "b" || len(fb.Replicas) != 2 {
		t.Fatalf("fleet from b %+v", fb)
	}
	err := (&api.Client{BaseURL: a.URL}).Do(ctx, "GET", "/v1/admin/models/no_such_model/fleet", nil, nil)
	if ae, ok := err.(*api.Error); !ok || ae.Status != 404 {
		t.Fatalf("fleet of an unknown model: %v", err)
	}
}

// TestFleetRollbackOnFleetEvidence: the canary fails only on replica b,
// the baseline serves only on replica a; whichever replica leads judges
// the fleet's sum, rolls the canary back through the registry, and both
// replicas stop routing to it.
func TestFleetRollbackOnFleetEvidence(t *testing.T) {
	a, b, _ := startFleet(t)
	ctx := context.Background()
	ca, cb := &api.Client{BaseURL: a.URL}, &api.Client{BaseURL: b.URL}
	if err := ca.Do(ctx, "POST", "/v1/admin/models/forecast_mlp/canary", map[string]any{
		"canary": "v1.0", "baseline": "v2.0", "step_up": true, "steps_pct": []float64{20, 100}, "interval": "1s",
		"min_samples": 20, "max_error_rate_pct": 5,
	}, nil); err != nil {
		t.Fatal(err)
	}
	// Evidence counts from the first step's mark.
	waitFor(t, func() bool { p, _ := a.reg.Canary(ctx, "forecast_mlp"); return p.Step == 0 })
	overflow := api.Features{}
	for name := range demoFeatures(0) {
		overflow[name] = api.Scalar(3e38) // v1.0's answer is not finite: the version's failure
	}
	for i := range 30 {
		if _, err := ca.Predict(ctx, "forecast_mlp", &api.PredictRequest{RequestID: fmt.Sprint(i), Version: "v2.0", Features: demoFeatures(i)}); err != nil {
			t.Fatal(err)
		}
		if _, err := cb.Predict(ctx, "forecast_mlp", &api.PredictRequest{RequestID: fmt.Sprint(i), Version: "v1.0", Features: overflow}); err == nil {
			t.Fatal("an overflowing input was answered")
		}
	}
	var plan registry.CanaryPlan
	waitFor(t, func() bool {
		var err error
		plan, err = b.reg.Canary(ctx, "forecast_mlp")
		return err == nil && !plan.State.Active()
	})
	if plan.State != registry.CanaryRolledBack || plan.Verdict == nil || plan.Verdict.Decision != registry.VerdictRollback {
		t.Fatalf("plan %+v: want rolled back on a rollback verdict", plan)
	}
	v := plan.Verdict
	// The verdict may come before all 30 pairs were published; what it
	// counted, it counted from both replicas.
	if v.Canary.Requests < 20 || v.Canary.Requests > 30 || v.Canary.Errors != v.Canary.Requests || v.Baseline.Errors != 0 || len(v.Replicas) != 2 {
		t.Fatalf("verdict %+v: want the fleet's canary failures (on b) and clean baseline answers (on a)", v)
	}
	if ra, rb := v.Replicas[0], v.Replicas[1]; ra.Replica != "a" || rb.Replica != "b" || ra.Canary.Requests != 0 || rb.Canary.Errors != v.Canary.Errors || rb.Baseline.Requests != 0 || ra.Baseline.Requests != v.Baseline.Requests {
		t.Fatalf("per-replica evidence %+v", v.Replicas)
	}
	for _, ts := range []*testServer{a, b} {
		waitFor(t, func() bool { s, _ := ts.srv.router.Split("forecast_mlp"); return s["v1.0"] == 0 && s["v2.0"] > 0.99 })
	}
}
