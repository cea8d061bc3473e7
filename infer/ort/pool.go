package ort

import (
	"context"
	"fmt"

	ortgo "github.com/yalue/onnxruntime_go"

	"github.com/signalforge/signalforge/tensor"
)

// Pooled IO. Creating and releasing an ONNX Runtime value costs a cgo call
// each way plus allocations inside ONNX Runtime, about as much as running a
// small MLP. So for small runs a session keeps ioSets: input and output
// values over Go buffers, created once per input shape and reused. Run
// copies the inputs in and the outputs out (a few hundred bytes for
// typical requests), which is far cheaper. Big inputs are wrapped in place
// instead, where a copy would cost more than the two cgo calls saved.

const (
	// poolMaxElems is the largest total input element count that goes
	// through the pool.
	poolMaxElems = 16 << 10
	// poolMaxFree bounds the idle ioSets a session keeps; beyond it the
	// least recently returned one is freed.
	poolMaxFree = 16
)

// ioSet is one set of reusable ONNX Runtime values for one input shape.
type ioSet struct {
	shapes    []tensor.Shape // input shapes this set was made for
	ins, outs []ortgo.Value
	outShapes []tensor.Shape
	outDTypes []tensor.DType
	ro        *runOpt // made on first use with a cancellable ctx
}

func (set *ioSet) destroy() {
	for _, v := range set.ins {
		v.Destroy()
	}
	for _, v := range set.outs {
		v.Destroy()
	}
	if set.ro != nil {
		set.ro.ro.Destroy()
	}
}

func (set *ioSet) fits(inputs []tensor.Tensor) bool {
	for i, t := range inputs {
		if !t.Shape().Equal(set.shapes[i]) {
			return false
		}
	}
	return true
}

// poolable reports whether a run on inputs can use an ioSet: every output
// shape is known beforehand, nothing is a scalar, and the inputs are small.
func (s *Session) poolable(inputs []tensor.Tensor) bool {
	if !s.allPlanned {
		return false
	}
	n := 0
	for _, t := range inputs {
		if len(t.Shape()) == 0 {
			return false
		}
		n += t.NumElements()
	}
	return n <= poolMaxElems
}

func (s *Session) runPooled(ctx context.Context, inputs []tensor.Tensor) ([]tensor.Tensor, error) {
	set, err := s.getSet(inputs)
	if err != nil {
		return nil, err
	}
	defer s.putSet(set)
	for i, t := range inputs {
		copyIn(set.ins[i], t)
	}
	if set.ro == nil && ctx.Done() != nil {
		if set.ro, err = newRunOpt(); err != nil {
			return nil, err
		}
	}
	if err := s.exec(ctx, set.ins, set.outs, set.ro); err != nil {
		return nil, err
	}
	results := make([]tensor.Tensor, len(set.outs))
	for i, v := range set.outs {
		t, err := copyOut(v, set.outDTypes[i], set.outShapes[i])
		if err != nil {
			return nil, fmt.Errorf("ort: output %q: %v", s.info.outputs[i].Name, err)
		}
		results[i] = t
	}
	return results, nil
}

// getSet takes a free ioSet for the inputs' shapes or makes one.
func (s *Session) getSet(inputs []tensor.Tensor) (*ioSet, error) {
	s.poolMu.Lock()
	for i := len(s.free) - 1; i >= 0; i-- {
		if set := s.free[i]; set.fits(inputs) {
			s.free = append(s.free[:i], s.free[i+1:]...)
			s.poolMu.Unlock()
			return set, nil
		}
	}
	s.poolMu.Unlock()

	set := &ioSet{}
	for _, t := range inputs {
		set.shapes = append(set.shapes, t.Shape().Clone())
		v, err := newEmpty(t.DType(), t.Shape())
		if err != nil {
			set.destroy()
			return nil, fmt.Errorf("ort: input value: %v", err)
		}
		set.ins = append(set.ins, v)
	}
	for i, plan := range s.plans {
		shape := planShape(nil, plan, inputs)
		dt := s.info.outputs[i].DType
		v, err := newEmpty(dt, shape)
		if err != nil {
			set.destroy()
			return nil, fmt.Errorf("ort: output %q: %v", s.info.outputs[i].Name, err)
		}
		set.outs = append(set.outs, v)
		set.outShapes = append(set.outShapes, shape)
		set.outDTypes = append(set.outDTypes, dt)
	}
	return set, nil
}

func (s *Session) putSet(set *ioSet) {
	s.poolMu.Lock()
	var evict *ioSet
	if len(s.free) >= poolMaxFree {
		evict = s.free[0]
		s.free = append(s.free[:0], s.free[1:]...)
	}
	s.free = append(s.free, set)
	s.poolMu.Unlock()
	if evict != nil {
		evict.destroy()
	}
}

// freePool frees every idle ioSet. Only Close calls it, when no run holds one.
func (s *Session) freePool() {
	s.poolMu.Lock()
	defer s.poolMu.Unlock()
	for _, set := range s.free {
		set.destroy()
	}
	s.free = nil
}

func newEmpty(dt tensor.DType, shape tensor.Shape) (ortgo.Value, error) {
	sh := ortgo.Shape(shape.Clone())
	switch dt {
	case tensor.Float32:
		return ortgo.NewEmptyTensor[float32](sh)
	case tensor.Int64:
		return ortgo.NewEmptyTensor[int64](sh)
	case tensor.Int8:
		return ortgo.NewEmptyTensor[int8](sh)
	case tensor.Uint8:
		return ortgo.NewEmptyTensor[uint8](sh)
	case tensor.Int32:
		return ortgo.NewEmptyTensor[int32](sh)
	}
	return nil, fmt.Errorf("unsupported dtype %v", dt)
}

// copyIn copies t into v, a value made by newEmpty with t's shape and dtype.
func copyIn(v ortgo.Value, t tensor.Tensor) {
	switch x := v.(type) {
	case *ortgo.Tensor[float32]:
		copy(x.GetData(), tensor.Data[float32](t))
	case *ortgo.Tensor[int64]:
		copy(x.GetData(), tensor.Data[int64](t))
	case *ortgo.Tensor[int8]:
		copy(x.GetData(), tensor.Data[int8](t))
	case *ortgo.Tensor[uint8]:
		copy(x.GetData(), tensor.Data[uint8](t))
	case *ortgo.Tensor[int32]:
		copy(x.GetData(), tensor.Data[int32](t))
	}
}

// copyOut returns a fresh tensor holding a copy of v's data.
func copyOut(v ortgo.Value, dt tensor.DType, shape tensor.Shape) (tensor.Tensor, error) {
	switch x := v.(type) {
	case *ortgo.Tensor[float32]:
		return tensor.New(shape, append([]float32(nil), x.GetData()...))
	case *ortgo.Tensor[int64]:
		return tensor.New(shape, append([]int64(nil), x.GetData()...))
	case *ortgo.Tensor[int8]:
		return tensor.New(shape, append([]int8(nil), x.GetData()...))
	case *ortgo.Tensor[uint8]:
		return tensor.New(shape, append([]uint8(nil), x.GetData()...))
	case *ortgo.Tensor[int32]:
		return tensor.New(shape, append([]int32(nil), x.GetData()...))
	}
	return tensor.Tensor{}, fmt.Errorf("unexpected value %T for %v", v, dt)
}
