package tensor_test

import (
	"errors"
	"math"
	"testing"

	"github.com/signalforge/signalforge/tensor"
)

func TestDType(t *testing.T) {
	for _, tc := range []struct {
		d    tensor.DType
		name string
		size int
	}{
		{tensor.Float32, "float32", 4},
		{tensor.Int64, "int64", 8},
		{tensor.Int8, "int8", 1},
		{tensor.Uint8, "uint8", 1},
		{tensor.Int32, "int32", 4},
		{tensor.Invalid, "invalid(0)", 0},
		{tensor.DType(99), "invalid(99)", 0},
	} {
		if tc.d.String() != tc.name || tc.d.Size() != tc.size {
			t.Errorf("DType(%d) = %q size %d, want %q size %d", tc.d, tc.d.String(), tc.d.Size(), tc.name, tc.size)
		}
	}
	if tensor.DTypeOf[float32]() != tensor.Float32 || tensor.DTypeOf[int64]() != tensor.Int64 ||
		tensor.DTypeOf[int8]() != tensor.Int8 || tensor.DTypeOf[uint8]() != tensor.Uint8 || tensor.DTypeOf[int32]() != tensor.Int32 {
		t.Error("DTypeOf maps a Go type to the wrong DType")
	}
}

func TestShape(t *testing.T) {
	for _, tc := range []struct {
		s    tensor.Shape
		n    int64
		text string
	}{
		{tensor.Shape{}, 1, "[]"},
		{tensor.Shape{2, 3}, 6, "[2,3]"},
		{tensor.Shape{0, 5}, 0, "[0,5]"},
		{tensor.Shape{-1, 5}, -1, "[-1,5]"},
		{tensor.Shape{1 << 32, 1 << 32}, -1, "[4294967296,4294967296]"}, // overflows int64
		{tensor.Shape{1 << 32, 1 << 32, 0}, 0, "[4294967296,4294967296,0]"},
		{tensor.Shape{math.MaxInt64, 1}, math.MaxInt64, "[9223372036854775807,1]"},
	} {
		if got := tc.s.NumElements(); got != tc.n {
			t.Errorf("%v.NumElements() = %d, want %d", tc.s, got, tc.n)
		}
		if got := tc.s.String(); got != tc.text {
			t.Errorf("String() = %q, want %q", got, tc.text)
		}
	}
	s := tensor.Shape{2, 3}
	c := s.Clone()
	c[0] = 9
	if s[0] != 2 {
		t.Error("Clone shares memory with the original")
	}
	if !s.Equal(tensor.Shape{2, 3}) || s.Equal(tensor.Shape{2, 3, 1}) || s.Equal(tensor.Shape{3, 2}) {
		t.Error("Equal")
	}
	if !s.Matches(tensor.Shape{-1, 3}) || s.Matches(tensor.Shape{-1, 4}) || s.Matches(tensor.Shape{-1}) {
		t.Error("Matches")
	}
}

func TestNewErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		shape tensor.Shape
		n     int
		want  string
	}{
		{"too few", tensor.Shape{2, 3}, 5, "tensor: shape mismatch: shape [2,3] needs 6 elements, have 5"},
		{"too many", tensor.Shape{2}, 3, "tensor: shape mismatch: shape [2] needs 2 elements, have 3"},
		{"scalar", tensor.Shape{}, 0, "tensor: shape mismatch: shape [] needs 1 elements, have 0"},
		{"negative", tensor.Shape{-1, 3}, 3, "tensor: shape mismatch: negative dimension or too many elements in [-1,3]"},
		// Before the overflow check this wrapped to 0 elements and an
		// empty slice was accepted for a 2^64-element shape.
		{"overflow", tensor.Shape{1 << 32, 1 << 32}, 0, "tensor: shape mismatch: negative dimension or too many elements in [4294967296,4294967296]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tensor.New(tc.shape, make([]float32, tc.n))
			if err == nil || err.Error() != tc.want {
				t.Fatalf("error = %v, want %q", err, tc.want)
			}
			if !errors.Is(err, tensor.ErrShape) {
				t.Error("error does not wrap ErrShape")
			}
		})
	}
}

