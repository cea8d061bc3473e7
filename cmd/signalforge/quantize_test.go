package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/signalforge/signalforge/onnx"
)

func TestQuantizeHelp(t *testing.T) {
	checkHelp(t, "quantize", quantizeAbout, quantizeExamples)
}

// TestQuantizeExamples runs every example of `signalforge quantize -h` as
// written (outputs and registry moved to a temporary folder).
func TestQuantizeExamples(t *testing.T) {
	t.Parallel()
	for i, ex := range quantizeExamples {
		t.Run(strings.TrimSuffix(strings.Fields(ex.what)[0], ","), func(t *testing.T) {
			t.Parallel()
			for _, args := range exampleArgs(t, ex.cmd, t.TempDir()) {
				code, out, stderr := cliRun(t, "", args...)
				if code != 0 {
					t.Fatalf("example %d: %v: exit %d\n%s%s", i, args, code, out, stderr)
				}
				if args[0] == "quantize" && (!strings.Contains(out, "wrote ") || !strings.Contains(out, "sign agree")) {
					t.Errorf("example %d wrote no model or no report:\n%s", i, out)
				}
				if strings.Contains(ex.cmd, "--register") && args[0] == "quantize" && !strings.Contains(out, "registered mlp_100_50_10:v2 ") {
					t.Errorf("example %d did not register v2:\n%s", i, out)
				}
			}
		})
	}
}

// TestQuantizeRejectsBadOptions: each mistake is an error naming the flag
// or value at fault, and nothing is written.
func TestQuantizeRejectsBadOptions(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "m.onnx")
	orig, err := os.ReadFile(fixture("quantize/testdata/mlp_small.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(src, orig, 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.onnx")
	if err := os.Symlink(src, link); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "q.onnx")
	for _, tt := range []struct {
		args []string
		want []string
	}{
		{[]string{"-exclude", "nonexistent_node", "-o", out, src},
			[]string{`cannot exclude "nonexistent_node"`, "no node of that name", "/0/Gemm, /2/Gemm, /4/Gemm"}},
		{[]string{"-exclude", "/1/Relu", "-o", out, src}, []string{`"/1/Relu"`, "Relu node", "/0/Gemm, /2/Gemm, /4/Gemm"}},
		{[]string{"-min-sign", "5", "-o", out, src}, []string{"-min-sign", "fraction between 0 and 1"}},
		{[]string{"-min-sign", "-0.5", "-o", out, src}, []string{"-min-sign", "fraction between 0 and 1"}},
		{[]string{"-max-error", "-1", "-o", out, src}, []string{"-max-error", "≥ 0"}},
		{[]string{"-min-sqnr", "NaN", "-o", out, src}, []string{"-min-sqnr", "finite"}},
		{[]string{"-parent", "../x", "-o", out, src}, []string{"-parent ../x", `"../x" must start with a letter or digit`}},
		{[]string{"-parent", "mlp:v/1", "-o", out, src}, []string{"-parent mlp:v/1", "VERSION or NAME:VERSION"}},
		{[]string{"-parent", "other:v1", "--register", "mlp", "-o", out, src}, []string{"names model other", "--register mlp"}},
		{[]string{"--register", "../x", "-o", out, src}, []string{"--register ../x", "model name"}},
		{[]string{"-o", src, src}, []string{"is the input file itself"}},
		{[]string{"-o", filepath.Join(dir, ".", "m.onnx"), src}, []string{"is the input file itself"}},
		{[]string{"-o", link, src}, []string{"is the input file itself"}},
		{[]string{src}, nil}, // a valid run, so the others fail for their own reason
	} {
		code, stdout, stderr := cliRun(t, filepath.Join(dir, "reg"), append([]string{"quantize"}, tt.args...)...)
		if tt.want == nil {
			if code != 0 {
				t.Errorf("%v: exit %d: %s", tt.args, code, stderr)
			}
			continue
		}
		if code != 1 || strings.Contains(stdout, "wrote") {
			t.Errorf("%v: exit %d, stdout %q", tt.args, code, stdout)
		}
		for _, w := range tt.want {
			if !strings.Contains(stderr, w) {
				t.Errorf("%v: stderr %q lacks %q", tt.args, stderr, w)
			}
		}
	}
	if now, err := os.ReadFile(src); err != nil || !bytes.Equal(now, orig) {
		t.Fatalf("the source changed (%v)", err)
	}
	// Only the valid run wrote its default output; no registry, no temp files.
	assertDir(t, dir, "link.onnx", "m.int8.onnx", "m.onnx")
}

