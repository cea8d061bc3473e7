package api

import (
	"strconv"

	"github.com/signalforge/signalforge/feature"
)

// RawRows are the rows of a native prediction request still in the body
// (checked to be objects of plain names and numbers, but not decoded):
// ScanPredictRequest returns them, and Decode writes them straight into a
// model's input rows. They refer to the body, so decode them before the
// body is reused.
type RawRows struct {
	one    []byte   // the "features" object
	many   [][]byte // each object of "instances"
	isMany bool
}

// HasFeatures reports whether the request sent "features" (one row).
func (r RawRows) HasFeatures() bool { return r.one != nil }

// HasInstances reports whether the request sent "instances".
func (r RawRows) HasInstances() bool { return r.isMany }

// Len is the number of rows: of "instances" if sent, else 1 for
// "features", else 0.
func (r RawRows) Len() int {
	switch {
	case r.isMany:
		return len(r.many)
	case r.one != nil:
		return 1
	}
	return 0
}

// ScanPredictRequest reads a native prediction request of the common shape
// — known keys once each, plain (unescaped) strings, integers, features as
// {"name": number | [number, …], …} — leaving its rows in the body: the
// returned request's Features and Instances are nil, and rows holds them.
// ok=false means the request is of another shape or invalid;
// DecodePredictRequest then decodes it and words the error.
func ScanPredictRequest(b []byte) (req PredictRequest, rows RawRows, ok bool) {
	return scanPredictRequest(b, true)
}

// Decode writes every row into the input layout of schema s (a tabular
// model's): one float64 per feature, in s's order, all rows sharing one
// backing array. ok=false if a row is not exactly s's features with one
// number each — a name s lacks, a missing or repeated name, an array, a
// number out of float64 range; decode the request with
// DecodePredictRequest then, whose rows name the problem.
func (r RawRows) Decode(s *feature.Schema) ([]feature.Row, bool) {
	n := r.Len()
	if n == 0 {
		return nil, false
	}
	f := s.Len()
	vals := make([]float64, n*f)
	rows := make([]feature.Row, n)
	for k := range rows {
		obj := r.one
		if r.isMany {
			obj = r.many[k]
		}
		dst := vals[k*f : (k+1)*f : (k+1)*f]
		if !DecodeRow(obj, s, dst) {
			return nil, false
		}
		rows[k] = feature.Row{Schema: s, Values: dst}
	}
	return rows, true
}

// DecodeRow decodes one features object, {"name": number, …}, writing
// feature j's value to dst[j] (j its index in s; len(dst) must be s.Len()).
// It reports false, leaving dst partly written, unless b is exactly that
// object with every feature of s once, plain names and numbers in float64
// range. It allocates nothing; names sent in s's order are matched without
// a lookup.
func DecodeRow(b []byte, s *feature.Schema, dst []float64) bool {
	f := s.Len()
	if len(dst) != f {
		return false
	}
	// seen marks the features written, to refuse repeats; 512 features
	// fit on the stack.
	var small [8]uint64
	seen := small[:]
	if f > 512 {
		seen = make([]uint64, (f+63)/64)
	}
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '{' {
		return false
	}
	i = skipWS(b, i+1)
	count, next := 0, 0
	if i < len(b) && b[i] == '}' {
		return f == 0 && skipWS(b, i+1) == len(b)
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return false
		}
		k := i + 1
		for k < len(b) && b[k] != '"' {
			if b[k] == '\\' || b[k] < 0x20 || b[k] >= 0x80 {
				return false
			}
			k++
		}
		if k >= len(b) {
			return false
		}
		name := b[i+1 : k]
		var j int
		if next < f && s.Name(next) == string(name) {
			j = next // clients usually send the model's order
		} else {
			var ok bool
			if j, ok = s.IndexBytes(name); !ok {
				return false
			}
		}
		if seen[j/64]&(1<<(j%64)) != 0 {
			return false
		}
		seen[j/64] |= 1 << (j % 64)
		count++
		next = j + 1
		i = skipWS(b, k+1)
		if i >= len(b) || b[i] != ':' {
			return false
		}
		i = skipWS(b, i+1)
		v, e, ok := scanFloat(b, i)
		if !ok {
			return false
		}
		dst[j] = v
		i = skipWS(b, e)
		if i < len(b) && b[i] == ',' {
			i = skipWS(b, i+1)
			continue
		}
		if i < len(b) && b[i] == '}' {
			return count == f && skipWS(b, i+1) == len(b)
		}
		return false
	}
}

