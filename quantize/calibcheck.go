package quantize

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"

	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/tensor"
)

// Limits of CheckCalibration. A row is one sample on the batch axis (for a
// sequence model, one window). The values were chosen by measurement: the
// 8-feature MLP of testdata/mlp_small.onnx, calibrated statically on the
// first n rows of testdata/calib_mlp_small.csv and evaluated on 128 other
// rows, reaches 24.8 dB output SQNR with 1 row, 31–34 dB with 2–32 rows and
// 43 dB with 64 or 128 rows (MinMax and Entropy alike), while the same
// model evaluated on its own calibration row reports 51.6 dB.
const (
	// MinCalibrationRows is the fewest calibration rows static
	// quantization accepts without Config.Force: ranges fitted to fewer
	// are a guess at the values the model will see.
	MinCalibrationRows = 8
	// WarnCalibrationRows is the fewest calibration rows that get no
	// warning, and the fewest evaluation rows whose accuracy is reported
	// without one.
	WarnCalibrationRows = 64
	// OutlierWarnSigma and OutlierRefuseSigma bound the distance of a
	// column's most extreme value from the column's median, in robust
	// standard deviations (1.4826 × the median absolute deviation). A value
	// beyond OutlierWarnSigma gets a warning, beyond OutlierRefuseSigma a
	// refusal. Measured on the same model, one calibration value at kσ in
	// one column of 128 rows: MinMax (and Percentile, whose 99.999th
	// percentile of 1024 values is the maximum) fall from 43 dB to 33 dB at
	// 30σ, 24 dB at 100σ and 8 dB at 1000σ; Entropy, which clips, holds
	// 26 dB at 1000σ and falls to 17 dB at 3000σ and 7 dB at 10⁴σ. Beyond
	// 1000σ no method gives a usable model; 1e30 used to give 0 dB and 0%
	// sign agreement on held-out data.
	OutlierWarnSigma   = 20
	OutlierRefuseSigma = 1000
)

// maxSampleValues bounds the values CheckCalibration keeps to estimate the
// columns' medians: a reservoir sample shared by all columns.
const maxSampleValues = 1 << 22

// ErrCalibration is wrapped by a *CalibrationError: the calibration data
// would make a broken model.
var ErrCalibration = errors.New("quantize: calibration data refused")

// Severity grades a Finding.
type Severity int

// Severities.
const (
	// Warning: quantization goes on; the report carries the finding.
	Warning Severity = iota + 1
	// Refusal: static quantization stops with a *CalibrationError unless
	// Config.Force is set.
	Refusal
)

func (s Severity) String() string {
	switch s {
	case Warning:
		return "warning"
	case Refusal:
		return "refusal"
	}
	return "severity(" + strconv.Itoa(int(s)) + ")"
}

// Kinds of Finding.
const (
	FindRows      = "rows"       // too few calibration or evaluation rows
	FindConstant  = "constant"   // a column with one value in every row
	FindOutlier   = "outlier"    // a value far from its column's median
	FindNonFinite = "non-finite" // NaN or ±Inf
	FindEval      = "evaluation" // accuracy measured on the calibration data
)

// Finding is one problem with calibration or evaluation data.
type Finding struct {
	Severity Severity
	// Kind is one of the Find* constants.
	Kind string
	// Column names the column at fault: `feature "macd"` for a model with
	// feature names, else `input "x" column 3`; empty when the finding is
	// about the data as a whole.
	Column string
	// Message says what was found, with the numbers.
	Message string
}

func (f Finding) String() string {
	if f.Column == "" {
		return f.Message
	}
	return f.Column + ": " + f.Message
}

// DataCheck is the outcome of CheckCalibration.
type DataCheck struct {
	// Rows is the number of rows (samples) read.
	Rows int64
	// Columns is the number of float32 columns checked.
	Columns int
	// Findings lists warnings and refusals, refusals first.
	Findings []Finding
	// Forced is set by Quantize when Config.Force let it go on despite
	// refusals.
	Forced bool
}

// Refusals returns the findings of severity Refusal.
func (c *DataCheck) Refusals() []Finding {
	var r []Finding
	for _, f := range c.Findings {
		if f.Severity == Refusal {
			r = append(r, f)
		}
	}
	return r
}

// CalibrationError is returned by Quantize (and QuantizeWithBudget) when
// the calibration data has findings of severity Refusal and Config.Force is
// not set. It unwraps to ErrCalibration. Its message names each column at
// fault, the row count, and how to override.
type CalibrationError struct {
	Check *DataCheck
	// Override says how to quantize anyway, at the end of the message. If
	// empty, "set Config.Force to quantize anyway"; a command sets its
	// flag's name.
	Override string
}

