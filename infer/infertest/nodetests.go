package infertest

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/tensor"
)

// suite selects backend test folders by name prefix and says which
// operator each one exercises.
type suite struct {
	dir    string // under the data folder
	prefix string
	op     string
}

// suites covers the operators this product relies on: what PyTorch MLPs,
// LSTMs and GRUs export to, and what the INT8 quantizer emits.
var suites = []suite{
	{dir: "node", prefix: "test_gemm_", op: "Gemm"},
	{dir: "node", prefix: "test_matmul_", op: "MatMul"},
	{dir: "node", prefix: "test_add", op: "Add"},
	{dir: "node", prefix: "test_relu", op: "Relu"},
	{dir: "node", prefix: "test_sigmoid", op: "Sigmoid"},
	{dir: "node", prefix: "test_tanh", op: "Tanh"},
	{dir: "node", prefix: "test_softmax_", op: "Softmax"},
	{dir: "node", prefix: "test_layer_normalization_", op: "LayerNormalization"},
	{dir: "node", prefix: "test_batchnorm_", op: "BatchNormalization"},
	{dir: "node", prefix: "test_lstm_", op: "LSTM"},
	{dir: "node", prefix: "test_gru_", op: "GRU"},
	{dir: "node", prefix: "test_conv_", op: "Conv"},
	{dir: "node", prefix: "test_quantizelinear", op: "QuantizeLinear"},
	{dir: "node", prefix: "test_dequantizelinear", op: "DequantizeLinear"},
	{dir: "node", prefix: "test_dynamicquantizelinear", op: "DynamicQuantizeLinear"},
	{dir: "node", prefix: "test_matmulinteger", op: "MatMulInteger"},
	{dir: "node", prefix: "test_qlinearmatmul_", op: "QLinearMatMul"},
	// Real PyTorch modules exported to ONNX.
	{dir: "pytorch-converted", prefix: "test_Linear", op: "Gemm"},
	{dir: "pytorch-converted", prefix: "test_Conv1d", op: "Conv"},
	{dir: "pytorch-converted", prefix: "test_Conv2d", op: "Conv"},
	{dir: "pytorch-converted", prefix: "test_Conv3d", op: "Conv"},
	{dir: "pytorch-converted", prefix: "test_BatchNorm", op: "BatchNormalization"},
	{dir: "pytorch-converted", prefix: "test_ReLU", op: "Relu"},
	{dir: "pytorch-converted", prefix: "test_Sigmoid", op: "Sigmoid"},
	{dir: "pytorch-converted", prefix: "test_Tanh", op: "Tanh"},
	{dir: "pytorch-converted", prefix: "test_Softmax", op: "Softmax"},
	{dir: "pytorch-converted", prefix: "test_softmax_", op: "Softmax"},
}

// Tolerances, as the ONNX backend runner uses (numpy assert_allclose with
// rtol 1e-3), with an absolute floor for values near zero.
const (
	rtol = 1e-3
	atol = 1e-5
)

// errSkip marks a case that needs element types outside tensor.DType, or
// that the engine declared unsupported in Config.Unsupported.
var errSkip = errors.New("skip")

func runNodeTests(t *testing.T, eng infer.Engine, cfg Config) {
	dataDir := cfg.DataDir
	if st, err := os.Stat(filepath.Join(dataDir, "node")); err != nil || !st.IsDir() {
		t.Fatalf("ONNX backend test data not found in %s (need %s/node): install Debian's libonnx-testdata (`make test` does: apt-get install libonnx-testdata)", dataDir, dataDir)
	}
	passed := map[string]int{}
	var skipped []string
	seen := map[string]bool{}
	for _, s := range suites {
		entries, err := os.ReadDir(filepath.Join(dataDir, s.dir))
		if err != nil {
			t.Fatalf("reading test data: %v", err)
		}
		found := 0
		for _, e := range entries {
			name := e.Name()
			if !e.IsDir() || !strings.HasPrefix(name, s.prefix) {
				continue
			}
			found++
			seen[name] = true
			dir := filepath.Join(dataDir, s.dir, name)
			t.Run(s.dir+"/"+name, func(t *testing.T) {
				if reason, ok := cfg.Unsupported[name]; ok {
					skipped = append(skipped, fmt.Sprintf("%s/%s: %s: %s", s.dir, name, eng.Name(), reason))
					t.Skipf("%s: %s", eng.Name(), reason)
				}
				notes, err := runNodeTest(t, eng, dir)
				switch {
				case errors.Is(err, errSkip):
					skipped = append(skipped, fmt.Sprintf("%s/%s: %v", s.dir, name, err))
					t.Skip(err)
				case err != nil:
					t.Fatal(err)
				}
				for _, n := range notes {
					t.Log(n)
				}
				passed[s.op]++
			})
		}
		if found == 0 {
			t.Errorf("no test folders %s/%s* in %s: is libonnx-testdata complete?", s.dir, s.prefix, dataDir)
		}
	}
	for name := range cfg.Unsupported {
		if !seen[name] {
			t.Errorf("Config.Unsupported lists %s, which is not a selected backend test", name)
		}
	}
	ops := make([]string, 0, len(suites))
	for _, s := range suites {
		if !slices.Contains(ops, s.op) {
			ops = append(ops, s.op)
		}
	}
	var summary []string
	for _, op := range ops {
		if passed[op] == 0 {
			t.Errorf("operator %s: no backend test passed", op)
		}
		summary = append(summary, fmt.Sprintf("%s %d", op, passed[op]))
	}
	t.Logf("node tests passed per operator: %s", strings.Join(summary, ", "))
	t.Logf("node tests skipped: %d", len(skipped))
	for _, s := range skipped {
		t.Logf("  skipped %s", s)
	}
}

