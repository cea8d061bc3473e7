package api

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"testing"

	"github.com/signalforge/signalforge/feature"
)

// checkRow decodes b both ways: if DecodeRow accepts it, the general
// decoder must too, with exactly s's features and the same values.
func checkRow(t *testing.T, s *feature.Schema, b []byte) bool {
	t.Helper()
	dst := make([]float64, s.Len())
	if !DecodeRow(b, s, dst) {
		return false
	}
	var f Features
	if err := f.UnmarshalJSON(b); err != nil {
		t.Fatalf("%q: DecodeRow accepted, the general decoder: %v", b, err)
	}
	if err := CheckDuplicateKeys(b); err != nil {
		t.Fatalf("%q: DecodeRow accepted a repeated name: %v", b, err)
	}
	if len(f) != s.Len() {
		t.Fatalf("%q: DecodeRow accepted %d names for %d features", b, len(f), s.Len())
	}
	for j, v := range dst {
		got, ok := f[s.Name(j)]
		if !ok || got.Seq || len(got.Values) != 1 || got.Values[0] != v {
			t.Fatalf("%q: feature %q = %v, general decoder %+v", b, s.Name(j), v, got)
		}
	}
	return true
}

func TestDecodeRow(t *testing.T) {
	s, err := feature.NewSchema([]string{"rsi_14", "macd", "vol"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{`{"rsi_14":65,"macd":0.5,"vol":-1e3}`, true},
		{` { "vol" : 2 , "rsi_14":65.25,"macd":0 } `, true},
		{`{"macd":0.5,"vol":1,"rsi_14":-0}`, true},
		{`{"rsi_14":65,"macd":0.5}`, false},                    // missing
		{`{"rsi_14":65,"macd":0.5,"vol":1,"x":2}`, false},      // unknown
		{`{"rsi_14":65,"macd":0.5,"vol":1,"macd":2}`, false},   // repeated
		{`{"rsi_14":65,"macd":0.5,"vol":1,"rsi_14":2}`, false}, // repeated after the whole schema
		{`{"rsi_14":[65],"macd":0.5,"vol":1}`, false},          // array
		{`{"rsi_14":1e400,"macd":0.5,"vol":1}`, false},         // out of range
		{`{"rsi_14":"NaN","macd":0.5,"vol":1}`, false},         // string
		{`{"rsi_\u0031\u0034":65,"macd":0.5,"vol":1}`, false},  // escape
		{`{"rsi_14":065,"macd":0.5,"vol":1}`, false},           // leading zero
		{`{"rsi_14":65,"macd":0.5,"vol":1,}`, false},           // trailing comma
		{`{"rsi_14":65,"macd":0.5,"vol":1} x`, false},          // trailing data
		{`{"rsi_14":65,"macd":0.5,"vol":null}`, false},         // null
		{`{}`, false},
		{``, false},
	} {
		if got := checkRow(t, s, []byte(tc.in)); got != tc.ok {
			t.Errorf("%s: DecodeRow = %v, want %v", tc.in, got, tc.ok)
		}
	}
}

// TestDecodeRowWide covers schemas past the 512 features whose seen-set
// lives on the stack.
func TestDecodeRowWide(t *testing.T) {
	for _, n := range []int{63, 64, 65, 512, 513, 1000} {
		s, body := wideRow(n)
		if !checkRow(t, s, body) {
			t.Errorf("%d features: DecodeRow refused a valid row", n)
		}
		dup := strings.Replace(string(body), `"f0":`, fmt.Sprintf(`"f%d":`, n-1), 1)
		if checkRow(t, s, []byte(dup)) {
			t.Errorf("%d features: DecodeRow accepted a repeated name", n)
		}
	}
}

func wideRow(n int) (*feature.Schema, []byte) {
	names := make([]string, n)
	var b strings.Builder
	b.WriteByte('{')
	for i := range names {
		names[i] = fmt.Sprintf("f%d", i)
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"f%d":%.4f`, i, float64(i)*0.37-5)
	}
	b.WriteByte('}')
	s, err := feature.NewSchema(names)
	if err != nil {
		panic(err)
	}
	return s, []byte(b.String())
}

func TestScanPredictRequest(t *testing.T) {
	for _, in := range []string{
		`{"request_id":"req_123","ticker":"AAPL","horizon":5,"features":{"rsi_14":65.0,"macd":0.5}}`,
		`{"instances":[{"a":1},{"a":[1,2]}],"version":"v2","timeout_ms":50,"no_cache":true}`,
		`{"features":{"a":1},"instances":[]}`, `{"features":{"a":[]}}`, `{"features":{"a":[1,}}`,
		`{"features":{"a":1} `, `{"features":{"a":1}} x`, `{"instances":[{"a":1},]}`, `{}`,
	} {
		checkScan(t, []byte(in))
	}
	req, rows, ok := ScanPredictRequest([]byte(`{"ticker":"AAPL","features":{"b":2,"a":1},"request_id":"r"}`))
	if !ok || req.Ticker != "AAPL" || req.RequestID != "r" || !rows.HasFeatures() || rows.HasInstances() || rows.Len() != 1 {
		t.Fatalf("ScanPredictRequest = %+v, %+v, %v", req, rows, ok)
	}
	s, _ := feature.NewSchema([]string{"a", "b"})
	dense, ok := rows.Decode(s)
	if !ok || len(dense) != 1 || dense[0].Values[0] != 1 || dense[0].Values[1] != 2 {
		t.Fatalf("Decode = %+v, %v", dense, ok)
	}
	_, rows, _ = ScanPredictRequest([]byte(`{"instances":[{"a":1,"b":2},{"b":4,"a":3}]}`))
	dense, ok = rows.Decode(s)
	if !ok || len(dense) != 2 || dense[1].Values[0] != 3 || dense[1].Values[1] != 4 {
		t.Fatalf("Decode = %+v, %v", dense, ok)
	}
	_, rows, _ = ScanPredictRequest([]byte(`{"instances":[{"a":1,"b":2},{"b":4}]}`))
	if _, ok := rows.Decode(s); ok {
		t.Fatal("Decode accepted a row without feature a")
	}
}

// checkScan: whatever ScanPredictRequest accepts, the general decoder
// accepts with the same fields and row count.
func checkScan(t *testing.T, b []byte) {
	t.Helper()
	req, rows, ok := ScanPredictRequest(b)
	if !ok {
		return
	}
	gen, err := generalPredictRequest(b)
	if err != nil {
		t.Fatalf("%q: ScanPredictRequest accepted, encoding/json: %v", b, err)
	}
	req.Features, req.Instances = gen.Features, gen.Instances
	if !samePredictRequest(req, gen) {
		t.Fatalf("%q: scan %+v, encoding/json %+v", b, req, gen)
	}
	if rows.HasFeatures() != (gen.Features != nil) || rows.HasInstances() != (gen.Instances != nil) || rows.Len() != len(gen.Rows()) {
		t.Fatalf("%q: rows %+v, encoding/json %+v", b, rows, gen)
	}
}

func FuzzScanPredictRequest(f *testing.F) {
	f.Add([]byte(`{"request_id":"r","ticker":"AAPL","horizon":5,"features":{"rsi_14":65.0,"macd":[0.5]}}`))
	f.Add([]byte(`{"instances":[{"a":1},{"b":2,"a":1}],"no_cache":false,"timeout_ms":-3}`))
	f.Fuzz(func(t *testing.T, b []byte) { checkScan(t, b) })
}

func FuzzDecodeRow(f *testing.F) {
	s, err := feature.NewSchema([]string{"a", "b", "rsi_14"})
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte(`{"a":1,"b":-2.5e3,"rsi_14":65}`))
	f.Add([]byte(`{"rsi_14":65,"a":0,"b":1,"a":2}`))
	f.Add([]byte(`{"a":1,"b":2}`))
	f.Fuzz(func(t *testing.T, b []byte) { checkRow(t, s, b) })
}

// BenchmarkDecodeRequest decodes the request body the load benchmark sends
// (n features named f0…, a ticker, a horizon and a request id) the two
// ways the server can: "maps" is DecodePredictRequest, which the server
// used for every request and still uses for requests of unusual shape;
// "row" is ScanPredictRequest and Decode into the model's input row.
func BenchmarkDecodeRequest(b *testing.B) {
	for _, n := range []int{100, 512} {
		s, feats := wideRow(n)
		body := []byte(`{"ticker":"AAPL","horizon":5,"features":` + string(feats) + `,"request_id":"req_12345"}`)
		b.Run(fmt.Sprintf("maps/%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := DecodePredictRequest(body); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("row/%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_, rows, ok := ScanPredictRequest(body)
				if !ok {
					b.Fatal("scan refused")
				}
				if _, ok := rows.Decode(s); !ok {
					b.Fatal("decode refused")
				}
			}
		})
	}
}

func TestScanFloat(t *testing.T) {
	for _, in := range []string{"0", "-0", "1", "-1", "65.0", "0.1", "0.3", "123456789012345", "1234567890123456",
		"9007199254740993", "1e22", "1e23", "1.5e-22", "1e-23", "4.9406564584124654e-324", "1.7976931348623157e308",
		"0.000001", "-12.5E+3", "123456.789012345", "1e-400", "99999999999999999999999"} {
		want, err := strconv.ParseFloat(in, 64)
		got, n, ok := scanFloat([]byte(in), 0)
		if err != nil || !ok || n != len(in) || math.Float64bits(got) != math.Float64bits(want) {
			t.Errorf("scanFloat(%s) = %v, %d, %v; ParseFloat %v, %v", in, got, n, ok, want, err)
		}
	}
	for _, in := range []string{"", "-", "01", "1.", ".5", "1e", "1e+", "+1", "1e400", "-1e400"} {
		if _, _, ok := scanFloat([]byte(in), 0); ok {
			t.Errorf("scanFloat(%q) accepted", in)
		}
	}
}

func FuzzScanFloat(f *testing.F) {
	f.Add([]byte("65.25"))
	f.Add([]byte("-1.5e-7"))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, n, ok := scanFloat(b, 0)
		end, valid := ScanNumber(b, 0)
		if !valid {
			if ok {
				t.Fatalf("%q: scanFloat accepted what ScanNumber refuses", b)
			}
			return
		}
		want, err := strconv.ParseFloat(string(b[:end]), 64)
		if err != nil {
			if ok {
				t.Fatalf("%q: scanFloat accepted, ParseFloat: %v", b, err)
			}
			return
		}
		if !ok || n != end || math.Float64bits(got) != math.Float64bits(want) {
			t.Fatalf("%q: scanFloat = %v, %d, %v; ParseFloat %v (end %d)", b, got, n, ok, want, end)
		}
	})
}
