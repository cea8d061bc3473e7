package quantize_test

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/quantize"
)

// rows returns n rows of N(0,1) data for mlp_small (8 features), changed
// by edit (row-major, 8 values a row).
func rows(n int, edit func(v []float32)) quantize.Dataset {
	t := normal(11, n, 8)
	if edit != nil {
		edit(t.Float32s())
	}
	return quantize.Tensors(t)
}

func TestCheckCalibration(t *testing.T) {
	ctx := context.Background()
	mlp := loadFixture(t, "mlp_small.onnx") // features rsi_14, macd, macd_signal, ...
	type want struct {
		sev          quantize.Severity
		kind, column string
		text         []string
	}
	for _, tt := range []struct {
		name string
		data quantize.Dataset
		want []want // in order; nil: no findings
	}{
		{"128 normal rows", rows(128, nil), nil},
		{"1 row", rows(1, nil), []want{{quantize.Refusal, quantize.FindRows, "", []string{"1 calibration row(s)", "at least 8"}}}},
		{"7 rows", rows(7, nil), []want{{quantize.Refusal, quantize.FindRows, "", []string{"7 calibration row(s)"}}}},
		{"16 rows", rows(16, nil), []want{{quantize.Warning, quantize.FindRows, "", []string{"only 16 calibration rows", "64 or more"}}}},
		{"every row the same", rows(128, func(v []float32) {
			for i := range v {
				v[i] = v[i%8]
			}
		}), []want{{quantize.Refusal, quantize.FindConstant, "", []string{"all 8 column(s) are constant over the 128 rows"}}}},
		{"one constant column", rows(128, func(v []float32) {
			for i := 2; i < len(v); i += 8 {
				v[i] = 0.5
			}
		}), []want{{quantize.Warning, quantize.FindConstant, `feature "macd_signal"`, []string{"the same value 0.5 in all 128 rows"}}}},
		{"one 1e30 outlier", rows(128, func(v []float32) { v[4*8+2] = 1e30 }),
			[]want{{quantize.Refusal, quantize.FindOutlier, `feature "macd_signal"`, []string{"value 1e+30 in row 5", "robust σ", "limit of 1000"}}}},
		{"one -5000 outlier", rows(128, func(v []float32) { v[9*8+7] = -5000 }),
			[]want{{quantize.Refusal, quantize.FindOutlier, `feature "ret_5"`, []string{"value -5000 in row 10"}}}},
		{"one 200σ outlier is a warning", rows(128, func(v []float32) { v[3*8+1] = 200 }),
			[]want{{quantize.Warning, quantize.FindOutlier, `feature "macd"`, []string{"value 200 in row 4", "Entropy clips"}}}},
		{"NaN", rows(128, func(v []float32) { v[6*8] = float32(math.NaN()) }),
			[]want{{quantize.Refusal, quantize.FindNonFinite, `feature "rsi_14"`, []string{"1 non-finite value(s)", "row 7"}}}},
		// A 0/1 flag that is mostly 0 has a MAD of 0: measured against the
		// other columns' σ it is no outlier; 1e30 in such a column is.
		{"rare 0/1 flag", rows(128, func(v []float32) {
			for i := 0; i < 128; i++ {
				v[i*8+3] = 0
			}
			v[50*8+3] = 1
		}), nil},
		{"1e30 in a mostly-zero column", rows(128, func(v []float32) {
			for i := 0; i < 128; i++ {
				v[i*8+3] = 0
			}
			v[50*8+3] = 1
			v[51*8+3] = 1e30
		}), []want{{quantize.Refusal, quantize.FindOutlier, `feature "bb_width"`, []string{"value 1e+30 in row 52", "σ of the other columns"}}}},
		{"refusals first", rows(16, func(v []float32) { v[2] = 1e30 }), []want{
			{quantize.Refusal, quantize.FindOutlier, `feature "macd_signal"`, []string{"row 1"}},
			{quantize.Warning, quantize.FindRows, "", []string{"only 16"}},
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			chk, err := quantize.CheckCalibration(ctx, mlp, tt.data)
			if err != nil {
				t.Fatal(err)
			}
			if chk.Columns != 8 {
				t.Errorf("columns %d, want 8", chk.Columns)
			}
			if len(chk.Findings) != len(tt.want) {
				t.Fatalf("findings %+v, want %d", chk.Findings, len(tt.want))
			}
			for i, w := range tt.want {
				f := chk.Findings[i]
				if f.Severity != w.sev || f.Kind != w.kind || f.Column != w.column {
					t.Errorf("finding %d: %v %s %q, want %v %s %q", i, f.Severity, f.Kind, f.Column, w.sev, w.kind, w.column)
				}
				for _, s := range w.text {
					if !strings.Contains(f.Message, s) {
						t.Errorf("finding %d: %q lacks %q", i, f.Message, s)
					}
				}
			}
		})
	}
}

