package quantize_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	ort "github.com/yalue/onnxruntime_go"

	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/tensor"
)

// ortEngine is a minimal infer.Engine over onnxruntime_go for this package's
// tests. The quantize package itself takes any infer.Engine (infer/ort in
// production) and has no cgo.
type ortEngine struct{}

var ortOnce sync.Once
var ortErr error

func ortLibPath() string {
	if p := os.Getenv("SIGNALFORGE_ORT_LIB"); p != "" {
		return p
	}
	root := os.Getenv("SIGNALFORGE_ROOT")
	if root == "" {
		root = "../"
	}
	return filepath.Join(root, ".deps", "onnxruntime-1.30.0", "libonnxruntime.so.1")
}

// newEngine returns the engine or fails the test loudly: ONNX Runtime is a
// required component (make test installs it).
func newEngine(tb testing.TB) infer.Engine {
	tb.Helper()
	ortOnce.Do(func() {
		ort.SetSharedLibraryPath(ortLibPath())
		ortErr = ort.InitializeEnvironment()
	})
	if ortErr != nil {
		tb.Fatalf("ONNX Runtime not available at %s (run scripts/deps.sh test): %v", ortLibPath(), ortErr)
	}
	return ortEngine{}
}

func (ortEngine) Name() string { return "onnxruntime-test" }
func (ortEngine) Close() error { return nil }
func (e ortEngine) LoadFile(ctx context.Context, path string, opts infer.Options) (infer.Session, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return e.LoadBytes(ctx, b, opts)
}

func (ortEngine) LoadBytes(ctx context.Context, model []byte, opts infer.Options) (infer.Session, error) {
	ins, outs, err := ort.GetInputOutputInfoWithONNXData(model)
	if err != nil {
		return nil, err
	}
	so, err := ort.NewSessionOptions()
	if err != nil {
		return nil, err
	}
	defer so.Destroy()
	so.SetIntraOpNumThreads(max(opts.IntraOpThreads, 1))
	so.SetInterOpNumThreads(max(opts.InterOpThreads, 1))
	if opts.OptimizedModelPath != "" {
		if err := so.SetOptimizedModelFilePath(opts.OptimizedModelPath); err != nil {
			return nil, err
		}
	}
	lvl := map[infer.GraphOptLevel]ort.GraphOptimizationLevel{infer.OptAll: ort.GraphOptimizationLevelEnableAll,
		infer.OptDisabled: ort.GraphOptimizationLevelDisableAll, infer.OptBasic: ort.GraphOptimizationLevelEnableBasic,
		infer.OptExtended: ort.GraphOptimizationLevelEnableExtended}[opts.GraphOptimization]
	if err := so.SetGraphOptimizationLevel(lvl); err != nil {
		return nil, err
	}
	s := &ortSession{}
	var in, out []string
	for _, i := range ins {
		in = append(in, i.Name)
		s.inputs = append(s.inputs, ioInfo(i))
	}
	for _, o := range outs {
		out = append(out, o.Name)
		s.outputs = append(s.outputs, ioInfo(o))
	}
	s.s, err = ort.NewDynamicAdvancedSessionWithONNXData(model, in, out, so)
	if err != nil {
		return nil, err
	}
	return s, nil
}

func ioInfo(i ort.InputOutputInfo) infer.IOInfo {
	dt := map[ort.TensorElementDataType]tensor.DType{ort.TensorElementDataTypeFloat: tensor.Float32,
		ort.TensorElementDataTypeInt64: tensor.Int64, ort.TensorElementDataTypeInt8: tensor.Int8,
		ort.TensorElementDataTypeUint8: tensor.Uint8}[i.DataType]
	return infer.IOInfo{Name: i.Name, DType: dt, Shape: tensor.Shape(i.Dimensions), BatchAxis: 0}
}

type ortSession struct {
	s               *ort.DynamicAdvancedSession
	inputs, outputs []infer.IOInfo
}

func (s *ortSession) Inputs() []infer.IOInfo      { return s.inputs }
func (s *ortSession) Outputs() []infer.IOInfo     { return s.outputs }
func (s *ortSession) Metadata() map[string]string { return nil }
func (s *ortSession) Close() error                { return s.s.Destroy() }

func (s *ortSession) Run(ctx context.Context, inputs []tensor.Tensor) ([]tensor.Tensor, error) {
	in := make([]ort.Value, len(inputs))
	for i, t := range inputs {
		v, err := ort.NewTensor(ort.Shape(t.Shape()), t.Float32s())
		if err != nil {
			return nil, err
		}
		defer v.Destroy()
		in[i] = v
	}
	out := make([]ort.Value, len(s.outputs))
	if err := s.s.Run(in, out); err != nil {
		return nil, err
	}
	res := make([]tensor.Tensor, len(out))
	for i, v := range out {
		defer v.Destroy()
		ft, ok := v.(*ort.Tensor[float32])
		if !ok {
			return nil, fmt.Errorf("output %d is not float32", i)
		}
		t, err := tensor.New(tensor.Shape(ft.GetShape()), append([]float32(nil), ft.GetData()...))
		if err != nil {
			return nil, err
		}
		res[i] = t
	}
	return res, nil
}
