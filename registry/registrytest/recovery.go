package registrytest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"testing"

	"github.com/signalforge/signalforge/onnx/onnxtest"
	"github.com/signalforge/signalforge/registry"
)

// runRecovery checks what makes a store recoverable: it never commits a
// model that breaks the registry's rules, and the audit log it keeps is
// enough to rebuild its state exactly.
func runRecovery(t *testing.T, open func(t *testing.T) (registry.Store, Opener)) {
	ctx := context.Background()

	t.Run("UpdateRefusesInvalidModel", func(t *testing.T) {
		prod := func(v *registry.Version, pct float64) { v.Status, v.Traffic = registry.StatusProduction, pct }
		cases := []struct {
			name           string
			edit           func(m *registry.Model)
			version, field string
		}{
			{"traffic 500%", func(m *registry.Model) { prod(&m.Versions[0], 500) }, "v1", "traffic"},
			{"negative traffic", func(m *registry.Model) { prod(&m.Versions[0], -5); prod(&m.Versions[1], 105) }, "v1", "traffic"},
			{"NaN traffic", func(m *registry.Model) { prod(&m.Versions[0], math.NaN()) }, "v1", "traffic"},
			{"traffic on a staging version", func(m *registry.Model) { m.Versions[1].Traffic = 100 }, "v2", "traffic"},
			{"split totals 150%", func(m *registry.Model) { prod(&m.Versions[0], 100); prod(&m.Versions[1], 50) }, "", "traffic"},
			{"split totals 40%", func(m *registry.Model) { prod(&m.Versions[0], 40) }, "", "traffic"},
			{"unknown status", func(m *registry.Model) { m.Versions[0].Status = "live" }, "v1", "status"},
			{"malformed sha256", func(m *registry.Model) { m.Versions[1].Artifact.SHA256 = "../../etc/passwd" }, "v2", "artifact.sha256"},
			{"invalid version name", func(m *registry.Model) { m.Versions[1].Version = "a/b" }, "a/b", "version"},
			{"version listed twice", func(m *registry.Model) { m.Versions[1].Version = "v1" }, "v1", "version"},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				s, _ := open(t)
				commit(t, s, "m", "v1", 1)
				commit(t, s, "m", "v2", 1)
				before, _ := s.Model(ctx, "m")
				err := s.Update(ctx, "m", func(m *registry.Model) ([]registry.Event, error) {
					c.edit(m)
					return []registry.Event{{Name: "m", Action: registry.ActionPromote, Version: "v1"}}, nil
				})
				var se *registry.StateError
				if !errors.Is(err, registry.ErrInvalidState) || !errors.As(err, &se) {
					t.Fatalf("Update committing %s = %v; want a *StateError wrapping ErrInvalidState", c.name, err)
				}
				if se.Model != "m" || se.Version != c.version || se.Field != c.field {
					t.Fatalf("StateError names model %q version %q field %q; want m, %q, %q (%v)", se.Model, se.Version, se.Field, c.version, c.field, err)
				}
				after, _ := s.Model(ctx, "m")
				if !sameJSON(before, after) {
					t.Fatalf("a refused Update changed the model:\nbefore %+v\nafter  %+v", before, after)
				}
				if seq, _ := s.Seq(ctx); seq != 2 {
					t.Fatalf("Seq = %d after a refused Update; want 2", seq)
				}
			})
		}
	})

	t.Run("AuditLogRebuildsState", func(t *testing.T) {
		s, o := open(t)
		reg, err := registry.Open(ctx, registry.Config{Store: s, PollInterval: -1})
		if err != nil {
			t.Fatal(err)
		}
		defer reg.Close()
		history(t, reg)

		s2 := o(t) // what another process reads
		defer s2.Close()
		evs, err := s2.Events(ctx, "", 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range evs {
			if e.Action != registry.ActionRegister {
				continue
			}
			if e.Record == nil || e.Record.Artifact.SHA256 == "" || e.Record.Artifact.Path != "" || len(e.Record.Features) == 0 {
				t.Fatalf("register event %d carries record %+v; want the version with its artifact sha256 and features, no local path", e.Seq, e.Record)
			}
		}
		rb, err := registry.Rebuild(ctx, evs, registry.StoredArtifacts(s2))
		if err != nil {
			t.Fatal(err)
		}
		if len(rb.Problems) != 0 {
			t.Fatalf("Rebuild of a log written by this registry reports problems: %v", rb.Problems)
		}
		want, err := s2.Models(ctx)
		if err != nil {
			t.Fatal(err)
		}
		seq, _ := s2.Seq(ctx)
		if rb.Seq != seq || !sameJSON(rb.Models, want) {
			t.Fatalf("Rebuild (seq %d) gives\n%s\nthe store (seq %d) holds\n%s", rb.Seq, jsonOf(rb.Models), seq, jsonOf(want))
		}
	})
}

