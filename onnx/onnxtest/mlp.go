// Package onnxtest makes small, deterministic ONNX models for tests,
// benchmarks and demos: a multi-layer perceptron with random weights, a
// dynamic batch axis and feature names in its metadata, plus a pure-Go
// reference forward pass to compare engines against.
//
//	m, _ := onnxtest.NewMLP(onnxtest.MLPConfig{Sizes: []int{100, 50, 10}, Seed: 1})
//	_ = m.Save("mlp.onnx")
//	x := m.RandomInput(8, 2)  // [8,100] float32
//	want, _ := m.Forward(x)   // [8,10], what ONNX Runtime must return
package onnxtest

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/tensor"
)

// Names of the MLP's graph input and output, and of its batch axis.
const (
	InputName  = "x"
	OutputName = "y"
	BatchDim   = "batch"
	// FeaturesKey is the metadata key that lists the input feature names
	// (the same key as infer.FeaturesMetadataKey).
	FeaturesKey = "signalforge.features"
)

// MLPConfig describes an MLP. Only Sizes is required.
type MLPConfig struct {
	// Sizes are the layer widths from input to output, at least two
	// entries, all positive: {100, 50, 10} is 100 inputs, one hidden
	// layer of 50, 10 outputs.
	Sizes []int
	// Seed seeds the weights: equal configs give byte-identical models.
	Seed uint64
	// Features are the input feature names written to metadata_props
	// under FeaturesKey. If nil, "f0", "f1", ... ; if set, its length
	// must be Sizes[0].
	Features []string
	// Activation between layers (not after the last): "Relu", "Tanh" or
	// "Sigmoid". If empty, "Relu".
	Activation string
	// Opset is the ONNX opset version. If zero, onnx.DefaultOpset.
	Opset int64
	// Name is the graph name. If empty, "mlp".
	Name string
}

// MLP is a built model together with its weights.
type MLP struct {
	Config MLPConfig // with defaults filled in
	Model  *onnx.ModelProto
	// Weights[i] is layer i's [out, in] matrix (PyTorch nn.Linear layout;
	// the graph uses Gemm with transB=1) and Biases[i] its [out] bias.
	Weights []tensor.Tensor
	Biases  []tensor.Tensor
}

// NewMLP builds an MLP: Gemm (+ activation) per layer, input "x" of shape
// [batch, Sizes[0]] and output "y" of shape [batch, Sizes[last]], with a
// symbolic batch axis. Weights and biases are uniform in ±1/sqrt(fan_in),
// as PyTorch initializes nn.Linear.
func NewMLP(cfg MLPConfig) (*MLP, error) {
	if len(cfg.Sizes) < 2 {
		return nil, fmt.Errorf("onnxtest: MLP needs at least two sizes, have %v", cfg.Sizes)
	}
	for _, s := range cfg.Sizes {
		if s <= 0 {
			return nil, fmt.Errorf("onnxtest: MLP sizes must be positive, have %v", cfg.Sizes)
		}
	}
	cfg.Sizes = slices.Clone(cfg.Sizes)
	if cfg.Features == nil {
		cfg.Features = make([]string, cfg.Sizes[0])
		for i := range cfg.Features {
			cfg.Features[i] = "f" + strconv.Itoa(i)
		}
	} else {
		cfg.Features = slices.Clone(cfg.Features)
	}
	if len(cfg.Features) != cfg.Sizes[0] {
		return nil, fmt.Errorf("onnxtest: %d feature names for %d inputs", len(cfg.Features), cfg.Sizes[0])
	}
	switch cfg.Activation {
	case "":
		cfg.Activation = "Relu"
	case "Relu", "Tanh", "Sigmoid":
	default:
		return nil, fmt.Errorf("onnxtest: unsupported activation %q (Relu, Tanh, Sigmoid)", cfg.Activation)
	}
	if cfg.Opset == 0 {
		cfg.Opset = onnx.DefaultOpset
	}
	if cfg.Name == "" {
		cfg.Name = "mlp"
	}

	rng := rand.New(rand.NewPCG(cfg.Seed, 0x5197a1f0e9e))
	m := &MLP{Config: cfg}
	b := onnx.NewBuilder(cfg.Name, onnx.Opset(cfg.Opset))
	h := b.Input(InputName, tensor.Float32, onnx.Dim(BatchDim), onnx.Dim(cfg.Sizes[0]))
	last := len(cfg.Sizes) - 2
	for i := 0; i <= last; i++ {
		in, out := cfg.Sizes[i], cfg.Sizes[i+1]
		k := 1 / math.Sqrt(float64(in))
		w := make([]float32, out*in)
		for j := range w {
			w[j] = float32((2*rng.Float64() - 1) * k)
		}
		bias := make([]float32, out)
		for j := range bias {
			bias[j] = float32((2*rng.Float64() - 1) * k)
		}
		wt := tensor.Must(tensor.Shape{int64(out), int64(in)}, w)
		bt := tensor.Must(tensor.Shape{int64(out)}, bias)
		m.Weights = append(m.Weights, wt)
		m.Biases = append(m.Biases, bt)
		n := strconv.Itoa(i)
		opts := []onnx.NodeOption{onnx.Name("fc" + n), onnx.Attr("transB", 1)}
		if i == last {
			opts = append(opts, onnx.Outputs(OutputName))
		}
		h = b.Node("Gemm", []string{h, b.Initializer("fc"+n+".weight", wt), b.Initializer("fc"+n+".bias", bt)}, opts...)
		if i < last {
			h = b.Node(cfg.Activation, []string{h}, onnx.Name(strings.ToLower(cfg.Activation)+n))
		}
	}
	b.Output(h, tensor.Float32, onnx.Dim(BatchDim), onnx.Dim(cfg.Sizes[len(cfg.Sizes)-1]))
	b.SetMetadata(FeaturesKey, strings.Join(cfg.Features, ","))
	model, err := b.Build()
	if err != nil {
		return nil, err
	}
	m.Model = model
	return m, nil
}

