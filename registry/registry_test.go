package registry_test

import (
	"context"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/signalforge/signalforge/registry"
	"github.com/signalforge/signalforge/tensor"
)

var feats = []string{"rsi_14", "macd"}

func TestValidateName(t *testing.T) {
	for _, ok := range []string{"m", "lstm_model", "v2.0", "A-1_b.c", strings.Repeat("x", 128)} {
		if err := registry.ValidateName(ok); err != nil {
			t.Errorf("ValidateName(%q) = %v; want ok", ok, err)
		}
	}
	for _, bad := range []string{"", "../x", "..", ".hidden", "-x", "_x", "a/b", `a\b`, "a b", "a:b", "ü", "a\x00", strings.Repeat("x", 129)} {
		if err := registry.ValidateName(bad); !errors.Is(err, registry.ErrInvalidName) {
			t.Errorf("ValidateName(%q) = %v; want ErrInvalidName", bad, err)
		}
	}
	r, err := registry.ParseRef("lstm_model:v2.0")
	if err != nil || r.Name != "lstm_model" || r.Version != "v2.0" || r.String() != "lstm_model:v2.0" {
		t.Fatalf("ParseRef = %+v, %v", r, err)
	}
	for _, bad := range []string{"lstm_model", "../x:v1", "m:../x", ":v1", "m:", "m:v1:x"} {
		if _, err := registry.ParseRef(bad); !errors.Is(err, registry.ErrInvalidName) {
			t.Errorf("ParseRef(%q) = %v; want ErrInvalidName", bad, err)
		}
	}
}