func (e *CalibrationError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%v (%d row(s) checked): ", ErrCalibration, e.Check.Rows)
	for i, f := range e.Check.Refusals() {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(f.String())
	}
	b.WriteString("; ")
	if e.Override == "" {
		b.WriteString("set Config.Force to quantize anyway")
	} else {
		b.WriteString(e.Override)
	}
	return b.String()
}

func (e *CalibrationError) Unwrap() error { return ErrCalibration }

// colStats accumulates one column.
type colStats struct {
	label              string
	n                  int64 // finite values
	nonFinite          int64
	firstBad           int64 // row of the first non-finite value
	min, max           float32
	minRow, maxRow     int64
	sample             []float32 // reservoir sample of the finite values
	rng                *rand.Rand
	median, sigma, dev float64
}

func (c *colStats) add(v float32, row int64, limit int) {
	if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
		if c.nonFinite == 0 {
			c.firstBad = row
		}
		c.nonFinite++
		return
	}
	if c.n == 0 || v < c.min {
		c.min, c.minRow = v, row
	}
	if c.n == 0 || v > c.max {
		c.max, c.maxRow = v, row
	}
	c.n++
	if len(c.sample) < limit {
		c.sample = append(c.sample, v)
	} else if j := c.rng.Int64N(c.n); j < int64(limit) {
		c.sample[j] = v
	}
}

