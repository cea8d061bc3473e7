package server

import (
	"encoding/json"
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
			got, err := decodeV2Data("x", tt.dtype, tt.shape, json.RawMessage(tt.data), 1000)
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
	got, err := decodeV2Data("ids", "INT64", []int64{3}, json.RawMessage(`[1,-2,3]`), 10)
	if err != nil {
		t.Fatal(err)
	}
	if d := tensor.Data[int64](got); d[1] != -2 {
		t.Fatalf("got %v", d)
	}
	if _, err := decodeV2Data("q", "UINT8", []int64{1}, json.RawMessage(`[256]`), 10); err == nil || err.Error() != `input "q": element 0 (256) is not an integer in [0, 255]` {
		t.Fatalf("err = %v", err)
	}
	u := tensor.Must(tensor.Shape{2}, []uint8{1, 200})
	if s := string(encodeV2Data(u)); s != "[1,200]" {
		t.Fatalf("encode uint8 = %s", s)
	}
}

func FuzzDecodeV2Data(f *testing.F) {
	f.Add([]byte(`[[1,2],[3,4]]`), int64(2), int64(2))
	f.Add([]byte(`[1e400]`), int64(1), int64(1))
	f.Fuzz(func(t *testing.T, data []byte, a, b int64) {
		tt, err := decodeV2Data("x", "FP32", []int64{a, b}, data, 1<<16)
		if err == nil && int64(tt.NumElements()) != a*b {
			t.Fatalf("shape [%d %d] but %d elements", a, b, tt.NumElements())
		}
	})
}
