// Package quantize turns fp32 ONNX models into INT8 ONNX models that ONNX
// Runtime runs with its integer kernels, and measures what that costs in
// accuracy and buys in speed.
//
// Two modes, both producing standard ONNX (plus com.microsoft
// DynamicQuantizeLSTM for recurrent layers):
//
//   - Dynamic: weights of MatMul/Gemm (and LSTM) are stored as int8;
//     activations are quantized at run time by DynamicQuantizeLinear →
//     MatMulInteger → Cast → Mul (→ Add bias), the pattern ONNX Runtime fuses
//     into DynamicQuantizeMatMul / MatMulIntegerToFloat. No calibration data.
//   - Static (QDQ): QuantizeLinear/DequantizeLinear pairs around the
//     activations and int8 weights (+ int32 bias) of MatMul/Gemm/Conv, with
//     activation ranges calibrated by running the fp32 model on calibration
//     data: MinMax, Percentile or Entropy (KL divergence).
//
// Static quantization first checks the calibration data (CheckCalibration):
// too few rows, every row the same, NaN or infinite values and extreme
// outliers make ranges that fit the calibration rows and nothing else, so
// they are refused with a *CalibrationError naming the column, unless
// Config.Force; milder findings are warnings carried into the report.
//
// Then Evaluate compares the two models (max/mean absolute error, relative
// error, SQNR, sign agreement per output and per quantized node, with the
// calibration and evaluation row counts),
// QuantizeWithBudget excludes the worst nodes until an accuracy budget holds,
// and Benchmark measures fp32 against int8 honestly, recommending fp32 when
// int8 is not faster.
//
//	q, _ := quantize.New(quantize.Config{Engine: eng, Mode: quantize.Static,
//		Calibration: quantize.Entropy, PerChannel: true})
//	calib, _ := quantize.OpenDataset("calib.csv", model, quantize.DataOptions{})
//	res, _ := q.Quantize(ctx, model, calib)
//	rep, _ := q.Evaluate(ctx, model, res, calib)
//	bench, _ := quantize.Benchmark(ctx, eng, model, res.Model, quantize.BenchConfig{})
//
// Error bounds (enforced by the tests on PyTorch-made MLPs, an LSTM, a
// Conv1d and a MatMul model, on held-out N(0,1) inputs): output SQNR ≥ 25 dB
// and sign agreement ≥ 95% for both modes; measured 34–58 dB and ≥ 99.2%.
// Recurrent nodes: LSTM is quantized in dynamic mode only (ONNX Runtime has
// no QDQ LSTM kernel); GRU and RNN stay fp32 (no int8 kernel at all); both
// are listed in Result.Skipped with the reason.
//
// Whether int8 pays depends on the model: on these machines a
// 512-1024-1024-1 MLP runs 5–7× faster at batch 1, while a 100-50-10 MLP
// and a 64-unit LSTM run 1.2–1.5× slower, because quantizing activations
// costs more than the small integer matmuls save. Benchmark measures it and
// recommends fp32 when int8 is slower.
//
// The package has no cgo: it runs models through an infer.Engine (infer/ort
// in production).
package quantize

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/onnx"
)

// Errors returned by this package.
var (
	// ErrModel is wrapped by errors about the input model.
	ErrModel = errors.New("quantize: unsupported model")
	// ErrConfig is wrapped by errors about the configuration.
	ErrConfig = errors.New("quantize: invalid config")
	// ErrData is wrapped by errors about calibration or evaluation data.
	ErrData = errors.New("quantize: invalid data")
	// ErrBudget is returned by QuantizeWithBudget when no set of exclusions
	// meets the accuracy budget.
	ErrBudget = errors.New("quantize: accuracy budget cannot be met")
	// ErrNothing is returned when no node matched the selection.
	ErrNothing = errors.New("quantize: no node to quantize")
)

// Mode selects dynamic or static quantization.
type Mode int

// Modes. The zero value is Dynamic.
const (
	Dynamic Mode = iota
	Static
)

