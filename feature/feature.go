// Package feature holds the row of named features a tabular model takes,
// laid out in the model's input order: the one representation the request
// decoder (api) writes, the predictor (infer) encodes and the prediction
// cache (cache) hashes, so that a request's features are parsed once and
// never pass through a map.
//
//	s, _ := feature.NewSchema([]string{"rsi_14", "macd"})
//	row := feature.Row{Schema: s, Values: []float64{65, 0.5}}
//	j, _ := s.Index("macd") // 1: row.Values[j] is macd's value
package feature

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Schema is a model's feature names in input order, indexed by name. It is
// immutable and safe for concurrent use; build it once per model.
type Schema struct {
	names  []string
	index  map[string]int
	sorted []int // indices of names in byte-wise ascending name order
}

// ErrSchema is wrapped by NewSchema's errors.
var ErrSchema = errors.New("feature: invalid schema")

// NewSchema indexes names (the model's features in input order). Names
// must be non-empty and distinct.
func NewSchema(names []string) (*Schema, error) {
	s := &Schema{names: slices.Clone(names), index: make(map[string]int, len(names))}
	for i, n := range s.names {
		if n == "" {
			return nil, fmt.Errorf("%w: feature %d has an empty name", ErrSchema, i)
		}
		if _, dup := s.index[n]; dup {
			return nil, fmt.Errorf("%w: feature %q is listed twice", ErrSchema, n)
		}
		s.index[n] = i
	}
	s.sorted = make([]int, len(s.names))
	for i := range s.sorted {
		s.sorted[i] = i
	}
	slices.SortFunc(s.sorted, func(a, b int) int { return strings.Compare(s.names[a], s.names[b]) })
	return s, nil
}

// Len is the number of features.
func (s *Schema) Len() int { return len(s.names) }

// Name returns the name of feature j.
func (s *Schema) Name(j int) string { return s.names[j] }

// Names returns the names in input order.
func (s *Schema) Names() []string { return slices.Clone(s.names) }

// Index returns the input position of a feature name.
func (s *Schema) Index(name string) (int, bool) {
	j, ok := s.index[name]
	return j, ok
}

// IndexBytes is Index for a name still in the request body; it does not
// allocate.
func (s *Schema) IndexBytes(name []byte) (int, bool) {
	j, ok := s.index[string(name)]
	return j, ok
}

// Sorted returns the input positions of the features in byte-wise
// ascending name order (the order cache keys hash them in). The caller
// must not modify it.
func (s *Schema) Sorted() []int { return s.sorted }

// Row is one row of a tabular model's input: Values[j] is the value of
// feature Schema.Name(j), and every feature has one.
type Row struct {
	Schema *Schema
	Values []float64
}

// Value returns the value of a named feature.
func (r Row) Value(name string) (float64, bool) {
	j, ok := r.Schema.Index(name)
	if !ok {
		return 0, false
	}
	return r.Values[j], true
}
