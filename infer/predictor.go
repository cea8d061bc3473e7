package infer

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"maps"
	"math"
	"slices"
	"strings"

	"github.com/signalforge/signalforge/feature"
	"github.com/signalforge/signalforge/tensor"
)

// Row is one row of named features, as a client sends it: feature name →
// values. A tabular model ([N,F] input) takes exactly one value per feature,
// {"rsi_14": {65}, "macd": {0.5}}; a sequence model ([N,T,F] input) takes T
// values per feature, oldest time step first. Values are float64 because
// that is what JSON numbers decode to; they must be finite and within the
// float32 range, since models take float32.
type Row map[string][]float64

// Codes of FeatureError, stable for API clients.
const (
	CodeMissingFeature = "missing_feature" // features the model needs are absent (maybe also unknown ones)
	CodeUnknownFeature = "unknown_feature" // features the model does not know
	CodeInvalidValue   = "invalid_value"   // NaN, ±Inf, or outside the float32 range
	CodeSequenceLength = "sequence_length" // wrong number of values (time steps) for a feature
	CodeRowCount       = "row_count"       // no rows, too many, or not the model's fixed batch
)

// FeatureError is a validation error about rows of named features. Its
// message is meant for the client that sent them and names the problem
// exactly; Code classifies it. It wraps ErrInput.
type FeatureError struct {
	Code string
	// Row is the index of the offending row, or -1 for CodeRowCount.
	Row int
	// Feature is the feature concerned (CodeInvalidValue, CodeSequenceLength).
	Feature string
	// Missing lists every missing feature of the row in model order;
	// Unknown every unknown one, sorted.
	Missing, Unknown []string
	// Step is the time step of an invalid value in a sequence, else -1.
	Step int
	// Value is the invalid value (CodeInvalidValue).
	Value float64
	// Got and Want are counts: values of a feature (CodeSequenceLength) or
	// rows (CodeRowCount; Want is the limit).
	Got, Want int
	// tabular tells CodeSequenceLength messages to say "values", not
	// "time steps"; fixedBatch marks a row count that must be exact.
	tabular, fixedBatch bool
}

func (e *FeatureError) Error() string {
	var b strings.Builder
	if e.Row >= 0 {
		fmt.Fprintf(&b, "row %d: ", e.Row)
	}
	switch e.Code {
	case CodeRowCount:
		switch {
		case e.Got == 0:
			b.WriteString("no rows: at least 1 is needed")
		case e.fixedBatch:
			fmt.Fprintf(&b, "wrong number of rows: %d (the model takes exactly %d)", e.Got, e.Want)
		default:
			fmt.Fprintf(&b, "too many rows: %d (at most %d per request)", e.Got, e.Want)
		}
	case CodeMissingFeature, CodeUnknownFeature:
		if len(e.Missing) > 0 {
			fmt.Fprintf(&b, "missing %s: %s", plural(len(e.Missing), "feature"), strings.Join(e.Missing, ", "))
			if len(e.Unknown) > 0 {
				b.WriteString("; ")
			}
		}
		if len(e.Unknown) > 0 {
			fmt.Fprintf(&b, "unknown %s: %s", plural(len(e.Unknown), "feature"), strings.Join(e.Unknown, ", "))
		}
	case CodeSequenceLength:
		unit := plural(e.Got, "time step")
		if e.tabular {
			unit = plural(e.Got, "value")
		}
		if e.Want == 0 {
			fmt.Fprintf(&b, "feature %q has %d %s, want at least 1", e.Feature, e.Got, unit)
		} else {
			fmt.Fprintf(&b, "feature %q has %d %s, want %d", e.Feature, e.Got, unit, e.Want)
		}
	case CodeInvalidValue:
		fmt.Fprintf(&b, "feature %q", e.Feature)
		if e.Step >= 0 {
			fmt.Fprintf(&b, " at time step %d", e.Step)
		}
		switch {
		case math.IsNaN(e.Value):
			b.WriteString(" is NaN")
		case math.IsInf(e.Value, 1):
			b.WriteString(" is +Inf")
		case math.IsInf(e.Value, -1):
			b.WriteString(" is -Inf")
		default:
			fmt.Fprintf(&b, " is %g, outside the float32 range", e.Value)
		}
	default:
		b.WriteString("invalid features")
	}
	return b.String()
}

// Unwrap returns ErrInput.
func (e *FeatureError) Unwrap() error { return ErrInput }

func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}