// Rows are samples: for a sequence model [batch, 32, 16], windows; the
// columns are the 16 features (named by the model), pooled over the time
// steps.
func TestCheckCalibrationSequence(t *testing.T) {
	lstm := loadFixture(t, "lstm.onnx")
	x := normal(3, 20, 32, 16)
	x.Float32s()[5*32*16+7*16+4] = 1e30 // window 6, step 8, feature 4
	chk, err := quantize.CheckCalibration(context.Background(), lstm, quantize.Tensors(x))
	if err != nil {
		t.Fatal(err)
	}
	if chk.Rows != 20 || chk.Columns != 16 {
		t.Errorf("rows %d columns %d, want 20 and 16", chk.Rows, chk.Columns)
	}
	r := chk.Refusals()
	if len(r) != 1 || r[0].Kind != quantize.FindOutlier || r[0].Column != `feature "atr_14"` || !strings.Contains(r[0].Message, "row 6") {
		t.Errorf("refusals %+v, want the outlier in feature atr_14 (column 4), row 6", r)
	}
}

// Static quantization refuses degenerate calibration data before running
// anything (today's main quantized all three and reported 31–52 dB on the
// calibration data; on held-out data the 1e30 outlier gave 0 dB and 0%
// sign agreement); Force goes on and records it.
func TestQuantizeRefusesDegenerateCalibration(t *testing.T) {
	eng := newEngine(t)
	ctx := context.Background()
	m := loadFixture(t, "mlp_small.onnx")
	outlier := rows(128, func(v []float32) { v[2] = 1e30 })
	for _, tt := range []struct {
		name string
		data quantize.Dataset
		want []string
	}{
		{"1 row", rows(1, nil), []string{"(1 row(s) checked)", "at least 8"}},
		{"every row the same", rows(128, func(v []float32) {
			for i := range v {
				v[i] = v[i%8]
			}
		}), []string{"(128 row(s) checked)", "all 8 column(s) are constant"}},
		{"1e30 outlier", outlier, []string{"(128 row(s) checked)", `feature "macd_signal": value 1e+30 in row 1`}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			q := mustNew(t, quantize.Config{Engine: eng, Mode: quantize.Static})
			res, err := q.Quantize(ctx, m, tt.data)
			var ce *quantize.CalibrationError
			if !errors.Is(err, quantize.ErrCalibration) || !errors.As(err, &ce) || res != nil {
				t.Fatalf("err %v, res %v; want a *CalibrationError", err, res)
			}
			for _, w := range append(tt.want, "set Config.Force to quantize anyway") {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%q lacks %q", err, w)
				}
			}
			// The gate refuses it the same way.
			if _, err := q.QuantizeWithBudget(ctx, m, tt.data, rows(128, nil), quantize.Budget{MinSQNR: 20}); !errors.Is(err, quantize.ErrCalibration) {
				t.Errorf("gate: err %v, want ErrCalibration", err)
			}
		})
	}

	// Forced: the model is made, says so in its metadata and report, and
	// is as bad on held-out data as the refusal said.
	q := mustNew(t, quantize.Config{Engine: eng, Mode: quantize.Static, Force: true})
	res, err := q.Quantize(ctx, m, outlier)
	if err != nil {
		t.Fatal(err)
	}
	if c := res.Calibration; c == nil || !c.Forced || c.Rows != 128 || len(c.Refusals()) != 1 {
		t.Fatalf("calibration %+v", res.Calibration)
	}
	meta := onnx.Metadata(res.Model)
	if meta["signalforge.quantize.calibration_forced"] != `outlier feature "macd_signal"` || meta["signalforge.quantize.calibration_rows"] != "128" {
		t.Errorf("metadata %v", meta)
	}
	rep, err := q.Evaluate(ctx, m, res, rows(256, nil))
	if err != nil {
		t.Fatal(err)
	}
	text := report(t, rep)
	if !strings.Contains(text, "FORCED past a refusal: feature \"macd_signal\"") {
		t.Errorf("report does not show the forced refusal:\n%s", text)
	}
	if _, sqnr, _ := rep.Worst(); sqnr > 10 {
		t.Errorf("forced model: held-out SQNR %.1f dB; the fixture no longer shows the damage", sqnr)
	}
}