func TestNewDoesNotCopy(t *testing.T) {
	data := []int64{1, 2, 3, 4}
	shape := tensor.Shape{2, 2}
	x, err := tensor.New(shape, data)
	if err != nil {
		t.Fatal(err)
	}
	data[0] = 42
	if tensor.Data[int64](x)[0] != 42 {
		t.Error("New copied the data")
	}
	shape[0] = 7
	if !x.Shape().Equal(tensor.Shape{2, 2}) {
		t.Error("New kept a reference to the caller's shape")
	}
	if x.Len() != 2 || x.NumElements() != 4 || !x.Valid() || x.DType() != tensor.Int64 {
		t.Errorf("Len %d NumElements %d Valid %v DType %v", x.Len(), x.NumElements(), x.Valid(), x.DType())
	}
	if x.Float32s() != nil || tensor.Data[int8](x) != nil {
		t.Error("typed accessors must return nil for another element type")
	}
}

func TestZeros(t *testing.T) {
	for _, d := range []tensor.DType{tensor.Float32, tensor.Int64, tensor.Int8, tensor.Uint8, tensor.Int32} {
		z, err := tensor.Zeros(d, tensor.Shape{3, 2})
		if err != nil {
			t.Fatal(err)
		}
		if z.DType() != d || z.NumElements() != 6 || !z.Shape().Equal(tensor.Shape{3, 2}) {
			t.Errorf("Zeros(%v) = %v %v", d, z.DType(), z.Shape())
		}
	}
	z, _ := tensor.Zeros(tensor.Float32, tensor.Shape{4})
	for _, v := range z.Float32s() {
		if v != 0 {
			t.Fatal("Zeros is not zero-filled")
		}
	}
	for _, tc := range []struct {
		d     tensor.DType
		shape tensor.Shape
		want  string
		is    error
	}{
		{tensor.Invalid, tensor.Shape{1}, "tensor: dtype mismatch: unsupported dtype invalid(0)", tensor.ErrDType},
		{tensor.Float32, tensor.Shape{2, -3}, "tensor: shape mismatch: negative dimension or too many elements in [2,-3]", tensor.ErrShape},
		{tensor.Float32, tensor.Shape{1 << 40, 1 << 40}, "tensor: shape mismatch: negative dimension or too many elements in [1099511627776,1099511627776]", tensor.ErrShape},
	} {
		_, err := tensor.Zeros(tc.d, tc.shape)
		if err == nil || err.Error() != tc.want || !errors.Is(err, tc.is) {
			t.Errorf("Zeros(%v, %v) error = %v, want %q", tc.d, tc.shape, err, tc.want)
		}
	}
}

func TestMustPanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("Must did not panic on a bad shape")
		}
	}()
	tensor.Must(tensor.Shape{2}, []float32{1})
}

func TestSliceSharesData(t *testing.T) {
	x := tensor.Must(tensor.Shape{3, 2}, []float32{1, 2, 3, 4, 5, 6})
	v, err := x.Slice(1, 3)
	if err != nil {
		t.Fatal(err)
	}
	if !v.Shape().Equal(tensor.Shape{2, 2}) {
		t.Fatalf("shape = %v", v.Shape())
	}
	if &v.Float32s()[0] != &x.Float32s()[2] {
		t.Error("Slice copied the data")
	}
	v.Float32s()[0] = 30
	if x.Float32s()[2] != 30 {
		t.Error("a write through the view is not visible in the parent")
	}
	// The view's capacity ends at its last row, so appending to it
	// cannot overwrite the rows after it in the parent.
	first, _ := x.Slice(0, 1)
	_ = append(first.Float32s(), 99)
	if x.Float32s()[2] != 30 {
		t.Error("append to a view overwrote the parent's next row")
	}
	empty, err := x.Slice(2, 2)
	if err != nil || empty.Len() != 0 || empty.NumElements() != 0 {
		t.Errorf("empty slice: %v %v", empty.Shape(), err)
	}
}

