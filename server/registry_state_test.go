package server

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/signalforge/signalforge/api"
	"github.com/signalforge/signalforge/internal/demo"
	"github.com/signalforge/signalforge/registry"
)

// TestServerKeepsServingOverInvalidRegistryState: a registry state.json
// hand-edited into breaking the rules (500% of traffic) does not take a
// running server down: it keeps the versions and split it had, answers
// and stays ready while every registry read fails; once the state is
// repaired it follows changes again.
func TestServerKeepsServingOverInvalidRegistryState(t *testing.T) {
	ts := startServer(t, testOpts{noCache: true})
	ctx := context.Background()
	c := &api.Client{BaseURL: ts.URL}
	before, _ := ts.srv.router.Split(demo.ModelName)

	path := filepath.Join(ts.dir, "state.json")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	edited := strings.Replace(string(data), `"traffic": 80`, `"traffic": 500`, 1)
	if edited == string(data) {
		t.Fatalf("no 80%% traffic to edit in:\n%s", data)
	}
	// Written aside and renamed, as an editor saves.
	if err := os.WriteFile(path+".edit", []byte(edited), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".edit", path); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.reg.Models(ctx); !errors.Is(err, registry.ErrInvalidState) {
		t.Fatalf("registry read over a 500%% state = %v; want ErrInvalidState", err)
	}
	for i := range 20 {
		if _, err := c.Predict(ctx, demo.ModelName, &api.PredictRequest{RequestID: "r", Ticker: "AAPL", Horizon: 5, Features: demoFeatures(i)}); err != nil {
			t.Fatalf("predict %d while the registry state is invalid: %v", i, err)
		}
	}
	if after, _ := ts.srv.router.Split(demo.ModelName); !ts.srv.Ready() || len(after) != len(before) || after["v1.0"] != before["v1.0"] {
		t.Fatalf("over an invalid state the server has split %v (ready %v); want the last good %v", after, ts.srv.Ready(), before)
	}

	if _, err := registry.Repair(ctx, ts.dir, registry.RepairOptions{}); err != nil {
		t.Fatal(err)
	}
	other, err := registry.Open(ctx, registry.Config{Dir: ts.dir, PollInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := other.SetTraffic(ctx, registry.Ref{Name: demo.ModelName, Version: "v2.0"}, 50); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { s, _ := ts.srv.router.Split(demo.ModelName); return s["v2.0"] > 0.49 && s["v2.0"] < 0.51 })
}