// runNodeTest loads one backend test model and checks every data set in its
// folder. It returns notes about adaptations made.
func runNodeTest(t *testing.T, eng infer.Engine, dir string) ([]string, error) {
	m, err := onnx.Load(filepath.Join(dir, "model.onnx"))
	if err != nil {
		return nil, err
	}
	notes, err := adapt(m)
	if err != nil {
		return nil, err
	}
	data, err := onnx.Marshal(m)
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	sess, err := eng.LoadBytes(ctx, data, infer.Options{})
	if err != nil {
		return nil, fmt.Errorf("load: %w", err)
	}
	defer sess.Close()

	sets, _ := filepath.Glob(filepath.Join(dir, "test_data_set_*"))
	if len(sets) == 0 {
		return nil, fmt.Errorf("no test_data_set_* in %s", dir)
	}
	for _, set := range sets {
		ins, err := readTensors(set, "input")
		if err != nil {
			return nil, err
		}
		wants, err := readTensors(set, "output")
		if err != nil {
			return nil, err
		}
		inputs, err := orderInputs(sess.Inputs(), ins)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Base(set), err)
		}
		got, err := sess.Run(ctx, inputs)
		if err != nil {
			return nil, fmt.Errorf("%s: run: %w", filepath.Base(set), err)
		}
		if len(got) != len(wants) {
			return nil, fmt.Errorf("%s: %d outputs, want %d", filepath.Base(set), len(got), len(wants))
		}
		for i, w := range wants {
			if err := Compare(got[i], w.t, rtol, atol); err != nil {
				return nil, fmt.Errorf("%s: output %d (%s): %w", filepath.Base(set), i, sess.Outputs()[i].Name, err)
			}
		}
	}
	return notes, nil
}

// widen lists output types outside tensor.DType that the suite casts to
// int64 inside the model, so tests of operators with such outputs still run
// through the engine; their expected values are widened the same way.
var widen = map[onnx.TensorProto_DataType]bool{
	onnx.TensorProto_INT16:  true,
	onnx.TensorProto_UINT16: true,
	onnx.TensorProto_UINT32: true,
}

// adapt rewrites a test model for an engine limited to tensor.DType: graph
// outputs of a widenable integer type get a Cast to int64. Inputs of other
// types, and outputs that cannot be widened, make the case a skip.
func adapt(m *onnx.ModelProto) ([]string, error) {
	g := m.GetGraph()
	inits := map[string]bool{}
	for _, init := range g.GetInitializer() {
		inits[init.GetName()] = true
	}
	for _, in := range g.GetInput() {
		et := elemType(in)
		if !inits[in.GetName()] && dtypeOf(et) == tensor.Invalid {
			return nil, fmt.Errorf("%w: input %q is %s", errSkip, in.GetName(), onnx.TypeName(et))
		}
	}
	var notes []string
	for _, out := range g.GetOutput() {
		et := elemType(out)
		if dtypeOf(et) != tensor.Invalid {
			continue
		}
		if !widen[et] {
			return nil, fmt.Errorf("%w: output %q is %s", errSkip, out.GetName(), onnx.TypeName(et))
		}
		orig := out.GetName()
		inner := onnx.UniqueName(g, orig+"_"+onnx.TypeName(et))
		// Rename the producer's output, then Cast it back to the old name.
		for _, n := range g.GetNode() {
			for i, o := range n.GetOutput() {
				if o == orig {
					n.Output[i] = inner
				}
			}
		}
		to, err := onnx.NewAttr("to", int64(onnx.TensorProto_INT64))
		if err != nil {
			return nil, err
		}
		g.Node = append(g.Node, &onnx.NodeProto{
			OpType:    ptr("Cast"),
			Name:      ptr("infertest_widen_" + orig),
			Input:     []string{inner},
			Output:    []string{orig},
			Attribute: []*onnx.AttributeProto{to},
		})
		out.GetType().GetTensorType().ElemType = ptr(int32(onnx.TensorProto_INT64))
		notes = append(notes, fmt.Sprintf("output %q: %s widened to int64 by an appended Cast", orig, onnx.TypeName(et)))
	}
	return notes, nil
}

func ptr[T any](v T) *T { return &v }

func elemType(vi *onnx.ValueInfoProto) onnx.TensorProto_DataType {
	return onnx.TensorProto_DataType(vi.GetType().GetTensorType().GetElemType())
}

func dtypeOf(et onnx.TensorProto_DataType) tensor.DType { return onnx.DTypeOf(et) }

