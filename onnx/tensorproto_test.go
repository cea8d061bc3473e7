package onnx_test

import (
	"errors"
	"math"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/tensor"
)

// nodeTestData is where Debian's libonnx-testdata puts the ONNX backend
// node tests. `make test` installs the package; without it these tests
// fail (they do not skip).
const nodeTestData = "/usr/share/libonnx-testdata/data/node"

func loadSet(t *testing.T, test string) (in, out []onnx.NamedTensor) {
	t.Helper()
	in, out, err := onnx.LoadTestDataSet(filepath.Join(nodeTestData, test, "test_data_set_0"))
	if err != nil {
		t.Fatalf("%v (libonnx-testdata is required: run `make deps-test`)", err)
	}
	return in, out
}

func TestToTensorRoundTrip(t *testing.T) {
	for _, tc := range []tensor.Tensor{
		tensor.Must(tensor.Shape{2, 3}, []float32{1.5, -2, 0, float32(math.Inf(1)), math.SmallestNonzeroFloat32, -0.25}),
		tensor.Must(tensor.Shape{3}, []int64{math.MinInt64, 0, math.MaxInt64}),
		tensor.Must(tensor.Shape{2, 2}, []int8{-128, -1, 0, 127}),
		tensor.Must(tensor.Shape{4}, []uint8{0, 1, 128, 255}),
		tensor.Must(tensor.Shape{1, 2}, []int32{math.MinInt32, math.MaxInt32}),
		tensor.Must(tensor.Shape{}, []float32{42}),      // scalar
		tensor.Must(tensor.Shape{0, 5}, []float32(nil)), // empty batch
	} {
		t.Run(tc.DType().String()+tc.Shape().String(), func(t *testing.T) {
			tp, err := onnx.FromTensor("v", tc)
			if err != nil {
				t.Fatal(err)
			}
			if got := len(tp.GetRawData()); got != tc.NumElements()*tc.DType().Size() {
				t.Errorf("raw_data has %d bytes, want %d", got, tc.NumElements()*tc.DType().Size())
			}
			back, err := onnx.ToTensor(tp)
			if err != nil {
				t.Fatal(err)
			}
			if back.DType() != tc.DType() || !back.Shape().Equal(tc.Shape()) {
				t.Fatalf("round trip gave %v %v, want %v %v", back.DType(), back.Shape(), tc.DType(), tc.Shape())
			}
			if got, want := back.Raw(), tc.Raw(); !sameData(got, want) {
				t.Errorf("round trip data = %v, want %v", got, want)
			}
		})
	}
}

func sameData(a, b any) bool {
	switch x := a.(type) {
	case []float32:
		y := b.([]float32)
		if len(x) != len(y) {
			return false
		}
		for i := range x {
			if math.Float32bits(x[i]) != math.Float32bits(y[i]) {
				return false
			}
		}
		return true
	case []int64:
		return equalSlices(x, b.([]int64))
	case []int8:
		return equalSlices(x, b.([]int8))
	case []uint8:
		return equalSlices(x, b.([]uint8))
	case []int32:
		return equalSlices(x, b.([]int32))
	}
	return false
}

