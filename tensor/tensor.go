// Package tensor holds the dense tensors that flow between the server, the
// batcher and the inference engines: float32, int64, int8 and uint8 data
// (plus int32, the accumulator type of ONNX integer ops such as
// MatMulInteger) in row-major order with a shape whose first axis is the batch axis.
//
// A Tensor is a small value (a shape and a slice header); copying it does not
// copy the data. Split returns views that share the parent's backing array, so
// splitting a batch result into per-request results costs no copy.
//
//	x, _ := tensor.New(tensor.Shape{2, 3}, []float32{1, 2, 3, 4, 5, 6})
//	parts, _ := tensor.Split(x, []int{1, 1}) // two [1,3] views, no copy
//	y, _ := tensor.Concat(parts)             // one [2,3] tensor
package tensor

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// DType is the element type of a tensor.
type DType uint8

// The element types this product uses.
const (
	Invalid DType = iota
	Float32
	Int64
	Int8
	Uint8
	// Int32 is the output of ONNX integer-arithmetic ops (MatMulInteger,
	// ConvInteger) and the type of quantized biases.
	Int32
)

// String returns the ONNX-style name of the type ("float32", "int64", ...).
func (d DType) String() string {
	switch d {
	case Float32:
		return "float32"
	case Int64:
		return "int64"
	case Int8:
		return "int8"
	case Uint8:
		return "uint8"
	case Int32:
		return "int32"
	}
	return "invalid(" + strconv.Itoa(int(d)) + ")"
}

// Size is the size of one element in bytes.
func (d DType) Size() int {
	switch d {
	case Float32:
		return 4
	case Int64:
		return 8
	case Int8, Uint8:
		return 1
	case Int32:
		return 4
	}
	return 0
}

// Elem is the set of Go element types a Tensor can hold.
type Elem interface {
	float32 | int64 | int8 | uint8 | int32
}

// DTypeOf returns the DType of the Go element type T.
func DTypeOf[T Elem]() DType {
	var z T
	switch any(z).(type) {
	case float32:
		return Float32
	case int64:
		return Int64
	case int8:
		return Int8
	case uint8:
		return Uint8
	case int32:
		return Int32
	}
	panic("unreachable")
}

// Shape is a tensor shape. In a concrete tensor every dimension is >= 0; in
// model metadata a dimension of -1 means "any size" (a dynamic axis).
type Shape []int64

// NumElements returns the product of the dimensions (1 for a scalar shape).
// It returns -1 if any dimension is negative or if the product overflows
// int64 (so a hostile shape such as [2^32,2^32] cannot wrap around to a
// small count and pass validation).
func (s Shape) NumElements() int64 {
	n := int64(1)
	for _, d := range s {
		if d < 0 {
			return -1
		}
		if d != 0 && n > math.MaxInt64/d {
			// Overflow, unless a later dimension is 0.
			for _, z := range s {
				if z == 0 {
					return 0
				}
			}
			return -1
		}
		n *= d
	}
	return n
}

// String formats the shape as [2,3,-1].
func (s Shape) String() string {
	var b strings.Builder
	b.WriteByte('[')
	for i, d := range s {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatInt(d, 10))
	}
	b.WriteByte(']')
	return b.String()
}

// Clone returns a copy of s that shares nothing with it.
func (s Shape) Clone() Shape { return append(Shape(nil), s...) }

// Equal reports whether s and o have the same dimensions.
func (s Shape) Equal(o Shape) bool {
	if len(s) != len(o) {
		return false
	}
	for i := range s {
		if s[i] != o[i] {
			return false
		}
	}
	return true
}

// Matches reports whether the concrete shape s fits the pattern p, where a
// negative dimension in p matches any size.
func (s Shape) Matches(p Shape) bool {
	if len(s) != len(p) {
		return false
	}
	for i := range s {
		if p[i] >= 0 && s[i] != p[i] {
			return false
		}
	}
	return true
}

// Errors returned by this package.
var (
	ErrShape = errors.New("tensor: shape mismatch")
	ErrDType = errors.New("tensor: dtype mismatch")
)