// The report states the calibration and evaluation row counts and warns
// when the accuracy was measured on the calibration data itself.
func TestReportRowCounts(t *testing.T) {
	eng := newEngine(t)
	ctx := context.Background()
	m := loadFixture(t, "mlp_small.onnx")
	calib, held := quantize.Tensors(normal(1, 100, 8)), quantize.Tensors(normal(2, 40, 8))
	q := mustNew(t, quantize.Config{Engine: eng, Mode: quantize.Static})
	res, err := q.Quantize(ctx, m, calib)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name   string
		data   quantize.Dataset
		onCal  bool
		header string
		warn   string
	}{
		{"on calibration data", calib, true, "evaluated on 100 rows: the 100 calibration rows themselves\n", "measured on the calibration data"},
		{"same rows, another copy", quantize.Tensors(normal(1, 100, 8)), true, "the 100 calibration rows themselves", "optimistic"},
		{"held out", held, false, "evaluated on 40 held-out rows; calibrated on 100 other rows\n", "only 40 evaluation row(s)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rep, err := q.Evaluate(ctx, m, res, tt.data)
			if err != nil {
				t.Fatal(err)
			}
			text := report(t, rep)
			if rep.CalibrationSamples != 100 || rep.OnCalibrationData != tt.onCal {
				t.Errorf("calibration samples %d, on calibration data %v", rep.CalibrationSamples, rep.OnCalibrationData)
			}
			if !strings.Contains(text, tt.header) || !strings.Contains(text, "warning: ") || !strings.Contains(text, tt.warn) {
				t.Errorf("report lacks %q or %q:\n%s", tt.header, tt.warn, text)
			}
			if !tt.onCal && strings.Contains(text, "optimistic") {
				t.Errorf("held-out report calls itself optimistic:\n%s", text)
			}
		})
	}
	// Dynamic quantization uses no calibration rows.
	qd := mustNew(t, quantize.Config{Engine: eng})
	res, err = qd.Quantize(ctx, m, nil)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := qd.Evaluate(ctx, m, res, quantize.Tensors(normal(2, 64, 8)))
	if err != nil {
		t.Fatal(err)
	}
	if text := report(t, rep); !strings.HasPrefix(text, "evaluated on 64 rows\n") || strings.Contains(text, "warning") {
		t.Errorf("dynamic report:\n%s", text)
	}
}

// Without feature names a column is named by its input and index.
func TestCheckCalibrationUnnamedColumns(t *testing.T) {
	m := loadFixture(t, "mlp_small.onnx")
	m.MetadataProps = nil
	in := m.GetGraph().GetInput()[0].GetName()
	chk, err := quantize.CheckCalibration(context.Background(), m, rows(128, func(v []float32) { v[8*3+6] = 1e30 }))
	if err != nil {
		t.Fatal(err)
	}
	want := `input "` + in + `" column 6`
	if r := chk.Refusals(); len(r) != 1 || r[0].Column != want || !strings.Contains(r[0].Message, "row 4") {
		t.Errorf("refusals %+v, want %s, row 4", r, want)
	}
}