func TestRegister(t *testing.T) {
	ctx := registry.WithActor(context.Background(), "alice")
	dir := t.TempDir()
	r := openReg(t, dir)
	art := onnxModel(t, 1, feats...)
	v1, err := r.Register(ctx, registry.RegisterRequest{
		Name: "lstm_model", ONNX: art,
		Metrics: map[string]float64{"val_mae": 0.021},
		Tags:    map[string]string{"team": "quant"},
		Lineage: registry.Lineage{
			SourceCheckpoint: "ckpt.pt", SourceSHA256: strings.Repeat("ab", 32),
			Conversion: map[string]string{"opset": "17"}, Benchmarks: map[string]float64{"p50_us": 3.1},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if v1.Version != "v1" || v1.Status != registry.StatusStaging || v1.CreatedBy != "alice" || len(v1.Features) != 2 || v1.Features[0] != "rsi_14" {
		t.Fatalf("Register = %+v", v1)
	}
	if data, err := os.ReadFile(v1.Artifact.Path); err != nil || string(data) != string(art) {
		t.Fatalf("artifact path %q: %v", v1.Artifact.Path, err)
	}
	if !strings.Contains(v1.Artifact.Path, v1.Artifact.SHA256) {
		t.Fatalf("artifact path %s is not content-addressed (%s)", v1.Artifact.Path, v1.Artifact.SHA256)
	}
	// Explicit version, then auto continues after the highest vN; file input;
	// declared features equal to the metadata are fine.
	path := filepath.Join(t.TempDir(), "m.onnx")
	os.WriteFile(path, onnxModel(t, 2, feats...), 0o644)
	v7, err := r.Register(ctx, registry.RegisterRequest{Name: "lstm_model", Version: "v7", ONNXPath: path, Features: feats, Lineage: registry.Lineage{Parent: "v1"}})
	if err != nil || v7.Version != "v7" || v7.Lineage.Parent != "v1" {
		t.Fatalf("Register v7 = %+v, %v", v7, err)
	}
	v8, err := r.Register(ctx, registry.RegisterRequest{Name: "lstm_model", ONNX: art, Status: registry.StatusProduction, Traffic: 100})
	if err != nil || v8.Version != "v8" || v8.Status != registry.StatusProduction || v8.Traffic != 100 {
		t.Fatalf("Register as production = %+v, %v", v8, err)
	}
	if v8.Artifact.SHA256 != v1.Artifact.SHA256 {
		t.Fatal("the same bytes got two artifacts")
	}
	got, err := r.Get(ctx, ref("lstm_model:v1"))
	if err != nil || got.Metrics["val_mae"] != 0.021 || got.Tags["team"] != "quant" || got.Lineage.Conversion["opset"] != "17" ||
		got.Lineage.Benchmarks["p50_us"] != 3.1 || got.Artifact.Path != v1.Artifact.Path || len(got.Inputs) != 1 || got.Inputs[0].Shape[1] != 2 {
		t.Fatalf("Get = %+v, %v", got, err)
	}
	vs, err := r.Versions(ctx, "lstm_model")
	if err != nil || len(vs) != 3 {
		t.Fatalf("Versions = %d, %v", len(vs), err)
	}
	byTag, _ := r.FindByTag(ctx, "team", "quant")
	anyTeam, _ := r.FindByTag(ctx, "team", "")
	if len(byTag) != 1 || byTag[0].Version != "v1" || len(anyTeam) != 1 {
		t.Fatalf("FindByTag = %v / %v", byTag, anyTeam)
	}
	prod, _ := r.Production(ctx)
	if len(prod) != 1 || prod[0].Version != "v8" {
		t.Fatalf("Production = %+v", prod)
	}
	checkConsistent(t, dir)
}

func TestMatchFeatures(t *testing.T) {
	one := func(shape ...int64) registry.ModelInfo {
		info, _ := registry.InspectONNX(onnxModel(t, 1, "a", "b"))
		info.Metadata = nil
		info.Inputs[0].Shape = shape
		return info
	}
	two := one(-1, 1)
	two.Inputs = append(two.Inputs, two.Inputs[0])
	two.Inputs[0].Name, two.Inputs[1].Name = "rsi_14", "macd"
	ints := one(-1, 2)
	ints.Inputs[0].DType = tensor.Int64
	meta := one(-1, 2)
	meta.Metadata = map[string]string{"signalforge.features": "rsi_14, macd"}
	for _, tc := range []struct {
		name     string
		declared []string
		info     registry.ModelInfo
		want     string // joined features, or "error"
	}{
		{"metadata", nil, meta, "rsi_14,macd"},
		{"metadata equal", []string{"rsi_14", "macd"}, meta, "rsi_14,macd"},
		{"metadata order differs", []string{"macd", "rsi_14"}, meta, "error"},
		{"declared on a plain input", []string{"a", "b"}, one(-1, 2), "a,b"},
		{"count mismatch", []string{"a", "b", "c"}, one(-1, 2), "error"},
		{"sequence model", []string{"a", "b"}, one(-1, 32, 2), "a,b"},
		{"dynamic feature axis", []string{"a", "b", "c"}, one(-1, -1), "a,b,c"},
		{"undeclared and no metadata", nil, one(-1, 2), "error"},
		{"duplicate", []string{"a", "a"}, one(-1, 2), "error"},
		{"empty name", []string{"a", ""}, one(-1, 2), "error"},
		{"two inputs", []string{"rsi_14", "macd"}, two, "error"},
		{"int64 input", []string{"a", "b"}, ints, "error"},
		{"rank 1", []string{"a"}, one(-1), "error"},
		{"rank 4", []string{"a", "b"}, one(-1, 3, 3, 2), "error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := registry.MatchFeatures(tc.declared, tc.info)
			if tc.want == "error" {
				if !errors.Is(err, registry.ErrFeatures) {
					t.Fatalf("MatchFeatures = %q, %v; want ErrFeatures", got, err)
				}
				return
			}
			if err != nil || strings.Join(got, ",") != tc.want {
				t.Fatalf("MatchFeatures = %q, %v; want %s", got, err, tc.want)
			}
		})
	}
}

// TestBadInputLeavesRegistryUnchanged: each bad call gets a clear error
// of the right kind and the registry's files stay byte-for-byte the same.
func TestBadInputLeavesRegistryUnchanged(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	r := openReg(t, dir)
	good := onnxModel(t, 1, feats...)
	if _, err := r.Register(ctx, registry.RegisterRequest{Name: "m", ONNX: good}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Promote(ctx, ref("m:v1"), 100); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, dir)
	truncated := good[:len(good)/2]
	corrupt := append([]byte(nil), good...)
	for i := 0; i < len(corrupt); i += 7 {
		corrupt[i] ^= 0xff
	}
	reg := func(req registry.RegisterRequest) func() error {
		return func() error {
			if req.Name == "" {
				req.Name = "m"
			}
			if req.ONNX == nil && req.ONNXPath == "" {
				req.ONNX = good
			}
			_, err := r.Register(ctx, req)
			return err
		}
	}
	for _, tc := range []struct {
		name string
		call func() error
		want error
		msg  string // part of the message
	}{
		{"text file", reg(registry.RegisterRequest{ONNX: []byte("hello, I am not a model")}), registry.ErrInvalidArtifact, "not an ONNX model"},
		{"json", reg(registry.RegisterRequest{ONNX: []byte(`{"model": 1}`)}), registry.ErrInvalidArtifact, "JSON"},
		{"pytorch zip", reg(registry.RegisterRequest{ONNX: []byte("PK\x03\x04rest")}), registry.ErrInvalidArtifact, ".pt"},
		{"truncated onnx", reg(registry.RegisterRequest{ONNX: truncated}), registry.ErrInvalidArtifact, ""},
		{"corrupt onnx", reg(registry.RegisterRequest{ONNX: corrupt}), registry.ErrInvalidArtifact, ""},
		{"empty", reg(registry.RegisterRequest{ONNX: []byte{}}), registry.ErrInvalidArtifact, "empty"},
		{"missing file", reg(registry.RegisterRequest{ONNXPath: filepath.Join(dir, "nope.onnx")}), registry.ErrInvalidArtifact, "nope.onnx"},
		{"feature names differ", reg(registry.RegisterRequest{Features: []string{"rsi_14", "volume"}}), registry.ErrFeatures, "volume"},
		{"feature count differs", reg(registry.RegisterRequest{ONNX: onnxModel(t, 3, "a", "b", "c"), Features: feats}), registry.ErrFeatures, ""},
		{"traversal name", reg(registry.RegisterRequest{Name: "../x"}), registry.ErrInvalidName, "../x"},
		{"traversal version", reg(registry.RegisterRequest{Version: "../x"}), registry.ErrInvalidName, "../x"},
		{"absolute name", reg(registry.RegisterRequest{Name: "/etc"}), registry.ErrInvalidName, ""},
		{"duplicate version", reg(registry.RegisterRequest{Version: "v1", ONNX: onnxModel(t, 9, feats...)}), registry.ErrExists, "m:v1"},
		{"unknown parent", reg(registry.RegisterRequest{Lineage: registry.Lineage{Parent: "v9"}}), registry.ErrNotFound, "parent"},
		{"archived status", reg(registry.RegisterRequest{Status: registry.StatusArchived}), registry.ErrTransition, ""},
		{"traffic for staging", reg(registry.RegisterRequest{Traffic: 5}), registry.ErrTraffic, ""},
		{"NaN metric", reg(registry.RegisterRequest{Metrics: map[string]float64{"mae": math.NaN()}}), nil, "finite"},
		{"unknown version promote", func() error { _, err := r.Promote(ctx, ref("m:v9"), 5); return err }, registry.ErrNotFound, "m:v9"},
		{"unknown model promote", func() error { _, err := r.Promote(ctx, ref("nope:v1"), 5); return err }, registry.ErrNotFound, "nope"},
		{"unknown version traffic", func() error { _, err := r.SetTraffic(ctx, ref("m:v9"), 5); return err }, registry.ErrNotFound, ""},
		{"unknown version archive", func() error { _, err := r.Archive(ctx, ref("m:v9"), true); return err }, registry.ErrNotFound, ""},
		{"unknown version get", func() error { _, err := r.Get(ctx, ref("m:v9")); return err }, registry.ErrNotFound, ""},
		{"unknown version in split", func() error { _, err := r.SetSplit(ctx, "m", registry.Split{"v1": 50, "v9": 50}); return err }, registry.ErrNotFound, "v9"},
		{"traversal in split", func() error { _, err := r.SetSplit(ctx, "m", registry.Split{"v1": 50, "../x": 50}); return err }, registry.ErrInvalidName, ""},
		{"traversal ref", func() error { _, err := r.Get(ctx, registry.Ref{Name: "../x", Version: "v1"}); return err }, registry.ErrInvalidName, ""},
		{"traversal history", func() error { _, err := r.History(ctx, "../x"); return err }, registry.ErrInvalidName, ""},
		{"unknown history", func() error { _, err := r.History(ctx, "nope"); return err }, registry.ErrNotFound, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("error = %v; want %v containing %q", err, tc.want, tc.msg)
			}
			if after := snapshot(t, dir); after != before {
				t.Fatalf("the registry changed after a refused call")
			}
		})
	}
}

