package infer

import (
	"context"
	"errors"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/signalforge/signalforge/tensor"
)

// fakeSession is an in-memory Session: its one output is, per row, the sum
// of the input row's values times 1, 2, 3, ... by position (so a wrong
// feature order changes the result). It records the shapes it ran with.
type fakeSession struct {
	in   IOInfo
	out  IOInfo
	meta map[string]string
	runs []tensor.Shape
}

func (f *fakeSession) Inputs() []IOInfo            { return []IOInfo{f.in} }
func (f *fakeSession) Outputs() []IOInfo           { return []IOInfo{f.out} }
func (f *fakeSession) Metadata() map[string]string { return f.meta }
func (f *fakeSession) Close() error                { return nil }
func (f *fakeSession) Run(ctx context.Context, in []tensor.Tensor) ([]tensor.Tensor, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := CheckInputs(f.Inputs(), in); err != nil {
		return nil, err
	}
	f.runs = append(f.runs, in[0].Shape().Clone())
	x := in[0].Float32s()
	n := in[0].Len()
	width := len(x) / max(n, 1)
	out := make([]float32, n)
	for r := range n {
		for i, v := range x[r*width : (r+1)*width] {
			out[r] += v * float32(i+1)
		}
	}
	return []tensor.Tensor{tensor.Must(tensor.Shape{int64(n), 1}, out)}, nil
}

func tabular(features string) *fakeSession {
	return &fakeSession{
		in:   IOInfo{Name: "x", DType: tensor.Float32, Shape: tensor.Shape{-1, int64(len(strings.Split(features, ",")))}, DimNames: []string{"batch", ""}, BatchAxis: 0},
		out:  IOInfo{Name: "y", DType: tensor.Float32, Shape: tensor.Shape{-1, 1}, DimNames: []string{"batch", ""}, BatchAxis: 0},
		meta: map[string]string{FeaturesMetadataKey: features},
	}
}

func sequence(features string, steps int64) *fakeSession {
	s := tabular(features)
	s.in.Shape = tensor.Shape{-1, steps, s.in.Shape[1]}
	s.in.DimNames = []string{"batch", "", ""}
	return s
}

