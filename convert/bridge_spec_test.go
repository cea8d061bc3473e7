package convert_test

import (
	"context"
	"math"
	"strings"
	"testing"

	"github.com/signalforge/signalforge/convert"
)

// TestBridgeReferenceWithSpec rebuilds spec'd models in PyTorch through the
// bridge (what `signalforge convert -spec …` does for -verify when no
// -reference is given) and compares its outputs with the committed
// references. The specs mix layers with weights and layers without (a
// LeakyReLU), which must never be handed the whole state dict, and nested
// Sequentials.
func TestBridgeReferenceWithSpec(t *testing.T) {
	t.Parallel()
	b := torchBridge(t)
	tests := []struct {
		name string
		spec *convert.Spec
	}{
		{"mlp_state", mustSpec(t, "testdata/mlp_state.spec.json")},
		{"mlp_script", mustSpec(t, "testdata/mlp_script.spec.json")},
		// Nested Sequentials whose weightless children have no param; a
		// leaf's param must not pick up deeper keys ("0.0.weight" is not
		// the weight of a Linear at "0").
		{"nested", mustSpecText(t, `{"layers": [
			{"type": "Sequential", "param": "0", "layers": [{"type": "Linear", "param": "0.0"}, {"type": "Tanh"}]},
			{"type": "Sequential", "layers": [{"type": "Linear", "param": "1.0"}, {"type": "Sigmoid"}]}]}`)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			want, err := convert.ReadReferenceFile("testdata/" + tt.name + ".ref.json")
			if err != nil {
				t.Fatal(err)
			}
			c := want.Cases[0]
			got, err := b.Reference(context.Background(), "testdata/"+tt.name+".pt", tt.spec, [][]convert.RefTensor{c.Inputs})
			if err != nil {
				t.Fatal(err)
			}
			g, w := got.Cases[0].Outputs[0], c.Outputs[0]
			if len(g.Data) != len(w.Data) || len(g.Data) == 0 {
				t.Fatalf("bridge output shape %v, want %v", g.Shape, w.Shape)
			}
			for i := range g.Data {
				if d := math.Abs(g.Data[i] - w.Data[i]); d > 1e-5 {
					t.Fatalf("output %d: bridge %g, committed reference %g", i, g.Data[i], w.Data[i])
				}
			}
		})
	}
}

func mustSpecText(t *testing.T, s string) *convert.Spec {
	t.Helper()
	spec, err := convert.ReadSpec(strings.NewReader(s))
	if err != nil {
		t.Fatal(err)
	}
	return spec
}
