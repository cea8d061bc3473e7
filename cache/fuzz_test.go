package cache

import (
	"math"
	"strings"
	"testing"
)

// FuzzDecodeValue: stored values come from a store other programs can
// write to. Decoding never panics, and what decodes re-encodes to a value
// that decodes the same.
func FuzzDecodeValue(f *testing.F) {
	f.Add(EncodeValue(nil, Value{Predictions: [][]float32{{1, 2}, {3}}}))
	f.Add([]byte{valueFormat, 0, 0})
	f.Add([]byte{valueFormat, 0x80, 0x00, 1, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := DecodeValue(b)
		if err != nil {
			return
		}
		v2, err := DecodeValue(EncodeValue(nil, v))
		if err != nil {
			t.Fatalf("re-encoded value does not decode: %v", err)
		}
		if !v2.CreatedAt.Equal(v.CreatedAt) || len(v2.Predictions) != len(v.Predictions) {
			t.Fatalf("round trip changed the value")
		}
		for i := range v.Predictions {
			for j := range v.Predictions[i] {
				if math.Float32bits(v.Predictions[i][j]) != math.Float32bits(v2.Predictions[i][j]) {
					t.Fatalf("round trip changed [%d][%d]", i, j)
				}
			}
		}
	})
}

// FuzzParseStoreKey: keys come back from SCAN. A key that parses is
// exactly the key storeKey makes from its parts.
func FuzzParseStoreKey(f *testing.F) {
	f.Add("sf:pred:lstm_model:v2.0:g3f:AAPL:5:0123456789abcdef0123456789abcdef")
	f.Add("sf:pred:m:v:g0:_:0:0123456789abcdef0123456789abcdef")
	f.Add("sf:pred:m:v:g1:A:05:0123456789abcdef0123456789abcdef")
	f.Fuzz(func(t *testing.T, s string) {
		p, ok := parseStoreKey("sf", s)
		if !ok {
			return
		}
		k := Key{Model: p.model, Version: p.version, Ticker: p.ticker, Horizon: p.horizon, Hash: p.hash}
		if back := storeKey("sf", k, p.gen); back != s {
			t.Fatalf("parseStoreKey(%q) = %+v, which lays out as %q", s, p, back)
		}
	})
}

// FuzzMatch: patterns come from operators (InvalidatePattern). Match never
// panics or runs away, a pattern matches itself once its specials are
// escaped, and "*" matches everything.
func FuzzMatch(f *testing.F) {
	f.Add("h[a-z]llo*", "hello world")
	f.Add("a[\\", "a\\")
	f.Add("[^", "x")
	f.Add("**********************a", strings.Repeat("b", 40))
	f.Fuzz(func(t *testing.T, pattern, s string) {
		_ = Match(pattern, s) // must not panic or hang on any pattern
		var esc strings.Builder
		for i := 0; i < len(s); i++ {
			if strings.IndexByte("*?[]\\", s[i]) >= 0 {
				esc.WriteByte('\\')
			}
			esc.WriteByte(s[i])
		}
		if !Match(esc.String(), s) {
			t.Fatalf("escaped %q does not match itself", s)
		}
		if !Match("*", s) {
			t.Fatalf("* does not match %q", s)
		}
	})
}
