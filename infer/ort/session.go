package ort

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"

	ortgo "github.com/yalue/onnxruntime_go"

	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/tensor"
)

// Session is one model loaded into ONNX Runtime. Run is safe for concurrent
// use; Close waits for running calls to return.
type Session struct {
	eng  *Engine
	sess *ortgo.DynamicAdvancedSession
	info *modelInfo
	// plans[i] says how to compute output i's shape from the inputs' shapes,
	// so Run can hand ONNX Runtime an output buffer: a pooled one for small
	// runs (see ioSet), else fresh Go memory it writes straight into. nil
	// when the shape cannot be known before the run; ONNX Runtime then
	// allocates and the binding copies.
	plans [][]dimSource
	// noPrealloc turns preallocation off after ONNX Runtime rejected a
	// preallocated output (a model whose declared output shape is wrong).
	noPrealloc atomic.Bool
	anyPlan    bool // some plan is not nil
	allPlanned bool // every plan is not nil and no output is a scalar

	mu     sync.RWMutex // Run holds it shared, Close exclusively; guards closed and sess
	closed bool

	roMu   sync.Mutex // guards roFree and roAll
	roFree []*runOpt
	roAll  []*runOpt

	poolMu sync.Mutex // guards free
	free   []*ioSet   // idle pooled IO values, most recently used last
}

var _ infer.Session = (*Session)(nil)

// dimSource is one output dimension: a static size, or the size of axis
// `axis` of input `input` (the same symbolic dimension name).
type dimSource struct {
	static      int64
	input, axis int // input < 0: static
}

// LoadFile loads the model at path. See LoadBytes. The path must name a
// regular, non-empty file of at most onnx.MaxModelSize bytes (see
// onnx.ReadFileLimited): a device such as /dev/zero, a FIFO or a directory
// is refused before anything is read, and no more than the file's size
// plus one byte is ever buffered.
func (e *Engine) LoadFile(ctx context.Context, path string, opts infer.Options) (infer.Session, error) {
	data, err := onnx.ReadFileLimited(path, onnx.MaxModelSize)
	if err != nil {
		return nil, fmt.Errorf("ort: %w", err)
	}
	return e.load(ctx, path, data, opts)
}

// LoadBytes loads a serialized ONNX model. The ctx bounds the warm-up runs
// (ONNX Runtime's own session creation cannot be interrupted). Models whose
// inputs or outputs are not tensors of a tensor.DType are
// rejected with an error naming them.
func (e *Engine) LoadBytes(ctx context.Context, model []byte, opts infer.Options) (infer.Session, error) {
	return e.load(ctx, "", model, opts)
}