func TestSliceErrors(t *testing.T) {
	x := tensor.Must(tensor.Shape{3, 2}, make([]uint8, 6))
	for _, tc := range []struct {
		lo, hi int
		want   string
	}{
		{-1, 1, "tensor: shape mismatch: rows [-1,1) out of range for batch of 3"},
		{2, 1, "tensor: shape mismatch: rows [2,1) out of range for batch of 3"},
		{0, 4, "tensor: shape mismatch: rows [0,4) out of range for batch of 3"},
	} {
		_, err := x.Slice(tc.lo, tc.hi)
		if err == nil || err.Error() != tc.want {
			t.Errorf("Slice(%d,%d) error = %v, want %q", tc.lo, tc.hi, err, tc.want)
		}
	}
	_, err := tensor.Must(tensor.Shape{}, []int8{1}).Slice(0, 1)
	if err == nil || err.Error() != "tensor: shape mismatch: cannot slice a scalar" {
		t.Errorf("scalar Slice error = %v", err)
	}
}

func TestSplitSharesData(t *testing.T) {
	x := tensor.Must(tensor.Shape{4, 3}, []int32{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11})
	parts, err := tensor.Split(x, []int{1, 0, 3})
	if err != nil {
		t.Fatal(err)
	}
	if len(parts) != 3 || parts[0].Len() != 1 || parts[1].Len() != 0 || parts[2].Len() != 3 {
		t.Fatalf("parts have %d/%d/%d rows", parts[0].Len(), parts[1].Len(), parts[2].Len())
	}
	if &tensor.Data[int32](parts[2])[0] != &tensor.Data[int32](x)[3] {
		t.Error("Split copied the data")
	}
	if !parts[2].Shape().Equal(tensor.Shape{3, 3}) || tensor.Data[int32](parts[2])[0] != 3 {
		t.Errorf("part 2 = %v %v", parts[2].Shape(), tensor.Data[int32](parts[2]))
	}
	for _, tc := range []struct {
		rows []int
		want string
	}{
		{[]int{1, 2}, "tensor: shape mismatch: split sizes add up to 3, batch has 4 rows"},
		{[]int{5, -1}, "tensor: shape mismatch: negative row count -1"},
	} {
		_, err := tensor.Split(x, tc.rows)
		if err == nil || err.Error() != tc.want {
			t.Errorf("Split(%v) error = %v, want %q", tc.rows, err, tc.want)
		}
	}
}

func TestConcat(t *testing.T) {
	a := tensor.Must(tensor.Shape{1, 2}, []float32{1, 2})
	b := tensor.Must(tensor.Shape{2, 2}, []float32{3, 4, 5, 6})

	one, err := tensor.Concat([]tensor.Tensor{a})
	if err != nil {
		t.Fatal(err)
	}
	if &one.Float32s()[0] != &a.Float32s()[0] {
		t.Error("Concat of one part copied it; it must return it as is")
	}

	ab, err := tensor.Concat([]tensor.Tensor{a, b})
	if err != nil {
		t.Fatal(err)
	}
	if !ab.Shape().Equal(tensor.Shape{3, 2}) {
		t.Fatalf("shape = %v", ab.Shape())
	}
	for i, v := range ab.Float32s() {
		if v != float32(i+1) {
			t.Fatalf("data = %v", ab.Float32s())
		}
	}
	ab.Float32s()[0] = 100
	if a.Float32s()[0] != 1 {
		t.Error("Concat of several parts aliases a part")
	}
	for _, d := range []tensor.DType{tensor.Int64, tensor.Int8, tensor.Uint8, tensor.Int32} {
		z, _ := tensor.Zeros(d, tensor.Shape{2, 3})
		c, err := tensor.Concat([]tensor.Tensor{z, z, z})
		if err != nil || c.DType() != d || !c.Shape().Equal(tensor.Shape{6, 3}) {
			t.Errorf("Concat of %v: %v %v %v", d, c.DType(), c.Shape(), err)
		}
	}
}

