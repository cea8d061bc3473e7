package quantize_test

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/signalforge/signalforge/quantize"
)

// TestExcludeMustNameASelectableNode: a misspelt or wrong exclusion is an
// error that names it and lists what can be excluded, never a silent
// quantization of everything.
func TestExcludeMustNameASelectableNode(t *testing.T) {
	ctx := context.Background()
	m := loadFixture(t, "mlp_small.onnx")
	for _, tt := range []struct {
		exclude []string
		want    []string
	}{
		{[]string{"nonexistent_node"}, []string{`"nonexistent_node"`, "no node of that name", "/0/Gemm, /2/Gemm, /4/Gemm"}},
		{[]string{"/2/Gemm", "/0/gemm"}, []string{`"/0/gemm"`, "/0/Gemm, /2/Gemm, /4/Gemm"}},
		{[]string{"/1/Relu"}, []string{`"/1/Relu"`, "Relu node", "/0/Gemm, /2/Gemm, /4/Gemm"}},
	} {
		_, err := mustNew(t, quantize.Config{Exclude: tt.exclude}).Quantize(ctx, m, nil)
		if !errors.Is(err, quantize.ErrConfig) {
			t.Fatalf("exclude %v: err %v, want ErrConfig", tt.exclude, err)
		}
		for _, w := range tt.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("exclude %v: error %q does not mention %q", tt.exclude, err, w)
			}
		}
	}
	// A valid exclusion still works and is recorded.
	res, err := mustNew(t, quantize.Config{Exclude: []string{"/2/Gemm"}}).Quantize(ctx, m, nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, n := range res.Nodes {
		names = append(names, n.Name)
	}
	if strings.Join(names, ",") != "/0/Gemm,/4/Gemm" || res.Params()["excluded"] != "/2/Gemm" {
		t.Errorf("quantized %v, params %v; want /2/Gemm kept fp32", names, res.Params())
	}
}

func TestBudgetValidate(t *testing.T) {
	for _, b := range []quantize.Budget{
		{MinSignAgreement: 5},
		{MinSignAgreement: -0.1},
		{MinSignAgreement: math.NaN()},
		{MaxError: -1},
		{MaxError: math.Inf(1)},
		{MinSQNR: math.NaN()},
	} {
		if err := b.Validate(); !errors.Is(err, quantize.ErrConfig) {
			t.Errorf("%+v: err %v, want ErrConfig", b, err)
		}
	}
	for _, b := range []quantize.Budget{{}, {MinSignAgreement: 1}, {MinSignAgreement: 0.95, MaxError: 0.1, MinSQNR: 30}} {
		if err := b.Validate(); err != nil {
			t.Errorf("%+v: %v", b, err)
		}
	}
	// QuantizeWithBudget refuses an invalid budget before doing any work.
	m := loadFixture(t, "mlp_small.onnx")
	_, err := mustNew(t, quantize.Config{}).QuantizeWithBudget(context.Background(), m, nil, nil, quantize.Budget{MinSignAgreement: 5})
	if !errors.Is(err, quantize.ErrConfig) || !strings.Contains(err.Error(), "fraction between 0 and 1") {
		t.Errorf("err %v, want the fraction explained", err)
	}
}
