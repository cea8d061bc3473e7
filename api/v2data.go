package api

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"

	"github.com/signalforge/signalforge/tensor"
)

// DataType returns the element type of an OIP v2 datatype name ("FP32",
// "INT64", "INT8", "UINT8"); ok is false for any other.
func DataType(name string) (d tensor.DType, ok bool) {
	switch name {
	case "FP32":
		return tensor.Float32, true
	case "INT64":
		return tensor.Int64, true
	case "INT8":
		return tensor.Int8, true
	case "UINT8":
		return tensor.Uint8, true
	}
	return 0, false
}

// DataTypeName returns the OIP v2 datatype name of d ("BYTES" for types
// the server does not carry).
func DataTypeName(d tensor.DType) string {
	switch d {
	case tensor.Float32:
		return "FP32"
	case tensor.Int64:
		return "INT64"
	case tensor.Int8:
		return "INT8"
	case tensor.Uint8:
		return "UINT8"
	}
	return "BYTES"
}

// DataError is an OIP v2 input whose "datatype", "shape" or "data" cannot
// make a tensor. Its message names the input and says what is wrong.
type DataError struct {
	Input string
	Msg   string
}

func (e *DataError) Error() string { return fmt.Sprintf("input %q: %s", e.Input, e.Msg) }

func dataError(name, format string, args ...any) *DataError {
	return &DataError{Input: name, Msg: fmt.Sprintf(format, args...)}
}

// DecodeTensorData flattens an OIP v2 "data" value (flat or nested
// row-major arrays, as the specification allows) into a tensor of the
// given datatype and shape, of at most maxElems elements. It checks the
// element count against the shape and refuses non-finite values; errors
// are *DataError, naming the input.
func DecodeTensorData(name, datatype string, shape []int64, data json.RawMessage, maxElems int64) (tensor.Tensor, error) {
	dt, ok := DataType(datatype)
	if !ok {
		return tensor.Tensor{}, dataError(name, "datatype %q is not supported (use FP32, INT64, INT8 or UINT8)", datatype)
	}
	n := int64(1)
	for _, d := range shape {
		if d < 0 {
			return tensor.Tensor{}, dataError(name, "shape %v has a negative dimension", shape)
		}
		if d > maxElems || n*d > maxElems {
			return tensor.Tensor{}, dataError(name, "shape %v has more than %d elements", shape, maxElems)
		}
		n *= d
	}
	flat := make([]float64, 0, n)
	if err := flatten(data, &flat, maxElems, shape); err != nil {
		return tensor.Tensor{}, dataError(name, "data: %v", err)
	}
	if int64(len(flat)) != n {
		return tensor.Tensor{}, dataError(name, "shape %v needs %d values, data has %d", shape, n, len(flat))
	}
	switch dt {
	case tensor.Float32:
		out := make([]float32, n)
		for i, v := range flat {
			if math.IsNaN(v) || math.IsInf(v, 0) || math.Abs(v) > math.MaxFloat32 {
				return tensor.Tensor{}, dataError(name, "element %d is %v; FP32 values must be finite and within ±3.4e38", i, v)
			}
			out[i] = float32(v)
		}
		return tensor.New(tensor.Shape(shape), out)
	case tensor.Int64:
		return convertInts[int64](name, flat, shape, math.MinInt64, math.MaxInt64)
	case tensor.Int8:
		return convertInts[int8](name, flat, shape, math.MinInt8, math.MaxInt8)
	default:
		return convertInts[uint8](name, flat, shape, 0, math.MaxUint8)
	}
}

func convertInts[T int64 | int8 | uint8](name string, flat []float64, shape []int64, lo, hi float64) (tensor.Tensor, error) {
	out := make([]T, len(flat))
	for i, v := range flat {
		if v != math.Trunc(v) || v < lo || v > hi {
			return tensor.Tensor{}, dataError(name, "element %d (%v) is not an integer in [%v, %v]", i, v, lo, hi)
		}
		out[i] = T(v)
	}
	return tensor.New(tensor.Shape(shape), out)
}

