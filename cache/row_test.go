package cache

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/signalforge/signalforge/feature"
)

// TestKeyOfRow: a row in a model's input order keys exactly as the same
// features by name, whatever the order and the length of the names.
func TestKeyOfRow(t *testing.T) {
	for _, names := range [][]string{
		{"rsi_14", "macd", "vol"},
		{"z", "a", strings.Repeat("long", 200), "m"},
		wideNames(512),
	} {
		s, err := feature.NewSchema(names)
		if err != nil {
			t.Fatal(err)
		}
		vals := make([]float64, len(names))
		m := map[string]float64{}
		for j, n := range names {
			vals[j] = float64(j)*1.5 - 3
			m[n] = vals[j]
		}
		in := base()
		in.Features = m
		want := mustKey(t, in)
		in = base()
		in.Row = feature.Row{Schema: s, Values: vals}
		if got := mustKey(t, in); got != want {
			t.Errorf("%d names: key of row %+v, of map %+v", len(names), got, want)
		}
	}
}

func TestKeyOfRowRefuses(t *testing.T) {
	s, _ := feature.NewSchema([]string{"a", "b"})
	in := base()
	in.Row = feature.Row{Schema: s, Values: []float64{1, math.NaN()}}
	var fe *FeatureError
	if _, err := MakeKey(in); !errors.As(err, &fe) || fe.Name != "b" || !errors.Is(err, ErrNaN) {
		t.Errorf("NaN: err = %v", err)
	}
	in.Row.Values = []float64{1}
	if _, err := MakeKey(in); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("short row: err = %v", err)
	}
	in.Row.Values = []float64{1, 2}
	in.Features = map[string]float64{"c": 1}
	if _, err := MakeKey(in); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("row and map: err = %v", err)
	}
}

func wideNames(n int) []string {
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("f%d", i)
	}
	return names
}
