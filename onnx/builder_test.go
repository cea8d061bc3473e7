package onnx_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/onnx/onnxtest"
	"github.com/signalforge/signalforge/tensor"
)

func TestBuilderErrors(t *testing.T) {
	w := tensor.Must(tensor.Shape{1, 2}, []float32{1, 2})
	for _, tc := range []struct {
		name  string
		build func(b *onnx.Builder)
		want  []string // every one must appear in the error
	}{
		{"duplicate input", func(b *onnx.Builder) {
			x := b.Input("x", tensor.Float32, onnx.Dim(2))
			b.Input("x", tensor.Float32, onnx.Dim(2))
			b.Output(b.Node("Relu", []string{x}), tensor.Float32)
		}, []string{`onnx: builder: input "x": name already defined`}},
		{"initializer clashes with input", func(b *onnx.Builder) {
			x := b.Input("x", tensor.Float32, onnx.Dim(2))
			b.Initializer("x", w)
			b.Output(b.Node("Relu", []string{x}), tensor.Float32)
		}, []string{`onnx: builder: initializer "x": name already defined`}},
		{"undefined node input", func(b *onnx.Builder) {
			y := b.Node("Relu", []string{"nope"}, onnx.Name("r"))
			b.Output(y, tensor.Float32)
		}, []string{`onnx: invalid model: node "r" (Relu): input "nope" is not defined`}},
		{"undefined output", func(b *onnx.Builder) {
			x := b.Input("x", tensor.Float32)
			b.Node("Relu", []string{x})
			b.Output("ghost", tensor.Float32)
		}, []string{`graph output "ghost" is not defined`}},
		{"no outputs", func(b *onnx.Builder) {
			b.Node("Relu", []string{b.Input("x", tensor.Float32)})
		}, []string{"graph has no outputs"}},
		{"bad attribute type", func(b *onnx.Builder) {
			x := b.Input("x", tensor.Float32)
			b.Output(b.Node("Relu", []string{x}, onnx.Attr("alpha", struct{}{})), tensor.Float32)
		}, []string{`onnx: builder: node Relu: onnx: attribute "alpha": unsupported value type struct {}`}},
		{"unimported domain", func(b *onnx.Builder) {
			x := b.Input("x", tensor.Float32)
			b.Output(b.Node("QGemm", []string{x}, onnx.InDomain("com.microsoft")), tensor.Float32)
		}, []string{`onnx: builder: node QGemm: domain "com.microsoft" is not imported (use onnx.Domain)`}},
		{"explicit output clash", func(b *onnx.Builder) {
			x := b.Input("x", tensor.Float32)
			b.Output(b.Node("Relu", []string{x}, onnx.Outputs("x")), tensor.Float32)
		}, []string{`onnx: builder: output of node "Relu" "x": name already defined`}},
		{"node name reused", func(b *onnx.Builder) {
			x := b.Input("x", tensor.Float32)
			y := b.Node("Relu", []string{x}, onnx.Name("n"))
			b.Output(b.Node("Relu", []string{y}, onnx.Name("n")), tensor.Float32)
		}, []string{`onnx: builder: node "n": name already used`}},
		{"invalid dtype", func(b *onnx.Builder) {
			x := b.Input("x", tensor.Invalid)
			b.Output(b.Node("Relu", []string{x}), tensor.Float32)
		}, []string{`onnx: builder: input "x": invalid dtype invalid(0)`}},
		{"two mistakes reported together", func(b *onnx.Builder) {
			b.Input("", tensor.Float32)
			b.Initializer("w", tensor.Tensor{})
			b.Output(b.Input("x", tensor.Float32), tensor.Float32)
		}, []string{"onnx: builder: input has an empty name", `onnx: builder: onnx: tensor "w": invalid (zero) tensor`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := onnx.NewBuilder("g")
			tc.build(b)
			m, err := b.Build()
			if err == nil {
				t.Fatalf("Build succeeded: %v", onnx.Describe(m))
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error = %q\nwant it to contain %q", err, w)
				}
			}
		})
	}
}

