package api

import (
	"bytes"
	"strconv"
)

// fastFeatures decodes the common shape of a features object —
// {"name": number | [number, …], …} with plain (unescaped) names — without
// reflection or intermediate allocations per value. It reports ok=false for
// anything else (escapes, strings, nulls, malformed input), and the caller
// falls back to the general decoder, which also produces the error
// messages. Decoding 100 features this way is several times faster than
// encoding/json, and feature decoding dominated the server's profile.
func fastFeatures(b []byte) (Features, bool) {
	f, end, ok := featuresAt(b, skipWS(b, 0))
	if !ok || skipWS(b, end) != len(b) {
		return nil, false
	}
	return f, true
}

// featuresAt parses a features object starting at b[i] and returns it and
// the index after its closing brace.
func featuresAt(b []byte, i int) (Features, int, bool) {
	if i >= len(b) || b[i] != '{' {
		return nil, 0, false
	}
	// Size the map from the number of ':' ahead (capped), so that a
	// 100-feature row does not grow it four times.
	hint := 0
	for _, c := range b[i:min(len(b), i+16<<10)] {
		if c == ':' {
			hint++
			if hint == 256 {
				break
			}
		}
	}
	out := make(Features, hint)
	// Scalars share one backing array instead of one allocation each.
	var scalars []float64
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		return out, i + 1, true
	}
	for {
		// key
		if i >= len(b) || b[i] != '"' {
			return nil, 0, false
		}
		j := i + 1
		for j < len(b) && b[j] != '"' {
			if b[j] == '\\' || b[j] < 0x20 || b[j] >= 0x80 {
				return nil, 0, false
			}
			j++
		}
		if j >= len(b) {
			return nil, 0, false
		}
		key := string(b[i+1 : j])
		i = skipWS(b, j+1)
		if i >= len(b) || b[i] != ':' {
			return nil, 0, false
		}
		i = skipWS(b, i+1)
		if i >= len(b) {
			return nil, 0, false
		}
		var v Value
		if b[i] == '[' {
			vals, n, ok := arrayAt(b, i, number)
			if !ok {
				return nil, 0, false
			}
			i = n
			v = Value{Values: vals, Seq: true}
		} else {
			f, n, ok := number(b, i)
			if !ok {
				return nil, 0, false
			}
			if len(scalars) == cap(scalars) {
				scalars = make([]float64, 0, max(hint, 8))
			}
			scalars = append(scalars, f)
			k := len(scalars)
			v = Value{Values: scalars[k-1 : k : k]}
			i = n
		}
		n := len(out)
		out[key] = v
		if len(out) == n { // a repeated name: let the general decoder apply its rule
			return nil, 0, false
		}
		i = skipWS(b, i)
		if i < len(b) && b[i] == ',' {
			i = skipWS(b, i+1)
			continue
		}
		if i < len(b) && b[i] == '}' {
			return out, i + 1, true
		}
		return nil, 0, false
	}
}

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\n' || b[i] == '\t' || b[i] == '\r') {
		i++
	}
	return i
}

// number parses a JSON number starting at b[i], returning the value and
// the index after it.
func number(b []byte, i int) (float64, int, bool) {
	j, ok := ScanNumber(b, i)
	if !ok {
		return 0, 0, false
	}
	f, err := strconv.ParseFloat(string(b[i:j]), 64)
	if err != nil {
		return 0, 0, false // out of range: the general path explains
	}
	return f, j, true
}

// ScanNumber returns the end of the JSON number at b[i] and whether it is
// one by JSON's grammar (no leading zeros, digits after '.' and 'e'). On
// failure the index is where scanning stopped.
func ScanNumber(b []byte, i int) (int, bool) {
	j := i
	if j < len(b) && b[j] == '-' {
		j++
	}
	d := j
	for j < len(b) && b[j] >= '0' && b[j] <= '9' {
		j++
	}
	if j == d || (b[d] == '0' && j-d > 1) {
		return j, false // no digits, or a leading zero JSON forbids
	}
	if j < len(b) && b[j] == '.' {
		j++
		d = j
		for j < len(b) && b[j] >= '0' && b[j] <= '9' {
			j++
		}
		if j == d {
			return j, false
		}
	}
	if j < len(b) && (b[j] == 'e' || b[j] == 'E') {
		j++
		if j < len(b) && (b[j] == '+' || b[j] == '-') {
			j++
		}
		d = j
		for j < len(b) && b[j] >= '0' && b[j] <= '9' {
			j++
		}
		if j == d {
			return j, false
		}
	}
	return j, true
}

// plainString parses a JSON string without escapes or non-ASCII bytes at
// b[i] and returns it and the index after its closing quote.
func plainString(b []byte, i int) (string, int, bool) {
	if i >= len(b) || b[i] != '"' {
		return "", 0, false
	}
	j := i + 1
	for j < len(b) && b[j] != '"' {
		if b[j] == '\\' || b[j] < 0x20 || b[j] >= 0x80 {
			return "", 0, false
		}
		j++
	}
	if j >= len(b) {
		return "", 0, false
	}
	return string(b[i+1 : j]), j + 1, true
}

