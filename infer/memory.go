package infer

import (
	"errors"
	"fmt"
	"math"
	"strconv"
)

// DefaultMaxWarmupBytes is the default cap on the memory one warm-up run
// may need for its input and output tensors, as the model declares them
// (see CheckWarmupMemory): 1 GiB. A SignalForge model's tensors are a few
// kilobytes at batch 32; a model that declares gigabytes per run would
// take a server down on its first warm-up.
const DefaultMaxWarmupBytes int64 = 1 << 30

// ErrWarmupMemory is wrapped by the *MemoryError of a model whose warm-up
// would need more memory than allowed.
var ErrWarmupMemory = errors.New("infer: warm-up needs more memory than allowed")

// MemoryError says which tensor makes a warm-up too big.
type MemoryError struct {
	// Kind is "input" or "output"; Name is the tensor's name and Shape its
	// declared shape (IOInfo.ShapeString).
	Kind, Name, Shape string
	// Batch is the warm-up batch size that needs the most memory.
	Batch int
	// Bytes is what the tensor needs at Batch, Total what all inputs and
	// outputs need together (math.MaxInt64 when it overflows).
	Bytes, Total int64
	// Limit is the cap that was exceeded.
	Limit int64
}

func (e *MemoryError) Error() string {
	return fmt.Sprintf("%s %q declared %s needs %s at warm-up batch %d (%s for all inputs and outputs), more than the %s allowed",
		e.Kind, e.Name, e.Shape, byteString(e.Bytes), e.Batch, byteString(e.Total), byteString(e.Limit))
}

// Unwrap returns ErrWarmupMemory.
func (e *MemoryError) Unwrap() error { return ErrWarmupMemory }

// TensorBytes returns the bytes of one tensor of io's declared shape at the
// given batch size, with the dimensions WarmupInputs gives it (the batch
// axis batch, other dynamic dimensions 1). A dtype of unknown size counts
// 8 bytes an element; a tensor of undeclared rank counts 0. It only does
// arithmetic (saturating at math.MaxInt64), never allocates by the shape.
func TensorBytes(io IOInfo, batch int) int64 {
	if io.Shape == nil {
		return 0
	}
	size := int64(io.DType.Size())
	if size <= 0 {
		size = 8
	}
	n := size
	for d, dim := range io.Shape {
		switch {
		case d == io.BatchAxis:
			dim = int64(batch)
		case dim < 0:
			dim = 1
		}
		if dim == 0 {
			return 0
		}
		n = satMul(n, dim)
	}
	return n
}

// CheckWarmupMemory checks that one warm-up run at each batch size fits
// in limit bytes of input and output tensors, as the model declares them
// (TensorBytes; outputs of undeclared shape count 0, so this is a lower
// bound of what the engine will need). If limit is zero,
// DefaultMaxWarmupBytes; negative means no limit. The error is a
// *MemoryError naming the largest tensor at the largest batch.
func CheckWarmupMemory(inputs, outputs []IOInfo, batchSizes []int, limit int64) error {
	if limit == 0 {
		limit = DefaultMaxWarmupBytes
	}
	if limit < 0 {
		return nil
	}
	for _, b := range batchSizes {
		var total int64
		var worst MemoryError
		for _, set := range []struct {
			kind string
			ios  []IOInfo
		}{{"input", inputs}, {"output", outputs}} {
			for _, io := range set.ios {
				n := TensorBytes(io, b)
				total = satAdd(total, n)
				if n > worst.Bytes || worst.Name == "" {
					worst = MemoryError{Kind: set.kind, Name: io.Name, Shape: io.ShapeString(), Bytes: n}
				}
			}
		}
		if total > limit {
			worst.Batch, worst.Total, worst.Limit = b, total, limit
			return &worst
		}
	}
	return nil
}

func satMul(a, b int64) int64 {
	if a != 0 && b > math.MaxInt64/a {
		return math.MaxInt64
	}
	return a * b
}

func satAdd(a, b int64) int64 {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}

// byteString formats n as "51200000000 bytes (47.7 GiB)".
func byteString(n int64) string {
	s := strconv.FormatInt(n, 10) + " bytes"
	if n == math.MaxInt64 {
		return "more than 8 EiB"
	}
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB"}
	v, u := float64(n), ""
	for _, unit := range units {
		if v < 1024 {
			break
		}
		v /= 1024
		u = unit
	}
	if u == "" {
		return s
	}
	return fmt.Sprintf("%s (%.1f %s)", s, v, u)
}