// PredictorConfig configures a Predictor. The zero value reads everything
// from the model.
type PredictorConfig struct {
	// Features are the model's input features in the order of the input's
	// last axis. If nil, they come from the model's metadata_props key
	// signalforge.features (comma-separated).
	Features []string
	// Output names the output Predict returns. If empty, the first one.
	Output string
	// MaxRows is the most rows one call accepts. If zero, 1024.
	MaxRows int
	// SeqLen is the number of time steps of a sequence model whose time
	// axis is dynamic. If zero, the model's fixed time dimension; if that
	// is dynamic too, the first row's first feature sets the length and
	// every feature of every row must match it.
	SeqLen int
}

// Predictor turns rows of named features into a model's input tensor and
// its output back into one prediction per row: the seed's ONNXPredictor.
// It supports models with one float32 input, [N,F] (tabular) or [N,T,F]
// (sequence), and a float32 output with the batch on axis 0. It is safe
// for concurrent use.
type Predictor struct {
	sess     Session
	features []string
	index    map[string]int
	schema   *feature.Schema
	seqLen   int // 0 for tabular models; -1 when set by each call's rows
	out      int
	maxRows  int
	fixed    int // fixed batch size, or 0
}

// NewPredictor checks that sess fits (see Predictor) and returns a Predictor.
func NewPredictor(sess Session, cfg PredictorConfig) (*Predictor, error) {
	ins := sess.Inputs()
	if len(ins) != 1 {
		return nil, fmt.Errorf("infer: predictor needs a model with one input, this one has %d", len(ins))
	}
	in := ins[0]
	if in.DType != tensor.Float32 {
		return nil, fmt.Errorf("infer: predictor needs a float32 input, %q is %v", in.Name, in.DType)
	}
	rank := len(in.Shape)
	if in.Shape == nil || (rank != 2 && rank != 3) {
		return nil, fmt.Errorf("infer: predictor needs an input of shape [N,F] or [N,T,F], %q is %s", in.Name, in.ShapeString())
	}
	if in.BatchAxis > 0 {
		return nil, fmt.Errorf("infer: predictor needs the batch on axis 0, %q has it on axis %d", in.Name, in.BatchAxis)
	}

	features := slices.Clone(cfg.Features)
	if features == nil {
		meta := strings.TrimSpace(sess.Metadata()[FeaturesMetadataKey])
		if meta == "" {
			return nil, fmt.Errorf("infer: the model does not name its features: set PredictorConfig.Features or the model's %s metadata", FeaturesMetadataKey)
		}
		for f := range strings.SplitSeq(meta, ",") {
			features = append(features, strings.TrimSpace(f))
		}
	}
	index := make(map[string]int, len(features))
	for i, f := range features {
		if f == "" {
			return nil, fmt.Errorf("infer: feature %d has an empty name", i)
		}
		if _, dup := index[f]; dup {
			return nil, fmt.Errorf("infer: feature %q is listed twice", f)
		}
		index[f] = i
	}
	if w := in.Shape[rank-1]; w >= 0 && int(w) != len(features) {
		return nil, fmt.Errorf("infer: %d feature names for input %q of shape %s", len(features), in.Name, in.ShapeString())
	}

	schema, err := feature.NewSchema(features)
	if err != nil {
		return nil, fmt.Errorf("infer: %w", err)
	}
	p := &Predictor{sess: sess, features: features, index: index, schema: schema, maxRows: cfg.MaxRows}
	switch {
	case cfg.MaxRows < 0:
		return nil, fmt.Errorf("infer: MaxRows %d is negative", cfg.MaxRows)
	case cfg.MaxRows == 0:
		p.maxRows = 1024
	}
	if in.BatchAxis < 0 && in.Shape[0] >= 0 {
		p.fixed = int(in.Shape[0])
	}
	if rank == 3 {
		t := in.Shape[1]
		switch {
		case cfg.SeqLen < 0:
			return nil, fmt.Errorf("infer: SeqLen %d is negative", cfg.SeqLen)
		case t >= 0 && cfg.SeqLen > 0 && int(t) != cfg.SeqLen:
			return nil, fmt.Errorf("infer: SeqLen %d, but input %q has %d time steps", cfg.SeqLen, in.Name, t)
		case t >= 0:
			p.seqLen = int(t)
		case cfg.SeqLen > 0:
			p.seqLen = cfg.SeqLen
		default:
			p.seqLen = -1
		}
	} else if cfg.SeqLen != 0 {
		return nil, fmt.Errorf("infer: SeqLen set, but input %q of shape %s is tabular", in.Name, in.ShapeString())
	}

	outs := sess.Outputs()
	p.out = -1
	for i, o := range outs {
		if cfg.Output == "" || o.Name == cfg.Output {
			p.out = i
			break
		}
	}
	if p.out < 0 {
		return nil, fmt.Errorf("infer: the model has no output %q", cfg.Output)
	}
	if o := outs[p.out]; o.DType != tensor.Float32 {
		return nil, fmt.Errorf("infer: predictor needs a float32 output, %q is %v", o.Name, o.DType)
	}
	return p, nil
}