func (m Mode) String() string {
	if m == Static {
		return "static"
	}
	return "dynamic"
}

// ParseMode parses "dynamic" or "static".
func ParseMode(s string) (Mode, error) {
	switch strings.ToLower(s) {
	case "dynamic", "":
		return Dynamic, nil
	case "static", "qdq":
		return Static, nil
	}
	return 0, fmt.Errorf("%w: mode %q (want dynamic or static)", ErrConfig, s)
}

// Method is a calibration method for static quantization.
type Method int

// Calibration methods. The zero value is MinMax.
const (
	// MinMax uses the observed minimum and maximum: exact on the
	// calibration data, but one outlier stretches the range for all values.
	MinMax Method = iota
	// Percentile clips |x| at a percentile of its histogram.
	Percentile
	// Entropy picks the clipping threshold that minimises the KL divergence
	// between the fp32 and the quantized distribution (TensorRT's method).
	Entropy
)

func (m Method) String() string {
	switch m {
	case Percentile:
		return "percentile"
	case Entropy:
		return "entropy"
	}
	return "minmax"
}

// ParseMethod parses "minmax", "percentile" or "entropy".
func ParseMethod(s string) (Method, error) {
	switch strings.ToLower(s) {
	case "minmax", "":
		return MinMax, nil
	case "percentile":
		return Percentile, nil
	case "entropy", "kl":
		return Entropy, nil
	}
	return 0, fmt.Errorf("%w: calibration method %q (want minmax, percentile or entropy)", ErrConfig, s)
}

// Lineage is what a registry records about where a quantized model came
// from. Quantize fills Method and CalibrationSHA256; the caller sets Parent.
type Lineage struct {
	// Parent is the source model's version (for a registry, the fp32
	// version in the same model), if known.
	Parent string
	// Method describes the quantization ("dynamic", "static/entropy").
	Method string
	// CalibrationSHA256 is the hash of the calibration data (static only).
	CalibrationSHA256 string
}

// Config configures a Quantizer. The zero value quantizes dynamically,
// per-tensor, every MatMul, Gemm and LSTM.
type Config struct {
	// Engine runs models for calibration and evaluation. Required for
	// Static, Evaluate and QuantizeWithBudget; Dynamic works without it.
	Engine infer.Engine
	// Mode is Dynamic (zero) or Static.
	Mode Mode
	// PerChannel quantizes weights with one scale per output channel.
	PerChannel bool
	// Symmetric quantizes static activations to int8 with a zero point of
	// 0; otherwise they are uint8 with a calibrated zero point
	// (asymmetric), which suits post-ReLU activations. Weights are always
	// symmetric int8 (ONNX Runtime's fast kernels want that).
	//
	// Prefer asymmetric for ReLU networks: a symmetric range wastes half
	// its levels on a ReLU's empty negative side, and ONNX Runtime cannot
	// fold the Relu into QuantizeLinear (zero point 0 is not int8's lowest
	// value), which leaves the Gemm before it unfused (checked in tests).
	Symmetric bool
	// Calibration is the static calibration method. If zero, MinMax.
	Calibration Method
	// Percentile is the percentile of |x| kept by the Percentile method.
	// If zero, 99.999.
	Percentile float64
	// Bins is the histogram size for Percentile and Entropy. If zero, 2048.
	Bins int
	// OpTypes selects the op types to quantize. If empty: MatMul, Gemm and
	// LSTM for Dynamic; MatMul, Gemm and Conv for Static.
	OpTypes []string
	// Exclude lists node names to keep in fp32. Each must name a node of
	// one of OpTypes: Quantize returns an error wrapping ErrConfig, listing
	// the nodes that can be excluded, for any other name.
	Exclude []string
	// BatchSize is the number of rows per calibration/evaluation run.
	// If zero, 64.
	BatchSize int
	// Parent is recorded as lineage: the source model's version (a
	// registry wants the fp32 version of the same model, e.g. "v2.0").
	Parent string
	// Force lets static quantization go on when CheckCalibration refuses
	// the calibration data (fewer than MinCalibrationRows rows, every row
	// the same, a NaN or infinite value, a value beyond
	// OutlierRefuseSigma): the refusals stay in Result.Calibration with
	// Forced set and are recorded in the model's metadata
	// ("calibration_forced"). Without it Quantize returns a
	// *CalibrationError and no model.
	Force bool
}