// skipFeatures checks the features object at b[i] (featuresAt's grammar)
// without decoding it, and returns the index after its closing brace.
func skipFeatures(b []byte, i int) (int, bool) {
	if i >= len(b) || b[i] != '{' {
		return 0, false
	}
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		return i + 1, true
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return 0, false
		}
		k := i + 1
		for k < len(b) && b[k] != '"' {
			if b[k] == '\\' || b[k] < 0x20 || b[k] >= 0x80 {
				return 0, false
			}
			k++
		}
		if k >= len(b) {
			return 0, false
		}
		i = skipWS(b, k+1)
		if i >= len(b) || b[i] != ':' {
			return 0, false
		}
		i = skipWS(b, i+1)
		if i < len(b) && b[i] == '[' {
			i = skipWS(b, i+1)
			if i < len(b) && b[i] == ']' {
				i++
			} else {
				for {
					e, ok := ScanNumber(b, i)
					if !ok {
						return 0, false
					}
					i = skipWS(b, e)
					if i < len(b) && b[i] == ',' {
						i = skipWS(b, i+1)
						continue
					}
					if i < len(b) && b[i] == ']' {
						i++
						break
					}
					return 0, false
				}
			}
		} else {
			e, ok := ScanNumber(b, i)
			if !ok {
				return 0, false
			}
			i = e
		}
		i = skipWS(b, i)
		if i < len(b) && b[i] == ',' {
			i = skipWS(b, i+1)
			continue
		}
		if i < len(b) && b[i] == '}' {
			return i + 1, true
		}
		return 0, false
	}
}

// pow10 holds the powers of ten a float64 represents exactly.
var pow10 = [...]float64{1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
	1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22}

// scanFloat scans and parses the JSON number at b[i] in one pass (the
// grammar of ScanNumber), returning its value and the index after it; ok
// is false if it is not a number or out of float64 range. Numbers of at
// most 15 digits and a power of ten within ±22 — what clients send — are
// one exact float64 multiplication or division, correctly rounded like
// strconv.ParseFloat; the rest go to strconv.ParseFloat.
func scanFloat(b []byte, i int) (float64, int, bool) {
	j := i
	neg := j < len(b) && b[j] == '-'
	if neg {
		j++
	}
	start := j
	var mant uint64
	digits, exp := 0, 0
	for j < len(b) && b[j] >= '0' && b[j] <= '9' {
		mant = mant*10 + uint64(b[j]-'0')
		digits++
		j++
	}
	if j == start || (b[start] == '0' && j-start > 1) {
		return 0, 0, false
	}
	if j < len(b) && b[j] == '.' {
		j++
		d := j
		for j < len(b) && b[j] >= '0' && b[j] <= '9' {
			mant = mant*10 + uint64(b[j]-'0')
			digits++
			exp--
			j++
		}
		if j == d {
			return 0, 0, false
		}
	}
	if j < len(b) && (b[j] == 'e' || b[j] == 'E') {
		j++
		eneg := false
		if j < len(b) && (b[j] == '+' || b[j] == '-') {
			eneg = b[j] == '-'
			j++
		}
		d, e := j, 0
		for j < len(b) && b[j] >= '0' && b[j] <= '9' {
			if e < 1<<20 {
				e = e*10 + int(b[j]-'0')
			}
			j++
		}
		if j == d {
			return 0, 0, false
		}
		if eneg {
			e = -e
		}
		exp += e
	}
	if digits <= 15 && exp >= -22 && exp <= 22 {
		f := float64(mant) // exact: below 10^15 < 2^53
		if exp < 0 {
			f /= pow10[-exp]
		} else {
			f *= pow10[exp]
		}
		if neg {
			f = -f
		}
		return f, j, true
	}
	f, err := strconv.ParseFloat(string(b[i:j]), 64)
	if err != nil {
		return 0, 0, false
	}
	return f, j, true
}