// Features returns the model's features in input order.
func (p *Predictor) Features() []string { return slices.Clone(p.features) }

// Schema returns the model's features in input order, indexed: the layout
// of the rows EncodeValues takes.
func (p *Predictor) Schema() *feature.Schema { return p.schema }

// ErrNotTabular is returned by EncodeValues for a sequence model.
var ErrNotTabular = errors.New("infer: rows of one value per feature need a tabular model")

// EncodeValues packs rows already in the model's input order (laid out by
// Schema, as the request decoder writes them) into the [N,F] input tensor
// of a tabular model. It checks what Encode checks that such rows can
// still get wrong — the row count and each value — with the same
// *FeatureError.
func (p *Predictor) EncodeValues(rows []feature.Row) (tensor.Tensor, error) {
	n := len(rows)
	switch {
	case p.seqLen != 0:
		return tensor.Tensor{}, ErrNotTabular
	case n == 0:
		return tensor.Tensor{}, &FeatureError{Code: CodeRowCount, Row: -1, Step: -1}
	case p.fixed > 0 && n != p.fixed:
		return tensor.Tensor{}, &FeatureError{Code: CodeRowCount, Row: -1, Step: -1, Got: n, Want: p.fixed, fixedBatch: true}
	case n > p.maxRows:
		return tensor.Tensor{}, &FeatureError{Code: CodeRowCount, Row: -1, Step: -1, Got: n, Want: p.maxRows}
	}
	f := len(p.features)
	data := make([]float32, n*f)
	for r, row := range rows {
		if row.Schema != p.schema || len(row.Values) != f {
			return tensor.Tensor{}, fmt.Errorf("infer: row %d is not laid out by this model's schema", r)
		}
		out := data[r*f : (r+1)*f]
		for j, v := range row.Values {
			x := float32(v)
			if math.IsNaN(v) || math.IsInf(float64(x), 0) {
				return tensor.Tensor{}, &FeatureError{Code: CodeInvalidValue, Row: r, Feature: p.features[j], Step: -1, Value: v}
			}
			out[j] = x
		}
	}
	return tensor.New(tensor.Shape{int64(n), int64(f)}, data)
}

// Output returns the index of the output Decode reads among the model's
// outputs.
func (p *Predictor) Output() int { return p.out }

// SeqLen returns the number of time steps of a sequence model, 0 for a
// tabular model and -1 when each call's rows set it.
func (p *Predictor) SeqLen() int { return p.seqLen }

// Session returns the session the predictor runs.
func (p *Predictor) Session() Session { return p.sess }

// Encode validates rows and packs them into the model's input tensor:
// [N,F] for tabular models, [N,T,F] for sequence models. Errors are
// *FeatureError, reporting the first bad row: all of its missing features,
// or the first bad value.
func (p *Predictor) Encode(rows []Row) (tensor.Tensor, error) { return EncodeRows(p, rows) }

// RowReader is one row of named features in any representation — a Row, or
// a decoded request type — read without copying it into a Row first.
type RowReader interface {
	// Len is the number of features in the row.
	Len() int
	// Values returns a feature's values (one for tabular models, one per
	// time step for sequence models).
	Values(name string) ([]float64, bool)
	// Names yields every feature name of the row (used to name unknown
	// features in errors).
	Names() iter.Seq[string]
}

// Len implements RowReader.
func (r Row) Len() int { return len(r) }

// Values implements RowReader.
func (r Row) Values(name string) ([]float64, bool) { v, ok := r[name]; return v, ok }

// Names implements RowReader.
func (r Row) Names() iter.Seq[string] { return maps.Keys(r) }