// Quantizer quantizes models according to its Config. It is safe for
// concurrent use.
type Quantizer struct {
	cfg Config
}

// New validates cfg and applies its defaults.
func New(cfg Config) (*Quantizer, error) {
	if cfg.Mode != Dynamic && cfg.Mode != Static {
		return nil, fmt.Errorf("%w: mode %d", ErrConfig, cfg.Mode)
	}
	if cfg.Calibration < MinMax || cfg.Calibration > Entropy {
		return nil, fmt.Errorf("%w: calibration method %d", ErrConfig, cfg.Calibration)
	}
	if cfg.Percentile == 0 {
		cfg.Percentile = 99.999
	}
	if cfg.Percentile <= 50 || cfg.Percentile > 100 {
		return nil, fmt.Errorf("%w: percentile %v not in (50, 100]", ErrConfig, cfg.Percentile)
	}
	if cfg.Bins == 0 {
		cfg.Bins = 2048
	}
	if cfg.Bins < 256 || cfg.Bins > 1<<16 {
		return nil, fmt.Errorf("%w: bins %d not in [256, 65536]", ErrConfig, cfg.Bins)
	}
	if cfg.BatchSize == 0 {
		cfg.BatchSize = 64
	}
	if cfg.BatchSize < 0 {
		return nil, fmt.Errorf("%w: batch size %d", ErrConfig, cfg.BatchSize)
	}
	if len(cfg.OpTypes) == 0 {
		if cfg.Mode == Dynamic {
			cfg.OpTypes = []string{"MatMul", "Gemm", "LSTM"}
		} else {
			cfg.OpTypes = []string{"MatMul", "Gemm", "Conv"}
		}
	}
	for _, op := range cfg.OpTypes {
		if !supported(cfg.Mode, op) {
			return nil, fmt.Errorf("%w: op type %q cannot be quantized in %s mode", ErrConfig, op, cfg.Mode)
		}
	}
	if cfg.Mode == Static && cfg.Engine == nil {
		return nil, fmt.Errorf("%w: static quantization needs an Engine for calibration", ErrConfig)
	}
	cfg.OpTypes = slices.Clone(cfg.OpTypes)
	cfg.Exclude = slices.Clone(cfg.Exclude)
	return &Quantizer{cfg: cfg}, nil
}

// checkExclude refuses an exclusion that names no node of a selected op
// type: a typo would otherwise quantize the very node the user meant to
// keep in fp32, while the report claims it was excluded.
func (q *Quantizer) checkExclude(m *onnx.ModelProto, exclude []string) error {
	if len(exclude) == 0 {
		return nil
	}
	opOf := map[string]string{}
	var selectable []string
	for _, n := range m.GetGraph().GetNode() {
		if n.GetName() == "" {
			continue
		}
		opOf[n.GetName()] = n.GetOpType()
		if (n.GetDomain() == "" || n.GetDomain() == "ai.onnx") && slices.Contains(q.cfg.OpTypes, n.GetOpType()) {
			selectable = append(selectable, n.GetName())
		}
	}
	list := "none"
	if len(selectable) > 0 {
		list = strings.Join(selectable, ", ")
	}
	for _, name := range exclude {
		op, ok := opOf[name]
		switch {
		case !ok:
			return fmt.Errorf("%w: cannot exclude %q: the model has no node of that name; nodes of the selected op types (%s): %s",
				ErrConfig, name, strings.Join(q.cfg.OpTypes, ","), list)
		case !slices.Contains(selectable, name):
			return fmt.Errorf("%w: cannot exclude %q: it is a %s node, which is never quantized with op types %s; nodes that are: %s",
				ErrConfig, name, op, strings.Join(q.cfg.OpTypes, ","), list)
		}
	}
	return nil
}