// Tensor is a dense row-major tensor. The zero Tensor is invalid.
type Tensor struct {
	dtype DType
	shape Shape
	data  any // []float32, []int64, []int8, []uint8 or []int32
}

// New returns a tensor of the given shape over data, without copying data.
// len(data) must equal the shape's element count.
func New[T Elem](shape Shape, data []T) (Tensor, error) {
	n := shape.NumElements()
	if n < 0 {
		return Tensor{}, fmt.Errorf("%w: negative dimension or too many elements in %v", ErrShape, shape)
	}
	if int64(len(data)) != n {
		return Tensor{}, fmt.Errorf("%w: shape %v needs %d elements, have %d", ErrShape, shape, n, len(data))
	}
	return Tensor{dtype: DTypeOf[T](), shape: shape.Clone(), data: data}, nil
}

// Must is New that panics on error; for tests and literals known to be right.
func Must[T Elem](shape Shape, data []T) Tensor {
	t, err := New(shape, data)
	if err != nil {
		panic(err)
	}
	return t
}

// Zeros returns a zero-filled tensor of the given dtype and shape.
func Zeros(dtype DType, shape Shape) (Tensor, error) {
	n := shape.NumElements()
	if n < 0 {
		return Tensor{}, fmt.Errorf("%w: negative dimension or too many elements in %v", ErrShape, shape)
	}
	var data any
	switch dtype {
	case Float32:
		data = make([]float32, n)
	case Int64:
		data = make([]int64, n)
	case Int8:
		data = make([]int8, n)
	case Uint8:
		data = make([]uint8, n)
	case Int32:
		data = make([]int32, n)
	default:
		return Tensor{}, fmt.Errorf("%w: unsupported dtype %v", ErrDType, dtype)
	}
	return Tensor{dtype: dtype, shape: shape.Clone(), data: data}, nil
}

// DType returns the element type.
func (t Tensor) DType() DType { return t.dtype }

// Shape returns the shape. The caller must not modify it.
func (t Tensor) Shape() Shape { return t.shape }

// Len returns the size of the batch axis (the first dimension), or 1 for a
// scalar.
func (t Tensor) Len() int {
	if len(t.shape) == 0 {
		return 1
	}
	return int(t.shape[0])
}

// NumElements returns the number of elements.
func (t Tensor) NumElements() int { return int(t.shape.NumElements()) }

// Valid reports whether t was made by a constructor of this package.
func (t Tensor) Valid() bool { return t.dtype != Invalid }

// Raw returns the backing slice ([]float32, []int64, []int8, []uint8 or
// []int32).
func (t Tensor) Raw() any { return t.data }

// Data returns the backing slice of t if its element type is T. It returns
// nil if the type differs.
func Data[T Elem](t Tensor) []T {
	d, _ := t.data.([]T)
	return d
}

// Float32s returns the data of a float32 tensor (nil otherwise).
func (t Tensor) Float32s() []float32 { return Data[float32](t) }

// Reshape returns a view of t with another shape of the same element count.
func (t Tensor) Reshape(shape Shape) (Tensor, error) {
	if shape.NumElements() != t.shape.NumElements() {
		return Tensor{}, fmt.Errorf("%w: cannot reshape %v to %v", ErrShape, t.shape, shape)
	}
	return Tensor{dtype: t.dtype, shape: shape.Clone(), data: t.data}, nil
}

// rowSize returns the number of elements in one batch row.
func (t Tensor) rowSize() int {
	if len(t.shape) == 0 {
		return 1
	}
	return int(Shape(t.shape[1:]).NumElements())
}

