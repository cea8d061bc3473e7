package quantize

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"text/tabwriter"

	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/tensor"
)

// Metrics compare a quantized tensor with its fp32 reference over a dataset.
type Metrics struct {
	// Name of the tensor.
	Name string
	// MaxAbsError and MeanAbsError are over all elements.
	MaxAbsError, MeanAbsError float64
	// RelError is ‖int8 − fp32‖₂ / ‖fp32‖₂.
	RelError float64
	// SQNR is the signal-to-quantization-noise ratio in dB,
	// 10·log10(Σfp32² / Σ(int8 − fp32)²); +Inf when identical.
	SQNR float64
	// SignAgreement is the fraction of elements where int8 and fp32 have
	// the same sign (zero counts as its own sign): the direction of the
	// forecast, which is what users trade on.
	SignAgreement float64
	// N is the number of elements compared.
	N int64
}

// NodeMetrics are Metrics of a quantized node's output.
type NodeMetrics struct {
	Metrics
	Node, OpType string
	// LocalSQNR estimates the noise this node adds itself, removing the
	// noise already present in its inputs: −10·log10(NSR_out − NSR_in),
	// where NSR = 10^(−SQNR/10). The gate excludes the lowest first.
	LocalSQNR float64
}

// Report is the accuracy of a quantized model against its fp32 model.
type Report struct {
	Outputs []Metrics
	Nodes   []NodeMetrics
	Samples int64
}

// Worst returns the worst output values: the largest max-abs error and the
// lowest SQNR and sign agreement.
func (r *Report) Worst() (maxErr, sqnr, sign float64) {
	sqnr, sign = math.Inf(1), 1
	for _, m := range r.Outputs {
		maxErr = max(maxErr, m.MaxAbsError)
		sqnr = min(sqnr, m.SQNR)
		sign = min(sign, m.SignAgreement)
	}
	return maxErr, sqnr, sign
}

// WriteText writes the report as aligned tables.
func (r *Report) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "output\tmax abs err\tmean abs err\trel err\tSQNR dB\tsign agree\n")
	for _, m := range r.Outputs {
		fmt.Fprintf(tw, "%s\t%.4g\t%.4g\t%.4g\t%.1f\t%.2f%%\n", m.Name, m.MaxAbsError, m.MeanAbsError, m.RelError, m.SQNR, 100*m.SignAgreement)
	}
	if len(r.Nodes) > 0 {
		fmt.Fprintf(tw, "\nnode\top\tmax abs err\trel err\tSQNR dB\tlocal SQNR dB\n")
		for _, m := range r.Nodes {
			fmt.Fprintf(tw, "%s\t%s\t%.4g\t%.4g\t%.1f\t%.1f\n", m.Node, m.OpType, m.MaxAbsError, m.RelError, m.SQNR, m.LocalSQNR)
		}
	}
	return tw.Flush()
}

type acc struct {
	sumF2, sumE2, sumAbs, maxAbs float64
	agree, n                     int64
}

func (a *acc) add(f, q []float32) {
	for i := range f {
		e := float64(q[i]) - float64(f[i])
		a.sumF2 += float64(f[i]) * float64(f[i])
		a.sumE2 += e * e
		a.sumAbs += math.Abs(e)
		a.maxAbs = max(a.maxAbs, math.Abs(e))
		if sign(f[i]) == sign(q[i]) {
			a.agree++
		}
	}
	a.n += int64(len(f))
}

func sign(v float32) int {
	switch {
	case v > 0:
		return 1
	case v < 0:
		return -1
	}
	return 0
}

func (a *acc) metrics(name string) Metrics {
	m := Metrics{Name: name, MaxAbsError: a.maxAbs, N: a.n}
	if a.n > 0 {
		m.MeanAbsError = a.sumAbs / float64(a.n)
		m.SignAgreement = float64(a.agree) / float64(a.n)
	}
	switch {
	case a.sumE2 == 0:
		m.SQNR = math.Inf(1)
	case a.sumF2 == 0:
		m.SQNR = math.Inf(-1)
		m.RelError = math.Inf(1)
	default:
		m.SQNR = 10 * math.Log10(a.sumF2/a.sumE2)
		m.RelError = math.Sqrt(a.sumE2 / a.sumF2)
	}
	return m
}