// CheckCalibration reads data once and reports what would make static
// quantization calibrate a broken model:
//
//   - too few rows: below MinCalibrationRows a refusal, below
//     WarnCalibrationRows a warning;
//   - a NaN or infinite value: a refusal naming the column and row;
//   - constant columns (the same value in every row, from 2 rows on): a
//     warning each; when every column is constant (every row the same) a
//     refusal;
//   - extreme values: per column, the value farthest from the column's
//     median, in robust standard deviations σ = 1.4826 × MAD (median
//     absolute deviation, estimated on a sample of up to 2²² values): a
//     warning beyond OutlierWarnSigma, a refusal beyond OutlierRefuseSigma.
//     A column whose MAD is 0 (mostly one value, like a 0/1 flag) is
//     measured against the median σ of the other columns, or, if none has
//     one, its own mean absolute deviation.
//
// Columns are the last axis of each float32 input (values pooled over the
// other non-batch axes, e.g. the time steps of a sequence model), named by
// the model's feature names when it has one input and lists them. Inputs
// of other types are not checked. Rows are counted 1-based in the order
// data yields them: for a CSV of a [batch, features] model, row r is the
// file's r-th data row.
func CheckCalibration(ctx context.Context, model *onnx.ModelProto, data Dataset) (*DataCheck, error) {
	if data == nil {
		return nil, fmt.Errorf("%w: no calibration data", ErrData)
	}
	var inputs []string
	for _, in := range graphInputs(model.GetGraph()) {
		inputs = append(inputs, in.GetName())
	}
	var features []string
	if f := getMeta(model, infer.FeaturesMetadataKey); f != "" && len(inputs) == 1 {
		for _, name := range strings.Split(f, ",") {
			features = append(features, strings.TrimSpace(name))
		}
	}
	var cols [][]*colStats // per input, per column; nil for a non-float input
	var rows int64
	limit := 0
	err := data.Each(ctx, 256, func(in []tensor.Tensor) error {
		if cols == nil {
			cols = make([][]*colStats, len(in))
			total := 0
			for i, t := range in {
				if t.DType() != tensor.Float32 {
					continue
				}
				s := t.Shape()
				n := 1
				if len(s) >= 2 {
					n = int(s[len(s)-1])
				}
				cols[i] = make([]*colStats, n)
				for j := range n {
					cols[i][j] = &colStats{label: columnLabel(inputs, features, i, j, len(s)),
						rng: rand.New(rand.NewPCG(uint64(i), uint64(j)))}
				}
				total += n
			}
			limit = max(256, maxSampleValues/max(total, 1))
		}
		if len(in) != len(cols) || len(in) == 0 {
			return fmt.Errorf("%w: batch of %d inputs after one of %d", ErrData, len(in), len(cols))
		}
		for i, t := range in {
			if cols[i] == nil {
				continue
			}
			v := t.Float32s()
			nc := len(cols[i])
			per := t.Len()
			if per == 0 || len(v)%per != 0 || (len(v)/per)%nc != 0 {
				return fmt.Errorf("%w: input %d: %d values for %d rows of %d columns", ErrData, i, len(v), per, nc)
			}
			rowLen := len(v) / per
			for k, x := range v {
				cols[i][k%nc].add(x, rows+int64(k/rowLen)+1, limit)
			}
		}
		rows += int64(in[0].Len())
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("calibration check: %w", err)
	}
	var all []*colStats
	for _, cs := range cols {
		all = append(all, cs...)
	}
	chk := &DataCheck{Rows: rows, Columns: len(all)}
	add := func(s Severity, kind, col, format string, args ...any) {
		chk.Findings = append(chk.Findings, Finding{Severity: s, Kind: kind, Column: col, Message: fmt.Sprintf(format, args...)})
	}
	switch {
	case rows < MinCalibrationRows:
		add(Refusal, FindRows, "", "%d calibration row(s): static quantization needs at least %d (%d or more recommended); ranges fitted to so few rows miss the values the model will see",
			rows, MinCalibrationRows, WarnCalibrationRows)
	case rows < WarnCalibrationRows:
		add(Warning, FindRows, "", "only %d calibration rows (%d or more recommended): the ranges may miss values the model will see", rows, WarnCalibrationRows)
	}
	for _, c := range all {
		if c.nonFinite > 0 {
			add(Refusal, FindNonFinite, c.label, "%d non-finite value(s) (NaN or ±Inf), the first in row %d", c.nonFinite, c.firstBad)
		}
	}
	if rows < 2 || len(all) == 0 {
		return sorted(chk), nil // one row is constant by definition; the row count says it
	}
	var constant []*colStats
	var sigmas []float64
	for _, c := range all {
		if c.n == 0 || c.min == c.max {
			constant = append(constant, c)
			continue
		}
		c.median = medianOf(c.sample)
		devs := make([]float32, len(c.sample))
		for i, x := range c.sample {
			devs[i] = float32(math.Abs(float64(x) - c.median))
		}
		c.sigma = 1.4826 * medianOf(devs)
		if c.sigma > 0 {
			sigmas = append(sigmas, c.sigma)
		} else {
			var sum float64
			for _, d := range devs {
				sum += float64(d)
			}
			c.dev = sum / float64(len(devs))
		}
	}
	if len(constant) == len(all) {
		add(Refusal, FindConstant, "", "all %d column(s) are constant over the %d rows (every row is the same): ranges fitted to one row miss the values the model will see", len(all), rows)
		return sorted(chk), nil
	}
	for _, c := range constant {
		if c.n > 0 {
			add(Warning, FindConstant, c.label, "the same value %g in all %d rows: its range is fitted to that one value", c.min, rows)
		}
	}
	pooled := 0.0
	if len(sigmas) > 0 {
		slices.Sort(sigmas)
		pooled = sigmas[len(sigmas)/2]
	}
	for _, c := range all {
		if c.n == 0 || c.min == c.max {
			continue
		}
		scale, how := c.sigma, "robust σ"
		if scale == 0 && pooled > 0 {
			scale, how = pooled, "σ of the other columns (this column is mostly one value)"
		} else if scale == 0 {
			scale, how = c.dev, "mean absolute deviations (this column is mostly one value)"
		}
		if scale == 0 {
			continue
		}
		v, row := c.max, c.maxRow
		if c.median-float64(c.min) > float64(c.max)-c.median {
			v, row = c.min, c.minRow
		}
		z := math.Abs(float64(v)-c.median) / scale
		what := fmt.Sprintf("value %.4g in row %d is %.3g %s from the column's median %.4g (σ %.3g)", v, row, z, how, c.median, scale)
		switch {
		case z > OutlierRefuseSigma:
			add(Refusal, FindOutlier, c.label, "%s, beyond the limit of %d: any calibration stretches the int8 range toward it and leaves the ordinary values a level or two; drop or fix the row, or scale the feature",
				what, OutlierRefuseSigma)
		case z > OutlierWarnSigma:
			add(Warning, FindOutlier, c.label, "%s, beyond %d: MinMax and Percentile calibration stretch the int8 range to it, costing the ordinary values resolution (Entropy clips it)",
				what, OutlierWarnSigma)
		}
	}
	return sorted(chk), nil
}

// sorted puts chk's refusals first, keeping the order otherwise.
func sorted(chk *DataCheck) *DataCheck {
	slices.SortStableFunc(chk.Findings, func(a, b Finding) int { return int(b.Severity) - int(a.Severity) })
	return chk
}

// columnLabel names column j of input i of a model with the given inputs
// and feature names.
func columnLabel(inputs, features []string, i, j, rank int) string {
	if len(features) > j {
		return fmt.Sprintf("feature %q", features[j])
	}
	name := "#" + strconv.Itoa(i)
	if i < len(inputs) {
		name = strconv.Quote(inputs[i])
	}
	if rank < 2 {
		return "input " + name
	}
	return fmt.Sprintf("input %s column %d", name, j)
}

// medianOf returns the median of v, which it reorders.
func medianOf(v []float32) float64 {
	if len(v) == 0 {
		return 0
	}
	slices.Sort(v)
	n := len(v)
	if n%2 == 1 {
		return float64(v[n/2])
	}
	return (float64(v[n/2-1]) + float64(v[n/2])) / 2
}
