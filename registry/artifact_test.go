package registry_test

import (
	"context"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/signalforge/signalforge/convert"
	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/onnx/onnxtest"
	"github.com/signalforge/signalforge/quantize"
	"github.com/signalforge/signalforge/registry"
	"github.com/signalforge/signalforge/tensor"
)

// TestRegisterFromPathChecksTheFileFirst: a path that is not a regular
// file of an acceptable size is refused from its metadata, before any
// byte is read, with an error naming the path and the reason.
func TestRegisterFromPathChecksTheFileFirst(t *testing.T) {
	ctx := context.Background()
	const max = 64 << 10
	r, err := registry.Open(ctx, registry.Config{Dir: t.TempDir(), MaxArtifactBytes: max})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	tmp := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(tmp, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.onnx", onnxModel(t, 1, feats...))
	big := write("big.onnx", make([]byte, max+1))
	empty := write("empty.onnx", nil)
	linkGood := filepath.Join(tmp, "link.onnx")
	linkZero := filepath.Join(tmp, "zero.onnx")
	if err := os.Symlink(good, linkGood); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(os.DevNull, linkZero); err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name, path, reason string
	}{
		{"directory", tmp, "is a directory"},
		{"too large", big, "is 65537 bytes, more than the 65536 allowed"},
		{"empty", empty, "is empty"},
		{"device behind a symlink", linkZero, "not a regular file"},
		{"missing", filepath.Join(tmp, "nope.onnx"), "no such file"},
	}
	if _, err := os.Stat("/dev/zero"); err == nil {
		cases = append(cases, struct{ name, path, reason string }{"/dev/zero", "/dev/zero", "not a regular file"})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := r.Register(ctx, registry.RegisterRequest{Name: "m", ONNXPath: tc.path})
			if !errors.Is(err, registry.ErrInvalidArtifact) || !strings.Contains(err.Error(), tc.path) || !strings.Contains(err.Error(), tc.reason) {
				t.Fatalf("Register(%s) = %v; want ErrInvalidArtifact naming the path and %q", tc.path, err, tc.reason)
			}
		})
	}
	for _, p := range []string{good, linkGood} {
		if v, err := r.Register(ctx, registry.RegisterRequest{Name: "ok", ONNXPath: p}); err != nil || v.Artifact.Size == 0 {
			t.Fatalf("Register(%s) = %+v, %v", p, v, err)
		}
	}
}

// TestAutoVersionFollowsDottedVersions: the automatic version continues
// after the highest v<int> or v<int>.<anything>, never reusing a number.
func TestAutoVersionFollowsDottedVersions(t *testing.T) {
	ctx := context.Background()
	r := openReg(t, t.TempDir())
	art := onnxModel(t, 1, feats...)
	reg := func(name, version string) string {
		t.Helper()
		v, err := r.Register(ctx, registry.RegisterRequest{Name: name, Version: version, ONNX: art})
		if err != nil {
			t.Fatal(err)
		}
		return v.Version
	}
	for _, v := range []string{"v1.0", "v2.0", "v3.0"} {
		reg("seed", v)
	}
	if got := reg("seed", ""); got != "v4" {
		t.Fatalf("after v1.0 v2.0 v3.0 the next version is %q, want v4", got)
	}
	if got := reg("seed", ""); got != "v5" {
		t.Fatalf("after v4 the next version is %q, want v5", got)
	}
	if got, got2 := reg("fresh", ""), reg("fresh", ""); got != "v1" || got2 != "v2" {
		t.Fatalf("a fresh model got %q then %q, want v1 then v2", got, got2)
	}
	// What counts: v<int>(.<anything>)?; archived versions too.
	for _, v := range []string{"v7.1-int8", "v10beta", "release-20", "v.9", "V30"} {
		reg("mixed", v)
	}
	if _, err := r.Archive(ctx, ref("mixed:v7.1-int8"), false); err != nil {
		t.Fatal(err)
	}
	if got := reg("mixed", ""); got != "v8" {
		t.Fatalf("after v7.1-int8 (archived), v10beta, release-20, v.9, V30 the next version is %q, want v8", got)
	}
}