func equalSlices[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func i32p(v int32) *int32 { return &v }

// The typed repeated fields, which older exporters and some backend test
// files use instead of raw_data.
func TestToTensorTypedFields(t *testing.T) {
	for _, tc := range []struct {
		name string
		tp   *onnx.TensorProto
		want any
	}{
		{"float_data", &onnx.TensorProto{DataType: i32p(1), Dims: []int64{2}, FloatData: []float32{1, -2}}, []float32{1, -2}},
		{"int64_data", &onnx.TensorProto{DataType: i32p(7), Dims: []int64{3}, Int64Data: []int64{-1, 0, 1 << 40}}, []int64{-1, 0, 1 << 40}},
		{"int8 in int32_data", &onnx.TensorProto{DataType: i32p(3), Dims: []int64{2}, Int32Data: []int32{-128, 127}}, []int8{-128, 127}},
		{"uint8 in int32_data", &onnx.TensorProto{DataType: i32p(2), Dims: []int64{2}, Int32Data: []int32{0, 255}}, []uint8{0, 255}},
		{"int32_data", &onnx.TensorProto{DataType: i32p(6), Dims: []int64{1}, Int32Data: []int32{-7}}, []int32{-7}},
		{"scalar", &onnx.TensorProto{DataType: i32p(1), FloatData: []float32{3}}, []float32{3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := onnx.ToTensor(tc.tp)
			if err != nil {
				t.Fatal(err)
			}
			if !sameData(got.Raw(), tc.want) {
				t.Errorf("data = %v, want %v", got.Raw(), tc.want)
			}
			if !got.Shape().Equal(tc.tp.GetDims()) {
				t.Errorf("shape = %v, want %v", got.Shape(), tc.tp.GetDims())
			}
		})
	}
}

func TestToTensorErrors(t *testing.T) {
	ext := onnx.TensorProto_EXTERNAL
	for _, tc := range []struct {
		name string
		tp   *onnx.TensorProto
		want string
	}{
		{"string", &onnx.TensorProto{Name: strp("s"), DataType: i32p(8), Dims: []int64{1}, StringData: [][]byte{[]byte("x")}},
			`onnx: unsupported element type: tensor "s" has element type string (supported: float32, int64, int8, uint8, int32)`},
		{"float16", &onnx.TensorProto{DataType: i32p(10), Dims: []int64{1}, RawData: []byte{0, 0}},
			`onnx: unsupported element type: tensor has element type float16 (supported: float32, int64, int8, uint8, int32)`},
		{"double", &onnx.TensorProto{DataType: i32p(11)}, "element type float64"},
		{"short raw", &onnx.TensorProto{Name: strp("w"), DataType: i32p(1), Dims: []int64{2, 2}, RawData: make([]byte, 15)},
			`onnx: tensor "w": raw_data has 15 bytes, shape [2,2] of float32 needs 16`},
		{"huge dims small raw", &onnx.TensorProto{DataType: i32p(1), Dims: []int64{1 << 40}, RawData: make([]byte, 4)},
			`onnx: tensor: raw_data has 4 bytes, shape [1099511627776] of float32 needs 4398046511104`},
		{"overflowing dims", &onnx.TensorProto{DataType: i32p(1), Dims: []int64{1 << 32, 1 << 32}, RawData: make([]byte, 4)},
			"element count of [4294967296,4294967296] overflows"},
		{"negative dim", &onnx.TensorProto{DataType: i32p(1), Dims: []int64{-1}}, "negative dimension in [-1]"},
		{"float_data count", &onnx.TensorProto{DataType: i32p(1), Dims: []int64{3}, FloatData: []float32{1}},
			`onnx: tensor: float_data has 1 values, shape [3] needs 3`},
		{"int8 out of range", &onnx.TensorProto{DataType: i32p(3), Dims: []int64{1}, Int32Data: []int32{200}},
			"int32_data[0] = 200 is out of range for int8"},
		{"uint8 out of range", &onnx.TensorProto{DataType: i32p(2), Dims: []int64{1}, Int32Data: []int32{-1}},
			"int32_data[0] = -1 is out of range for uint8"},
		{"external", &onnx.TensorProto{Name: strp("big"), DataType: i32p(1), Dims: []int64{1}, DataLocation: &ext},
			`onnx: tensor "big" is stored as external data, which is not supported`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := onnx.ToTensor(tc.tp)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want it to contain %q", err, tc.want)
			}
		})
	}
	_, err := onnx.ToTensor(&onnx.TensorProto{DataType: i32p(9)})
	if !errors.Is(err, onnx.ErrUnsupportedType) {
		t.Errorf("bool tensor: error %v does not wrap ErrUnsupportedType", err)
	}
}

func strp(s string) *string { return &s }

// A hostile header (huge dims, a few data bytes) must be rejected before
// any allocation proportional to the claimed size.
func TestToTensorBoundedAllocation(t *testing.T) {
	tp := &onnx.TensorProto{DataType: i32p(1), Dims: []int64{1 << 28}, RawData: make([]byte, 4)}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range 10 {
		if _, err := onnx.ToTensor(tp); err == nil {
			t.Fatal("accepted a tensor whose raw_data is too short")
		}
	}
	runtime.ReadMemStats(&after)
	if d := after.TotalAlloc - before.TotalAlloc; d > 1<<20 {
		t.Errorf("10 rejected tensors allocated %d bytes; the claimed size must not be allocated", d)
	}
}

func TestFromTensorInvalid(t *testing.T) {
	_, err := onnx.FromTensor("z", tensor.Tensor{})
	if err == nil || err.Error() != `onnx: tensor "z": invalid (zero) tensor` {
		t.Errorf("error = %v", err)
	}
}

