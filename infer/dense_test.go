package infer

import (
	"errors"
	"math"
	"slices"
	"testing"

	"github.com/signalforge/signalforge/feature"
)

// TestEncodeValues: rows in the model's order encode exactly as the same
// rows by name, and bad values get the same error.
func TestEncodeValues(t *testing.T) {
	p, err := NewPredictor(tabular("a,b,c"), PredictorConfig{})
	if err != nil {
		t.Fatal(err)
	}
	s := p.Schema()
	if got := s.Names(); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("Schema().Names() = %v", got)
	}
	dense := []feature.Row{{Schema: s, Values: []float64{1, 2, 3}}, {Schema: s, Values: []float64{-4, 0.5, 6}}}
	named := []Row{{"a": {1}, "b": {2}, "c": {3}}, {"c": {6}, "b": {0.5}, "a": {-4}}}
	x, err := p.EncodeValues(dense)
	if err != nil {
		t.Fatal(err)
	}
	y, err := p.Encode(named)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(x.Shape(), y.Shape()) || !slices.Equal(x.Float32s(), y.Float32s()) {
		t.Fatalf("EncodeValues = %v %v, Encode = %v %v", x.Shape(), x.Float32s(), y.Shape(), y.Float32s())
	}

	dense[1].Values[1] = math.MaxFloat64
	named[1]["b"] = []float64{math.MaxFloat64}
	_, derr := p.EncodeValues(dense)
	_, nerr := p.Encode(named)
	var fe *FeatureError
	if !errors.As(derr, &fe) || nerr == nil || derr.Error() != nerr.Error() {
		t.Fatalf("out of range: EncodeValues %v, Encode %v", derr, nerr)
	}

	other, _ := feature.NewSchema([]string{"a", "b", "c"})
	if _, err := p.EncodeValues([]feature.Row{{Schema: other, Values: []float64{1, 2, 3}}}); err == nil {
		t.Error("EncodeValues took a row of another schema")
	}
	if _, err := p.EncodeValues(nil); !errors.Is(err, ErrInput) {
		t.Errorf("no rows: err = %v", err)
	}
	seq, err := NewPredictor(sequence("a,b", 3), PredictorConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := seq.EncodeValues([]feature.Row{{Schema: seq.Schema(), Values: []float64{1, 2}}}); !errors.Is(err, ErrNotTabular) {
		t.Errorf("sequence model: err = %v", err)
	}
}
