package registry_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/registry"
	"github.com/signalforge/signalforge/tensor"
)

// fakeEngine is an infer.Engine whose sessions report fixed IO; the real
// ONNX Runtime path is tested in cmd/signalforge (models_test.go).
type fakeEngine struct {
	loadErr error
	inputs  []infer.IOInfo
	meta    map[string]string
	closed  int
	opts    infer.Options // of the last load
}

type fakeSession struct {
	e *fakeEngine
}

func (e *fakeEngine) Name() string { return "fake" }
func (e *fakeEngine) LoadFile(ctx context.Context, path string, opts infer.Options) (infer.Session, error) {
	e.opts = opts
	if e.loadErr != nil {
		return nil, e.loadErr
	}
	return fakeSession{e}, nil
}
func (e *fakeEngine) LoadBytes(ctx context.Context, model []byte, opts infer.Options) (infer.Session, error) {
	if e.loadErr != nil {
		return nil, e.loadErr
	}
	return fakeSession{e}, nil
}
func (e *fakeEngine) Close() error                                                  { return nil }
func (s fakeSession) Inputs() []infer.IOInfo                                        { return s.e.inputs }
func (s fakeSession) Outputs() []infer.IOInfo                                       { return nil }
func (s fakeSession) Metadata() map[string]string                                   { return s.e.meta }
func (s fakeSession) Close() error                                                  { s.e.closed++; return nil }
func (s fakeSession) Run(context.Context, []tensor.Tensor) ([]tensor.Tensor, error) { return nil, nil }

func TestEngineValidator(t *testing.T) {
	ctx := context.Background()
	art := onnxModel(t, 1, feats...)
	eng := &fakeEngine{loadErr: errors.New("Load model failed: unsupported op")}
	v := registry.EngineValidator(eng)
	if _, err := v.Validate(ctx, art); !errors.Is(err, registry.ErrInvalidArtifact) || !strings.Contains(err.Error(), "fake cannot load and warm it (batch sizes [1 32]): Load model failed") {
		t.Fatalf("Validate with a failing engine = %v", err)
	}
	eng.loadErr = nil
	eng.inputs = []infer.IOInfo{{Name: "x", DType: tensor.Float32, Shape: tensor.Shape{-1, 2}}}
	eng.meta = map[string]string{infer.FeaturesMetadataKey: "rsi_14,macd"}
	info, err := v.Validate(ctx, art)
	if err != nil || len(info.Inputs) != 1 || info.Metadata[infer.FeaturesMetadataKey] != "rsi_14,macd" || eng.closed != 1 {
		t.Fatalf("Validate = %+v, %v (sessions closed: %d)", info, err, eng.closed)
	}
	// The registry uses what the engine reports, not its own parse: an
	// engine that sees three features makes a two-feature declaration fail.
	eng.inputs[0].Shape = tensor.Shape{-1, 3}
	eng.meta = nil
	r, err := registry.Open(ctx, registry.Config{Dir: t.TempDir(), Validator: v})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := r.Register(ctx, registry.RegisterRequest{Name: "m", ONNX: art, Features: feats}); !errors.Is(err, registry.ErrFeatures) {
		t.Fatalf("Register = %v; want ErrFeatures from the engine's view of the inputs", err)
	}
}

func TestInspectONNX(t *testing.T) {
	info, err := registry.InspectONNX(onnxModel(t, 1, "a", "b", "c"))
	if err != nil {
		t.Fatal(err)
	}
	in := info.Inputs
	if len(in) != 1 || in[0].Name != "x" || in[0].DType != tensor.Float32 || len(in[0].Shape) != 2 || in[0].Shape[0] != -1 || in[0].Shape[1] != 3 || in[0].BatchAxis != 0 {
		t.Fatalf("inputs = %+v; want x float32 [-1 3] (weights are initializers, not inputs)", in)
	}
	if info.Metadata[infer.FeaturesMetadataKey] != "a,b,c" {
		t.Fatalf("metadata = %v", info.Metadata)
	}
}

// FuzzInspectONNX: arbitrary bytes never panic, and whatever is accepted
// has at least one input.
func FuzzInspectONNX(f *testing.F) {
	f.Add(onnxModel(f, 1, feats...))
	f.Add([]byte("junk"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		info, err := registry.InspectONNX(data)
		if err == nil && len(info.Inputs) == 0 {
			t.Fatal("accepted a model without inputs")
		}
		if err != nil && !errors.Is(err, registry.ErrInvalidArtifact) {
			t.Fatalf("error %v does not wrap ErrInvalidArtifact", err)
		}
	})
}

// FuzzParseRef: accepted refs are safe path elements and round-trip.
func FuzzParseRef(f *testing.F) {
	for _, s := range []string{"lstm_model:v2.0", "../x:v1", "m:..", "a:b:c", ":", "m:v1/../../etc"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := registry.ParseRef(s)
		if err != nil {
			if !errors.Is(err, registry.ErrInvalidName) {
				t.Fatalf("error %v does not wrap ErrInvalidName", err)
			}
			return
		}
		if r.String() != s {
			t.Fatalf("%q parsed to %+v", s, r)
		}
		for _, part := range []string{r.Name, r.Version} {
			if part == "." || part == ".." || strings.ContainsAny(part, "/\\:\x00 ") || strings.HasPrefix(part, ".") || len(part) > 128 {
				t.Fatalf("accepted unsafe part %q", part)
			}
		}
	})
}