func supported(m Mode, op string) bool {
	switch op {
	case "MatMul", "Gemm":
		return true
	case "LSTM":
		return m == Dynamic
	case "Conv":
		return m == Static
	}
	return false
}

// Config returns the configuration with defaults applied.
func (q *Quantizer) Config() Config { return q.cfg }

// QuantizedNode describes one node that was quantized.
type QuantizedNode struct {
	// Name and OpType of the original fp32 node.
	Name, OpType string
	// Output is the node's first output; it keeps its name in the
	// quantized model so reports can compare it.
	Output string
	// Activations are the float tensors the node's quantized inputs read
	// (not weights).
	Activations []string
}

// Skipped is a selected node left in fp32, with the reason.
type Skipped struct {
	Name, OpType, Reason string
}

// Result is a quantized model.
type Result struct {
	// Model is the quantized model, with its parameters in metadata_props.
	Model *onnx.ModelProto
	// Nodes lists the quantized nodes in graph order.
	Nodes []QuantizedNode
	// Skipped lists selected nodes that could not be quantized.
	Skipped []Skipped
	// Excluded lists the nodes excluded by configuration or the gate.
	Excluded []string
	// Ranges holds the calibrated activation ranges (static only).
	Ranges map[string]Range
	// Calibration is the check of the calibration data: its row count
	// and its warnings (static only).
	Calibration *DataCheck
	// Lineage is what a registry should record about this model.
	Lineage Lineage
}

// MetaPrefix starts the metadata_props keys in which the quantized model
// records its parameters ("signalforge.quantize.mode", ".per_channel",
// ".op_types", ".nodes", ".excluded", ".weights", ".activations",
// ".calibration", ".percentile", ".bins", ".calibration_sha256",
// ".calibration_rows", ".calibration_forced", ".parent").
const MetaPrefix = "signalforge.quantize."

// Params returns the quantization parameters recorded in the model's
// metadata_props, without MetaPrefix: what a registry's lineage keeps
// (registry.Lineage.Quantization).
func (r *Result) Params() map[string]string {
	p := map[string]string{}
	for _, e := range r.Model.GetMetadataProps() {
		if k, ok := strings.CutPrefix(e.GetKey(), MetaPrefix); ok {
			p[k] = e.GetValue()
		}
	}
	return p
}

// Quantize quantizes model (which it does not modify). calib is required for
// Static and ignored for Dynamic. Static quantization first checks calib
// with CheckCalibration and returns a *CalibrationError, before running
// anything, when the check refuses it and Config.Force is not set.
func (q *Quantizer) Quantize(ctx context.Context, model *onnx.ModelProto, calib Dataset) (*Result, error) {
	return q.quantize(ctx, model, calib, q.cfg.Exclude, nil)
}