func (e *Engine) load(ctx context.Context, path string, data []byte, opts infer.Options) (infer.Session, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	e.mu.Lock()
	closed := e.closed
	e.mu.Unlock()
	if closed {
		return nil, errEngineClosed
	}
	so, err := sessionOptions(opts)
	if err != nil {
		return nil, err
	}
	defer so.Destroy()
	info, err := readModelInfo(data)
	if err != nil {
		return nil, err
	}
	if info.unsupported != "" {
		return nil, fmt.Errorf("ort: unsupported model: %s", info.unsupported)
	}
	inNames := make([]string, len(info.inputs))
	for i, io := range info.inputs {
		inNames[i] = io.Name
	}
	outNames := make([]string, len(info.outputs))
	for i, io := range info.outputs {
		outNames[i] = io.Name
	}
	var sess *ortgo.DynamicAdvancedSession
	if path != "" {
		// From the path, so external weight files resolve relative to it.
		sess, err = ortgo.NewDynamicAdvancedSession(path, inNames, outNames, so)
	} else {
		sess, err = ortgo.NewDynamicAdvancedSessionWithONNXData(data, inNames, outNames, so)
	}
	if err != nil {
		return nil, fmt.Errorf("ort: loading model: %v", err)
	}
	s := &Session{eng: e, sess: sess, info: info, plans: outputPlans(info)}
	s.allPlanned = true
	for _, p := range s.plans {
		s.anyPlan = s.anyPlan || p != nil
		s.allPlanned = s.allPlanned && len(p) > 0
	}
	if err := e.track(s); err != nil {
		sess.Destroy()
		return nil, err
	}
	if err := infer.Warmup(ctx, s, opts.WarmupBatchSizes, opts.MaxWarmupBytes); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func sessionOptions(opts infer.Options) (*ortgo.SessionOptions, error) {
	intra, inter := opts.IntraOpThreads, opts.InterOpThreads
	if intra < 0 || inter < 0 {
		return nil, fmt.Errorf("ort: negative thread count (intra-op %d, inter-op %d)", intra, inter)
	}
	if intra == 0 {
		intra = 1
	}
	if inter == 0 {
		inter = 1
	}
	var level ortgo.GraphOptimizationLevel
	switch opts.GraphOptimization {
	case infer.OptAll:
		level = ortgo.GraphOptimizationLevelEnableAll
	case infer.OptDisabled:
		level = ortgo.GraphOptimizationLevelDisableAll
	case infer.OptBasic:
		level = ortgo.GraphOptimizationLevelEnableBasic
	case infer.OptExtended:
		level = ortgo.GraphOptimizationLevelEnableExtended
	default:
		return nil, fmt.Errorf("ort: unknown graph optimization level %d", opts.GraphOptimization)
	}
	so, err := ortgo.NewSessionOptions()
	if err != nil {
		return nil, fmt.Errorf("ort: session options: %v", err)
	}
	for _, set := range []func() error{
		func() error { return so.SetIntraOpNumThreads(intra) },
		func() error { return so.SetInterOpNumThreads(inter) },
		func() error { return so.SetGraphOptimizationLevel(level) },
		func() error {
			if opts.OptimizedModelPath == "" {
				return nil
			}
			return so.SetOptimizedModelFilePath(opts.OptimizedModelPath)
		},
	} {
		if err := set(); err != nil {
			so.Destroy()
			return nil, fmt.Errorf("ort: session options: %v", err)
		}
	}
	return so, nil
}

// outputPlans works out, for each output, whether its shape follows from
// the input shapes: every dimension static, or named like an input's
// dimension.
func outputPlans(info *modelInfo) [][]dimSource {
	plans := make([][]dimSource, len(info.outputs))
outputs:
	for i, out := range info.outputs {
		if out.Shape == nil {
			continue
		}
		plan := make([]dimSource, len(out.Shape))
		for d, size := range out.Shape {
			if size >= 0 {
				plan[d] = dimSource{static: size, input: -1}
				continue
			}
			name := out.DimNames[d]
			if name == "" {
				continue outputs
			}
			found := false
			for j, in := range info.inputs {
				for a, n := range in.DimNames {
					if n == name && !found {
						plan[d] = dimSource{input: j, axis: a}
						found = true
					}
				}
			}
			if !found {
				continue outputs
			}
		}
		plans[i] = plan
	}
	return plans
}

// Inputs describes the model's inputs, in the order Run takes them. Inputs
// backed by an initializer are left out (their stored value is used). The
// caller must not modify the result.
func (s *Session) Inputs() []infer.IOInfo { return s.info.inputs }

// Outputs describes the model's outputs, in the order Run returns them. The
// caller must not modify the result.
func (s *Session) Outputs() []infer.IOInfo { return s.info.outputs }

// Metadata returns a copy of the model's metadata_props.
func (s *Session) Metadata() map[string]string { return maps.Clone(s.info.meta) }

// Run runs the model. Inputs are checked against Inputs() first (an error
// wrapping infer.ErrInput names the input and the problem); the input
// tensors' memory is handed to ONNX Runtime without a copy and must not be
// modified until Run returns. The outputs are freshly allocated Go memory.
//
// A ctx that can be cancelled is watched during the run: cancellation sets
// ONNX Runtime's terminate flag, the run stops at the next operator, and Run
// returns ctx.Err().
func (s *Session) Run(ctx context.Context, inputs []tensor.Tensor) ([]tensor.Tensor, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := infer.CheckInputs(s.info.inputs, inputs); err != nil {
		return nil, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, infer.ErrClosed
	}
	prealloc := s.anyPlan && !s.noPrealloc.Load()
	out, err := s.run(ctx, inputs, prealloc)
	if err != nil && prealloc && ctx.Err() == nil && !errors.Is(err, infer.ErrInput) {
		// The model's declared output shapes may be wrong, which ONNX
		// Runtime only reports when it writes into our buffers. Retry
		// with its own allocation; keep that if it works.
		if out2, err2 := s.run(ctx, inputs, false); err2 == nil {
			s.noPrealloc.Store(true)
			return out2, nil
		}
	}
	return out, err
}

// maxStackIO is how many inputs or outputs Run handles without allocating
// its value lists.
const maxStackIO = 4

// run runs once. With prealloc, outputs whose shape is known beforehand are
// written by ONNX Runtime straight into Go memory; small runs whose outputs
// are all known go through pooled ONNX Runtime values (see ioSet).
func (s *Session) run(ctx context.Context, inputs []tensor.Tensor, prealloc bool) (results []tensor.Tensor, err error) {
	if prealloc && s.poolable(inputs) {
		return s.runPooled(ctx, inputs)
	}
	var inBuf, outBuf [maxStackIO]ortgo.Value
	ins, outs := inBuf[:0], outBuf[:0]
	if len(inputs) > maxStackIO {
		ins = make([]ortgo.Value, 0, len(inputs))
	}
	if n := len(s.info.outputs); n > maxStackIO {
		outs = make([]ortgo.Value, n)
	} else {
		outs = outBuf[:n]
	}
	defer func() {
		for _, v := range ins {
			v.Destroy()
		}
		for _, v := range outs {
			if v != nil {
				v.Destroy()
			}
		}
	}()
	for i, t := range inputs {
		v, err := toValue(t)
		if err != nil {
			return nil, fmt.Errorf("ort: input %q: %v", s.info.inputs[i].Name, err)
		}
		ins = append(ins, v)
	}
	results = make([]tensor.Tensor, len(outs))
	if prealloc {
		for i, plan := range s.plans {
			if plan == nil {
				continue
			}
			var shapeBuf [8]int64
			t, err := tensor.Zeros(s.info.outputs[i].DType, planShape(shapeBuf[:0], plan, inputs))
			if err != nil {
				return nil, fmt.Errorf("ort: output %q: %v", s.info.outputs[i].Name, err)
			}
			v, err := toValue(t)
			if err != nil {
				return nil, fmt.Errorf("ort: output %q: %v", s.info.outputs[i].Name, err)
			}
			results[i], outs[i] = t, v
		}
	}
	if err := s.exec(ctx, ins, outs, nil); err != nil {
		return nil, err
	}
	for i, v := range outs {
		if results[i].Valid() {
			if len(results[i].Shape()) == 0 {
				// Scalars go through the binding's own one-element buffer.
				if err := copyScalar(results[i], v); err != nil {
					return nil, fmt.Errorf("ort: output %q: %v", s.info.outputs[i].Name, err)
				}
			}
			continue
		}
		t, err := fromValue(v)
		if err != nil {
			return nil, fmt.Errorf("ort: output %q: %v", s.info.outputs[i].Name, err)
		}
		results[i] = t
	}
	return results, nil
}

// planShape appends the shape plan gives for these inputs to buf.
func planShape(buf tensor.Shape, plan []dimSource, inputs []tensor.Tensor) tensor.Shape {
	for _, d := range plan {
		if d.input < 0 {
			buf = append(buf, d.static)
		} else {
			buf = append(buf, inputs[d.input].Shape()[d.axis])
		}
	}
	return buf
}

// exec runs the ONNX Runtime session, watching ctx if it can be cancelled.
// own, if not nil, is the caller's runOpt (an ioSet's); else one is taken
// from the session's free list when ctx can be cancelled.
func (s *Session) exec(ctx context.Context, ins, outs []ortgo.Value, own *runOpt) error {
	var ro *ortgo.RunOptions
	if ctx.Done() != nil {
		r := own
		if r == nil {
			var err error
			if r, err = s.getRunOpt(); err != nil {
				return err
			}
			defer s.putRunOpt(r) // after the flag is cleared below
		}
		stop := context.AfterFunc(ctx, r.terminate)
		defer func() {
			if !stop() {
				<-r.fired // the callback ran: wait for it, then clear the flag
				r.ro.UnsetTerminate()
			}
		}()
		ro = r.ro
	}
	if err := s.sess.RunWithOptions(ins, outs, ro); err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		return fmt.Errorf("ort: run: %v", err)
	}
	return nil
}

