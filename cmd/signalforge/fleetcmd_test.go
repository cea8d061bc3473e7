package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/signalforge/signalforge/api"
	"github.com/signalforge/signalforge/internal/demo"
	"github.com/signalforge/signalforge/registry"
	"github.com/signalforge/signalforge/server"
)

// startAdminServer serves the demo models with admin token "tok" as
// replica "r1", publishing its counters every 50ms; it returns the base URL.
func startAdminServer(t *testing.T) string {
	return serveDemo(t, server.Config{AdminToken: "tok", Replica: "r1", FleetInterval: 50 * time.Millisecond})
}

// adminRun runs `signalforge args…` with the environment vars (nothing
// else from the process's environment).
func adminRun(vars map[string]string, args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	e := &env{stdout: &out, stderr: &errb, getenv: func(k string) string { return vars[k] }}
	code = run(context.Background(), e, args)
	return code, out.String(), errb.String()
}

// fleetSeen waits until the server's fleet holds n requests of
// forecast_mlp v1.0.
func fleetSeen(t *testing.T, url string, n int64) {
	t.Helper()
	c := &api.Client{BaseURL: url, Token: "tok"}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var f fleetAnswer
		if err := c.Do(context.Background(), "GET", "/v1/admin/models/forecast_mlp/fleet", nil, &f); err != nil {
			t.Fatal(err)
		}
		if f.Versions["v1.0"].Requests == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the fleet counts %+v; want %d requests of v1.0", f.Versions, n)
		}
	}
}

func TestStatsAndJudgeAgainstAServer(t *testing.T) {
	url := startAdminServer(t)
	c := &api.Client{BaseURL: url}
	for i := range 3 {
		if _, err := c.Predict(t.Context(), "forecast_mlp", &api.PredictRequest{RequestID: fmt.Sprint(i), Version: "v1.0",
			Features: api.Features{"rsi_14": api.Scalar(50 + float64(i)), "macd": api.Scalar(0.5), "macd_signal": api.Scalar(0.4), "bb_width": api.Scalar(0.08),
				"volume_z": api.Scalar(1.3), "ret_1d": api.Scalar(0.004), "ret_5d": api.Scalar(0.012), "atr_14": api.Scalar(2.1)}}); err != nil {
			t.Fatal(err)
		}
	}
	fleetSeen(t, url, 3)
	withToken := map[string]string{adminEnvToken: "tok", predictEnvServer: url}

	t.Run("stats table", func(t *testing.T) {
		code, out, errs := adminRun(nil, "stats", "forecast_mlp", "--server", url, "--token", "tok")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errs)
		}
		for _, want := range []string{"MODEL", "P99 MS", "forecast_mlp", "v1.0", "fleet (1)", "r1"} {
			if !strings.Contains(out, want) {
				t.Errorf("stats table lacks %q:\n%s", want, out)
			}
		}
		// The v1.0 fleet line and r1's line both count the 3 requests.
		var lines int
		for _, l := range strings.Split(out, "\n") {
			f := strings.Fields(l)
			if len(f) >= 5 && (f[0] == "forecast_mlp" && f[1] == "v1.0" || f[0] == "r1") && slices.Contains(f, "3") {
				lines++
			}
		}
		if lines < 2 {
			t.Errorf("want the fleet's and r1's v1.0 lines with 3 requests:\n%s", out)
		}
	})
	t.Run("stats json, every model, token from the environment", func(t *testing.T) {
		code, out, errs := adminRun(withToken, "stats", "--format", "json")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errs)
		}
		var fs []fleetAnswer
		if err := json.Unmarshal([]byte(out), &fs); err != nil {
			t.Fatalf("%v:\n%s", err, out)
		}
		got := map[string]fleetAnswer{}
		for _, f := range fs {
			got[f.Model] = f
		}
		if len(fs) != 2 || got[demo.ModelName].Versions["v1.0"].Requests != 3 || got[demo.SeqModelName].Model == "" {
			t.Fatalf("stats of every model: %+v", fs)
		}
		if r := got[demo.ModelName].Replicas; len(r) != 1 || r[0].Replica != "r1" || r[0].Versions["v1.0"].Requests != 3 {
			t.Fatalf("replicas %+v", r)
		}
	})
	t.Run("judge table", func(t *testing.T) {
		code, out, errs := adminRun(withToken, "judge", "forecast_mlp", "--canary", "v2.0", "--baseline", "v1.0")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errs)
		}
		for _, want := range []string{"decision:", "inconclusive", "baseline:", "v1.0: 3 requests, 0 errors", "REPLICA", "r1"} {
			if !strings.Contains(out, want) {
				t.Errorf("judge table lacks %q:\n%s", want, out)
			}
		}
	})
	t.Run("judge json", func(t *testing.T) {
		code, out, errs := adminRun(withToken, "judge", "--canary", "v2.0", "--baseline", "v1.0", "--min-samples", "2", "--format", "json", "forecast_mlp")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errs)
		}
		var v judgeAnswer
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			t.Fatalf("%v:\n%s", err, out)
		}
		if v.Model != "forecast_mlp" || v.Decision != registry.VerdictInconclusive || v.Baseline.Requests != 3 || v.Canary.Requests != 0 || len(v.Replicas) != 1 {
			t.Fatalf("verdict %+v", v)
		}
	})
	t.Run("mistakes", func(t *testing.T) {
		for _, c := range []struct {
			vars map[string]string
			args []string
			code int
			want string
		}{
			{map[string]string{predictEnvServer: url}, []string{"stats", "forecast_mlp"}, 1, "--token"},
			{withToken, []string{"stats", "forecast_mlp", "--token", "wrong"}, 1, "401"},
			{withToken, []string{"stats", "no_such_model"}, 1, "404"},
			{withToken, []string{"stats", "a", "b"}, 2, "wrong number of arguments"},
			{withToken, []string{"stats", "--format", "yaml"}, 1, "--format"},
			{withToken, []string{"judge", "forecast_mlp", "--canary", "v2.0"}, 2, "--canary and --baseline are required"},
			{withToken, []string{"judge", "forecast_mlp", "--canary", "v9", "--baseline", "v1.0"}, 1, "404"},
			{withToken, []string{"judge", "forecast_mlp", "--canary", "v2.0", "--baseline", "v1.0", "--max-error-rate-pct", "101"}, 1, "--max-error-rate-pct"},
			{map[string]string{adminEnvToken: "tok"}, []string{"stats", "--server", "http://127.0.0.1:1"}, 1, "cannot reach the server"},
		} {
			code, out, errs := adminRun(c.vars, c.args...)
			if code != c.code || !strings.Contains(errs, c.want) {
				t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit %d naming %q", c.args, code, out, errs, c.code, c.want)
			}
		}
	})
	t.Run("help", func(t *testing.T) {
		for _, cmd := range []string{"judge", "stats"} {
			code, _, errs := adminRun(withToken, cmd, "-h")
			if code != 0 || !strings.Contains(errs, "Examples:") || !strings.Contains(errs, "signalforge "+cmd) || strings.Contains(errs, "tok\"") {
				t.Errorf("%s -h: exit %d, %s", cmd, code, errs)
			}
		}
	})
}
