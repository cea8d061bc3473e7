package quantize

import (
	"context"
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
	// where NSR = 10^(−SQNR/10). A diagnostic: it assumes noise and signal
	// pass through the node alike (QuantizeWithBudget measures isolation).
	LocalSQNR float64
}

// Report is the accuracy of a quantized model against its fp32 model.
type Report struct {
	Outputs []Metrics
	Nodes   []NodeMetrics
	// Samples is the number of evaluation rows.
	Samples int64
	// CalibrationSamples is the number of rows the static ranges were
	// calibrated on (0 for dynamic quantization, which uses none).
	CalibrationSamples int64
	// OnCalibrationData is set when the evaluation data is the
	// calibration data (same hash): the ranges were fitted to these very
	// rows, so the accuracy is optimistic.
	OnCalibrationData bool
	// Findings are the calibration data's warnings (and forced
	// refusals), then the evaluation's own: too few rows, or measured on
	// the calibration data.
	Findings []Finding
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

// WriteText writes the report: the row counts, the findings, and the
// accuracy as aligned tables.
func (r *Report) WriteText(w io.Writer) error {
	switch {
	case r.CalibrationSamples == 0:
		fmt.Fprintf(w, "evaluated on %d rows\n", r.Samples)
	case r.OnCalibrationData:
		fmt.Fprintf(w, "evaluated on %d rows: the %d calibration rows themselves\n", r.Samples, r.CalibrationSamples)
	default:
		fmt.Fprintf(w, "evaluated on %d held-out rows; calibrated on %d other rows\n", r.Samples, r.CalibrationSamples)
	}
	for _, f := range r.Findings {
		label := f.Severity.String()
		if f.Severity == Refusal {
			label = "FORCED past a refusal"
		}
		fmt.Fprintf(w, "%s: %s\n", label, f)
	}
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
			if f.DType() != qt.DType() || f.NumElements() != qt.NumElements() {
				return fmt.Errorf("%w: tensor %q differs in type or size between the models", ErrModel, name)
			}
			if f.DType() != tensor.Float32 {
				continue // an integer output (an index, a class): not compared
			}
			a.add(f.Float32s(), qt.Float32s())
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("evaluation: %w", err)
	}
	rep := &Report{Samples: samples}
	if c := res.Calibration; c != nil {
		rep.CalibrationSamples = c.Rows
		rep.Findings = slices.Clone(c.Findings)
		if h := res.Lineage.CalibrationSHA256; h != "" && data.Hash() == h {
			rep.OnCalibrationData = true
			rep.Findings = append(rep.Findings, Finding{Severity: Warning, Kind: FindEval,
				Message: "accuracy measured on the calibration data, to which the ranges were fitted: optimistic; evaluate on held-out data"})
		}
	}
	if samples < WarnCalibrationRows {
		rep.Findings = append(rep.Findings, Finding{Severity: Warning, Kind: FindRows,
			Message: fmt.Sprintf("accuracy measured on only %d evaluation row(s) (%d or more recommended): a noisy estimate", samples, WarnCalibrationRows)})
	}
	for _, n := range names {
		if accs[n].n > 0 {
			rep.Outputs = append(rep.Outputs, accs[n].metrics(n))
		}
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
	// MinSignAgreement is the lowest allowed fraction of output elements
	// whose sign matches fp32 (the forecast's direction).
	MinSignAgreement float64
}

// Validate checks the budget's fields: MaxError must be a finite number
// ≥ 0, MinSQNR finite, and MinSignAgreement a fraction in [0, 1] (0.95
// means 95% of output elements keep fp32's sign). A negative or NaN bound
// would otherwise be silently ignored, and a sign agreement above 1 could
// never be met.
func (b Budget) Validate() error {
	switch {
	case math.IsNaN(b.MaxError) || math.IsInf(b.MaxError, 0) || b.MaxError < 0:
		return fmt.Errorf("%w: max error %v: want a finite number ≥ 0 (0: not checked)", ErrConfig, b.MaxError)
	case math.IsNaN(b.MinSQNR) || math.IsInf(b.MinSQNR, 0):
		return fmt.Errorf("%w: min SQNR %v dB: want a finite number (0: not checked)", ErrConfig, b.MinSQNR)
	case math.IsNaN(b.MinSignAgreement) || b.MinSignAgreement < 0 || b.MinSignAgreement > 1:
		return fmt.Errorf("%w: min sign agreement %v: want a fraction between 0 and 1 (0.95 for 95%% of output elements; 0: not checked)", ErrConfig, b.MinSignAgreement)
	}
	return nil
}

// Met reports whether r is within b.
func (b Budget) Met(r *Report) bool {
	maxErr, sqnr, sign := r.Worst()
	return (b.MaxError <= 0 || maxErr <= b.MaxError) && (b.MinSQNR == 0 || sqnr >= b.MinSQNR) &&
		sign >= b.MinSignAgreement
}

// GateStep is one iteration of QuantizeWithBudget.
type GateStep struct {
	// Excluded is the node excluded before this step ("" for the first).
	Excluded string
	// IsolatedSQNR is the output SQNR of the model with only that node
	// quantized: how much damage the node does on its own.
	IsolatedSQNR float64
	// MaxError and SQNR are the worst output values after this step.
	MaxError float64
	SQNR     float64
}

// GateResult is the outcome of QuantizeWithBudget.
type GateResult struct {
	*Result
	Report *Report
	Steps  []GateStep
}

// QuantizeWithBudget quantizes model and evaluates it on eval (calib if nil):
// eval decides the budget, so give it held-out rows; on calib the accuracy
// is that of the rows the ranges were fitted to, and the report says so.
// If the budget is exceeded it measures each quantized node's damage in
// isolation (the output SQNR with only that node quantized, reusing the
// calibration) and excludes nodes worst first, re-evaluating after each,
// until the budget holds. It returns ErrBudget, with the last attempt, when
// only the fp32 model would meet the budget.
//
// The isolated measure is used rather than each node's output SQNR in the
// full int8 model because that one also carries the noise of every node
// upstream, and can look healthy when a large, later-discarded channel
// dominates it while the rest of the tensor is ruined.
func (q *Quantizer) QuantizeWithBudget(ctx context.Context, model *onnx.ModelProto, calib, eval Dataset, b Budget) (*GateResult, error) {
	if err := b.Validate(); err != nil {
		return nil, err
	}
	if b.MaxError == 0 && b.MinSQNR == 0 && b.MinSignAgreement == 0 {
		return nil, fmt.Errorf("%w: empty budget", ErrConfig)
	}
	if eval == nil {
		eval = calib
	}
	if eval == nil {
		return nil, fmt.Errorf("%w: the accuracy gate needs evaluation data", ErrConfig)
	}
	gate := &GateResult{}
	try := func(exclude []string, prior *Result) (*Result, *Report, error) {
		res, err := q.quantize(ctx, model, calib, exclude, prior)
		if err != nil {
			return nil, nil, err
		}
		rep, err := q.Evaluate(ctx, model, res, eval)
		return res, rep, err
	}
	exclude := slices.Clone(q.cfg.Exclude)
	res, rep, err := try(exclude, nil)
	if err != nil {
		return nil, err
	}
	first := res
	step := GateStep{}
	step.MaxError, step.SQNR, _ = rep.Worst()
	gate.Result, gate.Report, gate.Steps = res, rep, []GateStep{step}
	if b.Met(rep) {
		return gate, nil
	}
	// Rank the nodes by their isolated damage.
	type cand struct {
		name string
		sqnr float64
	}
	var cands []cand
	for _, n := range res.Nodes {
		others := slices.Clone(exclude)
		for _, o := range res.Nodes {
			if o.Name != n.Name {
				others = append(others, o.Name)
			}
		}
		_, r, err := try(others, first)
		if err != nil {
			return gate, fmt.Errorf("isolating %s: %w", n.Name, err)
		}
		_, s, _ := r.Worst()
		cands = append(cands, cand{n.Name, s})
	}
	sort.SliceStable(cands, func(i, j int) bool { return cands[i].sqnr < cands[j].sqnr })
	for _, c := range cands[:len(cands)-1] {
		exclude = append(exclude, c.name)
		res, rep, err := try(exclude, first)
		if err != nil {
			return gate, err
		}
		step := GateStep{Excluded: c.name, IsolatedSQNR: c.sqnr}
		step.MaxError, step.SQNR, _ = rep.Worst()
		gate.Result, gate.Report = res, rep
		gate.Steps = append(gate.Steps, step)
		if b.Met(rep) {
			return gate, nil
		}
	}
	last := gate.Steps[len(gate.Steps)-1]
	return gate, fmt.Errorf("%w: with one node left int8 still misses it (max error %.4g, SQNR %.1f dB); keep the fp32 model", ErrBudget, last.MaxError, last.SQNR)
}