// Evaluate runs the fp32 model and the quantized model on data and compares
// every model output and every quantized node's output.
func (q *Quantizer) Evaluate(ctx context.Context, fp32 *onnx.ModelProto, res *Result, data Dataset) (*Report, error) {
	var extra []string
	for _, n := range res.Nodes {
		extra = append(extra, n.Output)
		extra = append(extra, n.Activations...)
	}
	fs, err := loadModel(ctx, q.cfg.Engine, withOutputs(fp32, extra))
	if err != nil {
		return nil, fmt.Errorf("load fp32 model: %w", err)
	}
	defer fs.Close()
	qs, err := loadModel(ctx, q.cfg.Engine, withOutputs(res.Model, extra))
	if err != nil {
		return nil, fmt.Errorf("load int8 model: %w", err)
	}
	defer qs.Close()
	accs := map[string]*acc{}
	names := []string{}
	for _, o := range fp32.Graph.Output {
		names = append(names, o.GetName())
	}
	for _, n := range append(slices.Clone(names), extra...) {
		accs[n] = &acc{}
	}
	var samples int64
	err = data.Each(ctx, q.cfg.BatchSize, func(in []tensor.Tensor) error {
		fv, err := runNamed(ctx, fs, in)
		if err != nil {
			return err
		}
		qv, err := runNamed(ctx, qs, in)
		if err != nil {
			return err
		}
		samples += int64(in[0].Len())
		for name, a := range accs {
			f, okf := fv[name]
			qt, okq := qv[name]
			if !okf || !okq {
				continue // a graph input: exact in both
			}
			if f.DType() != tensor.Float32 || qt.DType() != tensor.Float32 || f.NumElements() != qt.NumElements() {
				return fmt.Errorf("%w: tensor %q differs in type or size between the models", ErrModel, name)
			}
			a.add(f.Float32s(), qt.Float32s())
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("evaluation: %w", err)
	}
	rep := &Report{Samples: samples}
	for _, n := range names {
		rep.Outputs = append(rep.Outputs, accs[n].metrics(n))
	}
	nsr := func(sqnr float64) float64 { return math.Pow(10, -sqnr/10) }
	for _, n := range res.Nodes {
		m := accs[n.Output].metrics(n.Output)
		in := 0.0
		for _, a := range n.Activations {
			if accs[a].n > 0 {
				in = max(in, nsr(accs[a].metrics(a).SQNR))
			}
		}
		local := math.Inf(1)
		if d := nsr(m.SQNR) - in; d > 0 {
			local = -10 * math.Log10(d)
		}
		rep.Nodes = append(rep.Nodes, NodeMetrics{Metrics: m, Node: n.Name, OpType: n.OpType, LocalSQNR: local})
	}
	return rep, nil
}

// Budget is an accuracy budget over all model outputs. Zero fields are not
// checked.
type Budget struct {
	// MaxError is the largest allowed absolute error of any output element.
	MaxError float64
	// MinSQNR is the lowest allowed output SQNR in dB.
	MinSQNR float64
}

// Met reports whether r is within b.
func (b Budget) Met(r *Report) bool {
	maxErr, sqnr, _ := r.Worst()
	return (b.MaxError <= 0 || maxErr <= b.MaxError) && (b.MinSQNR == 0 || sqnr >= b.MinSQNR)
}

// GateStep is one iteration of QuantizeWithBudget.
type GateStep struct {
	// Excluded is the node excluded before this step ("" for the first).
	Excluded string
	// LocalSQNR of that node when it was excluded.
	LocalSQNR float64
	MaxError  float64
	SQNR      float64
}

// GateResult is the outcome of QuantizeWithBudget.
type GateResult struct {
	*Result
	Report *Report
	Steps  []GateStep
}

// QuantizeWithBudget quantizes model and evaluates it on eval (calib if nil).
// While the budget is exceeded it excludes the quantized node with the worst
// local SQNR and tries again, reusing the calibration. It returns ErrBudget
// (with the last attempt's result) when excluding every node still misses
// the budget, or when only fp32 would meet it.
func (q *Quantizer) QuantizeWithBudget(ctx context.Context, model *onnx.ModelProto, calib, eval Dataset, b Budget) (*GateResult, error) {
	if b.MaxError <= 0 && b.MinSQNR == 0 {
		return nil, fmt.Errorf("%w: empty budget", ErrConfig)
	}
	if eval == nil {
		eval = calib
	}
	if eval == nil {
		return nil, fmt.Errorf("%w: the accuracy gate needs evaluation data", ErrConfig)
	}
	exclude := slices.Clone(q.cfg.Exclude)
	var ranges map[string]Range
	gate := &GateResult{}
	last := GateStep{}
	for {
		res, err := q.quantize(ctx, model, calib, exclude, ranges)
		if errors.Is(err, ErrNothing) && gate.Result != nil {
			return gate, fmt.Errorf("%w: every node excluded and the budget is still missed", ErrBudget)
		}
		if err != nil {
			return gate, err
		}
		ranges = res.Ranges
		rep, err := q.Evaluate(ctx, model, res, eval)
		if err != nil {
			return gate, err
		}
		gate.Result, gate.Report = res, rep
		last.MaxError, last.SQNR, _ = rep.Worst()
		gate.Steps = append(gate.Steps, last)
		if b.Met(rep) {
			return gate, nil
		}
		nodes := slices.Clone(rep.Nodes)
		sort.SliceStable(nodes, func(i, j int) bool { return nodes[i].LocalSQNR < nodes[j].LocalSQNR })
		if len(nodes) <= 1 {
			return gate, fmt.Errorf("%w: %d node(s) left and the budget is missed (max error %.4g, SQNR %.1f dB); keep the fp32 model", ErrBudget, len(nodes), last.MaxError, last.SQNR)
		}
		exclude = append(exclude, nodes[0].Node)
		last = GateStep{Excluded: nodes[0].Node, LocalSQNR: nodes[0].LocalSQNR}
	}
}
