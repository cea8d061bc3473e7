package convert_test

import (
	"context"
	"errors"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/signalforge/signalforge/convert"
	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/infer/ort"
)

var update = flag.Bool("update", false, "TestRegenerate: rewrite testdata/ with the installed PyTorch")

func newEngine(t testing.TB) *ort.Engine {
	t.Helper()
	eng, err := ort.New(ort.Config{})
	if err != nil {
		t.Fatalf("ONNX Runtime: %v (run scripts/deps.sh test)", err)
	}
	t.Cleanup(func() { eng.Close() })
	return eng
}

// fixtures lists the committed fixture names (testdata/<name>.ref.json).
func fixtures(t testing.TB, dir string) []string {
	refs, err := filepath.Glob(filepath.Join(dir, "*.ref.json"))
	if err != nil || len(refs) == 0 {
		t.Fatalf("no fixtures in %s: %v", dir, err)
	}
	var names []string
	for _, r := range refs {
		names = append(names, strings.TrimSuffix(filepath.Base(r), ".ref.json"))
	}
	return names
}

// convertFixture converts dir/name.pt (with dir/name.spec.json if present)
// and verifies it against dir/name.ref.json in ONNX Runtime.
func convertFixture(t *testing.T, eng *ort.Engine, dir, name string) (*convert.VerifyReport, *convert.Result) {
	t.Helper()
	// A model that starts with Flatten does not reveal its input shape.
	opts := convert.Options{InputShape: map[string][]int64{"flatten": {-1, 2, 4}}[name]}
	// custom_class.pt is torch.save of a Forecaster defined in the script.
	opts.Load.AllowClasses = []string{"__main__.Forecaster"}
	if _, err := os.Stat(filepath.Join(dir, name+".spec.json")); err == nil {
		spec, err := convert.ReadSpecFile(filepath.Join(dir, name+".spec.json"))
		if err != nil {
			t.Fatal(err)
		}
		opts.Spec = spec
	}
	res, err := convert.ConvertFile(filepath.Join(dir, name+".pt"), opts)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := convert.ReadReferenceFile(filepath.Join(dir, name+".ref.json"))
	if err != nil {
		t.Fatal(err)
	}
	rep, err := convert.Verify(context.Background(), eng, res.Bytes, ref, convert.VerifyOptions{
		InputBatchAxis: res.InputBatchAxis, OutputBatchAxis: res.OutputBatchAxis,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Checks) != 2 || rep.Checks[0].Batch == rep.Checks[1].Batch {
		t.Fatalf("want checks at two batch sizes, got %+v", rep.Checks)
	}
	if rep.MaxAbs > 1e-5 {
		t.Fatalf("max abs error %g > 1e-5", rep.MaxAbs)
	}
	return rep, res
}

// TestFixtures converts every committed fixture (one per supported module
// and recurrent configuration, made by testdata/make_fixtures.py with real
// PyTorch) and compares ONNX Runtime's outputs with PyTorch's at two batch
// sizes. It needs no Python.
func TestFixtures(t *testing.T) {
	eng := newEngine(t)
	for _, name := range fixtures(t, "testdata") {
		t.Run(name, func(t *testing.T) {
			rep, _ := convertFixture(t, eng, "testdata", name)
			t.Logf("max abs %.2g, max rel %.2g", rep.MaxAbs, rep.MaxRel)
		})
	}
}

// torchBridge returns a bridge to Debian's PyTorch. PyTorch is part of the
// test environment (make test installs it), so a missing torch fails the
// test unless SIGNALFORGE_NO_TORCH=1 opts out explicitly.
func torchBridge(t testing.TB) *convert.Bridge {
	t.Helper()
	if os.Getenv("SIGNALFORGE_NO_TORCH") == "1" {
		t.Skip("SIGNALFORGE_NO_TORCH=1: skipping the comparison with live PyTorch")
	}
	b := &convert.Bridge{}
	if _, err := b.Check(context.Background()); err != nil {
		t.Fatalf("%v (install with scripts/deps.sh test, or set SIGNALFORGE_NO_TORCH=1 to skip)", err)
	}
	return b
}

// TestRegenerate rebuilds every fixture with the installed PyTorch (the
// committed script, into a temporary folder) and checks the converter
// against the fresh outputs, so the committed fixtures cannot drift from
// what the script and PyTorch produce.
//
// With -update it rewrites testdata/ instead (then commit the result):
//
//	go test ./convert -run TestRegenerate -update
func TestRegenerate(t *testing.T) {
	t.Parallel()
	torchBridge(t)
	dir := t.TempDir()
	if *update {
		dir = "testdata"
	}
	cmd := exec.Command(convert.DefaultPython, "testdata/make_fixtures.py", dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make_fixtures.py: %v\n%s", err, out)
	}
	eng := newEngine(t)
	committed := fixtures(t, "testdata")
	fresh := fixtures(t, dir)
	if strings.Join(committed, ",") != strings.Join(fresh, ",") {
		t.Fatalf("script makes %v, testdata has %v: rerun make_fixtures.py and commit", fresh, committed)
	}
	onnxDir := t.TempDir()
	for _, name := range fresh {
		t.Run(name, func(t *testing.T) {
			_, res := convertFixture(t, eng, dir, name)
			if err := os.WriteFile(filepath.Join(onnxDir, name+".onnx"), res.Bytes, 0o644); err != nil {
				t.Fatal(err)
			}
		})
	}
	// ONNX's own checker (with shape inference) accepts every model.
	check := `import glob, sys, onnx
fs = sorted(glob.glob(sys.argv[1] + "/*.onnx"))
for f in fs:
    onnx.checker.check_model(onnx.load(f), full_check=True)
print(len(fs))`
	out, err := exec.Command(convert.DefaultPython, "-c", check, onnxDir).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != strconv.Itoa(len(fresh)) {
		t.Fatalf("onnx.checker: %v\n%s", err, out)
	}
}

// TestBridge exports through torch.onnx.export and verifies: a whole-model
// pickle of a custom class (its class from --torch-module) against the
// committed reference, and a state dict with a spec (which the bridge
// rebuilds in Python) against live PyTorch outputs from the bridge. The Go
// conversion of each file must agree with the same reference.
func TestBridge(t *testing.T) {
	t.Parallel()
	b := torchBridge(t)
	eng := newEngine(t)
	ctx := context.Background()
	tests := []struct {
		file, spec string
		shape      []int64
	}{
		{"testdata/custom_class.pt", "", []int64{-1, 5, 4}},
		{"testdata/lstm_bidir.pt", "testdata/lstm_bidir.spec.json", []int64{-1, 5, 4}},
	}
	for _, tt := range tests {
		t.Run(filepath.Base(tt.file), func(t *testing.T) {
			t.Parallel()
			opts := convert.Options{Features: []string{"a", "b", "c", "d", "e", "f", "g", "h"}[:tt.shape[len(tt.shape)-1]]}
			if tt.spec != "" {
				spec, err := convert.ReadSpecFile(tt.spec)
				if err != nil {
					t.Fatal(err)
				}
				opts.Spec = spec
			}
			b := *b
			if strings.Contains(tt.file, "custom") {
				// The script defines Forecaster, which the pickle references;
				// allowed by name, the bridge rebuilds it without running the
				// file's pickle.
				b.TorchModule = "testdata/make_fixtures.py"
				opts.Load.AllowClasses = []string{"__main__.Forecaster"}
			}
			res, err := b.Export(ctx, tt.file, tt.shape, 0, opts)
			if err != nil {
				t.Fatal(err)
			}
			meta := metadata(res)
			if meta[infer.FeaturesMetadataKey] != strings.Join(opts.Features, ",") || meta[convert.MetaSourceSHA256] == "" {
				t.Fatalf("metadata %v", meta)
			}
			// The committed reference for the whole model; PyTorch's live
			// outputs (the bridge rebuilding the spec in Python) for the other.
			ref, err := convert.ReadReferenceFile(strings.TrimSuffix(tt.file, ".pt") + ".ref.json")
			if err != nil {
				t.Fatal(err)
			}
			if tt.spec != "" {
				cases, err := convert.BenchInputs("input", res.InputShape, 0, []int{3}, 5)
				if err != nil {
					t.Fatal(err)
				}
				if ref, err = b.Reference(ctx, tt.file, opts.Spec, [][]convert.RefTensor{cases[0].Inputs}); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := convert.Verify(ctx, eng, res.Bytes, ref, convert.VerifyOptions{}); err != nil {
				t.Fatal(err)
			}
			// The Go conversion of the same file agrees with the bridge's reference too.
			if strings.Contains(tt.file, "custom") {
				opts.Load.AllowClasses = []string{"__main__.Forecaster"}
				opts.Spec = mustSpec(t, "testdata/custom_class.spec.json")
			}
			goRes, err := convert.ConvertFile(tt.file, opts)
			if err != nil {
				t.Fatal(err)
			}
			rep, err := convert.Verify(ctx, eng, goRes.Bytes, ref, convert.VerifyOptions{})
			if err != nil || rep.MaxAbs > 1e-5 {
				t.Fatalf("Go conversion vs bridge reference: %v, %+v", err, rep)
			}
		})
	}
}

func metadata(res *convert.Result) map[string]string {
	m := map[string]string{}
	for _, e := range res.Model.GetMetadataProps() {
		m[e.GetKey()] = e.GetValue()
	}
	return m
}

// TestOpsets converts at every accepted opset (LayerNorm is decomposed
// below 17 and a LayerNormalization node from 17) and rejects the others.
func TestOpsets(t *testing.T) {
	eng := newEngine(t)
	ref, err := convert.ReadReferenceFile("testdata/layernorm.ref.json")
	if err != nil {
		t.Fatal(err)
	}
	for opset := convert.MinOpset; opset <= convert.MaxOpset; opset++ {
		res, err := convert.ConvertFile("testdata/layernorm.pt", convert.Options{Opset: opset})
		if err != nil {
			t.Fatalf("opset %d: %v", opset, err)
		}
		if got := res.Model.GetOpsetImport()[0].GetVersion(); got != int64(opset) {
			t.Fatalf("opset %d: model imports %d", opset, got)
		}
		rep, err := convert.Verify(context.Background(), eng, res.Bytes, ref, convert.VerifyOptions{})
		if err != nil || rep.MaxAbs > 1e-5 {
			t.Fatalf("opset %d: %v %+v", opset, err, rep)
		}
	}
	for _, opset := range []int{12, 18} {
		if _, err := convert.ConvertFile("testdata/layernorm.pt", convert.Options{Opset: opset}); err == nil {
			t.Errorf("opset %d accepted", opset)
		}
	}
}

func TestMetadataAndShapes(t *testing.T) {
	res, err := convert.ConvertFile("testdata/lstm_seqfirst.pt", convert.Options{
		Spec: mustSpec(t, "testdata/lstm_seqfirst.spec.json"), Features: []string{"rsi_14", "macd", "vol", "ret"},
		InputName: "x", OutputName: "y",
	})
	if err != nil {
		t.Fatal(err)
	}
	meta := metadata(res)
	want := map[string]string{
		infer.FeaturesMetadataKey:               "rsi_14,macd,vol,ret",
		convert.MetaSourceSHA256:                res.SourceSHA256,
		"signalforge.convert.converter_version": convert.Version,
		"signalforge.convert.source_format":     "state dict",
		"signalforge.convert.opset":             "14",
		"signalforge.convert.dynamic_batch":     "true",
		"signalforge.convert.exporter":          "go",
		"signalforge.convert.spec_sha256":       res.Conversion["spec_sha256"],
	}
	for k, v := range want {
		if meta[k] != v {
			t.Errorf("metadata %s = %q, want %q", k, meta[k], v)
		}
	}
	if len(res.Conversion["spec_sha256"]) != 64 || res.Conversion["opset"] != "14" {
		t.Errorf("conversion lineage %v", res.Conversion)
	}
	if len(res.SourceSHA256) != 64 {
		t.Errorf("sha256 %q", res.SourceSHA256)
	}
	g := res.Model.GetGraph()
	in, out := g.GetInput()[0], g.GetOutput()[0]
	if in.GetName() != "x" || out.GetName() != "y" {
		t.Fatalf("names %s → %s", in.GetName(), out.GetName())
	}
	// Sequence-first: [seq, batch, features] in, [batch, 2] out.
	dims := in.GetType().GetTensorType().GetShape().GetDim()
	if dims[0].GetDimParam() != "seq" || dims[1].GetDimParam() != "batch" || dims[2].GetDimValue() != 4 {
		t.Errorf("input dims %v", dims)
	}
	if res.InputBatchAxis != 1 || res.OutputBatchAxis != 0 {
		t.Errorf("batch axes %d, %d", res.InputBatchAxis, res.OutputBatchAxis)
	}
	if _, err := convert.ConvertFile("testdata/lstm_seqfirst.pt", convert.Options{
		Spec: mustSpec(t, "testdata/lstm_seqfirst.spec.json"), Features: []string{"one"}}); err == nil {
		t.Error("1 feature name for 4 features accepted")
	}

	static, err := convert.ConvertFile("testdata/relu.pt", convert.Options{StaticBatch: true})
	if err != nil {
		t.Fatal(err)
	}
	if d := static.Model.GetGraph().GetInput()[0].GetType().GetTensorType().GetShape().GetDim()[0]; d.GetDimValue() != 1 {
		t.Errorf("static batch dim %v", d)
	}
}

func mustSpec(t *testing.T, path string) *convert.Spec {
	t.Helper()
	s, err := convert.ReadSpecFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestErrors(t *testing.T) {
	tests := []struct {
		name, file, spec string
		want             []string
	}{
		{"state dict without spec", "testdata/lstm.pt", "", []string{"state dict", "spec", "--exporter torch"}},
		{"torchscript without spec", "testdata/mlp_script.pt", "", []string{"TorchScript", "spec"}},
		{"custom class not allowed", "testdata/custom_class.pt", "", []string{"not allowed", "__main__.Forecaster", "--allow-class", "--exporter torch"}},
		{"unsupported layer", "testdata/mlp_state.pt", "layers: [{type: Conv2d, param: '0'}]", []string{`"Conv2d"`, "Linear", "LSTM", "--exporter torch"}},
		{"unknown argument", "testdata/mlp_state.pt", "layers: [{type: LeakyReLU, slope: 0.1}]", []string{`"slope"`, "negative_slope"}},
		{"unused weights", "testdata/mlp_state.pt", "layers: [{type: Linear, param: '0'}]", []string{"does not use", "2.weight"}},
		{"missing weight", "testdata/mlp_state.pt", "layers: [{type: Linear, param: head}]", []string{"head.weight", "missing"}},
		{"wrong size", "testdata/lstm.pt", "layers: [{type: LSTM, param: rnn, hidden_size: 7}, {type: LastStep}, {type: Linear, param: head}]", []string{"hidden_size"}},
		{"typo in spec", "testdata/mlp_state.pt", "input: {shap: [1]}\nlayers: [{type: ReLU}]", []string{"shap"}},
		{"LastStep without RNN", "testdata/mlp_state.pt", "layers: [{type: LastStep}]", []string{"LastStep"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var opts convert.Options
			if tt.spec != "" {
				spec, err := convert.ReadSpec(strings.NewReader(tt.spec))
				if err == nil {
					opts.Spec = spec
				} else {
					checkContains(t, err, tt.want)
					return
				}
			}
			_, err := convert.ConvertFile(tt.file, opts)
			checkContains(t, err, tt.want)
		})
	}
}

func checkContains(t *testing.T, err error, want []string) {
	t.Helper()
	if err == nil {
		t.Fatal("no error")
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not mention %q", err, w)
		}
	}
}

// TestVerifyDetectsMismatch: a reference that disagrees fails verification.
func TestVerifyDetectsMismatch(t *testing.T) {
	eng := newEngine(t)
	res, err := convert.ConvertFile("testdata/relu.pt", convert.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ref, err := convert.ReadReferenceFile("testdata/relu.ref.json")
	if err != nil {
		t.Fatal(err)
	}
	ref.Cases[0].Outputs[0].Data[4] += 0.01
	rep, err := convert.Verify(context.Background(), eng, res.Bytes, ref, convert.VerifyOptions{})
	if !errors.Is(err, convert.ErrMismatch) || rep.MaxAbs < 0.009 {
		t.Fatalf("err %v, report %+v", err, rep)
	}
}
