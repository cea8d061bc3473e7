package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"testing"
)

func TestDecodePredictRequest(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		want    Features
		wantErr string
	}{
		{"scalars", `{"features":{"rsi_14":65,"macd":0.5}}`, Features{"rsi_14": Scalar(65), "macd": Scalar(0.5)}, ""},
		{"sequence", `{"features":{"rsi_14":[1,2.5]}}`, Features{"rsi_14": Sequence(1, 2.5)}, ""},
		{"nan string", `{"features":{"macd":"NaN"}}`, Features{"macd": Scalar(math.NaN())}, ""},
		{"string", `{"features":{"macd":"high"}}`, nil, `feature "macd": invalid feature value: want a number, got the string "high"`},
		{"bool", `{"features":{"macd":true}}`, nil, `feature "macd": invalid feature value: want a number, got a boolean`},
		{"null", `{"features":{"macd":null}}`, nil, `feature "macd": invalid feature value: want a number, got null`},
		{"nested", `{"features":{"macd":[[1]]}}`, nil, `feature "macd": invalid feature value: time step 0: want a number, got a nested array`},
		{"not object", `{"features":[1,2]}`, nil, `invalid feature value: features must be an object of name → number or array of numbers`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var req PredictRequest
			err := json.Unmarshal([]byte(tt.body), &req)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("error = %v, want %q", err, tt.wantErr)
				}
				if !errors.Is(err, ErrValue) {
					t.Fatalf("error %v does not wrap ErrValue", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			rows := req.Rows()
			if len(rows) != 1 {
				t.Fatalf("rows = %d, want 1", len(rows))
			}
			for k, want := range tt.want {
				got := rows[0][k]
				if got.Seq != want.Seq || len(got.Values) != len(want.Values) {
					t.Fatalf("%s = %+v, want %+v", k, got, want)
				}
				for i := range want.Values {
					if g, w := got.Values[i], want.Values[i]; g != w && !(math.IsNaN(g) && math.IsNaN(w)) {
						t.Fatalf("%s[%d] = %v, want %v", k, i, g, w)
					}
				}
			}
		})
	}
}

func TestValueRoundTrip(t *testing.T) {
	in := Features{"a": Scalar(1.5), "b": Sequence(1, 2, 3)}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `{"a":1.5,"b":[1,2,3]}` {
		t.Fatalf("marshal = %s", b)
	}
	var out Features
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if !out["b"].Seq || out["a"].Seq || out["a"].Values[0] != 1.5 {
		t.Fatalf("round trip = %+v", out)
	}
}

func FuzzPredictRequest(f *testing.F) {
	f.Add([]byte(`{"request_id":"r","ticker":"AAPL","horizon":5,"features":{"rsi_14":65.0,"macd":0.5}}`))
	f.Add([]byte(`{"instances":[{"a":[1,2,3]},{"a":"NaN"}]}`))
	f.Add([]byte(`{"features":{"a":[`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var req PredictRequest
		if err := json.Unmarshal(b, &req); err != nil {
			return
		}
		// Whatever decodes must encode again.
		if _, err := json.Marshal(&req); err != nil {
			// NaN cannot be marshalled as a JSON number; that is the
			// only allowed failure.
			for _, row := range req.Rows() {
				for _, v := range row {
					for _, x := range v.Values {
						if math.IsNaN(x) || math.IsInf(x, 0) {
							return
						}
					}
				}
			}
			t.Fatalf("re-encode %q: %v", b, err)
		}
	})
}

// slowFeatures decodes with the general path only.
func slowFeatures(b []byte) (Features, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, err
	}
	out := Features{}
	for k, r := range raw {
		var v Value
		if err := v.UnmarshalJSON(r); err != nil {
			return nil, err
		}
		out[k] = v
	}
	return out, nil
}

func TestFastFeaturesAgreesWithGeneralPath(t *testing.T) {
	for _, in := range []string{
		`{}`, ` { "a" : 1 , "b":[1, 2.5e3,-0.25] } `, `{"a":[]}`, `{"a":-0}`, `{"a":1e400}`, `{"a":01}`,
		`{"a":"NaN"}`, `{"a\u00e9":1}`, `{"a":1,}`, `{"a":1}x`, `{"a":[1,]}`, `{"a":.5}`, `{"a":1.}`, `{"a":1e}`,
		`{"a":1,"a":2}`,
	} {
		fast, ok := fastFeatures([]byte(in))
		slow, err := slowFeatures([]byte(in))
		if !ok {
			continue // the general path decides
		}
		if err != nil {
			t.Errorf("%s: fast path accepted what the general path refuses: %v", in, err)
			continue
		}
		if !sameFeatures(fast, slow) {
			t.Errorf("%s: fast %+v, general %+v", in, fast, slow)
		}
	}
}

func sameFeatures(a, b Features) bool {
	if len(a) != len(b) {
		return false
	}
	for k, va := range a {
		vb, ok := b[k]
		if !ok || va.Seq != vb.Seq || len(va.Values) != len(vb.Values) {
			return false
		}
		for i := range va.Values {
			if va.Values[i] != vb.Values[i] {
				return false
			}
		}
	}
	return true
}