// TestValidator checks that Config.Validator runs and can refuse.
func TestValidator(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	calls := 0
	r, err := registry.Open(ctx, registry.Config{Dir: dir, Validator: registry.ValidatorFunc(func(ctx context.Context, b []byte) (registry.ModelInfo, error) {
		calls++
		if calls == 1 {
			return registry.ModelInfo{}, errors.New("engine says no")
		}
		return registry.InspectONNX(b)
	})})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	_, err = r.Register(ctx, registry.RegisterRequest{Name: "m", ONNX: onnxModel(t, 1, feats...)})
	if !errors.Is(err, registry.ErrInvalidArtifact) || !strings.Contains(err.Error(), "engine says no") {
		t.Fatalf("Register = %v; want the validator's refusal as ErrInvalidArtifact", err)
	}
	if ms, _ := r.Models(ctx); len(ms) != 0 {
		t.Fatal("a refused artifact was registered")
	}
	if _, err := r.Register(ctx, registry.RegisterRequest{Name: "m", ONNX: onnxModel(t, 1, feats...)}); err != nil || calls != 2 {
		t.Fatalf("Register = %v after %d validator calls", err, calls)
	}
	// Non-ONNX never reaches the engine.
	r.Register(ctx, registry.RegisterRequest{Name: "m", ONNX: []byte("junk")})
	if calls != 2 {
		t.Fatal("the validator saw bytes that are not ONNX")
	}
}