// The backend test files decode to values that satisfy the operator: the
// expected output recomputed in Go from the decoded inputs matches the
// decoded output. This checks raw_data decoding for every dtype involved
// (float32, uint8, int32 and scalars).
func TestBackendDataGemm(t *testing.T) {
	in, out := loadSet(t, "test_gemm_default_no_bias")
	a, b, y := in[0].Tensor, in[1].Tensor, out[0].Tensor
	if !a.Shape().Equal(tensor.Shape{2, 10}) || !b.Shape().Equal(tensor.Shape{10, 3}) || !y.Shape().Equal(tensor.Shape{2, 3}) {
		t.Fatalf("shapes %v %v -> %v, want [2,10] [10,3] -> [2,3]", a.Shape(), b.Shape(), y.Shape())
	}
	A, B, Y := a.Float32s(), b.Float32s(), y.Float32s()
	for i := range 2 {
		for j := range 3 {
			var s float64
			for k := range 10 {
				s += float64(A[i*10+k]) * float64(B[k*3+j])
			}
			if math.Abs(s-float64(Y[i*3+j])) > 1e-5 {
				t.Errorf("Y[%d,%d] = %v, A·B = %v", i, j, Y[i*3+j], s)
			}
		}
	}
}

func TestBackendDataQuantizeLinear(t *testing.T) {
	in, out := loadSet(t, "test_quantizelinear")
	x, scale, zp, y := in[0].Tensor, in[1].Tensor, in[2].Tensor, out[0].Tensor
	if len(scale.Shape()) != 0 || len(zp.Shape()) != 0 || zp.DType() != tensor.Uint8 || y.DType() != tensor.Uint8 {
		t.Fatalf("scale %v %v, zero point %v %v, y %v: want scalars and uint8", scale.DType(), scale.Shape(), zp.DType(), zp.Shape(), y.DType())
	}
	s, z := float64(scale.Float32s()[0]), float64(tensor.Data[uint8](zp)[0])
	for i, v := range x.Float32s() {
		q := math.RoundToEven(float64(v)/s) + z
		q = min(max(q, 0), 255)
		if got := tensor.Data[uint8](y)[i]; float64(got) != q {
			t.Errorf("y[%d] = %d, quantize(%v) = %v", i, got, v, q)
		}
	}
}

func TestBackendDataMatMulInteger(t *testing.T) {
	in, out := loadSet(t, "test_matmulinteger")
	a, b := tensor.Data[uint8](in[0].Tensor), tensor.Data[uint8](in[1].Tensor)
	a0, b0 := int32(tensor.Data[uint8](in[2].Tensor)[0]), int32(tensor.Data[uint8](in[3].Tensor)[0])
	y := tensor.Data[int32](out[0].Tensor)
	if a == nil || b == nil || y == nil || !out[0].Tensor.Shape().Equal(tensor.Shape{4, 2}) {
		t.Fatalf("dtypes %v %v -> %v %v, want uint8 uint8 -> int32 [4,2]", in[0].Tensor.DType(), in[1].Tensor.DType(), out[0].Tensor.DType(), out[0].Tensor.Shape())
	}
	for i := range 4 {
		for j := range 2 {
			var s int32
			for k := range 3 {
				s += (int32(a[i*3+k]) - a0) * (int32(b[k*2+j]) - b0)
			}
			if y[i*2+j] != s {
				t.Errorf("Y[%d,%d] = %d, (A-a0)(B-b0) = %d", i, j, y[i*2+j], s)
			}
		}
	}
}

func TestBackendDataLSTM(t *testing.T) {
	in, out := loadSet(t, "test_lstm_defaults")
	if len(in) != 3 || len(out) != 1 {
		t.Fatalf("%d inputs, %d outputs; want 3 and 1", len(in), len(out))
	}
	// The generator's input is [[[1,2],[3,4],[5,6]]] and its weights are
	// all 0.1 (onnx/backend/test/case/node/lstm.py).
	for i, v := range in[0].Tensor.Float32s() {
		if v != float32(i+1) {
			t.Errorf("X[%d] = %v, want %d", i, v, i+1)
		}
	}
	for _, w := range in[1:] {
		for _, v := range w.Tensor.Float32s() {
			if v != 0.1 {
				t.Fatalf("%s holds %v, want all 0.1", w.Name, v)
			}
		}
	}
	if got := out[0].Tensor.Shape(); !got.Equal(tensor.Shape{1, 3, 3}) {
		t.Errorf("Y_h shape = %v, want [1,3,3]", got)
	}
	// A tanh-bounded hidden state.
	for _, v := range out[0].Tensor.Float32s() {
		if v <= 0 || v >= 1 {
			t.Errorf("Y_h value %v outside (0,1)", v)
		}
	}
}

func TestLoadTestDataSetMissing(t *testing.T) {
	_, _, err := onnx.LoadTestDataSet(t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "no input_N.pb or output_N.pb files") {
		t.Errorf("error = %v", err)
	}
	_, _, err = onnx.LoadTestDataSet(filepath.Join(nodeTestData, "test_cast_FLOAT_to_STRING", "test_data_set_0"))
	if err == nil || !strings.Contains(err.Error(), "element type string") {
		t.Errorf("string output: error = %v, want one naming the string type", err)
	}
}