// quantize does the work; prior, when non-nil, is an earlier result whose
// calibration (ranges and data check) is reused: the gate re-quantizes
// without recalibrating.
func (q *Quantizer) quantize(ctx context.Context, model *onnx.ModelProto, calib Dataset, exclude []string, prior *Result) (*Result, error) {
	m := proto.Clone(model).(*onnx.ModelProto)
	gr, err := newGraph(m)
	if err != nil {
		return nil, err
	}
	if err := q.checkExclude(m, exclude); err != nil {
		return nil, err
	}
	ex := map[string]bool{}
	for _, n := range exclude {
		ex[n] = true
	}
	res := &Result{Model: m, Excluded: slices.Clone(exclude)}
	var sel []*onnx.NodeProto
	for _, n := range m.Graph.Node {
		if n.GetDomain() != "" && n.GetDomain() != "ai.onnx" {
			continue
		}
		if ex[n.GetName()] {
			continue
		}
		if !slices.Contains(q.cfg.OpTypes, n.GetOpType()) {
			if why := recurrentReason(q.cfg.Mode, n.GetOpType()); why != "" {
				res.Skipped = append(res.Skipped, Skipped{n.GetName(), n.GetOpType(), why})
			}
			continue
		}
		if why := q.check(gr, n); why != "" {
			res.Skipped = append(res.Skipped, Skipped{n.GetName(), n.GetOpType(), why})
			continue
		}
		sel = append(sel, n)
	}
	if len(sel) == 0 {
		return nil, ErrNothing
	}
	res.Lineage = Lineage{Parent: q.cfg.Parent, Method: q.cfg.Mode.String()}
	if q.cfg.Mode == Static {
		var ranges map[string]Range
		var chk *DataCheck
		if prior != nil {
			ranges, chk = prior.Ranges, prior.Calibration
		} else {
			if calib == nil {
				return nil, fmt.Errorf("%w: static quantization needs calibration data", ErrConfig)
			}
			if chk, err = CheckCalibration(ctx, model, calib); err != nil {
				return nil, err
			}
			if len(chk.Refusals()) > 0 {
				if !q.cfg.Force {
					return nil, &CalibrationError{Check: chk}
				}
				chk.Forced = true
			}
			ranges, err = q.calibrate(ctx, model, sel, calib)
			if err != nil {
				return nil, err
			}
		}
		res.Ranges, res.Calibration = ranges, chk
		res.Lineage.Method += "/" + q.cfg.Calibration.String()
		if calib != nil {
			res.Lineage.CalibrationSHA256 = calib.Hash()
		}
		if err := q.rewriteStatic(gr, sel, ranges, res); err != nil {
			return nil, err
		}
	} else {
		if err := q.rewriteDynamic(gr, sel, res); err != nil {
			return nil, err
		}
	}
	q.record(m, res)
	return res, nil
}

// recurrentReason explains why a recurrent node stays fp32 when it was not
// selected, so users are not left guessing.
func recurrentReason(m Mode, op string) string {
	switch {
	case op == "GRU" || op == "RNN":
		return "ONNX Runtime has no int8 " + op + " kernel; it stays fp32"
	case op == "LSTM" && m == Static:
		return "ONNX Runtime has no QDQ LSTM kernel; quantize it with dynamic mode (DynamicQuantizeLSTM)"
	case op == "LSTM":
		return "LSTM not in the selected op types"
	}
	return ""
}

// check says why a selected node cannot be quantized, or "".
func (q *Quantizer) check(gr *graph, n *onnx.NodeProto) string {
	if len(n.Input) == 0 || n.Input[0] == "" || gr.inits[n.Input[0]] != nil {
		return "its first input is a constant (constant folding would remove the node)"
	}
	switch n.GetOpType() {
	case "MatMul":
		if len(n.Input) != 2 {
			return "malformed MatMul"
		}
		w := gr.inits[n.Input[1]]
		if w == nil || len(w.Dims) != 2 {
			if q.cfg.Mode == Static && w == nil {
				return "" // activation × activation: both sides get QDQ
			}
			return "weight is not a 2-D initializer"
		}
	case "Gemm":
		if getAttrInt(n, "transA", 0) != 0 {
			return "transA=1 is not supported"
		}
		if getAttrFloat(n, "alpha", 1) != 1 || getAttrFloat(n, "beta", 1) != 1 {
			return "alpha/beta other than 1 are not supported"
		}
		if len(n.Input) < 2 || gr.inits[n.Input[1]] == nil || len(gr.inits[n.Input[1]].Dims) != 2 {
			return "weight is not a 2-D initializer"
		}
	case "Conv":
		if len(n.Input) < 2 || gr.inits[n.Input[1]] == nil {
			return "weight is not an initializer"
		}
	case "LSTM":
		if len(n.Input) < 3 || gr.inits[n.Input[1]] == nil || gr.inits[n.Input[2]] == nil {
			return "W and R are not initializers"
		}
		if len(n.Input) > 7 && n.Input[7] != "" {
			return "peephole weights are not supported by DynamicQuantizeLSTM"
		}
		if getAttrInt(n, "layout", 0) != 0 {
			return "layout=1 is not supported by DynamicQuantizeLSTM"
		}
	}
	return ""
}