// lineageModel builds a one-node model ([batch, 2] → Relu) whose
// metadata_props carry the given entries besides the feature names.
func lineageModel(t *testing.T, meta map[string]string) []byte {
	t.Helper()
	b := onnx.NewBuilder("lineage", onnx.Opset(17))
	x := b.Input("x", tensor.Float32, onnx.Dim("batch"), onnx.Dim(2))
	y := b.Node("Relu", []string{x}, onnx.Outputs("y"))
	b.Output(y, tensor.Float32, onnx.Dim("batch"), onnx.Dim(2))
	b.SetMetadata(onnxtest.FeaturesKey, strings.Join(feats, ","))
	for k, v := range meta {
		b.SetMetadata(k, v)
	}
	m, err := b.Build()
	if err != nil {
		t.Fatal(err)
	}
	data, err := onnx.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// TestLineageFromArtifactMetadata: lineage the converter and quantizer
// wrote into the artifact reaches the registry; the request's own fields
// win.
func TestLineageFromArtifactMetadata(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	r := openReg(t, dir)
	src, calib := strings.Repeat("1a", 32), strings.Repeat("c0", 32)
	meta := map[string]string{
		registry.MetaSourceSHA256:                          src,
		registry.MetaConvertPrefix + "opset":               "17",
		registry.MetaConvertPrefix + "exporter":            "go",
		registry.MetaConvertPrefix + "converter_version":   convert.Version,
		registry.MetaQuantizePrefix + "mode":               "static",
		registry.MetaQuantizePrefix + "calibration":        "entropy",
		registry.MetaQuantizePrefix + "calibration_sha256": calib,
		registry.MetaQuantizePrefix + "parent":             "m:v1",
		"unrelated.key":                                    "ignored",
	}
	if _, err := r.Register(ctx, registry.RegisterRequest{Name: "m", ONNX: onnxModel(t, 1, feats...)}); err != nil {
		t.Fatal(err)
	}
	v2, err := r.Register(ctx, registry.RegisterRequest{Name: "m", ONNXPath: writeTemp(t, lineageModel(t, meta))})
	if err != nil {
		t.Fatal(err)
	}
	l := v2.Lineage
	wantConv := map[string]string{"opset": "17", "exporter": "go", "converter_version": convert.Version}
	wantQuant := map[string]string{"mode": "static", "calibration": "entropy", "calibration_sha256": calib, "parent": "m:v1"}
	if l.SourceSHA256 != src || l.CalibrationSHA256 != calib || l.Parent != "v1" ||
		!maps.Equal(l.Conversion, wantConv) || !maps.Equal(l.Quantization, wantQuant) {
		t.Fatalf("lineage from metadata = %+v", l)
	}
	if got, err := r.Get(ctx, v2.Ref()); err != nil || !maps.Equal(got.Lineage.Conversion, wantConv) || got.Lineage.Parent != "v1" {
		t.Fatalf("stored lineage = %+v, %v", got.Lineage, err)
	}

	// Explicit request fields win, maps key by key.
	mine := strings.Repeat("ee", 32)
	v3, err := r.Register(ctx, registry.RegisterRequest{Name: "m", ONNX: lineageModel(t, meta), Lineage: registry.Lineage{
		SourceSHA256: mine, Parent: "v2", Conversion: map[string]string{"opset": "13"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if l := v3.Lineage; l.SourceSHA256 != mine || l.Parent != "v2" || l.Conversion["opset"] != "13" || l.Conversion["exporter"] != "go" || l.CalibrationSHA256 != calib {
		t.Fatalf("explicit fields did not win: %+v", l)
	}

	// A recorded parent that is not a version of this model is not a
	// parent here (registering must not fail over it); it stays recorded.
	for _, p := range []string{"other:v1", "v9", "../x"} {
		meta[registry.MetaQuantizePrefix+"parent"] = p
		v, err := r.Register(ctx, registry.RegisterRequest{Name: "m", ONNX: lineageModel(t, meta)})
		if err != nil || v.Lineage.Parent != "" || v.Lineage.Quantization["parent"] != p {
			t.Fatalf("recorded parent %q: %+v, %v", p, v.Lineage, err)
		}
	}

	// A malformed recorded sha256 is refused, naming the key.
	before := snapshot(t, dir)
	meta[registry.MetaSourceSHA256] = "not-a-sha"
	if _, err := r.Register(ctx, registry.RegisterRequest{Name: "m", ONNX: lineageModel(t, meta)}); !errors.Is(err, registry.ErrInvalidArtifact) || !strings.Contains(err.Error(), registry.MetaSourceSHA256) {
		t.Fatalf("bad metadata sha256: %v", err)
	}
	if snapshot(t, dir) != before {
		t.Fatal("a refused register changed the registry")
	}
	checkConsistent(t, dir)
}

// TestLineageFromRealQuantizer registers what quantize.Quantize produces:
// the registry's lineage is the quantizer's own, with no flag repeated.
func TestLineageFromRealQuantizer(t *testing.T) {
	// The key names must be the ones the producers write.
	if registry.MetaSourceSHA256 != convert.MetaSourceSHA256 || registry.MetaConvertPrefix != convert.MetaConvertPrefix || registry.MetaQuantizePrefix != quantize.MetaPrefix {
		t.Fatal("registry's metadata key names differ from convert's and quantize's")
	}
	ctx := context.Background()
	r := openReg(t, t.TempDir())
	mlp, err := onnxtest.NewMLP(onnxtest.MLPConfig{Sizes: []int{2, 8, 1}, Seed: 3, Features: feats})
	if err != nil {
		t.Fatal(err)
	}
	fp32, err := mlp.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	v1, err := r.Register(ctx, registry.RegisterRequest{Name: "m", ONNX: fp32})
	if err != nil {
		t.Fatal(err)
	}
	q, err := quantize.New(quantize.Config{Parent: v1.Version})
	if err != nil {
		t.Fatal(err)
	}
	res, err := q.Quantize(ctx, mlp.Model, nil)
	if err != nil {
		t.Fatal(err)
	}
	quantized, err := onnx.Marshal(res.Model)
	if err != nil {
		t.Fatal(err)
	}
	v2, err := r.Register(ctx, registry.RegisterRequest{Name: "m", ONNX: quantized})
	if err != nil {
		t.Fatal(err)
	}
	if v2.Lineage.Parent != "v1" || !maps.Equal(v2.Lineage.Quantization, res.Params()) || v2.Lineage.Quantization["mode"] != "dynamic" {
		t.Fatalf("lineage of the quantized version = %+v; want parent v1 and quantization %v", v2.Lineage, res.Params())
	}
}

func writeTemp(t *testing.T, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "model.onnx")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