// EncodeRows is Encode for rows of any RowReader type.
func EncodeRows[R RowReader](p *Predictor, rows []R) (tensor.Tensor, error) {
	n := len(rows)
	switch {
	case n == 0:
		return tensor.Tensor{}, &FeatureError{Code: CodeRowCount, Row: -1, Step: -1}
	case p.fixed > 0 && n != p.fixed:
		return tensor.Tensor{}, &FeatureError{Code: CodeRowCount, Row: -1, Step: -1, Got: n, Want: p.fixed, fixedBatch: true}
	case n > p.maxRows:
		return tensor.Tensor{}, &FeatureError{Code: CodeRowCount, Row: -1, Step: -1, Got: n, Want: p.maxRows}
	}
	f := len(p.features)
	steps := 1
	switch {
	case p.seqLen > 0:
		steps = p.seqLen
	case p.seqLen < 0:
		// Dynamic time axis: the first row's first feature sets it.
		if err := p.checkNames(0, rows[0]); err != nil {
			return tensor.Tensor{}, err
		}
		first, _ := rows[0].Values(p.features[0])
		steps = len(first)
		if steps == 0 {
			return tensor.Tensor{}, &FeatureError{Code: CodeSequenceLength, Row: 0, Feature: p.features[0], Step: -1}
		}
	}
	data := make([]float32, n*steps*f)
	for r, row := range rows {
		if err := p.checkNames(r, row); err != nil {
			return tensor.Tensor{}, err
		}
		base := r * steps * f
		for j, name := range p.features {
			vals, _ := row.Values(name)
			if len(vals) != steps {
				return tensor.Tensor{}, &FeatureError{Code: CodeSequenceLength, Row: r, Feature: name, Step: -1, Got: len(vals), Want: steps, tabular: p.seqLen == 0}
			}
			for s, v := range vals {
				x := float32(v)
				if math.IsNaN(v) || math.IsInf(float64(x), 0) {
					step := s
					if p.seqLen == 0 {
						step = -1
					}
					return tensor.Tensor{}, &FeatureError{Code: CodeInvalidValue, Row: r, Feature: name, Step: step, Value: v}
				}
				data[base+s*f+j] = x
			}
		}
	}
	shape := tensor.Shape{int64(n), int64(f)}
	if p.seqLen != 0 {
		shape = tensor.Shape{int64(n), int64(steps), int64(f)}
	}
	return tensor.New(shape, data)
}

// checkNames reports every missing and unknown feature of one row.
func (p *Predictor) checkNames(r int, row RowReader) error {
	if row.Len() == len(p.features) {
		all := true
		for _, name := range p.features {
			if _, ok := row.Values(name); !ok {
				all = false
				break
			}
		}
		if all {
			return nil // same count, every model feature present: nothing unknown
		}
	}
	var missing, unknown []string
	for _, name := range p.features {
		if _, ok := row.Values(name); !ok {
			missing = append(missing, name)
		}
	}
	for name := range row.Names() {
		if _, ok := p.index[name]; !ok {
			unknown = append(unknown, name)
		}
	}
	if len(missing) == 0 && len(unknown) == 0 {
		return nil
	}
	slices.Sort(unknown)
	code := CodeMissingFeature
	if len(missing) == 0 {
		code = CodeUnknownFeature
	}
	return &FeatureError{Code: code, Row: r, Step: -1, Missing: missing, Unknown: unknown}
}

// Decode splits the model's outputs into one prediction per row: the
// selected output's values for that row, flattened. The rows share one
// backing array.
func (p *Predictor) Decode(outputs []tensor.Tensor) ([][]float32, error) {
	if p.out >= len(outputs) {
		return nil, fmt.Errorf("infer: %d outputs, want output %d", len(outputs), p.out)
	}
	out := outputs[p.out]
	data := out.Float32s()
	if data == nil || len(out.Shape()) == 0 {
		return nil, fmt.Errorf("infer: output %q is %v %v, want float32 with a batch axis", p.sess.Outputs()[p.out].Name, out.DType(), out.Shape())
	}
	n := out.Len()
	if n == 0 {
		return [][]float32{}, nil
	}
	width := len(data) / n
	preds := make([][]float32, n)
	for i := range preds {
		preds[i] = data[i*width : (i+1)*width : (i+1)*width]
	}
	return preds, nil
}

// Predict encodes rows, runs the model and returns one prediction per row
// (see Decode). Validation errors are *FeatureError (wrapping ErrInput);
// errors from the run are returned as they are.
func (p *Predictor) Predict(ctx context.Context, rows []Row) ([][]float32, error) {
	x, err := p.Encode(rows)
	if err != nil {
		return nil, err
	}
	outs, err := p.sess.Run(ctx, []tensor.Tensor{x})
	if err != nil {
		return nil, err
	}
	preds, err := p.Decode(outs)
	if err != nil {
		return nil, err
	}
	if len(preds) != len(rows) {
		return nil, errors.New("infer: the model returned " + fmt.Sprint(len(preds)) + " rows for " + fmt.Sprint(len(rows)))
	}
	return preds, nil
}
