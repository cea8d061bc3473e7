package onnx_test

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/onnx/onnxtest"
	"github.com/signalforge/signalforge/tensor"
)

func nodeNames(g *onnx.GraphProto) []string {
	var out []string
	for _, n := range g.GetNode() {
		out = append(out, n.GetName())
	}
	return out
}

func TestSortTopologicalRestoresShuffledGraph(t *testing.T) {
	m := onnxtest.MustMLP(1, 8, 8, 8, 8, 2).Model
	g := m.GetGraph()
	want := nodeNames(g)
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20 {
		rng.Shuffle(len(g.Node), func(i, j int) { g.Node[i], g.Node[j] = g.Node[j], g.Node[i] })
		if err := onnx.SortTopological(g); err != nil {
			t.Fatal(err)
		}
		// A chain has exactly one topological order.
		if got := nodeNames(g); !slices.Equal(got, want) {
			t.Fatalf("order = %v, want %v", got, want)
		}
		if err := onnx.Check(m); err != nil {
			t.Fatal(err)
		}
	}
}

func TestSortTopologicalIsStable(t *testing.T) {
	// Two independent branches: the sort must keep their relative order.
	b := onnx.NewBuilder("g")
	x := b.Input("x", tensor.Float32)
	a := b.Node("Relu", []string{x}, onnx.Name("a"))
	c := b.Node("Tanh", []string{x}, onnx.Name("c"))
	b.Output(b.Node("Add", []string{a, c}, onnx.Name("add")), tensor.Float32)
	m, err := b.Build()
	if err != nil {
		t.Fatal(err)
	}
	g := m.GetGraph()
	if err := onnx.SortTopological(g); err != nil {
		t.Fatal(err)
	}
	if got := nodeNames(g); !slices.Equal(got, []string{"a", "c", "add"}) {
		t.Errorf("order = %v, want [a c add]", got)
	}
}

func TestSortTopologicalCycle(t *testing.T) {
	g := &onnx.GraphProto{Node: []*onnx.NodeProto{
		{Name: strp("p"), OpType: strp("Relu"), Input: []string{"q_out"}, Output: []string{"p_out"}},
		{Name: strp("q"), OpType: strp("Relu"), Input: []string{"p_out"}, Output: []string{"q_out"}},
	}}
	err := onnx.SortTopological(g)
	if err == nil || err.Error() != `onnx: graph has a cycle through node "p" (Relu)` {
		t.Fatalf("error = %v", err)
	}
	if got := nodeNames(g); !slices.Equal(got, []string{"p", "q"}) {
		t.Errorf("graph changed on failure: %v", got)
	}
}

func TestCheckReportsOrderAndDomain(t *testing.T) {
	m := onnxtest.MustMLP(1, 4, 3, 2).Model
	g := m.GetGraph()
	g.Node[0], g.Node[1] = g.Node[1], g.Node[0]
	err := onnx.Check(m)
	if err == nil || !strings.Contains(err.Error(), `node "relu0" (Relu): input "fc0_out" is produced by a later node (graph is not in topological order)`) {
		t.Fatalf("error = %v", err)
	}
	g.Node[0], g.Node[1] = g.Node[1], g.Node[0]
	g.Node[0].Domain = strp("com.example")
	err = onnx.Check(m)
	if err == nil || !strings.Contains(err.Error(), `node "fc0" (Gemm): domain "com.example" is not in opset_import`) {
		t.Fatalf("error = %v", err)
	}
	if err := onnx.Check(&onnx.ModelProto{}); err == nil || !strings.Contains(err.Error(), "ir_version is missing") || !strings.Contains(err.Error(), "no graph") {
		t.Errorf("empty model: error = %v", err)
	}
}

// The edits a quantizer makes: replace a weight with its int8 version and a
// DequantizeLinear in front of the Gemm that used it.
func TestEditHelpers(t *testing.T) {
	m := onnxtest.MustMLP(1, 4, 3, 2).Model
	g := m.GetGraph()
	if onnx.FindInitializer(g, "fc0.weight") == nil || onnx.FindInitializer(g, "nope") != nil {
		t.Fatal("FindInitializer")
	}
	if p := onnx.ProducerOf(g, "y"); p != onnx.FindNode(g, "fc1") {
		t.Errorf("ProducerOf(y) = %d", p)
	}
	if c := onnx.ConsumersOf(g, "fc0.weight"); !slices.Equal(c, []int{onnx.FindNode(g, "fc0")}) {
		t.Errorf("ConsumersOf(fc0.weight) = %v", c)
	}
	if err := onnx.AddInitializer(g, &onnx.TensorProto{Name: strp("fc0.bias")}); err == nil ||
		err.Error() != `onnx: initializer "fc0.bias": name already defined` {
		t.Errorf("AddInitializer duplicate: %v", err)
	}

	q, _ := onnx.FromTensor("fc0.weight_q", tensor.Must(tensor.Shape{3, 4}, make([]int8, 12)))
	s, _ := onnx.FromTensor("fc0.weight_scale", tensor.Must(tensor.Shape{}, []float32{0.01}))
	for _, tp := range []*onnx.TensorProto{q, s} {
		if err := onnx.AddInitializer(g, tp); err != nil {
			t.Fatal(err)
		}
	}
	deq := onnx.UniqueName(g, "fc0.weight_deq")
	if n := onnx.ReplaceUses(g, "fc0.weight", deq); n != 1 {
		t.Errorf("ReplaceUses changed %d references, want 1", n)
	}
	if !onnx.RemoveInitializer(g, "fc0.weight") || onnx.RemoveInitializer(g, "fc0.weight") {
		t.Error("RemoveInitializer must report true once, then false")
	}
	i := onnx.FindNode(g, "fc0")
	onnx.ReplaceNode(g, i,
		&onnx.NodeProto{Name: strp("deq0"), OpType: strp("DequantizeLinear"), Input: []string{"fc0.weight_q", "fc0.weight_scale"}, Output: []string{deq}},
		g.Node[i])
	if err := onnx.Check(m); err != nil {
		t.Fatal(err)
	}
	if got := nodeNames(g); !slices.Equal(got, []string{"deq0", "fc0", "relu0", "fc1"}) {
		t.Errorf("nodes = %v", got)
	}
	onnx.RemoveNode(g, 0)
	if err := onnx.Check(m); err == nil || !strings.Contains(err.Error(), `input "fc0.weight_deq" is not defined`) {
		t.Errorf("after removing the producer: %v", err)
	}
	path := t.TempDir() + "/q.onnx"
	onnx.ReplaceNode(g, 0, &onnx.NodeProto{Name: strp("deq0"), OpType: strp("DequantizeLinear"), Input: []string{"fc0.weight_q", "fc0.weight_scale"}, Output: []string{deq}}, g.Node[0])
	if err := onnx.Save(path, m); err != nil {
		t.Fatal(err)
	}
	onnxtest.CheckModel(t, path)
}
