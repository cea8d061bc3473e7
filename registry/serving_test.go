package registry_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/onnx/onnxtest"
	"github.com/signalforge/signalforge/registry"
)

// The serving model's features, and a model over f000…f099 (QA's repro:
// forecast_mlp v4.0 converted from another training run).
var (
	marketFeatures = []string{"rsi_14", "macd", "ema_12", "sma_20", "vol_5", "atr_14"}
	wideFeatures   = func() []string {
		out := make([]string, 100)
		for i := range out {
			out[i] = fmt.Sprintf("f%03d", i)
		}
		return out
	}()
)

// seqModel returns a model whose input is [batch, steps, features] (steps
// -1 for a dynamic time axis). Only the registry's structural check runs
// on it (no engine): it stands for an LSTM's artifact.
func seqModel(t testing.TB, seed uint64, steps int64, features ...string) []byte {
	t.Helper()
	m, err := onnxtest.NewMLP(onnxtest.MLPConfig{Sizes: []int{len(features), 2}, Seed: seed, Features: features})
	if err != nil {
		t.Fatal(err)
	}
	dim := &onnx.TensorShapeProto_Dimension{Value: &onnx.TensorShapeProto_Dimension_DimParam{DimParam: "time"}}
	if steps > 0 {
		dim = &onnx.TensorShapeProto_Dimension{Value: &onnx.TensorShapeProto_Dimension_DimValue{DimValue: steps}}
	}
	shape := m.Model.GetGraph().GetInput()[0].GetType().GetTensorType().GetShape()
	shape.Dim = slices.Insert(shape.Dim, 1, dim)
	b, err := m.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// mixedReg returns a registry in which forecast_mlp v1.0 (market features)
// serves 100% and v4.0 (f000…f099) is staging.
func mixedReg(t *testing.T) (*registry.Registry, string) {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	r := openReg(t, dir)
	if _, err := r.Register(ctx, registry.RegisterRequest{Name: "forecast_mlp", Version: "v1.0", ONNX: onnxModel(t, 1, marketFeatures...), Status: registry.StatusProduction, Traffic: 100}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Register(ctx, registry.RegisterRequest{Name: "forecast_mlp", Version: "v4.0", ONNX: onnxModel(t, 4, wideFeatures...)}); err != nil {
		t.Fatal(err)
	}
	return r, dir
}

// wantMismatch checks that err is the refusal of newcomer next to serving,
// with short feature lists, and that nothing was written.
func wantMismatch(t *testing.T, err error, newcomer, serving string, dir, before string, wantInMsg ...string) {
	t.Helper()
	var me *registry.MismatchError
	if !errors.Is(err, registry.ErrFeatures) || !errors.As(err, &me) {
		t.Fatalf("got %v; want a *MismatchError wrapping ErrFeatures", err)
	}
	if me.Ref.String() != newcomer || me.Serving.String() != serving {
		t.Errorf("refused %s next to %s; want %s next to %s", me.Ref, me.Serving, newcomer, serving)
	}
	msg := err.Error()
	for _, w := range append([]string{newcomer, serving, "register it under another model name"}, wantInMsg...) {
		if !strings.Contains(msg, w) {
			t.Errorf("message %q does not contain %q", msg, w)
		}
	}
	if len(msg) > 400 {
		t.Errorf("message is %d bytes long: %q", len(msg), msg)
	}
	if got := snapshot(t, dir); got != before {
		t.Errorf("the refused change wrote to the registry")
	}
}

func TestRegistryRefusesMixedFeaturesOnPromote(t *testing.T) {
	ctx := context.Background()
	r, dir := mixedReg(t)
	before := snapshot(t, dir)
	_, err := r.Promote(ctx, ref("forecast_mlp:v4.0"), 50)
	wantMismatch(t, err, "forecast_mlp:v4.0", "forecast_mlp:v1.0", dir, before,
		"takes features v1.0 does not (f000, f001, f002, f003, … 100 in all)",
		"lacks rsi_14, macd, ema_12, sma_20, … 6 in all")
	var me *registry.MismatchError
	errors.As(err, &me)
	if len(me.Extra) != 100 || !slices.Equal(me.Missing, marketFeatures) {
		t.Errorf("Extra has %d names, Missing %q; want 100 and %q", len(me.Extra), me.Missing, marketFeatures)
	}
	if strings.Contains(err.Error(), "f099") {
		t.Errorf("the message lists every feature: %q", err)
	}
	if s, _ := r.Split(ctx, "forecast_mlp"); !s.Equal(registry.Split{"v1.0": 100}) {
		t.Errorf("split after refusal: %s", s)
	}
}

func TestRegistryAcceptsSameFeaturesInAnotherOrder(t *testing.T) {
	ctx := context.Background()
	r, _ := mixedReg(t)
	shuffled := slices.Clone(marketFeatures)
	slices.Reverse(shuffled)
	if _, err := r.Register(ctx, registry.RegisterRequest{Name: "forecast_mlp", Version: "v2.0", ONNX: onnxModel(t, 2, shuffled...)}); err != nil {
		t.Fatal(err)
	}
	s, err := r.Promote(ctx, ref("forecast_mlp:v2.0"), 50)
	if err != nil {
		t.Fatalf("promote the same features in another order: %v", err)
	}
	if !s.Equal(registry.Split{"v1.0": 50, "v2.0": 50}) {
		t.Errorf("split %s", s)
	}
	// Registering as production works the same way.
	if _, err := r.Register(ctx, registry.RegisterRequest{Name: "forecast_mlp", Version: "v3.0", ONNX: onnxModel(t, 3, shuffled[1:]...)}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Register(ctx, registry.RegisterRequest{Name: "forecast_mlp", Version: "v3.1", ONNX: onnxModel(t, 31, shuffled...), Status: registry.StatusProduction, Traffic: 10}); err != nil {
		t.Fatalf("register as production with the same features in another order: %v", err)
	}
	// A subset is not the same set.
	_, err = r.SetSplit(ctx, "forecast_mlp", registry.Split{"v1.0": 90, "v3.0": 10})
	var me *registry.MismatchError
	if !errors.As(err, &me) || len(me.Extra) != 0 || !slices.Equal(me.Missing, []string{"atr_14"}) {
		t.Fatalf("a version lacking one feature: got %v", err)
	}
	if want := "registry: forecast_mlp:v3.0 cannot share traffic with forecast_mlp:v1.0: it lacks atr_14; versions that share traffic must take the same features — register it under another model name"; err.Error() != want {
		t.Errorf("message\n got %q\nwant %q", err, want)
	}
}

func TestRegistryRefusesMixedFeaturesOnSetTraffic(t *testing.T) {
	ctx := context.Background()
	r, dir := mixedReg(t)
	// Production with no traffic shares nothing: allowed.
	if s, err := r.SetSplit(ctx, "forecast_mlp", registry.Split{"v1.0": 100, "v4.0": 0}); err != nil || !s.Equal(registry.Split{"v1.0": 100, "v4.0": 0}) {
		t.Fatalf("v4.0 in production with 0%%: %s, %v", s, err)
	}
	before := snapshot(t, dir)
	_, err := r.SetTraffic(ctx, ref("forecast_mlp:v4.0"), 50)
	wantMismatch(t, err, "forecast_mlp:v4.0", "forecast_mlp:v1.0", dir, before, "100 in all")
	// Giving v4.0 all the traffic leaves it alone: no one shares with it.
	if s, err := r.SetTraffic(ctx, ref("forecast_mlp:v4.0"), 100); err != nil || !s.Equal(registry.Split{"v1.0": 0, "v4.0": 100}) {
		t.Fatalf("v4.0 at 100%%: %s, %v", s, err)
	}
}

func TestRegistryRefusesMixedFeaturesOnSetSplit(t *testing.T) {
	ctx := context.Background()
	r, dir := mixedReg(t)
	before := snapshot(t, dir)
	_, err := r.SetSplit(ctx, "forecast_mlp", registry.Split{"v1.0": 95, "v4.0": 5})
	wantMismatch(t, err, "forecast_mlp:v4.0", "forecast_mlp:v1.0", dir, before, "rsi_14")
	// v4.0 served nothing before; with v1.0 at 5% it still names v1.0 as
	// what serves (v1.0 had the traffic before the change).
	_, err = r.SetSplit(ctx, "forecast_mlp", registry.Split{"v1.0": 5, "v4.0": 95})
	wantMismatch(t, err, "forecast_mlp:v4.0", "forecast_mlp:v1.0", dir, before)
}

func TestRegistryRefusesMixedFeaturesOnRegisterAsProduction(t *testing.T) {
	ctx := context.Background()
	r, dir := mixedReg(t)
	before := snapshot(t, dir)
	for _, version := range []string{"v5.0", ""} {
		_, err := r.Register(ctx, registry.RegisterRequest{Name: "forecast_mlp", Version: version, ONNX: onnxModel(t, 5, wideFeatures[:10]...), Status: registry.StatusProduction, Traffic: 20})
		newcomer := "forecast_mlp:" + version
		if version == "" {
			newcomer = "forecast_mlp:v5" // the automatic version after v4.0
		}
		// The refusal happens before the artifact is stored: the
		// snapshot (which lists the artifacts) is unchanged.
		wantMismatch(t, err, newcomer, "forecast_mlp:v1.0", dir, before, "f000, f001, f002, f003, … 10 in all")
	}
	// As staging it is fine: it shares no traffic.
	if _, err := r.Register(ctx, registry.RegisterRequest{Name: "forecast_mlp", Version: "v5.0", ONNX: onnxModel(t, 5, wideFeatures[:10]...)}); err != nil {
		t.Fatal(err)
	}
}

// TestRegistryRefusesRollbackIntoMixedSplit: a model left mixed by a
// registry that did not check (written here straight through the Store)
// can be repaired with Demote, but Rollback will not restore the mix.
func TestRegistryRefusesRollbackIntoMixedSplit(t *testing.T) {
	ctx := context.Background()
	r, dir := mixedReg(t)
	err := r.Store().Update(ctx, "forecast_mlp", func(m *registry.Model) ([]registry.Event, error) {
		before := m.Split()
		var changes []registry.Change
		for i := range m.Versions {
			v := &m.Versions[i]
			was := registry.State{Status: v.Status, Traffic: v.Traffic}
			v.Status, v.Traffic = registry.StatusProduction, 50
			changes = append(changes, registry.Change{Version: v.Version, Before: was, After: registry.State{Status: v.Status, Traffic: v.Traffic}})
		}
		return []registry.Event{{Name: m.Name, Action: registry.ActionPromote, Version: "v4.0", Changes: changes, SplitBefore: before, SplitAfter: m.Split()}}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	evs, err := r.History(ctx, "forecast_mlp")
	if err != nil {
		t.Fatal(err)
	}
	mixedSeq := evs[len(evs)-1].Seq
	// Demote is how the mix is repaired; it is never refused for it.
	if s, err := r.Demote(ctx, ref("forecast_mlp:v4.0"), true); err != nil || !s.Equal(registry.Split{"v1.0": 100}) {
		t.Fatalf("demote v4.0 out of the mixed split: %s, %v", s, err)
	}
	before := snapshot(t, dir)
	_, err = r.Rollback(ctx, "forecast_mlp", 0)
	wantMismatch(t, err, "forecast_mlp:v4.0", "forecast_mlp:v1.0", dir, before, "100 in all")
	_, err = r.Rollback(ctx, "forecast_mlp", mixedSeq)
	wantMismatch(t, err, "forecast_mlp:v4.0", "forecast_mlp:v1.0", dir, before)
	checkConsistent(t, dir)
}

func TestRegistryRefusesMixedSequenceLengths(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	r := openReg(t, dir)
	f := []string{"rsi_14", "macd"}
	reg := func(version string, art []byte) {
		t.Helper()
		if _, err := r.Register(ctx, registry.RegisterRequest{Name: "forecast_lstm", Version: version, ONNX: art}); err != nil {
			t.Fatal(err)
		}
	}
	reg("v1", seqModel(t, 1, 16, f...))
	reg("v2", seqModel(t, 2, 32, "macd", "rsi_14"))
	reg("v3", seqModel(t, 3, -1, f...))
	reg("v4", onnxModel(t, 4, f...)) // [batch, features]: one value per feature
	reg("v5", seqModel(t, 5, 16, "macd", "rsi_14"))
	if _, err := r.Promote(ctx, ref("forecast_lstm:v1"), 100); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, dir)
	_, err := r.Promote(ctx, ref("forecast_lstm:v2"), 10)
	wantMismatch(t, err, "forecast_lstm:v2", "forecast_lstm:v1", dir, before,
		"it takes sequences of 32 time steps, v1 takes sequences of 16 time steps; versions that share traffic must take the same inputs")
	_, err = r.Promote(ctx, ref("forecast_lstm:v4"), 10)
	wantMismatch(t, err, "forecast_lstm:v4", "forecast_lstm:v1", dir, before, "it takes one value per feature, v1 takes sequences of 16 time steps")
	// A dynamic time axis takes any length; the same length in another
	// feature order is the same input.
	for _, v := range []string{"v3", "v5"} {
		if _, err := r.Promote(ctx, ref("forecast_lstm:"+v), 10); err != nil {
			t.Fatalf("promote %s: %v", v, err)
		}
	}
}