// history drives a registry through every kind of change: register (as
// staging and as production), promote, set-traffic, set-split, rollback,
// archive and demote, over two models, then a canary plan (start, a step
// with its traffic, pause) and shadow settings (set, clear, set).
func history(t *testing.T, reg *registry.Registry) {
	t.Helper()
	ctx := registry.WithActor(context.Background(), "conformance")
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	model := func(seed uint64) []byte {
		m, err := onnxtest.NewMLP(onnxtest.MLPConfig{Sizes: []int{2, 3, 1}, Seed: seed, Features: []string{"rsi_14", "macd"}})
		if err != nil {
			t.Fatal(err)
		}
		b, err := m.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	ref := func(s string) registry.Ref {
		r, err := registry.ParseRef(s)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	must(reg.Register(ctx, registry.RegisterRequest{Name: "lstm_model", Version: "v1.0", ONNX: model(1),
		Metrics: map[string]float64{"val_mae": 0.021}, Tags: map[string]string{"team": "quant"}, Description: "first",
		Lineage: registry.Lineage{SourceCheckpoint: "lstm.pt", Conversion: map[string]string{"opset": "17"}, Benchmarks: map[string]float64{"p50_us": 2.5}}}))
	must(reg.Register(ctx, registry.RegisterRequest{Name: "lstm_model", ONNX: model(2), Lineage: registry.Lineage{Parent: "v1.0"}}))
	must(reg.Promote(ctx, ref("lstm_model:v1.0"), 5)) // first to serve: 100%
	must(reg.Promote(ctx, ref("lstm_model:v2"), 10))
	must(reg.SetTraffic(ctx, ref("lstm_model:v2"), 50))
	must(reg.Register(ctx, registry.RegisterRequest{Name: "lstm_model", ONNX: model(3)}))
	must(reg.SetSplit(ctx, "lstm_model", registry.Split{"v1.0": 20, "v3": 80}))
	must(reg.Rollback(ctx, "lstm_model", 0))
	must(reg.Archive(ctx, ref("lstm_model:v1.0"), true))
	must(reg.Promote(ctx, ref("lstm_model:v3"), 100.0/3))
	must(reg.Demote(ctx, ref("lstm_model:v3"), true))
	must(reg.Register(ctx, registry.RegisterRequest{Name: "gru", ONNX: model(4), Status: registry.StatusProduction, Traffic: 100}))
	must(reg.Register(ctx, registry.RegisterRequest{Name: "gru", ONNX: model(5), Status: registry.StatusProduction, Traffic: 25}))
	must(reg.Register(ctx, registry.RegisterRequest{Name: "gru", ONNX: model(4), Version: "v3-same-bytes"}))
	must(reg.Archive(ctx, ref("gru:v3-same-bytes"), false))
	// A canary plan that steps with traffic, then pauses; a shadow set,
	// cleared and set again.
	p, err := reg.StartCanary(ctx, "gru", registry.CanaryPlan{Canary: "v2", Baseline: "v1", StepUp: true, Rollback: true, StepsPct: []float64{25, 50, 100}})
	must(p, err)
	_, _, err = reg.UpdateCanary(ctx, "gru", p.Revision, func(c *registry.CanaryChange) error {
		c.Plan.Step, c.Plan.Note, c.Action = 1, "healthy", registry.ActionCanaryStep
		c.Split = registry.Split{"v1": 50, "v2": 50}
		return nil
	})
	must(nil, err)
	must(reg.PauseCanary(ctx, "gru", "hold"))
	must(reg.SetShadow(ctx, "lstm_model", registry.ShadowSetting{Version: "v3", Rate: 0.5}))
	must(nil, reg.ClearShadow(ctx, "lstm_model"))
	must(reg.SetShadow(ctx, "lstm_model", registry.ShadowSetting{Version: "v2", Rate: 0.25, MaxBusy: 0.5}))
}

func jsonOf(v any) []byte {
	b, err := json.MarshalIndent(v, "", " ")
	if err != nil {
		return []byte(err.Error())
	}
	return b
}

// sameJSON compares two values as a store keeps them.
func sameJSON(a, b any) bool { return bytes.Equal(jsonOf(a), jsonOf(b)) }
