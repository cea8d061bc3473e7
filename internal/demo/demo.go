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

// Sequence demo model: an LSTM over SeqLen time steps of SeqFeatures.
const (
	SeqModelName = "forecast_lstm"
	SeqLen       = 16
)

// SeqFeatures are the sequence demo model's input features, in input order.
var SeqFeatures = []string{"rsi_14", "macd", "volume_z", "ret_1d"}

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

// LSTM returns a serialized ONNX sequence model shaped like SignalForge's
// recurrent forecasters: input x [batch, seqLen, F] (batch first), an
// LSTM with the given hidden size, its last hidden state, a linear head to
// one output. Weights are drawn from seed; feature names go to metadata.
func LSTM(seed uint64, features []string, seqLen, hidden int) ([]byte, error) {
	f := len(features)
	if f == 0 || seqLen <= 0 || hidden <= 0 {
		return nil, fmt.Errorf("demo: LSTM needs features, a sequence length and a hidden size")
	}
	rng := rand.New(rand.NewPCG(seed, seed^0x157))
	uniform := func(n int, bound float64) []float32 {
		out := make([]float32, n)
		for i := range out {
			out[i] = float32((rng.Float64()*2 - 1) * bound)
		}
		return out
	}
	bound := 1 / math.Sqrt(float64(hidden))
	h := int64(hidden)
	b := onnx.NewBuilder("demo_lstm", onnx.Opset(14))
	x := b.Input("x", tensor.Float32, onnx.Dim("batch"), onnx.Dim(seqLen), onnx.Dim(f))
	w := b.Initializer("lstm.W", tensor.Must(tensor.Shape{1, 4 * h, int64(f)}, uniform(4*hidden*f, bound)))
	r := b.Initializer("lstm.R", tensor.Must(tensor.Shape{1, 4 * h, h}, uniform(4*hidden*hidden, bound)))
	bias := b.Initializer("lstm.B", tensor.Must(tensor.Shape{1, 8 * h}, uniform(8*hidden, bound)))
	// ONNX Runtime's CPU LSTM is sequence-first: transpose in and take Y_h.
	xt := b.Node("Transpose", []string{x}, onnx.Attr("perm", []int64{1, 0, 2}))
	outs := b.NodeOutputs("LSTM", []string{xt, w, r, bias}, onnx.NumOutputs(3), onnx.Attr("hidden_size", h))
	axes := b.Initializer("squeeze_axes", tensor.Must(tensor.Shape{1}, []int64{0}))
	last := b.Node("Squeeze", []string{outs[1], axes}) // [batch, hidden]
	hw := b.Initializer("head.weight", tensor.Must(tensor.Shape{1, h}, uniform(hidden, bound)))
	hb := b.Initializer("head.bias", tensor.Must(tensor.Shape{1}, uniform(1, bound)))
	b.Node("Gemm", []string{last, hw, hb}, onnx.Attr("transB", 1), onnx.Outputs("y"))
	b.Output("y", tensor.Float32, onnx.Dim("batch"), onnx.Dim(1))
	b.SetMetadata("signalforge.features", strings.Join(features, ","))
	m, err := b.Build()
	if err != nil {
		return nil, err
	}
	return onnx.Marshal(m)
}

// Seed registers the demo models into reg if reg has no models at all:
// forecast_mlp (two versions, v1.0 and v2.0, at 80/20) and forecast_lstm
// (v1.0, a sequence model). It reports whether it did.
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
			Metrics:     map[string]float64{"val_mae": []float64{0.021, 0.018}[i]},
		})
		if err != nil {
			return false, fmt.Errorf("demo: register %s:%s: %w", ModelName, v, err)
		}
	}
	if _, err := reg.SetSplit(ctx, ModelName, registry.Split{"v1.0": 80, "v2.0": 20}); err != nil {
		return false, fmt.Errorf("demo: split: %w", err)
	}
	art, err := LSTM(3, SeqFeatures, SeqLen, 32)
	if err != nil {
		return false, err
	}
	_, err = reg.Register(ctx, registry.RegisterRequest{
		Name: SeqModelName, Version: "v1.0", ONNX: art, Features: SeqFeatures,
		Status: registry.StatusProduction, Traffic: 100,
		Tags:        map[string]string{"demo": "true", "kind": "lstm"},
		Description: fmt.Sprintf("demo LSTM over %d time steps (random weights)", SeqLen),
	})
	if err != nil {
		return false, fmt.Errorf("demo: register %s:v1.0: %w", SeqModelName, err)
	}
	return true, nil
}