// Close frees the session's ONNX Runtime resources after running calls have
// returned. It is safe to call more than once; later Runs return
// infer.ErrClosed.
func (s *Session) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	err := s.sess.Destroy()
	s.sess = nil
	s.roMu.Lock()
	for _, r := range s.roAll {
		r.ro.Destroy()
	}
	s.roAll, s.roFree = nil, nil
	s.roMu.Unlock()
	s.freePool()
	s.mu.Unlock()
	s.eng.untrack(s)
	if err != nil {
		return fmt.Errorf("ort: closing session: %v", err)
	}
	return nil
}

// runOpt is a reusable ONNX Runtime RunOptions: the handle through which a
// cancelled ctx terminates a running inference. Creating one per Run would
// cost two cgo calls, so sessions keep a free list (freed in Close).
type runOpt struct {
	ro *ortgo.RunOptions
	// fired receives once each time terminate has run, so the owner knows
	// the flag is set and the callback is done with ro.
	fired     chan struct{}
	terminate func()
}

func (s *Session) getRunOpt() (*runOpt, error) {
	s.roMu.Lock()
	defer s.roMu.Unlock()
	if n := len(s.roFree); n > 0 {
		r := s.roFree[n-1]
		s.roFree = s.roFree[:n-1]
		return r, nil
	}
	r, err := newRunOpt()
	if err != nil {
		return nil, err
	}
	s.roAll = append(s.roAll, r)
	return r, nil
}

