package convert

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"

	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/tensor"
)

// Reference is a set of inputs and the outputs PyTorch computed for them,
// used to verify a converted model. Its JSON form:
//
//	{"cases": [{"inputs":  [{"name": "input", "shape": [3, 8], "data": [...]}],
//	            "outputs": [{"shape": [3, 4], "data": [...]}]}]}
//
// data is row-major. The bridge (RunReference) writes this format, and
// convert/testdata/make_fixtures.py writes one per fixture.
type Reference struct {
	Cases []Case `json:"cases"`
}

// Case is one set of model inputs and the expected outputs.
type Case struct {
	Inputs  []RefTensor `json:"inputs"`
	Outputs []RefTensor `json:"outputs"`
}

// RefTensor is a float tensor in a Reference.
type RefTensor struct {
	Name  string    `json:"name,omitempty"`
	Shape []int64   `json:"shape"`
	Data  []float64 `json:"data"`
}

// ReadReferenceFile reads a Reference from a JSON file: a regular file of
// at most 1 GiB (devices and FIFOs are refused before they are opened).
func ReadReferenceFile(path string) (*Reference, error) {
	f, _, err := onnx.OpenFileLimited(path, 1<<30)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ReadReference(f)
}

// ReadReference decodes a Reference and checks that every tensor's data
// matches its shape.
func ReadReference(r io.Reader) (*Reference, error) {
	var ref Reference
	dec := json.NewDecoder(io.LimitReader(r, 1<<30))
	if err := dec.Decode(&ref); err != nil {
		return nil, fmt.Errorf("convert: reference: %w", err)
	}
	if len(ref.Cases) == 0 {
		return nil, errors.New("convert: reference: no cases")
	}
	for i, c := range ref.Cases {
		if len(c.Inputs) == 0 || len(c.Outputs) == 0 {
			return nil, fmt.Errorf("convert: reference case %d: needs inputs and outputs", i)
		}
		for _, t := range append(append([]RefTensor{}, c.Inputs...), c.Outputs...) {
			n := int64(1)
			for _, d := range t.Shape {
				if d < 0 || (n > 0 && d > math.MaxInt64/n) {
					n = -1
					break
				}
				n *= d
			}
			if n < 0 || n != int64(len(t.Data)) {
				return nil, fmt.Errorf("convert: reference case %d: shape %v with %d values", i, t.Shape, len(t.Data))
			}
		}
	}
	return &ref, nil
}

// VerifyOptions configure Verify. The zero value checks at two batch sizes
// with a relative tolerance of 1e-4.
type VerifyOptions struct {
	// RelTol is the relative tolerance. If zero, 1e-4.
	RelTol float64
	// AbsTol is added to the tolerance so outputs near zero do not fail on
	// float32 rounding. If zero, 1e-5.
	AbsTol float64
	// InputBatchAxis and OutputBatchAxis locate the batch axis (Result
	// has them). Zero is axis 0.
	InputBatchAxis, OutputBatchAxis int
	// StaticBatch skips the second batch size (for models converted with
	// a fixed batch).
	StaticBatch bool
}

// Check is one comparison of ONNX Runtime's outputs with the reference.
type Check struct {
	Case   int
	Batch  int64
	MaxAbs float64
	MaxRel float64
}

// VerifyReport is the outcome of Verify.
type VerifyReport struct {
	Checks []Check
	// MaxAbs and MaxRel are the worst errors over all checks. The relative
	// error of an element is |got−want| / max(|want|, 1e-6).
	MaxAbs, MaxRel float64
	RelTol, AbsTol float64
}

// ErrMismatch is wrapped by Verify's error when outputs differ beyond the
// tolerance.
var ErrMismatch = errors.New("convert: ONNX outputs differ from the reference")

