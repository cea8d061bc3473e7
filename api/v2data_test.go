package api

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/signalforge/signalforge/tensor"
)

func TestDecodeV2Data(t *testing.T) {
	tests := []struct {
		name, dtype, data string
		shape             []int64
		want              []float32
		wantErr           string
	}{
		{"flat", "FP32", `[1,2,3,4]`, []int64{2, 2}, []float32{1, 2, 3, 4}, ""},
		{"nested", "FP32", `[[1,2],[3,4]]`, []int64{2, 2}, []float32{1, 2, 3, 4}, ""},
		{"short", "FP32", `[1,2,3]`, []int64{2, 2}, nil, `input "x": shape [2 2] needs 4 values, data has 3`},
		{"string", "FP32", `["a"]`, []int64{1}, nil, `input "x": data: want a number, got "a"`},
		{"dtype", "BYTES", `[1]`, []int64{1}, nil, `input "x": datatype "BYTES" is not supported (use FP32, INT64, INT8 or UINT8)`},
		{"negative", "FP32", `[1]`, []int64{-1}, nil, `input "x": shape [-1] has a negative dimension`},
		{"huge", "FP32", `[1]`, []int64{1 << 40}, nil, `input "x": shape [1099511627776] has more than 1000 elements`},
		{"scalar data", "FP32", `1`, []int64{1}, nil, `input "x": data: want an array of numbers`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeTensorData("x", tt.dtype, tt.shape, json.RawMessage(tt.data), 1000)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			d := got.Float32s()
			if len(d) != len(tt.want) {
				t.Fatalf("got %v, want %v", d, tt.want)
			}
			for i := range d {
				if d[i] != tt.want[i] {
					t.Fatalf("got %v, want %v", d, tt.want)
				}
			}
		})
	}
}

func TestDecodeV2Ints(t *testing.T) {
	got, err := DecodeTensorData("ids", "INT64", []int64{3}, json.RawMessage(`[1,-2,3]`), 10)
	if err != nil {
		t.Fatal(err)
	}
	if d := tensor.Data[int64](got); d[1] != -2 {
		t.Fatalf("got %v", d)
	}
	if _, err := DecodeTensorData("q", "UINT8", []int64{1}, json.RawMessage(`[256]`), 10); err == nil || err.Error() != `input "q": element 0 (256) is not an integer in [0, 255]` {
		t.Fatalf("err = %v", err)
	}
	u := tensor.Must(tensor.Shape{2}, []uint8{1, 200})
	if s := string(EncodeTensorData(u)); s != "[1,200]" {
		t.Fatalf("encode uint8 = %s", s)
	}
}

func FuzzDecodeV2Data(f *testing.F) {
	f.Add([]byte(`[[1,2],[3,4]]`), int64(2), int64(2))
	f.Add([]byte(`[1e400]`), int64(1), int64(1))
	f.Fuzz(func(t *testing.T, data []byte, a, b int64) {
		tt, err := DecodeTensorData("x", "FP32", []int64{a, b}, data, 1<<16)
		if err == nil && int64(tt.NumElements()) != a*b {
			t.Fatalf("shape [%d %d] but %d elements", a, b, tt.NumElements())
		}
	})
}

func TestFlattenErrors(t *testing.T) {
	for in, want := range map[string]string{
		`[1,,2]`:              "malformed array at byte 3",
		`[1 2]`:               "missing comma",
		`[1,]`:                "a value is missing",
		`[[1],[2]]x`:          "unexpected data after the array",
		`[1, "a"]`:            `want a number, got "a"`,
		`[1, true]`:           "want a number, got true",
		`[1`:                  "array is not closed",
		`[1e999]`:             "want a number, got 1e999",
		`[[[[[[[[[1]]]]]]]]]`: "nested more than 8 deep",
	} {
		var out []float64
		err := flatten([]byte(in), &out, 100, nil)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("flatten(%s) = %v, want an error containing %q", in, err, want)
		}
	}
	var out []float64
	if err := flatten([]byte(" [ [1, -2.5e1] , [ ], [3] ] "), &out, 100, nil); err != nil || len(out) != 3 || out[1] != -25 {
		t.Fatalf("flatten = %v, %v", out, err)
	}
}

// FuzzFlatten checks the one-pass scanner against encoding/json: whatever
// it accepts is a valid JSON array whose numbers, in order, it returned.
func FuzzFlatten(f *testing.F) {
	f.Add([]byte(`[[1,2],[3,4]]`))
	f.Add([]byte(`[1e3, -0.5, []]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var out []float64
		if err := flatten(b, &out, 1<<16, nil); err != nil {
			return
		}
		var v any
		if err := json.Unmarshal(b, &v); err != nil {
			t.Fatalf("flatten accepted invalid JSON %q: %v", b, err)
		}
		var want []float64
		var walk func(any)
		walk = func(x any) {
			switch x := x.(type) {
			case []any:
				for _, e := range x {
					walk(e)
				}
			case float64:
				want = append(want, x)
			default:
				t.Fatalf("flatten accepted %q with a non-number %v", b, x)
			}
		}
		walk(v)
		if len(want) != len(out) {
			t.Fatalf("%q: flatten %v, json %v", b, out, want)
		}
		for i := range want {
			if want[i] != out[i] {
				t.Fatalf("%q: flatten %v, json %v", b, out, want)
			}
		}
	})
}

func TestRaggedData(t *testing.T) {
	for _, tt := range []struct {
		data  string
		shape []int64
		want  string
	}{
		{`[[1,2,3],[4,5,6,7,8]]`, []int64{1, 8}, "depth 2 has 3 items, shape [1 8] wants 8"},
		{`[1,[4],2]`, []int64{1, 3}, "an array inside flat data"},
		{`[[1,2],3]`, []int64{2, 2}, "a number at depth 1"},
		{`[[1,2],[3,4],[5,6]]`, []int64{2, 2}, "depth 1 has 3 items"},
		{`[[[1]]]`, []int64{1, 1}, "nested 3 deep"},
		{`[1e39]`, []int64{1}, "within ±3.4e38"},
	} {
		_, err := DecodeTensorData("x", "FP32", tt.shape, json.RawMessage(tt.data), 100)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s as %v: %v, want an error containing %q", tt.data, tt.shape, err, tt.want)
		}
	}
	if _, err := DecodeTensorData("x", "FP32", []int64{2, 2}, json.RawMessage(`[[1,2],[3,4]]`), 100); err != nil {
		t.Fatal(err)
	}
}