// flatten appends the numbers of a JSON array to out in one pass, without
// building intermediate values: OIP v2 bodies can carry thousands of
// numbers and decoding them dominated the infer profile. The array is
// either flat (row-major) or nested exactly as shape says: numbers only at
// depth len(shape), every array at depth d holding shape[d-1] items.
// A nil shape accepts any nesting.
func flatten(b []byte, out *[]float64, max int64, shape []int64) error {
	i := skipWS(b, 0)
	if i >= len(b) {
		return fmt.Errorf("missing")
	}
	if b[i] != '[' {
		return fmt.Errorf("want an array of numbers")
	}
	depth := 0
	expectValue := true // after '[' or ','
	nested := shape != nil && skipWS(b, i+1) < len(b) && b[skipWS(b, i+1)] == '['
	var counts [10]int64 // items seen in the open array at each depth
	item := func() {
		if nested && depth >= 1 && depth <= len(shape) {
			counts[depth]++
		}
	}
	for i < len(b) {
		c := b[i]
		switch {
		case c == '[':
			if !expectValue {
				return fmt.Errorf("malformed array at byte %d", i)
			}
			item()
			depth++
			if depth > 8 {
				return fmt.Errorf("arrays nested more than 8 deep")
			}
			if shape != nil && !nested && depth > 1 {
				return fmt.Errorf("an array inside flat data at byte %d: send the data flat or nested exactly as the shape %v", i, shape)
			}
			if nested && depth > len(shape) {
				return fmt.Errorf("nested %d deep at byte %d, but the shape %v has %d axes", depth, i, shape, len(shape))
			}
			counts[depth] = 0
			i = skipWS(b, i+1)
			if i < len(b) && b[i] == ']' {
				expectValue = false
				continue
			}
			expectValue = true
			continue
		case c == ']':
			if expectValue {
				return fmt.Errorf("malformed array at byte %d: a value is missing", i)
			}
			if nested && counts[depth] != shape[depth-1] {
				return fmt.Errorf("an array at depth %d has %d items, shape %v wants %d (ragged data)", depth, counts[depth], shape, shape[depth-1])
			}
			depth--
			i = skipWS(b, i+1)
			if depth == 0 {
				if i != len(b) {
					return fmt.Errorf("unexpected data after the array at byte %d", i)
				}
				return nil
			}
			continue
		case c == ',':
			if expectValue {
				return fmt.Errorf("malformed array at byte %d", i)
			}
			expectValue = true
			i = skipWS(b, i+1)
			continue
		case c == '-' || (c >= '0' && c <= '9'):
			if !expectValue {
				return fmt.Errorf("malformed array at byte %d: missing comma", i)
			}
			if nested && depth != len(shape) {
				return fmt.Errorf("a number at depth %d (byte %d), but nested data for shape %v has numbers only at depth %d", depth, i, shape, len(shape))
			}
			item()
			j, ok := ScanNumber(b, i)
			if !ok {
				end := j
				for end < len(b) && end < i+32 && b[end] != ',' && b[end] != ']' {
					end++
				}
				return fmt.Errorf("want a number, got %s", b[i:end])
			}
			f, err := strconv.ParseFloat(string(b[i:j]), 64)
			if err != nil {
				return fmt.Errorf("want a number, got %.32s", b[i:j])
			}
			if int64(len(*out)) >= max {
				return fmt.Errorf("more than %d values", max)
			}
			*out = append(*out, f)
			expectValue = false
			i = skipWS(b, j)
			continue
		default:
			end := i + 1
			for end < len(b) && end < i+32 && b[end] != ',' && b[end] != ']' {
				end++
			}
			return fmt.Errorf("want a number, got %s", b[i:end])
		}
	}
	return fmt.Errorf("array is not closed")
}

// EncodeTensorData returns t's data as a flat JSON array (OIP v2 "data").
func EncodeTensorData(t tensor.Tensor) json.RawMessage {
	b, _ := json.Marshal(t.Raw())
	if t.DType() == tensor.Uint8 {
		// []uint8 marshals as base64; OIP wants numbers.
		u := tensor.Data[uint8](t)
		ints := make([]int, len(u))
		for i, v := range u {
			ints[i] = int(v)
		}
		b, _ = json.Marshal(ints)
	}
	return b
}