func newRunOpt() (*runOpt, error) {
	ro, err := ortgo.NewRunOptions()
	if err != nil {
		return nil, fmt.Errorf("ort: run options: %v", err)
	}
	r := &runOpt{ro: ro, fired: make(chan struct{}, 1)}
	r.terminate = func() {
		r.ro.Terminate()
		r.fired <- struct{}{}
	}
	return r, nil
}

func (s *Session) putRunOpt(r *runOpt) {
	s.roMu.Lock()
	s.roFree = append(s.roFree, r)
	s.roMu.Unlock()
}

// toValue wraps t's memory in an ONNX Runtime value without copying (scalars
// are copied into the binding's own one-element buffer).
func toValue(t tensor.Tensor) (ortgo.Value, error) {
	shape := ortgo.Shape(t.Shape())
	switch t.DType() {
	case tensor.Float32:
		return newValue(shape, tensor.Data[float32](t))
	case tensor.Int64:
		return newValue(shape, tensor.Data[int64](t))
	case tensor.Int8:
		return newValue(shape, tensor.Data[int8](t))
	case tensor.Uint8:
		return newValue(shape, tensor.Data[uint8](t))
	case tensor.Int32:
		return newValue(shape, tensor.Data[int32](t))
	}
	return nil, fmt.Errorf("unsupported dtype %v", t.DType())
}

func newValue[T tensor.Elem](shape ortgo.Shape, data []T) (ortgo.Value, error) {
	if len(shape) == 0 {
		v, err := ortgo.NewScalar(data[0])
		if err != nil {
			return nil, err
		}
		return v, nil
	}
	v, err := ortgo.NewTensor(shape, data)
	if err != nil {
		return nil, err
	}
	return v, nil
}

// fromValue takes over the Go data of a value the binding allocated.
func fromValue(v ortgo.Value) (tensor.Tensor, error) {
	switch x := v.(type) {
	case *ortgo.Tensor[float32]:
		return tensor.New(tensor.Shape(x.GetShape()), x.GetData())
	case *ortgo.Tensor[int64]:
		return tensor.New(tensor.Shape(x.GetShape()), x.GetData())
	case *ortgo.Tensor[int8]:
		return tensor.New(tensor.Shape(x.GetShape()), x.GetData())
	case *ortgo.Tensor[uint8]:
		return tensor.New(tensor.Shape(x.GetShape()), x.GetData())
	case *ortgo.Tensor[int32]:
		return tensor.New(tensor.Shape(x.GetShape()), x.GetData())
	case nil:
		return tensor.Tensor{}, errors.New("no value returned")
	}
	return tensor.Tensor{}, fmt.Errorf("unsupported output type %v", v.DataType())
}

// copyScalar copies the value ONNX Runtime wrote into a binding scalar into
// the result tensor dst.
func copyScalar(dst tensor.Tensor, v ortgo.Value) error {
	switch x := v.(type) {
	case *ortgo.Scalar[float32]:
		tensor.Data[float32](dst)[0] = x.GetData()
	case *ortgo.Scalar[int64]:
		tensor.Data[int64](dst)[0] = x.GetData()
	case *ortgo.Scalar[int8]:
		tensor.Data[int8](dst)[0] = x.GetData()
	case *ortgo.Scalar[uint8]:
		tensor.Data[uint8](dst)[0] = x.GetData()
	case *ortgo.Scalar[int32]:
		tensor.Data[int32](dst)[0] = x.GetData()
	default:
		return fmt.Errorf("unexpected scalar value %T", v)
	}
	return nil
}