func TestBuilderNamesAndAttributes(t *testing.T) {
	b := onnx.NewBuilder("g", onnx.Opset(14), onnx.Domain("com.microsoft", 1), onnx.ProducerVersion("test"))
	x := b.Input("x", tensor.Float32, onnx.Dim("batch"), onnx.Dim(4))
	r1 := b.Node("Relu", []string{x})
	r2 := b.Node("Relu", []string{r1})
	if r1 != "Relu_out" || r2 != "Relu_1_out" {
		t.Errorf("generated names %q, %q; want Relu_out, Relu_1_out", r1, r2)
	}
	outs := b.NodeOutputs("Split", []string{r2}, onnx.NumOutputs(2), onnx.Attr("axis", 1))
	if len(outs) != 2 || outs[0] != "Split_out0" || outs[1] != "Split_out1" {
		t.Errorf("Split outputs = %q", outs)
	}
	named := b.NodeOutputs("TopK", []string{outs[0], b.Initializer("k", tensor.Must(tensor.Shape{1}, []int64{1}))}, onnx.Outputs("vals", ""))
	if len(named) != 2 || named[0] != "vals" || named[1] != "" {
		t.Errorf("TopK outputs = %q", named)
	}
	if u := b.Unique("vals"); u != "vals_1" {
		t.Errorf("Unique(vals) = %q", u)
	}
	attrs := b.Node("Custom", []string{named[0]}, onnx.InDomain("com.microsoft"),
		onnx.Attr("i", 3), onnx.Attr("i64", int64(-4)), onnx.Attr("f", float32(0.5)), onnx.Attr("f64", 0.25),
		onnx.Attr("s", "abc"), onnx.Attr("ints", []int{1, 2}), onnx.Attr("ints64", []int64{3}),
		onnx.Attr("floats", []float32{1.5}), onnx.Attr("floats64", []float64{2.5}), onnx.Attr("strs", []string{"a", "b"}),
		onnx.Attr("t", tensor.Must(tensor.Shape{1}, []int8{-3})))
	b.Output(attrs, tensor.Float32, onnx.Dim("batch"), onnx.Dim(2))
	b.SetMetadata("k", "v1")
	b.SetMetadata("k", "v2")
	m, err := b.Build()
	if err != nil {
		t.Fatal(err)
	}
	if got := onnx.Describe(m).Metadata["k"]; got != "v2" {
		t.Errorf("metadata k = %q, want v2 (SetMetadata replaces)", got)
	}
	if len(m.GetMetadataProps()) != 1 {
		t.Errorf("%d metadata entries, want 1", len(m.GetMetadataProps()))
	}
	if m.GetProducerName() != onnx.Producer || m.GetProducerVersion() != "test" || m.GetIrVersion() != onnx.DefaultIRVersion {
		t.Errorf("producer %q %q, ir %d", m.GetProducerName(), m.GetProducerVersion(), m.GetIrVersion())
	}
	g := m.GetGraph()
	nd := g.GetNode()[onnx.FindNode(g, "Custom")]
	if nd.GetDomain() != "com.microsoft" {
		t.Errorf("domain = %q", nd.GetDomain())
	}
	got := map[string]string{}
	for _, a := range nd.GetAttribute() {
		got[a.GetName()] = a.GetType().String()
	}
	want := map[string]string{"i": "INT", "i64": "INT", "f": "FLOAT", "f64": "FLOAT", "s": "STRING", "ints": "INTS",
		"ints64": "INTS", "floats": "FLOATS", "floats64": "FLOATS", "strs": "STRINGS", "t": "TENSOR"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("attribute %s has type %s, want %s", k, got[k], v)
		}
	}
	for _, a := range nd.GetAttribute() {
		switch a.GetName() {
		case "i64":
			if a.GetI() != -4 {
				t.Errorf("i64 = %d", a.GetI())
			}
		case "f64":
			if a.GetF() != 0.25 {
				t.Errorf("f64 = %v", a.GetF())
			}
		case "strs":
			if len(a.GetStrings()) != 2 || string(a.GetStrings()[1]) != "b" {
				t.Errorf("strs = %q", a.GetStrings())
			}
		case "t":
			tt, err := onnx.ToTensor(a.GetT())
			if err != nil || tensor.Data[int8](tt)[0] != -3 {
				t.Errorf("t = %v, %v", tt.Raw(), err)
			}
		}
	}
	if ops := m.GetOpsetImport(); len(ops) != 2 || ops[0].GetDomain() != "" || ops[0].GetVersion() != 14 || ops[1].GetDomain() != "com.microsoft" {
		t.Errorf("opset imports = %v", ops)
	}
}

// A model using several op kinds, multiple outputs and an LSTM passes the
// reference ONNX checker with full shape inference.
func TestBuilderModelPassesONNXChecker(t *testing.T) {
	const hidden = 4
	b := onnx.NewBuilder("lstm_head", onnx.Opset(14))
	x := b.Input("x", tensor.Float32, onnx.Dim("seq"), onnx.Dim("batch"), onnx.Dim(3))
	w := b.Initializer("W", tensor.Must(tensor.Shape{1, 4 * hidden, 3}, make([]float32, 4*hidden*3)))
	r := b.Initializer("R", tensor.Must(tensor.Shape{1, 4 * hidden, hidden}, make([]float32, 4*hidden*hidden)))
	outs := b.NodeOutputs("LSTM", []string{x, w, r}, onnx.NumOutputs(3), onnx.Attr("hidden_size", hidden))
	h := b.Node("Squeeze", []string{outs[1], b.Initializer("axes", tensor.Must(tensor.Shape{1}, []int64{0}))})
	fcw := b.Initializer("fc.weight", tensor.Must(tensor.Shape{1, hidden}, []float32{1, 2, 3, 4}))
	y := b.Node("Gemm", []string{h, fcw}, onnx.Attr("transB", 1), onnx.Attr("alpha", 1.0), onnx.Outputs("y"))
	b.Output(y, tensor.Float32, onnx.Dim("batch"), onnx.Dim(1))
	b.Output(outs[2], tensor.Float32, onnx.Dim(1), onnx.Dim("batch"), onnx.Dim(hidden))
	b.SetMetadata("signalforge.features", "rsi_14,macd,volume")
	m, err := b.Build()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "m.onnx")
	if err := onnx.Save(path, m); err != nil {
		t.Fatal(err)
	}
	onnxtest.CheckModel(t, path)
}