// TestQuantizeRegisterLineage follows a model through the registry: convert
// registers the fp32 version (reference from a file, no Python), quantize
// registers the static INT8 version with -bench. The INT8 version's lineage
// names the fp32 version as parent (found by its artifact, or given with
// -parent), carries the conversion lineage of its input, the quantization
// parameters, the calibration hash and the benchmark.
func TestQuantizeRegisterLineage(t *testing.T) {
	dir := t.TempDir()
	reg := filepath.Join(dir, "reg")
	fp32 := filepath.Join(dir, "mlp.onnx")
	code, out, stderr := cliRun(t, reg, "convert", "-spec", fixture("convert/testdata/mlp_state.spec.json"),
		"-reference", fixture("convert/testdata/mlp_state.ref.json"), "-features", "rsi_14,macd,macd_signal,bb_width,atr_14,obv_z,ret_1,ret_5",
		"-o", fp32, "--register", "mlp", fixture("convert/testdata/mlp_state.pt"))
	if code != 0 || !strings.Contains(out, "registered mlp:v1 (staging)") {
		t.Fatalf("convert: exit %d\n%s%s", code, out, stderr)
	}
	conv := registryGet(t, reg, "mlp", "v1").Lineage

	calib := fixture("quantize/testdata/calib_mlp_small.csv")
	for _, tt := range []struct {
		name   string
		args   []string
		parent string
	}{
		{"found by artifact", nil, "v1"},
		{"given", []string{"-parent", "mlp:v1"}, "v1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"quantize", "-mode", "static", "-calibration", calib, "-bench", "-batch-sizes", "1", "-iterations", "5",
				"-o", filepath.Join(t.TempDir(), "q.onnx"), "--register", "mlp"}, tt.args...)
			code, out, stderr := cliRun(t, reg, append(args, fp32)...)
			if code != 0 || !strings.Contains(out, "registered mlp:v") {
				t.Fatalf("quantize: exit %d\n%s%s", code, out, stderr)
			}
			i := strings.Index(out, "registered mlp:")
			id := strings.Fields(out[i:])[1]
			v := registryGet(t, reg, "mlp", strings.TrimPrefix(id, "mlp:"))
			l := v.Lineage
			if l.Parent != tt.parent {
				t.Errorf("parent %q, want %q", l.Parent, tt.parent)
			}
			if l.Quantization["mode"] != "static" || l.Quantization["calibration"] != "minmax" || l.Quantization["nodes"] == "" {
				t.Errorf("quantization %v", l.Quantization)
			}
			if len(l.CalibrationSHA256) != 64 || !strings.Contains(out, "calibration sha256 "+l.CalibrationSHA256) {
				t.Errorf("calibration sha256 %q", l.CalibrationSHA256)
			}
			if l.SourceSHA256 != conv.SourceSHA256 || l.Conversion["spec_sha256"] != conv.Conversion["spec_sha256"] || l.Conversion["opset"] != "14" {
				t.Errorf("conversion lineage not carried: %+v, fp32 has %+v", l, conv)
			}
			for _, k := range []string{"p50_us_batch1", "fp32_p50_us_batch1", "speedup_vs_fp32_batch1", "int8_max_abs_error", "int8_sign_agreement"} {
				if l.Benchmarks[k] <= 0 {
					t.Errorf("benchmark %s = %v in %v", k, l.Benchmarks[k], l.Benchmarks)
				}
			}
		})
	}
	// A parent that is not in the registry is refused by the registry.
	code, out, stderr = cliRun(t, reg, "quantize", "-parent", "v9", "-o", filepath.Join(dir, "q9.onnx"), "--register", "mlp", fp32)
	if code != 1 || !strings.Contains(stderr, "lineage parent mlp:v9") || !strings.Contains(stderr, "registering it in") {
		t.Errorf("unknown parent: exit %d\n%s%s", code, out, stderr)
	}
}