func FuzzFastFeatures(f *testing.F) {
	f.Add([]byte(`{"rsi_14":65.0,"macd":[0.5,1e-3]}`))
	f.Add([]byte(`{"a":-0,"b":[]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		fast, ok := fastFeatures(b)
		if !ok {
			return
		}
		slow, err := slowFeatures(b)
		if err != nil {
			t.Fatalf("%q: fast path accepted, general path: %v", b, err)
		}
		if !sameFeatures(fast, slow) {
			t.Fatalf("%q: fast %+v, general %+v", b, fast, slow)
		}
	})
}

func BenchmarkDecodeFeatures100(b *testing.B) {
	f := Features{}
	for i := range 100 {
		f[fmt.Sprintf("f%02d", i)] = Scalar(float64(i) * 1.25)
	}
	body, _ := json.Marshal(f)
	b.Run("fast", func(b *testing.B) {
		for b.Loop() {
			if _, ok := fastFeatures(body); !ok {
				b.Fatal("fast path refused")
			}
		}
	})
	b.Run("general", func(b *testing.B) {
		for b.Loop() {
			if _, err := slowFeatures(body); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func generalPredictRequest(b []byte) (PredictRequest, error) {
	var r PredictRequest
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return r, err
	}
	if dec.More() {
		return r, ErrTrailing
	}
	return r, nil
}

func samePredictRequest(a, b PredictRequest) bool {
	if a.RequestID != b.RequestID || a.Ticker != b.Ticker || a.Horizon != b.Horizon || a.Version != b.Version ||
		a.TimeoutMS != b.TimeoutMS || a.NoCache != b.NoCache || (a.Features == nil) != (b.Features == nil) ||
		(a.Instances == nil) != (b.Instances == nil) || len(a.Instances) != len(b.Instances) || !sameFeatures(a.Features, b.Features) {
		return false
	}
	for i := range a.Instances {
		if !sameFeatures(a.Instances[i], b.Instances[i]) {
			return false
		}
	}
	return true
}

func TestDecodePredictRequestFastPath(t *testing.T) {
	for _, in := range []string{
		`{"request_id":"req_123","ticker":"AAPL","horizon":5,"features":{"rsi_14":65.0,"macd":0.5}}`,
		`{"instances":[{"a":1},{"a":[1,2]}],"version":"v2","timeout_ms":50,"no_cache":true}`,
		`{"horizon":5.0,"features":{}}`, `{"horizon":1e1}`, `{"ticker":"A\u0042"}`, `{"bogus":1}`,
		`{"features":{"a":1}} x`, `{"instances":[]}`, `{}`,
	} {
		fast, ok := fastPredictRequest([]byte(in))
		gen, err := generalPredictRequest([]byte(in))
		if ok && err != nil {
			t.Errorf("%s: fast path accepted what encoding/json refuses: %v", in, err)
		}
		if ok && !samePredictRequest(fast, gen) {
			t.Errorf("%s: fast %+v, encoding/json %+v", in, fast, gen)
		}
		dec, derr := DecodePredictRequest([]byte(in))
		if (derr == nil) != (err == nil) || (derr == nil && !samePredictRequest(dec, gen)) {
			t.Errorf("%s: DecodePredictRequest = %+v, %v; encoding/json %+v, %v", in, dec, derr, gen, err)
		}
	}
	if _, ok := fastPredictRequest([]byte(`{"request_id":"req_123","ticker":"AAPL","horizon":5,"features":{"rsi_14":65.0}}`)); !ok {
		t.Fatal("the common request shape missed the fast path")
	}
}

func FuzzDecodePredictRequest(f *testing.F) {
	f.Add([]byte(`{"request_id":"r","ticker":"AAPL","horizon":5,"features":{"rsi_14":65.0,"macd":[0.5]}}`))
	f.Add([]byte(`{"instances":[{"a":1}],"no_cache":false,"timeout_ms":-3}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		fast, ok := fastPredictRequest(b)
		if !ok {
			return
		}
		gen, err := generalPredictRequest(b)
		if err != nil {
			t.Fatalf("%q: fast path accepted, encoding/json: %v", b, err)
		}
		if !samePredictRequest(fast, gen) {
			t.Fatalf("%q: fast %+v, encoding/json %+v", b, fast, gen)
		}
	})
}

func BenchmarkDecodePredictRequest100(b *testing.B) {
	f := Features{}
	for i := range 100 {
		f[fmt.Sprintf("f%02d", i)] = Scalar(float64(i) * 1.25)
	}
	body, _ := json.Marshal(PredictRequest{RequestID: "req_1", Ticker: "AAPL", Horizon: 5, Features: f})
	b.Run("fast", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := DecodePredictRequest(body); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := generalPredictRequest(body); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func TestOutOfRangeNumber(t *testing.T) {
	var req PredictRequest
	err := json.Unmarshal([]byte(`{"features":{"macd":1e400}}`), &req)
	if err == nil || err.Error() != `feature "macd": invalid feature value: 1e400 is out of range for a number` {
		t.Fatalf("err = %v", err)
	}
}
