package onnx

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"strings"

	"github.com/signalforge/signalforge/tensor"
)

// ErrUnsupportedType is returned (wrapped, with the type's name) when a
// tensor's element type is not one of float32, int64, int8, uint8 and
// int32.
var ErrUnsupportedType = errors.New("onnx: unsupported element type")

// ElemType returns the ONNX element type for a tensor dtype, or
// TensorProto_UNDEFINED for tensor.Invalid.
func ElemType(d tensor.DType) TensorProto_DataType {
	switch d {
	case tensor.Float32:
		return TensorProto_FLOAT
	case tensor.Int64:
		return TensorProto_INT64
	case tensor.Int8:
		return TensorProto_INT8
	case tensor.Uint8:
		return TensorProto_UINT8
	case tensor.Int32:
		return TensorProto_INT32
	}
	return TensorProto_UNDEFINED
}

// DTypeOf returns the tensor dtype for an ONNX element type, or
// tensor.Invalid if this product does not handle it.
func DTypeOf(t TensorProto_DataType) tensor.DType {
	switch t {
	case TensorProto_FLOAT:
		return tensor.Float32
	case TensorProto_INT64:
		return tensor.Int64
	case TensorProto_INT8:
		return tensor.Int8
	case TensorProto_UINT8:
		return tensor.Uint8
	case TensorProto_INT32:
		return tensor.Int32
	}
	return tensor.Invalid
}

// TypeName returns a short lowercase name of an ONNX element type in the
// style of tensor.DType.String: "float32", "int64", "float16", "bool", ...
func TypeName(t TensorProto_DataType) string {
	switch t {
	case TensorProto_FLOAT:
		return "float32"
	case TensorProto_DOUBLE:
		return "float64"
	case TensorProto_UNDEFINED:
		return "undefined"
	}
	if name, ok := TensorProto_DataType_name[int32(t)]; ok {
		return strings.ToLower(name)
	}
	return fmt.Sprintf("type(%d)", int32(t))
}

// elemSize is the byte size of one element of t, or 0 if unknown
// (strings, or types this package does not know).
func elemSize(t TensorProto_DataType) int64 {
	switch t {
	case TensorProto_BOOL, TensorProto_INT8, TensorProto_UINT8:
		return 1
	case TensorProto_INT16, TensorProto_UINT16, TensorProto_FLOAT16, TensorProto_BFLOAT16:
		return 2
	case TensorProto_FLOAT, TensorProto_INT32, TensorProto_UINT32:
		return 4
	case TensorProto_DOUBLE, TensorProto_INT64, TensorProto_UINT64, TensorProto_COMPLEX64:
		return 8
	case TensorProto_COMPLEX128:
		return 16
	}
	return 0
}

// numElements returns the element count of dims, or an error if a
// dimension is negative or the product overflows int64.
func numElements(dims []int64) (int64, error) {
	n := uint64(1)
	for _, d := range dims {
		if d < 0 {
			return 0, fmt.Errorf("onnx: negative dimension in %v", tensor.Shape(dims))
		}
		hi, lo := bits.Mul64(n, uint64(d))
		if hi != 0 || lo > math.MaxInt64 {
			return 0, fmt.Errorf("onnx: element count of %v overflows", tensor.Shape(dims))
		}
		n = lo
	}
	return int64(n), nil
}