// Model and calibration files that are not regular files are refused
// before they are read: `quantize /dev/zero` used to read 2 GiB (4.5 GB of
// memory) before refusing it as too large.
func TestQuantizeRefusesNonRegularFiles(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "model.onnx")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	calib := filepath.Join(dir, "calib.csv")
	if err := os.Symlink("/dev/zero", calib); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "q.onnx")
	model := fixture("quantize/testdata/mlp_small.onnx")
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"-o", out, "/dev/zero"}, "/dev/zero: not a regular file"},
		{[]string{"-o", out, fifo}, fifo + ": not a regular file"},
		{[]string{"-o", out, dir}, dir + ": is a directory"},
		{[]string{"-mode", "static", "-calibration", calib, "-o", out, model}, calib + ": not a regular file"},
	} {
		code, _, stderr := cliRun(t, "", append([]string{"quantize"}, tt.args...)...)
		if code != 1 || !strings.Contains(stderr, tt.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit 1 and %q", tt.args, code, stderr, tt.want)
		}
	}
	assertDir(t, dir, "calib.csv", "model.onnx")
}

// calibCSV writes a CSV with the header of quantize/testdata/
// calib_mlp_small.csv and the data rows edit makes from its 256 rows.
func calibCSV(t *testing.T, dir, name string, edit func(rows [][]string) [][]string) string {
	t.Helper()
	b, err := os.ReadFile(fixture("quantize/testdata/calib_mlp_small.csv"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	var rows [][]string
	for _, l := range lines[1:] {
		rows = append(rows, strings.Split(l, ","))
	}
	var sb strings.Builder
	sb.WriteString(lines[0] + "\n")
	for _, r := range edit(rows) {
		sb.WriteString(strings.Join(r, ",") + "\n")
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(sb.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// Degenerate calibration data is refused, naming the column, the row count
// and -force, and nothing is written. Today's main wrote all three with
// exit 0, reporting 31–52 dB on the calibration data (held-out: 25 dB, and
// 0 dB with 0% sign agreement for the outlier).
func TestQuantizeRefusesDegenerateCalibration(t *testing.T) {
	data, dir := t.TempDir(), t.TempDir()
	out := filepath.Join(dir, "q.onnx")
	model := fixture("quantize/testdata/mlp_small.onnx")
	outlier := calibCSV(t, data, "outlier.csv", func(r [][]string) [][]string {
		r[0][2] = "1e30" // macd_signal
		return r[:128]
	})
	for _, tt := range []struct {
		name string
		file string
		want []string
	}{
		{"one row", calibCSV(t, data, "one.csv", func(r [][]string) [][]string { return r[:1] }),
			[]string{"(1 row(s) checked)", "at least 8"}},
		{"every row the same", calibCSV(t, data, "same.csv", func(r [][]string) [][]string {
			var s [][]string
			for range 64 {
				s = append(s, r[0])
			}
			return s
		}), []string{"(64 row(s) checked)", "all 8 column(s) are constant"}},
		{"1e30 outlier", outlier, []string{"(128 row(s) checked)", `feature "macd_signal": value 1e+30 in row 1`}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := cliRun(t, "", "quantize", "-mode", "static", "-calibration", tt.file, "-o", out, model)
			if code != 1 || strings.Contains(stdout, "wrote") {
				t.Errorf("exit %d\n%s%s", code, stdout, stderr)
			}
			for _, w := range append(tt.want, tt.file+": quantize: calibration data refused", "pass -force to quantize anyway", "no model written") {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr %q lacks %q", stderr, w)
				}
			}
		})
	}
	assertDir(t, dir)

	// -force writes it, loudly: on stderr, in the report and in the model.
	code, stdout, stderr := cliRun(t, "", "quantize", "-mode", "static", "-force", "-calibration", outlier, "-o", out, model)
	if code != 0 || !strings.Contains(stdout, "wrote ") {
		t.Fatalf("-force: exit %d\n%s%s", code, stdout, stderr)
	}
	if !strings.Contains(stderr, "WARNING: -force: wrote "+out+" from calibration data that was refused: feature \"macd_signal\"") ||
		!strings.Contains(stdout, "FORCED past a refusal: feature \"macd_signal\"") {
		t.Errorf("-force is not loud:\n%s%s", stdout, stderr)
	}
	m, err := loadONNXFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if meta := onnx.Metadata(m); meta["signalforge.quantize.calibration_forced"] != `outlier feature "macd_signal"` {
		t.Errorf("metadata %v", meta)
	}
}

// -eval data decides the gate: calibrated on 128 rows, the int8 model meets
// -min-sqnr 35 on those rows (43.6 dB) but not on held-out rows of a wider
// range (11.6 dB with one node left int8): exit 1, nothing written. The
// report says which data and how many rows it measured; without -eval it
// says the accuracy is the calibration rows' own, and optimistic.
func TestQuantizeEvalDecidesGate(t *testing.T) {
	data, dir := t.TempDir(), t.TempDir()
	model := fixture("quantize/testdata/mlp_small.onnx")
	calib := calibCSV(t, data, "calib.csv", func(r [][]string) [][]string { return r[:128] })
	wide := calibCSV(t, data, "wide.csv", func(r [][]string) [][]string {
		for _, row := range r[128:] {
			for i, v := range row {
				f, err := strconv.ParseFloat(v, 64)
				if err != nil {
					t.Fatal(err)
				}
				row[i] = strconv.FormatFloat(4*f, 'g', -1, 64)
			}
		}
		return r[128:]
	})

	code, stdout, stderr := cliRun(t, "", "quantize", "-mode", "static", "-calibration", calib, "-min-sqnr", "35", "-o", filepath.Join(dir, "oncal.onnx"), model)
	if code != 0 {
		t.Fatalf("on the calibration data: exit %d\n%s%s", code, stdout, stderr)
	}
	for _, w := range []string{"gate: measured on " + calib + " (the calibration data", "evaluated on 128 rows: the 128 calibration rows themselves",
		"warning: accuracy measured on the calibration data", "optimistic"} {
		if !strings.Contains(stdout, w) {
			t.Errorf("without -eval: stdout lacks %q:\n%s", w, stdout)
		}
	}

	code, stdout, stderr = cliRun(t, "", "quantize", "-mode", "static", "-calibration", calib, "-eval", wide, "-min-sqnr", "35", "-o", filepath.Join(dir, "q.onnx"), model)
	if code != 1 || strings.Contains(stdout, "wrote") || !strings.Contains(stderr, "accuracy budget cannot be met") || !strings.Contains(stderr, "no model written") {
		t.Errorf("with -eval: exit %d\n%s%s", code, stdout, stderr)
	}
	for _, w := range []string{"gate: measured on " + wide + "\n", "evaluated on 128 held-out rows; calibrated on 128 other rows"} {
		if !strings.Contains(stdout, w) {
			t.Errorf("with -eval: stdout lacks %q:\n%s", w, stdout)
		}
	}
	if strings.Contains(stdout, "optimistic") {
		t.Errorf("held-out report calls itself optimistic:\n%s", stdout)
	}
	assertDir(t, dir, "oncal.onnx")
}