// Verify runs the model in the engine on every reference case, at the
// case's batch size and again with the batch repeated twice (proving the
// batch axis is really dynamic), and compares with the reference outputs.
// An element passes if |got−want| ≤ AbsTol + RelTol·|want|. It returns the
// report, and an error wrapping ErrMismatch if any element fails.
func Verify(ctx context.Context, eng infer.Engine, model []byte, ref *Reference, opts VerifyOptions) (*VerifyReport, error) {
	if opts.RelTol == 0 {
		opts.RelTol = 1e-4
	}
	if opts.AbsTol == 0 {
		opts.AbsTol = 1e-5
	}
	sess, err := eng.LoadBytes(ctx, model, infer.Options{IntraOpThreads: 1})
	if err != nil {
		return nil, fmt.Errorf("convert: verify: loading the model: %w", err)
	}
	defer sess.Close()
	rep := &VerifyReport{RelTol: opts.RelTol, AbsTol: opts.AbsTol}
	failed := false
	for ci, c := range ref.Cases {
		reps := []int{1, 2}
		if opts.StaticBatch {
			reps = reps[:1]
		}
		for _, k := range reps {
			ins := make([]tensor.Tensor, len(c.Inputs))
			var batch int64
			for i, rt := range c.Inputs {
				t, err := repeatBatch(rt, opts.InputBatchAxis, k)
				if err != nil {
					return nil, err
				}
				ins[i] = t
				batch = t.Shape()[opts.InputBatchAxis]
			}
			outs, err := sess.Run(ctx, ins)
			if err != nil {
				return nil, fmt.Errorf("convert: verify: batch %d: %w", batch, err)
			}
			if len(outs) != len(c.Outputs) {
				return nil, fmt.Errorf("convert: verify: model has %d outputs, reference %d", len(outs), len(c.Outputs))
			}
			chk := Check{Case: ci, Batch: batch}
			for oi, want := range c.Outputs {
				wt, err := repeatBatch(want, opts.OutputBatchAxis, k)
				if err != nil {
					return nil, err
				}
				got := outs[oi]
				if !got.Shape().Equal(wt.Shape()) {
					return nil, fmt.Errorf("%w: output %d has shape %v, reference %v", ErrMismatch, oi, got.Shape(), wt.Shape())
				}
				if got.DType() != tensor.Float32 {
					return nil, fmt.Errorf("convert: verify: output %d is %v, want float32", oi, got.DType())
				}
				g, w := got.Float32s(), wt.Float32s()
				for i := range g {
					d := math.Abs(float64(g[i]) - float64(w[i]))
					if math.IsNaN(d) {
						d = math.Inf(1)
					}
					chk.MaxAbs = math.Max(chk.MaxAbs, d)
					chk.MaxRel = math.Max(chk.MaxRel, d/math.Max(math.Abs(float64(w[i])), 1e-6))
					if d > opts.AbsTol+opts.RelTol*math.Abs(float64(w[i])) {
						failed = true
					}
				}
			}
			rep.Checks = append(rep.Checks, chk)
			rep.MaxAbs = math.Max(rep.MaxAbs, chk.MaxAbs)
			rep.MaxRel = math.Max(rep.MaxRel, chk.MaxRel)
		}
	}
	if failed {
		return rep, fmt.Errorf("%w: max abs error %.3g, max rel error %.3g (tolerance %g abs + %g rel)",
			ErrMismatch, rep.MaxAbs, rep.MaxRel, opts.AbsTol, opts.RelTol)
	}
	return rep, nil
}

// repeatBatch returns rt as a float32 tensor with its batch axis repeated k
// times ([x; x] for k = 2).
func repeatBatch(rt RefTensor, axis, k int) (tensor.Tensor, error) {
	if axis < 0 || axis >= len(rt.Shape) {
		return tensor.Tensor{}, fmt.Errorf("convert: verify: batch axis %d of a rank-%d tensor", axis, len(rt.Shape))
	}
	outer := int(tensor.Shape(rt.Shape[:axis]).NumElements())
	inner := int(tensor.Shape(rt.Shape[axis:]).NumElements())
	data := make([]float32, 0, len(rt.Data)*k)
	for o := 0; o < outer; o++ {
		block := rt.Data[o*inner : (o+1)*inner]
		for r := 0; r < k; r++ {
			for _, v := range block {
				data = append(data, float32(v))
			}
		}
	}
	shape := tensor.Shape(rt.Shape).Clone()
	shape[axis] *= int64(k)
	return tensor.New(shape, data)
}
