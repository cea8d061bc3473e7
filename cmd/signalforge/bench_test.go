package main

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/onnx/onnxtest"
	"github.com/signalforge/signalforge/tensor"
)

func benchRun(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	e := &env{stdout: &out, stderr: &errb, getenv: os.Getenv}
	code = run(context.Background(), e, append([]string{"bench"}, args...))
	return code, out.String(), errb.String()
}

func TestBenchDemoTable(t *testing.T) {
	code, out, stderr := benchRun(t, "--duration", "20ms", "--batch", "1,8")
	if code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", code, stderr)
	}
	for _, want := range []string{"demo MLP 100-50-10", "x float32 [batch,100]", "ONNX Runtime 1.30.0", "median µs", "p99 µs", "samples/s"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	// One table row per batch size, starting with the batch.
	rows := 0
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 6 && (f[0] == "1" || f[0] == "8") {
			rows++
		}
	}
	if rows != 2 {
		t.Errorf("%d result rows, want 2:\n%s", rows, out)
	}
}

func TestBenchModelJSON(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.onnx")
	if err := onnxtest.MustMLP(2, 6, 4, 1).Save(path); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := benchRun(t, "--duration", "20ms", "--batch", "2,3", "--threads", "2", "--concurrency", "2", "--json", path)
	if code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", code, stderr)
	}
	var rep benchReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	if rep.Model != path || rep.IntraOpThreads != 2 || rep.Concurrency != 2 || len(rep.Results) != 2 {
		t.Fatalf("report %+v", rep)
	}
	for i, r := range rep.Results {
		if r.Batch != []int{2, 3}[i] || r.Concurrency != 2 || r.Calls < 20 || r.Median <= 0 || r.P99 < r.Median || r.SamplesPerSec <= 0 {
			t.Errorf("result %d = %+v", i, r)
		}
	}
}

func TestBenchUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"--batch", "0"},
		{"--batch", "1,x"},
		{"--threads", "0"},
		{"--concurrency", "0"},
		{"--concurrency", "100000"},
		{"--concurrency", "1025"},
		{"--threads", "257"},
		{"--demo", "model.onnx"},
		{"a.onnx", "b.onnx"},
	} {
		if code, _, _ := benchRun(t, args...); code != 2 {
			t.Errorf("bench %q: exit %d, want 2", args, code)
		}
	}
	if code, _, stderr := benchRun(t, filepath.Join(t.TempDir(), "missing.onnx")); code != 1 || !strings.Contains(stderr, "missing.onnx") {
		t.Errorf("bench missing.onnx: exit %d, stderr %q", code, stderr)
	}
	// The cap is named in the message.
	if _, _, stderr := benchRun(t, "--concurrency", "100000"); !strings.Contains(stderr, "at most 1024 callers") {
		t.Errorf("bench --concurrency 100000: stderr %q lacks the cap", stderr)
	}
	// 1024 callers are accepted.
	if code, _, stderr := benchRun(t, "--concurrency", "1024", "--duration", "5ms", "--batch", "1"); code != 0 {
		t.Errorf("bench --concurrency 1024: exit %d, stderr %q", code, stderr)
	}
}

// A device, FIFO or directory given as the model is refused before anything
// is read: `bench /dev/zero` used to read until it was OOM-killed.
func TestBenchRefusesNonRegularModelFiles(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "model.onnx")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ path, want string }{
		{"/dev/zero", "/dev/zero: not a regular file"},
		{fifo, fifo + ": not a regular file"},
		{dir, dir + ": is a directory"},
	} {
		code, _, stderr := benchRun(t, "--duration", "5ms", c.path)
		if code != 1 || !strings.Contains(stderr, c.want) {
			t.Errorf("bench %s: exit %d, stderr %q; want exit 1 and %q", c.path, code, stderr, c.want)
		}
	}
}

