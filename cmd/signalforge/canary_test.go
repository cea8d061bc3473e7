package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/signalforge/signalforge/internal/demo"
	"github.com/signalforge/signalforge/registry"
)

// planSeed builds a folder registry holding the demo models:
// forecast_mlp v1.0 and v2.0 in production at 80/20, forecast_lstm v1.0.
func planSeed(t *testing.T) string {
	t.Helper()
	reg := filepath.Join(t.TempDir(), "reg")
	r, closeFn, err := openRegistry(context.Background(), reg, true, registry.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer closeFn()
	if ok, err := demo.Seed(context.Background(), r); err != nil || !ok {
		t.Fatalf("seed: %v, %v", ok, err)
	}
	return reg
}

// planRun runs `signalforge args…` with $SIGNALFORGE_REGISTRY set to reg
// and $USER to tester.
func planRun(t *testing.T, reg string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	e := &env{stdout: &out, stderr: &errb, getenv: func(k string) string {
		switch k {
		case modelsEnvRegistry:
			return reg
		case "USER":
			return "tester"
		}
		return os.Getenv(k)
	}}
	code = run(context.Background(), e, args)
	return code, out.String(), errb.String()
}

func planOK(t *testing.T, reg string, args ...string) string {
	t.Helper()
	code, out, errs := planRun(t, reg, args...)
	if code != 0 {
		t.Fatalf("%q: exit %d\nstdout: %s\nstderr: %s", args, code, out, errs)
	}
	return out
}

func planFail(t *testing.T, reg string, wantCode int, want string, args ...string) {
	t.Helper()
	code, out, errs := planRun(t, reg, args...)
	if code != wantCode || !strings.Contains(errs, want) {
		t.Fatalf("%q: exit %d (want %d)\nstdout: %s\nstderr: %s\nwant stderr containing %q", args, code, wantCode, out, errs, want)
	}
}

func planStatus(t *testing.T, reg string) canaryView {
	t.Helper()
	var st canaryView
	out := planOK(t, reg, "canary", "status", "--json", demo.ModelName)
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	return st
}

func TestCanaryCLI(t *testing.T) {
	reg := planSeed(t)
	m := demo.ModelName
	contains := func(out string, wants ...string) {
		t.Helper()
		norm := strings.Join(strings.Fields(out), " ")
		for _, w := range wants {
			if !strings.Contains(norm, w) {
				t.Errorf("output lacks %q:\n%s", w, out)
			}
		}
	}

	// No plan yet: status says so (exit 0), pause is refused.
	contains(planOK(t, reg, "canary", "status", m), "plan: none", "traffic: v1.0=80% v2.0=20%", "autopilot: no leader")
	if st := planStatus(t, reg); st.Plan != nil || !st.Autopilot.Elects {
		t.Fatalf("status before a plan = %+v", st)
	}
	planFail(t, reg, 1, `no canary plan for model "forecast_mlp" (start one: signalforge canary start`, "canary", "pause", m)
	planFail(t, reg, 1, `not found: model "nope"`, "canary", "status", "nope")
	planFail(t, reg, 1, `not found: model "nope"`, "canary", "start", "nope", "--canary", "v2.0", "--baseline", "v1.0")

	// Refusals before anything is stored.
	planFail(t, reg, 2, "--canary and --baseline are required", "canary", "start", m, "--canary", "v2.0")
	planFail(t, reg, 1, "version forecast_mlp:v9", "canary", "start", m, "--canary", "v9", "--baseline", "v1.0")
	planFail(t, reg, 1, "steps_pct", "canary", "start", m, "--canary", "v2.0", "--baseline", "v1.0", "--steps", "50,25")
	planFail(t, reg, 1, `"x" is not a percentage`, "canary", "start", m, "--canary", "v2.0", "--baseline", "v1.0", "--steps", "5,x")
	planFail(t, reg, 1, "same version", "canary", "start", m, "--canary", "v1.0", "--baseline", "v1.0")

	out := planOK(t, reg, "canary", "start", m, "--canary", "v2.0", "--baseline", "v1.0", "--steps", "10,50,100",
		"--interval", "5m", "--healthy-intervals", "2", "--min-samples", "200", "--max-error-rate-pct", "2", "--note", "first try")
	contains(out, "started a canary plan for forecast_mlp: v2.0 against v1.0 (revision 1)", "state: running",
		"step: 0/3 (no step applied yet; the first is 10%)", "steps: 10%, 50%, 100% (step up)", "interval: 5m0s; 2 healthy",
		"min samples 200", "max error rate 2%", "started:", "by tester", "last action: canary-start", "first try")
	planFail(t, reg, 1, "already running; abort it first (run: signalforge canary abort forecast_mlp)",
		"canary", "start", m, "--canary", "v2.0", "--baseline", "v1.0")

	st := planStatus(t, reg)
	p := st.Plan
	if p == nil || p.State != registry.CanaryRunning || p.Revision != 1 || p.Interval != 5*time.Minute || p.HealthyIntervals != 2 ||
		!p.StepUp || !p.Rollback || p.Judge.MinSamples != 200 || p.StartedBy != "tester" || st.Split["v2.0"] != 20 {
		t.Fatalf("status --json = %+v, plan %+v", st, p)
	}
	contains(planOK(t, reg, "canary", "status", m), "state: running", "revision: 1", "traffic: v1.0=80% v2.0=20%",
		"autopilot: no leader", "live numbers: from a running server")

	// pause → resume → abort, each recorded with its note.
	planFail(t, reg, 1, "the plan is running; only a paused plan can be resumed", "canary", "resume", m)
	contains(planOK(t, reg, "canary", "pause", m, "--note", "market open"), "paused the canary plan of forecast_mlp", "now paused, revision 2")
	contains(planOK(t, reg, "canary", "status", m), "state: paused", "last action: canary-pause", "market open")
	planFail(t, reg, 1, "the plan is paused; only a running plan can be paused", "canary", "pause", m)
	planFail(t, reg, 1, "at revision 2, not 1", "canary", "resume", m, "--revision", "1")
	contains(planOK(t, reg, "canary", "resume", m, "--revision", "2"), "now running, revision 3")
	contains(planOK(t, reg, "canary", "abort", m, "--note", "wrong baseline"), "now aborted, revision 4")
	st = planStatus(t, reg)
	if st.Plan.State != registry.CanaryAborted || st.Plan.Note != "wrong baseline" || st.Split["v2.0"] != 20 {
		t.Fatalf("after abort: %+v (the traffic must stay as it was)", st.Plan)
	}
	planFail(t, reg, 1, "has ended (aborted); start a new one", "canary", "resume", m)
	hist := planOK(t, reg, "models", "history", m)
	contains(hist, "canary-start", "canary-pause", "canary-resume", "canary-abort", "market open")

	// A new plan over the ended one continues the numbering.
	contains(planOK(t, reg, "canary", "start", m, "--canary", "v2.0", "--baseline", "v1.0", "--no-rollback", "--no-step-up"),
		"(revision 5)", "(watch only)", "rollback: no")
}

// TestCanaryStatusSameFromTwoHandles: a plan changed through one registry
// handle is shown identically through another on the same folder, and by
// the command; the autopilot's leader is the one holding the lease.
func TestCanaryStatusSameFromTwoHandles(t *testing.T) {
	ctx := context.Background()
	reg := planSeed(t)
	a, closeA, err := openRegistry(ctx, reg, false, registry.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer closeA()
	b, closeB, err := openRegistry(ctx, reg, false, registry.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer closeB()

	planOK(t, reg, "canary", "start", demo.ModelName, "--canary", "v2.0", "--baseline", "v1.0")
	if _, err := a.PauseCanary(registry.WithActor(ctx, "ops"), demo.ModelName, "via handle a"); err != nil {
		t.Fatal(err)
	}
	pa, err := a.Canary(ctx, demo.ModelName)
	if err != nil {
		t.Fatal(err)
	}
	pb, err := b.Canary(ctx, demo.ModelName)
	if err != nil {
		t.Fatal(err)
	}
	ja, _ := json.Marshal(canaryStatusOf(ctx, a, demo.ModelName, &pa, registry.Split{"v1.0": 80, "v2.0": 20}))
	jb, _ := json.Marshal(canaryStatusOf(ctx, b, demo.ModelName, &pb, registry.Split{"v1.0": 80, "v2.0": 20}))
	cli, _ := json.Marshal(planStatus(t, reg))
	if string(ja) != string(jb) || string(ja) != string(cli) {
		t.Fatalf("status differs between handles:\na:   %s\nb:   %s\ncli: %s", ja, jb, cli)
	}
	if pa.State != registry.CanaryPaused || pa.Note != "via handle a" || pa.Revision != 2 {
		t.Fatalf("plan = %+v", pa)
	}

	// A replica takes the autopilot lease through handle a; the command
	// (its own handle) names it.
	l := a.Store().(registry.Leaser)
	if _, err := l.TryAcquire(ctx, canaryLease, "replica-1", time.Hour); err != nil {
		t.Fatal(err)
	}
	st := planStatus(t, reg)
	if st.Autopilot.Leader != "replica-1" || st.Autopilot.Epoch != 1 || st.Autopilot.ExpiresInSec <= 0 {
		t.Fatalf("autopilot = %+v", st.Autopilot)
	}
	out := planOK(t, reg, "canary", "status", demo.ModelName)
	if !strings.Contains(out, `led by replica-1 (lease "autopilot" expires in`) || !strings.Contains(out, "epoch 1)") {
		t.Fatalf("status does not name the leader:\n%s", out)
	}
	if err := l.Release(ctx, canaryLease, "replica-1"); err != nil {
		t.Fatal(err)
	}
	if st := planStatus(t, reg); st.Autopilot.Leader != "" || st.Autopilot.Epoch != 1 {
		t.Fatalf("after release: autopilot = %+v", st.Autopilot)
	}
}

func TestShadowCLI(t *testing.T) {
	reg := planSeed(t)
	m := demo.ModelName
	out := planOK(t, reg, "shadow", "status", m)
	if !strings.Contains(out, "shadow:") || !strings.Contains(out, "none") {
		t.Fatalf("status without a shadow:\n%s", out)
	}
	planFail(t, reg, 1, `no shadow for model "forecast_mlp"`, "shadow", "clear", m)
	planFail(t, reg, 2, "--version is required", "shadow", "set", m)
	planFail(t, reg, 1, "--rate 1.5 is not within (0, 1]", "shadow", "set", m, "--version", "v2.0", "--rate", "1.5")
	planFail(t, reg, 1, "max_busy", "shadow", "set", m, "--version", "v2.0", "--max-busy", "2")
	planFail(t, reg, 1, "version forecast_mlp:v3", "shadow", "set", m, "--version", "v3")
	planFail(t, reg, 1, `not found: model "nope"`, "shadow", "status", "nope")

	if out := planOK(t, reg, "shadow", "set", m, "--version", "v2.0", "--rate", "0.1", "--max-busy", "0.5"); !strings.Contains(out, "mirroring 10% of requests to v2.0") {
		t.Fatalf("set: %s", out)
	}
	out = strings.Join(strings.Fields(planOK(t, reg, "shadow", "status", m)), " ")
	for _, w := range []string{"shadow: v2.0", "rate: 10% of requests", "max busy: 50% of a core", "by tester"} {
		if !strings.Contains(out, w) {
			t.Errorf("status lacks %q:\n%s", w, out)
		}
	}
	var st shadowStatusJSON
	if err := json.Unmarshal([]byte(planOK(t, reg, "shadow", "status", "--json", m)), &st); err != nil ||
		st.Shadow == nil || st.Shadow.Version != "v2.0" || st.Shadow.Rate != 0.1 || st.Shadow.MaxBusy != 0.5 || st.Shadow.SetBy != "tester" {
		t.Fatalf("status --json: %v, %+v", err, st.Shadow)
	}
	planOK(t, reg, "shadow", "clear", m)
	if err := json.Unmarshal([]byte(planOK(t, reg, "shadow", "status", "--json", m)), &st); err != nil || st.Shadow != nil {
		t.Fatalf("status --json after clear: %v, %+v", err, st.Shadow)
	}
	if h := planOK(t, reg, "models", "history", m); !strings.Contains(h, "shadow-set") || !strings.Contains(h, "shadow-clear") {
		t.Fatalf("history lacks the shadow events:\n%s", h)
	}
}

func TestCanaryShadowHelp(t *testing.T) {
	for _, c := range []struct {
		cmd  string
		subs []planSub
	}{{"canary", canarySubs()}, {"shadow", shadowSubs()}} {
		code, out, _ := planRun(t, "", c.cmd, "-h")
		if code != 0 || !strings.Contains(out, "registry state") || !strings.Contains(out, "admin API") {
			t.Fatalf("%s -h: exit %d\n%s", c.cmd, code, out)
		}
		if code, _, errs := planRun(t, "", c.cmd); code != 2 || !strings.Contains(errs, "Usage: signalforge "+c.cmd) {
			t.Fatalf("bare %s: exit %d\n%s", c.cmd, code, errs)
		}
		for _, s := range c.subs {
			code, _, help := planRun(t, "", c.cmd, s.name, "-h")
			if code != 0 || !strings.Contains(help, "Examples:") || !strings.Contains(help, "-registry") {
				t.Fatalf("%s %s -h: exit %d\n%s", c.cmd, s.name, code, help)
			}
			if got := strings.Contains(help, "-actor"); got != s.mutates {
				t.Errorf("%s %s -h lists -actor: %v; want %v", c.cmd, s.name, got, s.mutates)
			}
			for _, ex := range s.examples {
				if !strings.Contains(help, ex) {
					t.Errorf("%s %s -h lacks the example %q", c.cmd, s.name, ex)
				}
			}
		}
	}
	if _, _, help := planRun(t, "", "canary", "status", "-h"); !strings.Contains(help, "signalforge judge MODEL") {
		t.Errorf("canary status -h does not say where live numbers come from:\n%s", help)
	}
	if code, _, _ := planRun(t, "", "canary", "status"); code != 2 {
		t.Errorf("canary status without a model: exit %d, want 2", code)
	}
}