// Slice returns rows [lo, hi) of the batch axis as a view sharing t's data.
func (t Tensor) Slice(lo, hi int) (Tensor, error) {
	if len(t.shape) == 0 {
		return Tensor{}, fmt.Errorf("%w: cannot slice a scalar", ErrShape)
	}
	if lo < 0 || hi < lo || hi > t.Len() {
		return Tensor{}, fmt.Errorf("%w: rows [%d,%d) out of range for batch of %d", ErrShape, lo, hi, t.Len())
	}
	rs := t.rowSize()
	shape := t.shape.Clone()
	shape[0] = int64(hi - lo)
	var data any
	switch d := t.data.(type) {
	case []float32:
		data = d[lo*rs : hi*rs : hi*rs]
	case []int64:
		data = d[lo*rs : hi*rs : hi*rs]
	case []int8:
		data = d[lo*rs : hi*rs : hi*rs]
	case []uint8:
		data = d[lo*rs : hi*rs : hi*rs]
	case []int32:
		data = d[lo*rs : hi*rs : hi*rs]
	default:
		return Tensor{}, fmt.Errorf("%w: invalid tensor", ErrDType)
	}
	return Tensor{dtype: t.dtype, shape: shape, data: data}, nil
}

// Split cuts t along the batch axis into consecutive parts of the given row
// counts, which must add up to t.Len(). The parts are views: no data is
// copied.
func Split(t Tensor, rows []int) ([]Tensor, error) {
	total := 0
	for _, r := range rows {
		if r < 0 {
			return nil, fmt.Errorf("%w: negative row count %d", ErrShape, r)
		}
		total += r
	}
	if total != t.Len() {
		return nil, fmt.Errorf("%w: split sizes add up to %d, batch has %d rows", ErrShape, total, t.Len())
	}
	out := make([]Tensor, len(rows))
	lo := 0
	for i, r := range rows {
		p, err := t.Slice(lo, lo+r)
		if err != nil {
			return nil, err
		}
		out[i] = p
		lo += r
	}
	return out, nil
}

// Concat joins tensors along the batch axis. All parts must have the same
// dtype and the same shape after the batch axis. A single part is returned
// as is (no copy); otherwise the data is copied once into a new tensor.
func Concat(parts []Tensor) (Tensor, error) {
	if len(parts) == 0 {
		return Tensor{}, fmt.Errorf("%w: nothing to concatenate", ErrShape)
	}
	if len(parts) == 1 {
		return parts[0], nil
	}
	first := parts[0]
	if len(first.shape) == 0 {
		return Tensor{}, fmt.Errorf("%w: cannot concatenate scalars", ErrShape)
	}
	rows := int64(0)
	for i, p := range parts {
		if len(p.shape) == 0 {
			return Tensor{}, fmt.Errorf("%w: part %d is a scalar, cannot concatenate scalars", ErrShape, i)
		}
		if p.dtype != first.dtype {
			return Tensor{}, fmt.Errorf("%w: part %d is %v, part 0 is %v", ErrDType, i, p.dtype, first.dtype)
		}
		if !Shape(p.shape[1:]).Equal(first.shape[1:]) {
			return Tensor{}, fmt.Errorf("%w: part %d has shape %v, part 0 has %v (all axes but the first must agree)", ErrShape, i, p.shape, first.shape)
		}
		rows += p.shape[0]
	}
	shape := first.shape.Clone()
	shape[0] = rows
	switch first.dtype {
	case Float32:
		return Tensor{dtype: Float32, shape: shape, data: concatData[float32](parts, shape)}, nil
	case Int64:
		return Tensor{dtype: Int64, shape: shape, data: concatData[int64](parts, shape)}, nil
	case Int8:
		return Tensor{dtype: Int8, shape: shape, data: concatData[int8](parts, shape)}, nil
	case Uint8:
		return Tensor{dtype: Uint8, shape: shape, data: concatData[uint8](parts, shape)}, nil
	case Int32:
		return Tensor{dtype: Int32, shape: shape, data: concatData[int32](parts, shape)}, nil
	}
	return Tensor{}, fmt.Errorf("%w: invalid tensor", ErrDType)
}

func concatData[T Elem](parts []Tensor, shape Shape) []T {
	out := make([]T, 0, shape.NumElements())
	for _, p := range parts {
		out = append(out, p.data.([]T)...)
	}
	return out
}