func TestConcatErrors(t *testing.T) {
	f := tensor.Must(tensor.Shape{1, 2}, []float32{1, 2})
	for _, tc := range []struct {
		name  string
		parts []tensor.Tensor
		want  string
		is    error
	}{
		{"none", nil, "tensor: shape mismatch: nothing to concatenate", tensor.ErrShape},
		{"dtype", []tensor.Tensor{f, tensor.Must(tensor.Shape{1, 2}, []int64{1, 2})},
			"tensor: dtype mismatch: part 1 is int64, part 0 is float32", tensor.ErrDType},
		{"shape", []tensor.Tensor{f, tensor.Must(tensor.Shape{1, 3}, []float32{1, 2, 3})},
			"tensor: shape mismatch: part 1 has shape [1,3], part 0 has [1,2] (all axes but the first must agree)", tensor.ErrShape},
		{"rank", []tensor.Tensor{f, tensor.Must(tensor.Shape{2}, []float32{1, 2})},
			"tensor: shape mismatch: part 1 has shape [2], part 0 has [1,2] (all axes but the first must agree)", tensor.ErrShape},
		{"scalars", []tensor.Tensor{tensor.Must(tensor.Shape{}, []float32{1}), tensor.Must(tensor.Shape{}, []float32{2})},
			"tensor: shape mismatch: cannot concatenate scalars", tensor.ErrShape},
		// A scalar after a batch used to panic (slicing its empty shape).
		{"scalar part", []tensor.Tensor{f, tensor.Must(tensor.Shape{}, []float32{2})},
			"tensor: shape mismatch: part 1 is a scalar, cannot concatenate scalars", tensor.ErrShape},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tensor.Concat(tc.parts)
			if err == nil || err.Error() != tc.want {
				t.Fatalf("error = %v, want %q", err, tc.want)
			}
			if !errors.Is(err, tc.is) {
				t.Errorf("error does not wrap %v", tc.is)
			}
		})
	}
}

func TestSplitConcatRoundTrip(t *testing.T) {
	data := make([]uint8, 5*4)
	for i := range data {
		data[i] = uint8(i)
	}
	x := tensor.Must(tensor.Shape{5, 2, 2}, data)
	parts, err := tensor.Split(x, []int{2, 1, 2})
	if err != nil {
		t.Fatal(err)
	}
	y, err := tensor.Concat(parts)
	if err != nil {
		t.Fatal(err)
	}
	if !y.Shape().Equal(x.Shape()) {
		t.Fatalf("shape %v, want %v", y.Shape(), x.Shape())
	}
	for i, v := range tensor.Data[uint8](y) {
		if v != data[i] {
			t.Fatalf("element %d = %d, want %d", i, v, data[i])
		}
	}
}

func TestReshape(t *testing.T) {
	x := tensor.Must(tensor.Shape{2, 3}, []int8{1, 2, 3, 4, 5, 6})
	y, err := x.Reshape(tensor.Shape{3, 2})
	if err != nil {
		t.Fatal(err)
	}
	if &tensor.Data[int8](y)[0] != &tensor.Data[int8](x)[0] || !y.Shape().Equal(tensor.Shape{3, 2}) {
		t.Error("Reshape must return a view with the new shape")
	}
	_, err = x.Reshape(tensor.Shape{4, 2})
	if err == nil || err.Error() != "tensor: shape mismatch: cannot reshape [2,3] to [4,2]" {
		t.Errorf("error = %v", err)
	}
}

func TestZeroTensor(t *testing.T) {
	var z tensor.Tensor
	if z.Valid() || z.Raw() != nil || z.Float32s() != nil {
		t.Error("the zero Tensor must be invalid and hold no data")
	}
	if _, err := z.Slice(0, 0); err == nil {
		t.Error("Slice of the zero Tensor succeeded")
	}
}