// ToTensor converts an ONNX TensorProto into a tensor.Tensor. It reads both
// encodings found in ONNX files: little-endian raw_data, and the typed
// repeated fields (float_data for float32, int64_data for int64, int32_data
// for int32, int8 and uint8). The result never aliases tp's memory.
//
// Element types other than float32, int64, int8, uint8 and int32 give an
// error
// wrapping ErrUnsupportedType that names the type; so do tensors stored
// as external data or in segments.
func ToTensor(tp *TensorProto) (tensor.Tensor, error) {
	et := TensorProto_DataType(tp.GetDataType())
	name := tp.GetName()
	where := "tensor"
	if name != "" {
		where = fmt.Sprintf("tensor %q", name)
	}
	dt := DTypeOf(et)
	if dt == tensor.Invalid {
		return tensor.Tensor{}, fmt.Errorf("%w: %s has element type %s (supported: float32, int64, int8, uint8, int32)", ErrUnsupportedType, where, TypeName(et))
	}
	if tp.GetDataLocation() == TensorProto_EXTERNAL {
		return tensor.Tensor{}, fmt.Errorf("onnx: %s is stored as external data, which is not supported", where)
	}
	if tp.Segment != nil {
		return tensor.Tensor{}, fmt.Errorf("onnx: %s is segmented, which is not supported", where)
	}
	shape := tensor.Shape(tp.GetDims()).Clone()
	n, err := numElements(shape)
	if err != nil {
		return tensor.Tensor{}, fmt.Errorf("%s: %w", where, err)
	}
	if raw := tp.GetRawData(); tp.RawData != nil {
		size := int64(dt.Size())
		if n > int64(len(raw))/size || int64(len(raw)) != n*size {
			return tensor.Tensor{}, fmt.Errorf("onnx: %s: raw_data has %d bytes, shape %v of %v needs %d", where, len(raw), shape, dt, mulOr(n, size))
		}
		switch dt {
		case tensor.Float32:
			out := make([]float32, n)
			for i := range out {
				out[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
			}
			return tensor.New(shape, out)
		case tensor.Int64:
			out := make([]int64, n)
			for i := range out {
				out[i] = int64(binary.LittleEndian.Uint64(raw[8*i:]))
			}
			return tensor.New(shape, out)
		case tensor.Int32:
			out := make([]int32, n)
			for i := range out {
				out[i] = int32(binary.LittleEndian.Uint32(raw[4*i:]))
			}
			return tensor.New(shape, out)
		case tensor.Int8:
			out := make([]int8, n)
			for i := range out {
				out[i] = int8(raw[i])
			}
			return tensor.New(shape, out)
		default: // tensor.Uint8
			return tensor.New(shape, append([]uint8(nil), raw...))
		}
	}
	count := func(have int, field string) error {
		if int64(have) != n {
			return fmt.Errorf("onnx: %s: %s has %d values, shape %v needs %d", where, field, have, shape, n)
		}
		return nil
	}
	switch dt {
	case tensor.Float32:
		if err := count(len(tp.GetFloatData()), "float_data"); err != nil {
			return tensor.Tensor{}, err
		}
		return tensor.New(shape, append([]float32(nil), tp.GetFloatData()...))
	case tensor.Int64:
		if err := count(len(tp.GetInt64Data()), "int64_data"); err != nil {
			return tensor.Tensor{}, err
		}
		return tensor.New(shape, append([]int64(nil), tp.GetInt64Data()...))
	case tensor.Int32:
		if err := count(len(tp.GetInt32Data()), "int32_data"); err != nil {
			return tensor.Tensor{}, err
		}
		return tensor.New(shape, append([]int32(nil), tp.GetInt32Data()...))
	case tensor.Int8:
		src := tp.GetInt32Data()
		if err := count(len(src), "int32_data"); err != nil {
			return tensor.Tensor{}, err
		}
		out := make([]int8, n)
		for i, v := range src {
			if v < math.MinInt8 || v > math.MaxInt8 {
				return tensor.Tensor{}, fmt.Errorf("onnx: %s: int32_data[%d] = %d is out of range for int8", where, i, v)
			}
			out[i] = int8(v)
		}
		return tensor.New(shape, out)
	default: // tensor.Uint8
		src := tp.GetInt32Data()
		if err := count(len(src), "int32_data"); err != nil {
			return tensor.Tensor{}, err
		}
		out := make([]uint8, n)
		for i, v := range src {
			if v < 0 || v > math.MaxUint8 {
				return tensor.Tensor{}, fmt.Errorf("onnx: %s: int32_data[%d] = %d is out of range for uint8", where, i, v)
			}
			out[i] = uint8(v)
		}
		return tensor.New(shape, out)
	}
}

func mulOr(n, size int64) int64 {
	if n > math.MaxInt64/size {
		return math.MaxInt64
	}
	return n * size
}

// FromTensor converts t into a TensorProto named name, with the data as
// little-endian raw_data (the compact encoding every ONNX tool reads).
func FromTensor(name string, t tensor.Tensor) (*TensorProto, error) {
	if !t.Valid() {
		return nil, fmt.Errorf("onnx: tensor %q: invalid (zero) tensor", name)
	}
	var raw []byte
	switch d := t.Raw().(type) {
	case []float32:
		raw = make([]byte, 4*len(d))
		for i, v := range d {
			binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(v))
		}
	case []int64:
		raw = make([]byte, 8*len(d))
		for i, v := range d {
			binary.LittleEndian.PutUint64(raw[8*i:], uint64(v))
		}
	case []int8:
		raw = make([]byte, len(d))
		for i, v := range d {
			raw[i] = byte(v)
		}
	case []uint8:
		raw = append(make([]byte, 0, len(d)), d...)
	case []int32:
		raw = make([]byte, 4*len(d))
		for i, v := range d {
			binary.LittleEndian.PutUint32(raw[4*i:], uint32(v))
		}
	default:
		return nil, fmt.Errorf("%w: tensor %q has dtype %v", ErrUnsupportedType, name, t.DType())
	}
	if raw == nil {
		raw = []byte{} // present but empty: a zero-element tensor
	}
	tp := &TensorProto{
		Dims:     t.Shape().Clone(),
		DataType: ptr(int32(ElemType(t.DType()))),
		RawData:  raw,
	}
	if name != "" {
		tp.Name = ptr(name)
	}
	return tp, nil
}

// ptr returns a pointer to v, for the optional fields of the proto2 types.
func ptr[T any](v T) *T { return &v }