// fastPredictRequest decodes the common shape of a PredictRequest in one
// pass. Like fastFeatures it gives up (ok=false) on anything unusual —
// unknown or repeated keys, escapes, nulls, fractional integers — and the
// caller then uses encoding/json, which also words the errors.
func fastPredictRequest(b []byte) (PredictRequest, bool) {
	r, _, ok := scanPredictRequest(b, false)
	return r, ok
}

// scanPredictRequest is fastPredictRequest; lazy leaves the rows in the
// body (checked, but not decoded) and returns their spans instead.
func scanPredictRequest(b []byte, lazy bool) (PredictRequest, RawRows, bool) {
	var r PredictRequest
	var raw RawRows
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '{' {
		return r, raw, false
	}
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		return r, raw, skipWS(b, i+1) == len(b)
	}
	seen := 0
	for {
		key, n, ok := plainString(b, i)
		if !ok {
			return r, raw, false
		}
		i = skipWS(b, n)
		if i >= len(b) || b[i] != ':' {
			return r, raw, false
		}
		i = skipWS(b, i+1)
		var bit int
		switch key {
		case "request_id", "ticker", "version":
			s, n, ok := plainString(b, i)
			if !ok {
				return r, raw, false
			}
			switch key {
			case "request_id":
				r.RequestID, bit = s, 1
			case "ticker":
				r.Ticker, bit = s, 2
			default:
				r.Version, bit = s, 4
			}
			i = n
		case "horizon", "timeout_ms":
			f, n, ok := number(b, i)
			if !ok || f > 1<<31 || f < -(1<<31) || bytes.ContainsAny(b[i:n], ".eE") {
				return r, raw, false // integers only, as encoding/json wants for int
			}
			if key == "horizon" {
				r.Horizon, bit = int(f), 8
			} else {
				r.TimeoutMS, bit = int(f), 16
			}
			i = n
		case "no_cache":
			switch {
			case len(b)-i >= 4 && string(b[i:i+4]) == "true":
				r.NoCache, i = true, i+4
			case len(b)-i >= 5 && string(b[i:i+5]) == "false":
				r.NoCache, i = false, i+5
			default:
				return r, raw, false
			}
			bit = 32
		case "features":
			if lazy {
				n, ok := skipFeatures(b, i)
				if !ok {
					return r, raw, false
				}
				raw.one, i, bit = b[i:n], n, 64
				break
			}
			f, n, ok := featuresAt(b, i)
			if !ok {
				return r, raw, false
			}
			r.Features, i, bit = f, n, 64
		case "instances":
			if lazy {
				rows, n, ok := arrayAt(b, i, func(b []byte, i int) ([]byte, int, bool) {
					n, ok := skipFeatures(b, i)
					if !ok {
						return nil, 0, false
					}
					return b[i:n:n], n, true
				})
				if !ok {
					return r, raw, false
				}
				raw.many, raw.isMany, i, bit = rows, true, n, 128
				break
			}
			rows, n, ok := arrayAt(b, i, func(b []byte, i int) (Features, int, bool) { return featuresAt(b, i) })
			if !ok {
				return r, raw, false
			}
			r.Instances, i = rows, n
			bit = 128
		default:
			return r, raw, false
		}
		if seen&bit != 0 {
			return r, raw, false
		}
		seen |= bit
		i = skipWS(b, i)
		if i < len(b) && b[i] == ',' {
			i = skipWS(b, i+1)
			continue
		}
		if i < len(b) && b[i] == '}' {
			return r, raw, skipWS(b, i+1) == len(b)
		}
		return r, raw, false
	}
}

// DecodePredictRequest decodes a native prediction request strictly
// (unknown fields are errors; a repeated key, top-level or a feature name,
// is a *DuplicateKeyError). Common requests take a one-pass fast path;
// everything else, and every error, goes through DecodeJSON, whose errors
// it returns.
func DecodePredictRequest(b []byte) (PredictRequest, error) {
	if r, ok := fastPredictRequest(b); ok {
		return r, nil
	}
	var r PredictRequest
	if err := DecodeJSON(b, &r, true); err != nil {
		return PredictRequest{}, err
	}
	return r, nil
}

// arrayAt parses a JSON array at b[i] whose items elem parses, and returns
// the items (never nil) and the index after the closing bracket.
func arrayAt[T any](b []byte, i int, elem func(b []byte, i int) (T, int, bool)) ([]T, int, bool) {
	if i >= len(b) || b[i] != '[' {
		return nil, 0, false
	}
	out := make([]T, 0, 8)
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == ']' {
		return out, i + 1, true
	}
	for {
		v, n, ok := elem(b, i)
		if !ok {
			return nil, 0, false
		}
		out = append(out, v)
		i = skipWS(b, n)
		switch {
		case i < len(b) && b[i] == ',':
			i = skipWS(b, i+1)
		case i < len(b) && b[i] == ']':
			return out, i + 1, true
		default:
			return nil, 0, false
		}
	}
}