func TestHistoryAndSplitAt(t *testing.T) {
	clock := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
	ctx := context.Background()
	r, err := registry.Open(ctx, registry.Config{Dir: t.TempDir(), Now: func() time.Time { clock = clock.Add(time.Minute); return clock }})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	art := onnxModel(t, 1, feats...)
	for range 2 {
		if _, err := r.Register(ctx, registry.RegisterRequest{Name: "m", ONNX: art}); err != nil {
			t.Fatal(err)
		}
	}
	bob := registry.WithActor(ctx, "bob")
	r.Promote(bob, ref("m:v1"), 100)
	r.Promote(bob, ref("m:v2"), 5)
	r.SetTraffic(registry.WithActor(ctx, "eve"), ref("m:v2"), 50)
	h, err := r.History(ctx, "m")
	if err != nil || len(h) != 5 {
		t.Fatalf("History = %d events, %v", len(h), err)
	}
	last := h[4]
	if last.Action != registry.ActionSetTraffic || last.Actor != "eve" || last.Version != "v2" ||
		!last.SplitBefore.Equal(registry.Split{"v1": 95, "v2": 5}) || !last.SplitAfter.Equal(registry.Split{"v1": 50, "v2": 50}) ||
		len(last.Changes) != 2 || last.Changes[1].Before != (registry.State{Status: registry.StatusProduction, Traffic: 5}) {
		t.Fatalf("last event = %+v", last)
	}
	for _, tc := range []struct {
		at   time.Time
		want registry.Split
	}{
		{h[2].Time.Add(-time.Second), registry.Split{}},
		{h[2].Time, registry.Split{"v1": 100}},
		{h[3].Time.Add(time.Second), registry.Split{"v1": 95, "v2": 5}},
		{h[4].Time.Add(time.Hour), registry.Split{"v1": 50, "v2": 50}},
	} {
		got, err := r.SplitAt(ctx, "m", tc.at)
		if err != nil || !got.Equal(tc.want) {
			t.Errorf("SplitAt(%s) = %v, %v; want %v", tc.at.Format("15:04:05"), got, err, tc.want)
		}
	}
}

