package infer

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/signalforge/signalforge/tensor"
)

// BatchAxis picks the dynamic batch axis of a model input or output from its
// shape (-1 = dynamic) and symbolic dimension names: the first dynamic axis
// whose name says batch ("batch", "batch_size", "N", …), else axis 0 if it is
// dynamic, else -1 (a fixed batch size). Engines use it to fill
// IOInfo.BatchAxis.
func BatchAxis(shape tensor.Shape, dimNames []string) int {
	for i, d := range shape {
		if d >= 0 || i >= len(dimNames) {
			continue
		}
		n := strings.ToLower(dimNames[i])
		if strings.Contains(n, "batch") || n == "n" {
			return i
		}
	}
	if len(shape) > 0 && shape[0] < 0 {
		return 0
	}
	return -1
}

// ShapeString formats an IO shape with the symbolic names of its dynamic
// dimensions: [batch,100], or [?,100] for an unnamed one.
func (io IOInfo) ShapeString() string {
	if io.Shape == nil {
		return "[any rank]"
	}
	var b strings.Builder
	b.WriteByte('[')
	for i, d := range io.Shape {
		if i > 0 {
			b.WriteByte(',')
		}
		switch {
		case d >= 0:
			b.WriteString(strconv.FormatInt(d, 10))
		case i < len(io.DimNames) && io.DimNames[i] != "":
			b.WriteString(io.DimNames[i])
		default:
			b.WriteByte('?')
		}
	}
	b.WriteByte(']')
	return b.String()
}

// CheckInputs checks tensors against a model's inputs: count, dtype, rank and
// every static dimension. The error wraps ErrInput and names the input.
// Engines call it before running so callers get one clear message instead
// of the runtime's.
func CheckInputs(want []IOInfo, got []tensor.Tensor) error {
	if len(got) != len(want) {
		names := make([]string, len(want))
		for i, io := range want {
			names[i] = io.Name
		}
		return fmt.Errorf("%w: model takes %d input(s) (%s), got %d", ErrInput, len(want), strings.Join(names, ", "), len(got))
	}
	for i, io := range want {
		t := got[i]
		if !t.Valid() {
			return fmt.Errorf("%w: input %q is not a valid tensor", ErrInput, io.Name)
		}
		if t.DType() != io.DType {
			return fmt.Errorf("%w: input %q must be %v, got %v", ErrInput, io.Name, io.DType, t.DType())
		}
		if io.Shape != nil && !t.Shape().Matches(io.Shape) {
			return fmt.Errorf("%w: input %q must have shape %s, got %v", ErrInput, io.Name, io.ShapeString(), t.Shape())
		}
	}
	return nil
}

// WarmupInputs returns zero-filled inputs for one run at the given batch
// size: the batch axis gets batch, other dynamic dimensions 1, and inputs
// with a fixed batch size keep it.
func WarmupInputs(inputs []IOInfo, batch int) ([]tensor.Tensor, error) {
	out := make([]tensor.Tensor, len(inputs))
	for i, io := range inputs {
		if io.Shape == nil {
			return nil, fmt.Errorf("infer: input %q has no declared rank", io.Name)
		}
		shape := io.Shape.Clone()
		for d := range shape {
			switch {
			case d == io.BatchAxis:
				shape[d] = int64(batch)
			case shape[d] < 0:
				shape[d] = 1
			}
		}
		t, err := tensor.Zeros(io.DType, shape)
		if err != nil {
			return nil, fmt.Errorf("infer: input %q: %w", io.Name, err)
		}
		out[i] = t
	}
	return out, nil
}

// Warmup runs sess once per batch size with zero inputs (see WarmupInputs),
// so lazy initialisation inside the engine (memory arenas, kernel selection)
// happens before the first real request. Duplicate sizes run once; sizes
// must be positive. Before anything is allocated, the declared inputs and
// outputs at every size must fit in maxBytes (CheckWarmupMemory: zero means
// DefaultMaxWarmupBytes, negative no limit), so that a model declaring an
// input of [batch, 100000000, 4] fails with a *MemoryError instead of
// taking the process down. Engines call it from Load with
// Options.WarmupBatchSizes and Options.MaxWarmupBytes.
func Warmup(ctx context.Context, sess Session, batchSizes []int, maxBytes int64) error {
	for _, b := range batchSizes {
		if b <= 0 {
			return fmt.Errorf("infer: warm-up batch size %d: must be positive", b)
		}
	}
	if err := CheckWarmupMemory(sess.Inputs(), sess.Outputs(), batchSizes, maxBytes); err != nil {
		return err
	}
	done := make(map[int]bool, len(batchSizes))
	for _, b := range batchSizes {
		if done[b] {
			continue
		}
		done[b] = true
		in, err := WarmupInputs(sess.Inputs(), b)
		if err != nil {
			return fmt.Errorf("infer: warm-up with batch %d: %w", b, err)
		}
		if _, err := sess.Run(ctx, in); err != nil {
			return fmt.Errorf("infer: warm-up with batch %d: %w", b, err)
		}
	}
	return nil
}