func (q *Quantizer) record(m *onnx.ModelProto, res *Result) {
	names := make([]string, len(res.Nodes))
	for i, n := range res.Nodes {
		names[i] = n.Name
	}
	setMeta(m, MetaPrefix+"mode", q.cfg.Mode.String())
	setMeta(m, MetaPrefix+"per_channel", strconv.FormatBool(q.cfg.PerChannel))
	setMeta(m, MetaPrefix+"op_types", strings.Join(q.cfg.OpTypes, ","))
	setMeta(m, MetaPrefix+"nodes", strings.Join(names, ","))
	setMeta(m, MetaPrefix+"excluded", strings.Join(res.Excluded, ","))
	setMeta(m, MetaPrefix+"weights", "int8 symmetric")
	if q.cfg.Mode == Static {
		act := "uint8 asymmetric"
		if q.cfg.Symmetric {
			act = "int8 symmetric"
		}
		setMeta(m, MetaPrefix+"activations", act)
		setMeta(m, MetaPrefix+"calibration", q.cfg.Calibration.String())
		if q.cfg.Calibration == Percentile {
			setMeta(m, MetaPrefix+"percentile", strconv.FormatFloat(q.cfg.Percentile, 'g', -1, 64))
		}
		if q.cfg.Calibration != MinMax {
			setMeta(m, MetaPrefix+"bins", strconv.Itoa(q.cfg.Bins))
		}
		if res.Lineage.CalibrationSHA256 != "" {
			setMeta(m, MetaPrefix+"calibration_sha256", res.Lineage.CalibrationSHA256)
		}
		if c := res.Calibration; c != nil {
			setMeta(m, MetaPrefix+"calibration_rows", strconv.FormatInt(c.Rows, 10))
			if c.Forced {
				var why []string
				for _, f := range c.Refusals() {
					why = append(why, strings.TrimSpace(f.Kind+" "+f.Column))
				}
				setMeta(m, MetaPrefix+"calibration_forced", strings.Join(why, "; "))
			}
		}
	} else {
		setMeta(m, MetaPrefix+"activations", "uint8 dynamic")
	}
	if res.Lineage.Parent != "" {
		setMeta(m, MetaPrefix+"parent", res.Lineage.Parent)
	}
}

// quantizeWeights quantizes w symmetric int8. With perChannel, axis is the
// channel axis of a tensor with dims; otherwise one scale for all.
func quantizeWeights(w []float32, dims []int64, perChannel bool, axis int) (qv []int8, scales []float32) {
	nch, inner := 1, 1
	if perChannel {
		nch = int(dims[axis])
		for _, d := range dims[axis+1:] {
			inner *= int(d)
		}
	}
	maxAbs := make([]float32, nch)
	ch := func(i int) int {
		if !perChannel {
			return 0
		}
		return (i / inner) % nch
	}
	for i, v := range w {
		if a := float32(math.Abs(float64(v))); a > maxAbs[ch(i)] {
			maxAbs[ch(i)] = a
		}
	}
	scales = make([]float32, nch)
	for c, m := range maxAbs {
		scales[c] = m / 127
		if scales[c] == 0 {
			scales[c] = 1 // an all-zero channel: any scale reproduces it
		}
	}
	qv = make([]int8, len(w))
	for i, v := range w {
		qv[i] = int8(clamp(math.RoundToEven(float64(v/scales[ch(i)])), -127, 127))
	}
	return qv, scales
}

func clamp(v, lo, hi float64) float64 { return math.Max(lo, math.Min(hi, v)) }

// transpose2 transposes a rows×cols row-major matrix.
func transpose2(w []float32, rows, cols int) []float32 {
	t := make([]float32, len(w))
	for r := range rows {
		for c := range cols {
			t[c*rows+r] = w[r*cols+c]
		}
	}
	return t
}