func TestWatch(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dir := t.TempDir()
	server, err := registry.Open(ctx, registry.Config{Dir: dir, PollInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	cli := openReg(t, dir) // another handle on the folder, as the CLI in another process
	art := onnxModel(t, 1, feats...)
	server.Register(ctx, registry.RegisterRequest{Name: "m", ONNX: art})
	seq, _ := server.Seq(ctx)
	wctx, stop := context.WithCancel(ctx)
	events := server.Watch(wctx, seq)

	if _, err := server.Promote(ctx, ref("m:v1"), 100); err != nil { // local change
		t.Fatal(err)
	}
	if _, err := cli.Register(ctx, registry.RegisterRequest{Name: "m", ONNX: art}); err != nil { // other "process"
		t.Fatal(err)
	}
	if _, err := cli.Promote(ctx, ref("m:v2"), 10); err != nil {
		t.Fatal(err)
	}
	want := []registry.Action{registry.ActionPromote, registry.ActionRegister, registry.ActionPromote}
	for i, a := range want {
		select {
		case e := <-events:
			if e.Action != a || e.Seq != seq+uint64(i)+1 {
				t.Fatalf("event %d = %+v; want %s with Seq %d", i, e, a, seq+uint64(i)+1)
			}
			if i == 2 && !e.SplitAfter.Equal(registry.Split{"v1": 90, "v2": 10}) {
				t.Fatalf("split after the CLI's promote = %v", e.SplitAfter)
			}
		case <-ctx.Done():
			t.Fatalf("waited for event %d in vain", i)
		}
	}
	stop()
	for range events { // closed when ctx ends
	}
	// Close ends a Watch too.
	events = server.Watch(ctx, 0)
	<-events
	server.Close()
	for range events {
	}
	if _, ok := <-server.Watch(ctx, 0); ok {
		t.Fatal("Watch on a closed registry delivered an event")
	}
}

// TestMemStoreRegistry: the registry works the same over the in-memory
// store, and Watch sees local changes without polling.
func TestMemStoreRegistry(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	store := registry.NewMemStore()
	defer store.Close()
	r, err := registry.Open(ctx, registry.Config{Store: store, PollInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	events := r.Watch(ctx, 0)
	art := onnxModel(t, 1, feats...)
	v1, err := r.Register(ctx, registry.RegisterRequest{Name: "m", ONNX: art, Status: registry.StatusProduction, Traffic: 30})
	if err != nil || v1.Traffic != 100 {
		t.Fatalf("Register as production = %+v, %v", v1, err)
	}
	if data, err := os.ReadFile(v1.Artifact.Path); err != nil || string(data) != string(art) {
		t.Fatalf("mem store artifact path %q: %v", v1.Artifact.Path, err)
	}
	v2, _ := r.Register(ctx, registry.RegisterRequest{Name: "m", ONNX: art})
	if s, err := r.Promote(ctx, v2.Ref(), 30); err != nil || !s.Equal(registry.Split{"v1": 70, "v2": 30}) {
		t.Fatalf("Promote = %v, %v", s, err)
	}
	for i, want := range []registry.Action{registry.ActionRegister, registry.ActionRegister, registry.ActionPromote} {
		select {
		case e := <-events:
			if e.Action != want {
				t.Fatalf("event %d = %s; want %s", i, e.Action, want)
			}
		case <-ctx.Done():
			t.Fatal("no event")
		}
	}
}