// MustMLP is NewMLP for fixed configurations known to be valid, such as
// MustMLP(1, 100, 50, 10); it panics on error.
func MustMLP(seed uint64, sizes ...int) *MLP {
	m, err := NewMLP(MLPConfig{Sizes: sizes, Seed: seed})
	if err != nil {
		panic(err)
	}
	return m
}

// Bytes returns the serialized model.
func (m *MLP) Bytes() ([]byte, error) { return onnx.Marshal(m.Model) }

// Save writes the model to path (atomically).
func (m *MLP) Save(path string) error { return onnx.Save(path, m.Model) }

// WriteMLP builds an MLP and saves it as model.onnx in a fresh directory
// from tb.TempDir, returning the path. It fails the test on error.
func WriteMLP(tb testing.TB, cfg MLPConfig) string {
	tb.Helper()
	m, err := NewMLP(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	path := tb.TempDir() + "/model.onnx"
	if err := m.Save(path); err != nil {
		tb.Fatal(err)
	}
	return path
}

// RandomInput returns a [batch, Sizes[0]] float32 tensor of values uniform
// in [-1, 1), deterministic for a given seed.
func (m *MLP) RandomInput(batch int, seed uint64) tensor.Tensor {
	rng := rand.New(rand.NewPCG(seed, 0x1a2b3c))
	x := make([]float32, batch*m.Config.Sizes[0])
	for i := range x {
		x[i] = float32(2*rng.Float64() - 1)
	}
	return tensor.Must(tensor.Shape{int64(batch), int64(m.Config.Sizes[0])}, x)
}

// Forward computes the model in Go (float64 accumulation), the reference
// an engine's output is compared against with a small tolerance.
func (m *MLP) Forward(x tensor.Tensor) (tensor.Tensor, error) {
	in := m.Config.Sizes[0]
	if x.DType() != tensor.Float32 || len(x.Shape()) != 2 || x.Shape()[1] != int64(in) {
		return tensor.Tensor{}, fmt.Errorf("%w: MLP input must be float32 [N,%d], have %v %v", tensor.ErrShape, in, x.DType(), x.Shape())
	}
	n := x.Len()
	h := make([]float64, n*in)
	for i, v := range x.Float32s() {
		h[i] = float64(v)
	}
	for l := range m.Weights {
		fin, fout := m.Config.Sizes[l], m.Config.Sizes[l+1]
		w, b := m.Weights[l].Float32s(), m.Biases[l].Float32s()
		next := make([]float64, n*fout)
		for r := range n {
			row := h[r*fin : (r+1)*fin]
			for o := range fout {
				s := float64(b[o])
				wr := w[o*fin : (o+1)*fin]
				for k, v := range row {
					s += v * float64(wr[k])
				}
				if l < len(m.Weights)-1 {
					s = activate(m.Config.Activation, s)
				}
				next[r*fout+o] = s
			}
		}
		h = next
	}
	out := make([]float32, len(h))
	for i, v := range h {
		out[i] = float32(v)
	}
	return tensor.New(tensor.Shape{int64(n), int64(m.Config.Sizes[len(m.Config.Sizes)-1])}, out)
}

func activate(name string, v float64) float64 {
	switch name {
	case "Tanh":
		return math.Tanh(v)
	case "Sigmoid":
		return 1 / (1 + math.Exp(-v))
	}
	return max(v, 0)
}