func TestThousands(t *testing.T) {
	for n, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567"} {
		if got := thousands(n); got != want {
			t.Errorf("thousands(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestBenchRefusesBatchesThatNeedTooMuchMemory(t *testing.T) {
	// The QA report: --batch 100000000 on the 100-feature demo MLP would
	// allocate 40 GB of input alone. It must fail before allocating, saying
	// which batch and how much.
	code, out, stderr := benchRun(t, "--batch", "1,100000000")
	if code != 2 || out != "" {
		t.Fatalf("exit %d, stdout %q; want 2 and nothing measured", code, out)
	}
	for _, want := range []string{"batch 100000000", "40,000,000,000 bytes (37.3 GiB)", "--max-input-bytes limit of 1 GiB"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
	// Sizes past int64 are refused too, not wrapped around.
	if code, _, stderr := benchRun(t, "--batch", "100000000000000000"); code != 2 || !strings.Contains(stderr, "more than 8 EiB") {
		t.Errorf("batch 1e17: exit %d, stderr %q", code, stderr)
	}
	// The limit is a flag: batch 2 of [batch,100] float32 is 800 bytes.
	if code, _, stderr := benchRun(t, "--batch", "2", "--max-input-bytes", "799"); code != 2 || !strings.Contains(stderr, "batch 2: the input tensors would need 800 bytes") {
		t.Errorf("799-byte limit: exit %d, stderr %q", code, stderr)
	}
	if code, out, stderr := benchRun(t, "--batch", "2", "--max-input-bytes", "800B", "--duration", "20ms"); code != 0 || !strings.Contains(out, "samples/s") {
		t.Errorf("800-byte limit: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	if code, _, _ := benchRun(t, "--max-input-bytes", "1GB"); code != 2 {
		t.Errorf("--max-input-bytes 1GB (ambiguous unit): exit %d, want 2", code)
	}
}

func TestInputBytes(t *testing.T) {
	in := []infer.IOInfo{
		{Name: "x", DType: tensor.Float32, Shape: tensor.Shape{-1, 100}, BatchAxis: 0},
		{Name: "seq", DType: tensor.Int64, Shape: tensor.Shape{-1, -1, 3}, BatchAxis: 0}, // dynamic length → 1
		{Name: "fixed", DType: tensor.Float32, Shape: tensor.Shape{4, 2}, BatchAxis: -1},
	}
	for _, c := range []struct {
		batch int
		want  int64
		ok    bool
	}{
		{1, 400 + 24 + 32, true},
		{10, 4000 + 240 + 32, true},
		{1 << 40, 400<<40 + 24<<40 + 32, true},
		{math.MaxInt64 / 100, 0, false},
	} {
		got, ok := inputBytes(in, c.batch)
		if got != c.want || ok != c.ok {
			t.Errorf("inputBytes(batch %d) = %d, %v; want %d, %v", c.batch, got, ok, c.want, c.ok)
		}
	}
}

func TestParseByteSize(t *testing.T) {
	for s, want := range map[string]int64{"1": 1, "800B": 800, "1KiB": 1024, "512MiB": 512 << 20, "1.5GiB": 3 << 29, " 2 TiB": 2 << 40} {
		if got, err := parseByteSize(s); err != nil || got != want {
			t.Errorf("parseByteSize(%q) = %d, %v; want %d", s, got, err, want)
		}
	}
	for _, s := range []string{"", "0", "-1", "1GB", "1 G", "x", "NaN", "Inf", "9000000TiB"} {
		if got, err := parseByteSize(s); err == nil {
			t.Errorf("parseByteSize(%q) = %d, want an error", s, got)
		}
	}
	for n, want := range map[int64]string{512: "512 B", 1024: "1 KiB", 1 << 30: "1 GiB", 40_000_000_000: "37.3 GiB"} {
		if got := fmtBytes(n); got != want {
			t.Errorf("fmtBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestBenchFlagsAfterTheModel(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.onnx")
	if err := onnxtest.MustMLP(3, 4, 2).Save(path); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := benchRun(t, path, "--batch", "3", "--json", "--duration", "20ms")
	if code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", code, stderr)
	}
	var rep benchReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("not JSON (--json after the model was ignored?): %v\n%s", err, out)
	}
	if rep.Model != path || len(rep.Results) != 1 || rep.Results[0].Batch != 3 {
		t.Errorf("report %+v", rep)
	}
}

func TestBenchORTLibErrorNamesTheFlag(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "libonnxruntime.so")
	code, _, stderr := benchRun(t, "--ort-lib", missing, "--duration", "20ms")
	if code != 1 {
		t.Fatalf("exit %d, want 1; stderr:\n%s", code, stderr)
	}
	for _, want := range []string{"--ort-lib is set to " + missing + ", which does not exist", "$SIGNALFORGE_ORT_LIB", "make deps"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
	if strings.Contains(stderr, "Config.") {
		t.Errorf("stderr names a Go field a CLI user never set:\n%s", stderr)
	}
}
