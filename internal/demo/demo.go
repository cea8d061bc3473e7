// Package demo builds the demo models that `signalforge serve` registers
// into an empty registry, so that `make run` has something to serve without
// PyTorch: small MLPs over named market features, with deterministic
// weights.
package demo

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"

	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/registry"
	"github.com/signalforge/signalforge/tensor"
)

// Features are the demo model's input features, in input order.
var Features = []string{"rsi_14", "macd", "macd_signal", "bb_width", "volume_z", "ret_1d", "ret_5d", "atr_14"}

// ModelName is the demo model's registry name.
const ModelName = "forecast_mlp"

// MLP returns a serialized ONNX MLP (Gemm + Relu layers, dynamic batch axis
// named "batch", feature names in metadata) with the given layer sizes and
// weights drawn from seed. sizes[0] must equal len(features) when features
// is not empty.
func MLP(seed uint64, features []string, sizes ...int) ([]byte, error) {
	if len(sizes) < 2 {
		return nil, fmt.Errorf("demo: need at least input and output sizes, got %v", sizes)
	}
	if len(features) > 0 && len(features) != sizes[0] {
		return nil, fmt.Errorf("demo: %d features for an input of %d", len(features), sizes[0])
	}
	rng := rand.New(rand.NewPCG(seed, seed^0x5f0e))
	b := onnx.NewBuilder("demo_mlp", onnx.Opset(14))
	x := b.Input("x", tensor.Float32, onnx.Dim("batch"), onnx.Dim(sizes[0]))
	h := x
	for i := 1; i < len(sizes); i++ {
		in, out := sizes[i-1], sizes[i]
		bound := 1 / math.Sqrt(float64(in)) // PyTorch's Linear init range
		w := make([]float32, out*in)
		for j := range w {
			w[j] = float32((rng.Float64()*2 - 1) * bound)
		}
		bias := make([]float32, out)
		for j := range bias {
			bias[j] = float32((rng.Float64()*2 - 1) * bound)
		}
		wn := b.Initializer(fmt.Sprintf("fc%d.weight", i), tensor.Must(tensor.Shape{int64(out), int64(in)}, w))
		bn := b.Initializer(fmt.Sprintf("fc%d.bias", i), tensor.Must(tensor.Shape{int64(out)}, bias))
		h = b.Node("Gemm", []string{h, wn, bn}, onnx.Attr("transB", 1))
		if i < len(sizes)-1 {
			h = b.Node("Relu", []string{h})
		}
	}
	b.Node("Identity", []string{h}, onnx.Outputs("y"))
	b.Output("y", tensor.Float32, onnx.Dim("batch"), onnx.Dim(sizes[len(sizes)-1]))
	if len(features) > 0 {
		b.SetMetadata("signalforge.features", strings.Join(features, ","))
	}
	m, err := b.Build()
	if err != nil {
		return nil, err
	}
	return onnx.Marshal(m)
}

// Seed registers the demo model (two versions, v1.0 and v2.0, at 80/20)
// into reg if reg has no models at all. It reports whether it did.
func Seed(ctx context.Context, reg *registry.Registry) (bool, error) {
	models, err := reg.Models(ctx)
	if err != nil {
		return false, err
	}
	if len(models) > 0 {
		return false, nil
	}
	ctx = registry.WithActor(ctx, "signalforge-demo")
	for i, v := range []string{"v1.0", "v2.0"} {
		art, err := MLP(uint64(i+1), Features, len(Features), 32, 16, 1)
		if err != nil {
			return false, err
		}
		_, err = reg.Register(ctx, registry.RegisterRequest{
			Name: ModelName, Version: v, ONNX: art, Features: Features,
			Tags:        map[string]string{"demo": "true", "kind": "mlp"},
			Description: "demo MLP over technical indicators (random weights)",
			Metrics:     map[string]float64{"val_mae": 0.02 - 0.002*float64(i)},
		})
		if err != nil {
			return false, fmt.Errorf("demo: register %s:%s: %w", ModelName, v, err)
		}
	}
	if _, err := reg.SetSplit(ctx, ModelName, registry.Split{"v1.0": 80, "v2.0": 20}); err != nil {
		return false, fmt.Errorf("demo: split: %w", err)
	}
	return true, nil
}