type named struct {
	name string
	t    tensor.Tensor
}

// readTensors reads prefix_0.pb, prefix_1.pb, ... from a data set folder.
// Integer types that adapt widens are widened here too.
func readTensors(dir, prefix string) ([]named, error) {
	var out []named
	for i := 0; ; i++ {
		path := filepath.Join(dir, fmt.Sprintf("%s_%d.pb", prefix, i))
		data, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		tp, err := onnx.ParseTensor(data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		var t tensor.Tensor
		if et := onnx.TensorProto_DataType(tp.GetDataType()); widen[et] {
			t, err = widenTensor(tp)
		} else {
			t, err = onnx.ToTensor(tp)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		out = append(out, named{tp.GetName(), t})
	}
}

// widenTensor reads an int16/uint16/uint32 TensorProto as int64.
func widenTensor(tp *onnx.TensorProto) (tensor.Tensor, error) {
	shape := tensor.Shape(tp.GetDims()).Clone()
	n := int(shape.NumElements())
	vals := make([]int64, 0, n)
	et := onnx.TensorProto_DataType(tp.GetDataType())
	if raw := tp.GetRawData(); len(raw) > 0 {
		size := map[onnx.TensorProto_DataType]int{
			onnx.TensorProto_UINT32: 4, onnx.TensorProto_INT16: 2, onnx.TensorProto_UINT16: 2,
		}[et]
		if len(raw) != n*size {
			return tensor.Tensor{}, fmt.Errorf("raw_data has %d bytes, want %d", len(raw), n*size)
		}
		for i := 0; i < n; i++ {
			b := raw[i*size:]
			switch et {
			case onnx.TensorProto_UINT32:
				vals = append(vals, int64(binary.LittleEndian.Uint32(b)))
			case onnx.TensorProto_INT16:
				vals = append(vals, int64(int16(binary.LittleEndian.Uint16(b))))
			case onnx.TensorProto_UINT16:
				vals = append(vals, int64(binary.LittleEndian.Uint16(b)))
			}
		}
	} else if et == onnx.TensorProto_UINT32 {
		for _, v := range tp.GetUint64Data() {
			vals = append(vals, int64(v))
		}
	} else {
		for _, v := range tp.GetInt32Data() {
			vals = append(vals, int64(v))
		}
	}
	return tensor.New(shape, vals)
}

// orderInputs matches test inputs to the session's inputs: by name when
// the files carry names, else by position.
func orderInputs(want []infer.IOInfo, got []named) ([]tensor.Tensor, error) {
	if len(got) != len(want) {
		return nil, fmt.Errorf("%d input files for %d model inputs", len(got), len(want))
	}
	byName := map[string]tensor.Tensor{}
	for _, g := range got {
		if g.name != "" {
			byName[g.name] = g.t
		}
	}
	out := make([]tensor.Tensor, len(want))
	for i, io := range want {
		if t, ok := byName[io.Name]; ok && len(byName) == len(got) {
			out[i] = t
		} else {
			out[i] = got[i].t
		}
	}
	return out, nil
}

// Compare checks got against want: same dtype and shape, integers equal,
// floats within atol + rtol*|want| (NaN matches NaN, infinities must match
// exactly). The error names the first mismatching element.
func Compare(got, want tensor.Tensor, rtol, atol float64) error {
	if got.DType() != want.DType() {
		return fmt.Errorf("dtype %v, want %v", got.DType(), want.DType())
	}
	if !got.Shape().Equal(want.Shape()) {
		return fmt.Errorf("shape %v, want %v", got.Shape(), want.Shape())
	}
	switch want.DType() {
	case tensor.Float32:
		g, w := got.Float32s(), want.Float32s()
		bad := 0
		first := -1
		for i := range w {
			a, b := float64(g[i]), float64(w[i])
			switch {
			case math.IsNaN(b):
				if !math.IsNaN(a) {
					bad++
				}
			case math.IsInf(b, 0):
				if a != b {
					bad++
				}
			case math.IsNaN(a) || math.Abs(a-b) > atol+rtol*math.Abs(b):
				bad++
			default:
				continue
			}
			if first < 0 {
				first = i
			}
		}
		if bad > 0 {
			return fmt.Errorf("%d of %d values differ beyond rtol %g, atol %g; first at flat index %d: got %g, want %g", bad, len(w), rtol, atol, first, g[first], w[first])
		}
	case tensor.Int64:
		return compareExact(tensor.Data[int64](got), tensor.Data[int64](want))
	case tensor.Int8:
		return compareExact(tensor.Data[int8](got), tensor.Data[int8](want))
	case tensor.Uint8:
		return compareExact(tensor.Data[uint8](got), tensor.Data[uint8](want))
	case tensor.Int32:
		return compareExact(tensor.Data[int32](got), tensor.Data[int32](want))
	default:
		return fmt.Errorf("invalid tensor")
	}
	return nil
}

func compareExact[T int64 | int32 | int8 | uint8](got, want []T) error {
	for i := range want {
		if got[i] != want[i] {
			return fmt.Errorf("value at flat index %d: got %d, want %d", i, got[i], want[i])
		}
	}
	return nil
}