func TestPredictTabular(t *testing.T) {
	p, err := NewPredictor(tabular("rsi_14, macd,volume"), PredictorConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Features(); !slices.Equal(got, []string{"rsi_14", "macd", "volume"}) {
		t.Errorf("Features = %q", got)
	}
	preds, err := p.Predict(context.Background(), []Row{
		{"macd": {0.5}, "rsi_14": {65}, "volume": {2}},
		{"volume": {1}, "rsi_14": {1}, "macd": {1}},
	})
	if err != nil {
		t.Fatal(err)
	}
	// 65*1 + 0.5*2 + 2*3 = 72; 1+2+3 = 6.
	if len(preds) != 2 || !slices.Equal(preds[0], []float32{72}) || !slices.Equal(preds[1], []float32{6}) {
		t.Errorf("Predict = %v, want [[72] [6]]", preds)
	}
}

func TestPredictSequence(t *testing.T) {
	sess := sequence("a,b", 3)
	p, err := NewPredictor(sess, PredictorConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if p.SeqLen() != 3 {
		t.Errorf("SeqLen = %d, want 3", p.SeqLen())
	}
	x, err := p.Encode([]Row{{"a": {1, 2, 3}, "b": {10, 20, 30}}})
	if err != nil {
		t.Fatal(err)
	}
	// [N,T,F]: time steps outer, features inner.
	if !x.Shape().Equal(tensor.Shape{1, 3, 2}) || !slices.Equal(x.Float32s(), []float32{1, 10, 2, 20, 3, 30}) {
		t.Errorf("Encode = %v %v", x.Shape(), x.Float32s())
	}
	preds, err := p.Predict(context.Background(), []Row{{"a": {1, 2, 3}, "b": {10, 20, 30}}})
	if err != nil {
		t.Fatal(err)
	}
	if want := float32(1*1 + 10*2 + 2*3 + 20*4 + 3*5 + 30*6); len(preds) != 1 || preds[0][0] != want {
		t.Errorf("Predict = %v, want [[%v]]", preds, want)
	}
}

func TestPredictDynamicSeqLen(t *testing.T) {
	p, err := NewPredictor(sequence("a,b", -1), PredictorConfig{})
	if err != nil {
		t.Fatal(err)
	}
	x, err := p.Encode([]Row{{"a": {1, 2}, "b": {3, 4}}, {"a": {5, 6}, "b": {7, 8}}})
	if err != nil {
		t.Fatal(err)
	}
	if !x.Shape().Equal(tensor.Shape{2, 2, 2}) {
		t.Errorf("shape %v, want [2,2,2]", x.Shape())
	}
	p2, err := NewPredictor(sequence("a,b", -1), PredictorConfig{SeqLen: 4})
	if err != nil || p2.SeqLen() != 4 {
		t.Fatalf("SeqLen config: %v, %d", err, p2.SeqLen())
	}
}

// TestFeatureErrors checks every validation error's exact message.
func TestFeatureErrors(t *testing.T) {
	tab := tabular("rsi_14,macd,volume")
	seq := sequence("rsi_14,macd", 4)
	fixed := tabular("a,b")
	fixed.in.Shape, fixed.in.DimNames, fixed.in.BatchAxis = tensor.Shape{1, 2}, nil, -1
	dyn := sequence("a,b", -1)
	ok := Row{"rsi_14": {65}, "macd": {0.5}, "volume": {2}}
	seqOK := Row{"rsi_14": {1, 2, 3, 4}, "macd": {1, 2, 3, 4}}
	many := make([]Row, 5)
	for i := range many {
		many[i] = ok
	}

	for _, c := range []struct {
		name string
		sess Session
		cfg  PredictorConfig
		rows []Row
		code string
		msg  string
	}{
		{"no rows", tab, PredictorConfig{}, nil, CodeRowCount, "no rows: at least 1 is needed"},
		{"too many rows", tab, PredictorConfig{MaxRows: 4}, many, CodeRowCount, "too many rows: 5 (at most 4 per request)"},
		{"fixed batch", fixed, PredictorConfig{}, []Row{{"a": {1}, "b": {2}}, {"a": {1}, "b": {2}}}, CodeRowCount, "wrong number of rows: 2 (the model takes exactly 1)"},
		{"one missing", tab, PredictorConfig{}, []Row{{"rsi_14": {1}, "volume": {1}}}, CodeMissingFeature, "row 0: missing feature: macd"},
		{"all missing, model order", tab, PredictorConfig{}, []Row{ok, {}}, CodeMissingFeature, "row 1: missing features: rsi_14, macd, volume"},
		{"missing and unknown", tab, PredictorConfig{}, []Row{{"rsi14": {1}, "macd": {1}, "volume": {1}}}, CodeMissingFeature, "row 0: missing feature: rsi_14; unknown feature: rsi14"},
		{"unknown, sorted", tab, PredictorConfig{}, []Row{{"rsi_14": {1}, "macd": {1}, "volume": {1}, "zeta": {1}, "alpha": {2}}}, CodeUnknownFeature, "row 0: unknown features: alpha, zeta"},
		{"NaN", tab, PredictorConfig{}, []Row{ok, ok, {"rsi_14": {1}, "macd": {math.NaN()}, "volume": {1}}}, CodeInvalidValue, `row 2: feature "macd" is NaN`},
		{"+Inf", tab, PredictorConfig{}, []Row{{"rsi_14": {math.Inf(1)}, "macd": {1}, "volume": {1}}}, CodeInvalidValue, `row 0: feature "rsi_14" is +Inf`},
		{"-Inf", tab, PredictorConfig{}, []Row{{"rsi_14": {1}, "macd": {1}, "volume": {math.Inf(-1)}}}, CodeInvalidValue, `row 0: feature "volume" is -Inf`},
		{"beyond float32", tab, PredictorConfig{}, []Row{{"rsi_14": {1}, "macd": {1}, "volume": {1e39}}}, CodeInvalidValue, `row 0: feature "volume" is 1e+39, outside the float32 range`},
		{"NaN in a sequence", seq, PredictorConfig{}, []Row{{"rsi_14": {1, 2, 3, 4}, "macd": {1, 2, math.NaN(), 4}}}, CodeInvalidValue, `row 0: feature "macd" at time step 2 is NaN`},
		{"array for a tabular model", tab, PredictorConfig{}, []Row{{"rsi_14": {1, 2}, "macd": {1}, "volume": {1}}}, CodeSequenceLength, `row 0: feature "rsi_14" has 2 values, want 1`},
		{"empty value list", tab, PredictorConfig{}, []Row{{"rsi_14": {1}, "macd": {}, "volume": {1}}}, CodeSequenceLength, `row 0: feature "macd" has 0 values, want 1`},
		{"short sequence", seq, PredictorConfig{}, []Row{seqOK, {"rsi_14": {1, 2, 3, 4}, "macd": {1, 2, 3}}}, CodeSequenceLength, `row 1: feature "macd" has 3 time steps, want 4`},
		{"scalar for a sequence model", seq, PredictorConfig{}, []Row{{"rsi_14": {1}, "macd": {1, 2, 3, 4}}}, CodeSequenceLength, `row 0: feature "rsi_14" has 1 time step, want 4`},
		{"dynamic length mismatch", dyn, PredictorConfig{}, []Row{{"a": {1, 2}, "b": {1, 2}}, {"a": {1, 2, 3}, "b": {1, 2, 3}}}, CodeSequenceLength, `row 1: feature "a" has 3 time steps, want 2`},
		{"dynamic length zero", dyn, PredictorConfig{}, []Row{{"a": {}, "b": {}}}, CodeSequenceLength, `row 0: feature "a" has 0 time steps, want at least 1`},
		{"dynamic, first row missing", dyn, PredictorConfig{}, []Row{{"b": {1}}}, CodeMissingFeature, "row 0: missing feature: a"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, err := NewPredictor(c.sess, c.cfg)
			if err != nil {
				t.Fatal(err)
			}
			_, err = p.Predict(context.Background(), c.rows)
			var fe *FeatureError
			if !errors.As(err, &fe) {
				t.Fatalf("Predict = %v, want a *FeatureError", err)
			}
			if !errors.Is(err, ErrInput) {
				t.Errorf("error does not wrap ErrInput")
			}
			if fe.Code != c.code {
				t.Errorf("Code = %q, want %q", fe.Code, c.code)
			}
			if err.Error() != c.msg {
				t.Errorf("message\n got: %s\nwant: %s", err, c.msg)
			}
		})
	}
}

func TestFeatureErrorFields(t *testing.T) {
	p, err := NewPredictor(tabular("a,b,c"), PredictorConfig{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.Encode([]Row{{"a": {1}, "b": {2}, "c": {3}}, {"b": {1}, "x": {1}}})
	var fe *FeatureError
	if !errors.As(err, &fe) {
		t.Fatalf("Encode = %v", err)
	}
	if fe.Row != 1 || !slices.Equal(fe.Missing, []string{"a", "c"}) || !slices.Equal(fe.Unknown, []string{"x"}) {
		t.Errorf("FeatureError = %+v, want Row 1, Missing [a c], Unknown [x]", fe)
	}
}

func TestNewPredictorErrors(t *testing.T) {
	noMeta := tabular("a,b")
	noMeta.meta = nil
	twoIn := &twoInputs{tabular("a,b")}
	intIn := tabular("a,b")
	intIn.in.DType = tensor.Int64
	rank4 := tabular("a,b")
	rank4.in.Shape = tensor.Shape{-1, 1, 1, 2}
	intOut := tabular("a,b")
	intOut.out.DType = tensor.Int64
	for _, c := range []struct {
		name string
		sess Session
		cfg  PredictorConfig
		msg  string
	}{
		{"no feature names", noMeta, PredictorConfig{}, "infer: the model does not name its features: set PredictorConfig.Features or the model's signalforge.features metadata"},
		{"wrong feature count", tabular("a,b"), PredictorConfig{Features: []string{"a"}}, `infer: 1 feature names for input "x" of shape [batch,2]`},
		{"duplicate feature", tabular("a,b"), PredictorConfig{Features: []string{"a", "a"}}, `infer: feature "a" is listed twice`},
		{"empty feature name", tabular("a,b"), PredictorConfig{Features: []string{"a", ""}}, "infer: feature 1 has an empty name"},
		{"two inputs", twoIn, PredictorConfig{}, "infer: predictor needs a model with one input, this one has 2"},
		{"int input", intIn, PredictorConfig{}, `infer: predictor needs a float32 input, "x" is int64`},
		{"rank 4", rank4, PredictorConfig{}, `infer: predictor needs an input of shape [N,F] or [N,T,F], "x" is [batch,1,1,2]`},
		{"unknown output", tabular("a,b"), PredictorConfig{Output: "z"}, `infer: the model has no output "z"`},
		{"int output", intOut, PredictorConfig{}, `infer: predictor needs a float32 output, "y" is int64`},
		{"SeqLen on tabular", tabular("a,b"), PredictorConfig{SeqLen: 3}, `infer: SeqLen set, but input "x" of shape [batch,2] is tabular`},
		{"SeqLen disagrees", sequence("a,b", 4), PredictorConfig{SeqLen: 3}, `infer: SeqLen 3, but input "x" has 4 time steps`},
		{"negative MaxRows", tabular("a,b"), PredictorConfig{MaxRows: -1}, "infer: MaxRows -1 is negative"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := NewPredictor(c.sess, c.cfg)
			if err == nil || err.Error() != c.msg {
				t.Errorf("NewPredictor = %v\nwant: %s", err, c.msg)
			}
		})
	}
}

type twoInputs struct{ *fakeSession }

func (s *twoInputs) Inputs() []IOInfo { return []IOInfo{s.in, s.in} }

func TestPredictorConfigFeaturesOverrideMetadata(t *testing.T) {
	p, err := NewPredictor(tabular("a,b"), PredictorConfig{Features: []string{"x1", "x2"}})
	if err != nil {
		t.Fatal(err)
	}
	preds, err := p.Predict(context.Background(), []Row{{"x1": {1}, "x2": {2}}})
	if err != nil || preds[0][0] != 5 {
		t.Errorf("Predict = %v, %v; want [[5]]", preds, err)
	}
}

func TestPredictPassesRunErrors(t *testing.T) {
	p, err := NewPredictor(tabular("a"), PredictorConfig{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := p.Predict(ctx, []Row{{"a": {1}}}); !errors.Is(err, context.Canceled) {
		t.Errorf("Predict with cancelled ctx = %v, want context.Canceled", err)
	}
}

// FuzzEncode: rows come from request JSON. Encode must never panic, and
// what it accepts must be a finite [N,F] tensor holding the rows' values.
func FuzzEncode(f *testing.F) {
	f.Add(1, "a", 1.0, "b", 2.0)
	f.Add(2, "a", math.NaN(), "c", 1e39)
	f.Add(0, "", 0.0, "b", -1.0)
	p, err := NewPredictor(tabular("a,b"), PredictorConfig{MaxRows: 8})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, n int, k1 string, v1 float64, k2 string, v2 float64) {
		n = n % 12
		if n < 0 {
			n = -n
		}
		rows := make([]Row, n)
		for i := range rows {
			rows[i] = Row{k1: {v1}, k2: {v2}}
		}
		x, err := p.Encode(rows)
		if err != nil {
			var fe *FeatureError
			if !errors.As(err, &fe) || fe.Error() == "" {
				t.Fatalf("Encode error %v is not a *FeatureError with a message", err)
			}
			return
		}
		if !x.Shape().Equal(tensor.Shape{int64(n), 2}) {
			t.Fatalf("shape %v for %d rows", x.Shape(), n)
		}
		for _, v := range x.Float32s() {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				t.Fatalf("Encode accepted a non-finite value: %v", x.Float32s())
			}
		}
	})
}
