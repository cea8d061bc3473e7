package main

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/signalforge/signalforge/convert"
	"github.com/signalforge/signalforge/registry"
)

// repoRoot is the repository root seen from this package's directory; the
// commands' examples use paths relative to it.
const repoRoot = "../.."

// cliRun runs `signalforge args…` with the process environment, except that
// $SIGNALFORGE_REGISTRY points at regDir when it is not empty.
func cliRun(t *testing.T, regDir string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	e := &env{stdout: &out, stderr: &errb, getenv: func(k string) string {
		if k == modelsEnvRegistry && regDir != "" {
			return regDir
		}
		return os.Getenv(k)
	}}
	code = run(context.Background(), e, args)
	return code, out.String(), errb.String()
}

// needTorch skips only when SIGNALFORGE_NO_TORCH=1: PyTorch is part of the
// test environment (as for the convert package's tests), so a missing torch
// makes the command under test fail, which fails the test.
func needTorch(t *testing.T) {
	t.Helper()
	if os.Getenv("SIGNALFORGE_NO_TORCH") == "1" {
		t.Skip("SIGNALFORGE_NO_TORCH=1: skipping a test that runs PyTorch")
	}
}

func fixture(name string) string { return filepath.Join(repoRoot, name) }

// exampleArgs turns one example of a command's -h into argument lists (one
// per `&&`-joined command, without the leading "signalforge"): fixture
// paths are made relative to this package, and /tmp/… paths are moved into
// tmp so that tests never share files.
func exampleArgs(t *testing.T, cmd, tmp string) [][]string {
	t.Helper()
	var out [][]string
	for _, part := range strings.Split(cmd, " && ") {
		f := strings.Fields(part)
		if len(f) < 2 || f[0] != "signalforge" {
			t.Fatalf("example %q does not start with signalforge", part)
		}
		args := f[1:]
		for i, a := range args {
			switch {
			case strings.HasPrefix(a, "/tmp/"):
				args[i] = filepath.Join(tmp, strings.TrimPrefix(a, "/tmp/"))
			case strings.Contains(a, "/testdata/"):
				if _, err := os.Stat(fixture(a)); err != nil {
					t.Errorf("example %q: fixture %s: %v", part, a, err)
				}
				args[i] = fixture(a)
			}
		}
		out = append(out, args)
	}
	return out
}

// checkHelp: -h prints the synopsis paragraph, every example and the flags,
// and exits 0; each example names at least one committed fixture, and all
// the fixtures it names exist.
func checkHelp(t *testing.T, cmd, about string, examples []example) {
	t.Helper()
	code, _, stderr := cliRun(t, "", cmd, "-h")
	if code != 0 {
		t.Fatalf("%s -h: exit %d", cmd, code)
	}
	for _, want := range []string{"Usage: signalforge " + cmd, strings.SplitN(about, "\n", 2)[0], "Examples (from the repository root):", "Flags:", "-register", "-registry"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("%s -h lacks %q:\n%s", cmd, want, stderr)
		}
	}
	if len(examples) < 2 || len(examples) > 4 {
		t.Errorf("%d examples, want 2 to 4", len(examples))
	}
	for _, ex := range examples {
		if !strings.Contains(stderr, ex.cmd) || !strings.Contains(stderr, ex.what) {
			t.Errorf("%s -h lacks the example %q", cmd, ex.cmd)
		}
		if !strings.Contains(ex.cmd, "/testdata/") {
			t.Errorf("example %q uses no committed fixture", ex.cmd)
		}
		exampleArgs(t, ex.cmd, t.TempDir()) // checks that the fixtures exist
	}
}

func TestConvertHelp(t *testing.T) {
	checkHelp(t, "convert", convertAbout, convertExamples)
}

// TestConvertExamples runs every example of `signalforge convert -h` as
// written (outputs moved to a temporary folder). Those without -reference
// verify against live PyTorch through the bridge, on a state dict and a
// TorchScript archive whose specs have layers without weights.
func TestConvertExamples(t *testing.T) {
	t.Parallel()
	for i, ex := range convertExamples {
		t.Run(strings.Fields(ex.what)[1], func(t *testing.T) {
			t.Parallel()
			if !strings.Contains(ex.cmd, "-reference") {
				needTorch(t)
			}
			tmp := t.TempDir()
			for _, args := range exampleArgs(t, ex.cmd, tmp) {
				code, out, stderr := cliRun(t, "", args...)
				if code != 0 {
					t.Fatalf("example %d: exit %d\n%s%s", i, code, out, stderr)
				}
				if !strings.Contains(out, "verify: ok") || !strings.Contains(out, "wrote ") {
					t.Errorf("example %d did not verify and write:\n%s", i, out)
				}
				if strings.Contains(ex.cmd, "-benchmark") && !strings.Contains(out, "speed-up") {
					t.Errorf("example %d printed no benchmark table:\n%s", i, out)
				}
			}
		})
	}
}

// TestConvertRegisterRecordsLineage: the bridge path (no -reference) on a
// TorchScript archive, then --register: the new version's lineage holds
// the checkpoint, its sha256, the conversion parameters and the benchmark.
func TestConvertRegisterRecordsLineage(t *testing.T) {
	t.Parallel()
	needTorch(t)
	dir := t.TempDir()
	reg := filepath.Join(dir, "reg")
	src := fixture("convert/testdata/mlp_script.pt")
	code, out, stderr := cliRun(t, reg, "convert", "-spec", fixture("convert/testdata/mlp_script.spec.json"),
		"-features", "a,b,c,d,e,f,g,h", "-o", filepath.Join(dir, "m.onnx"), "-benchmark", "-bench-batches", "1", "-bench-iterations", "5",
		"--register", "mlp:v1.0", src)
	if code != 0 {
		t.Fatalf("exit %d\n%s%s", code, out, stderr)
	}
	if !strings.Contains(out, "verify: ok") || !strings.Contains(out, "registered mlp:v1.0 (staging) in "+reg) {
		t.Fatalf("output:\n%s", out)
	}
	v := registryGet(t, reg, "mlp", "v1.0")
	abs, _ := filepath.Abs(src)
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	l := v.Lineage
	if l.SourceCheckpoint != abs || l.SourceSHA256 != sha256Hex(data) || l.Conversion["exporter"] != "go" ||
		l.Conversion["source_format"] != "TorchScript archive" || l.Conversion["opset"] != "14" {
		t.Errorf("lineage %+v", l)
	}
	if l.Benchmarks["p50_us_batch1"] <= 0 || l.Benchmarks["torch_p50_us_batch1"] <= 0 {
		t.Errorf("benchmarks %v", l.Benchmarks)
	}
	if strings.Join(v.Features, ",") != "a,b,c,d,e,f,g,h" {
		t.Errorf("features %v", v.Features)
	}
	written, err := os.ReadFile(filepath.Join(dir, "m.onnx"))
	if err != nil || sha256Hex(written) != v.Artifact.SHA256 {
		t.Errorf("the registered artifact is not the written file (%v)", err)
	}
}

func registryGet(t *testing.T, dir, name, version string) registry.Version {
	t.Helper()
	r, err := registry.Open(context.Background(), registry.Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	v, err := r.Get(context.Background(), registry.Ref{Name: name, Version: version})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// TestConvertRefusesBadOutputAndRegister: the output may not be the input
// (by path, by another spelling of it, or through a link), --register needs
// a valid name and -features. Each is refused before any work, and the
// source is untouched.
func TestConvertRefusesBadOutputAndRegister(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "x.pt")
	orig, err := os.ReadFile(fixture("convert/testdata/mlp_state.pt"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(src, orig, 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.pt")
	if err := os.Symlink(src, link); err != nil {
		t.Fatal(err)
	}
	spec := fixture("convert/testdata/mlp_state.spec.json")
	ref := fixture("convert/testdata/mlp_state.ref.json")
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"-o", src, src}, "is the input file itself"},
		{[]string{"-o", filepath.Join(dir, "sub", "..", "x.pt"), src}, "is the input file itself"},
		{[]string{"-o", link, src}, "is the input file itself"},
		{[]string{"-o", src, link}, "is the input file itself"},
		{[]string{"-o", filepath.Join(dir, "x.onnx"), "--register", "../x", "-features", "a,b,c,d,e,f,g,h", src}, `"../x" must start with a letter or digit`},
		{[]string{"-o", filepath.Join(dir, "x.onnx"), "--register", "mlp:v/1", "-features", "a,b,c,d,e,f,g,h", src}, "version"},
		{[]string{"-o", filepath.Join(dir, "x.onnx"), "--register", "mlp", src}, "--register needs -features"},
	} {
		args := append([]string{"convert", "-spec", spec, "-reference", ref}, tt.args...)
		code, _, stderr := cliRun(t, filepath.Join(dir, "reg"), args...)
		if code != 1 || !strings.Contains(stderr, tt.want) {
			t.Errorf("%v: exit %d, stderr %q; want %q", tt.args, code, stderr, tt.want)
		}
	}
	if now, err := os.ReadFile(src); err != nil || !bytes.Equal(now, orig) {
		t.Fatalf("the source changed (%v)", err)
	}
	assertDir(t, dir, "link.pt", "x.pt")
}

// TestConvertFailureWritesNothing: when verification fails, no output file
// (and no temporary file) is left behind, and an existing output is kept.
func TestConvertFailureWritesNothing(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out.onnx")
	// A reference whose first output is off by 1.
	ref, err := convert.ReadReferenceFile(fixture("convert/testdata/mlp_state.ref.json"))
	if err != nil {
		t.Fatal(err)
	}
	ref.Cases[0].Outputs[0].Data[0]++
	bad, err := json.Marshal(ref)
	if err != nil {
		t.Fatal(err)
	}
	badPath := filepath.Join(t.TempDir(), "bad.ref.json")
	if err := os.WriteFile(badPath, bad, 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"convert", "-spec", fixture("convert/testdata/mlp_state.spec.json"),
		"-reference", badPath, "-o", out, fixture("convert/testdata/mlp_state.pt")}
	code, stdout, stderr := cliRun(t, "", args...)
	if code != 1 || strings.Contains(stdout, "wrote") || !strings.Contains(stderr, "differ from the reference") {
		t.Fatalf("exit %d\n%s%s", code, stdout, stderr)
	}
	assertDir(t, dir)
	if err := os.WriteFile(out, []byte("previous"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, _ := cliRun(t, "", args...); code != 1 {
		t.Fatalf("exit %d", code)
	}
	if b, _ := os.ReadFile(out); string(b) != "previous" {
		t.Errorf("a failed conversion replaced the existing output")
	}
	assertDir(t, dir, "out.onnx")
}

// assertDir fails unless dir holds exactly the named entries.
func assertDir(t *testing.T, dir string, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if strings.Join(got, ",") != strings.Join(names, ",") {
		t.Errorf("%s holds %v, want %v", dir, got, names)
	}
}

// TestConvertRefusesBadFlagsAndInputs: flags are checked before anything is
// read or run, with a message naming the flag (-seq-len 0 used to surface
// PyTorch's RuntimeError), and inputs that are not regular files are
// refused before they are read (/dev/zero used to be read until the
// process was OOM-killed).
func TestConvertRefusesBadFlagsAndInputs(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo.pt")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	src := fixture("convert/testdata/mlp_state.pt")
	spec := fixture("convert/testdata/mlp_state.spec.json")
	ref := fixture("convert/testdata/mlp_state.ref.json")
	out := filepath.Join(dir, "x.onnx")
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"-seq-len", "0", src}, "-seq-len 0: want 1 to 65536"},
		{[]string{"-seq-len", "-5", src}, "-seq-len -5"},
		{[]string{"-seq-len", "100000000", src}, "-seq-len 100000000"},
		{[]string{"-bench-iterations", "0", src}, "-bench-iterations 0"},
		{[]string{"-bench-batches", "1,0", src}, `-bench-batches "1,0": batch size 0`},
		{[]string{"-bench-batches", "", src}, "want a list of batch sizes"},
		{[]string{"-opset", "9", src}, "-opset 9: want 13 to 17"},
		{[]string{"-rtol", "-1", src}, "-rtol -1"},
		{[]string{"-atol", "NaN", src}, "-atol NaN"},
		{[]string{"-exporter", "tf", src}, `-exporter "tf"`},
		{[]string{"-input-name", "x", "-output-name", "x", src}, "must differ"},
		{[]string{"-input-shape", "-1,0", src}, "-input-shape -1,0: size 0"},
		{[]string{"/dev/zero"}, "/dev/zero: not a regular file"},
		{[]string{"-exporter", "torch", "/dev/zero"}, "/dev/zero: not a regular file"},
		{[]string{fifo}, fifo + ": not a regular file"},
		{[]string{dir}, dir + ": is a directory"},
		{[]string{"-spec", fifo, src}, fifo + ": not a regular file"},
		{[]string{"-reference", "/dev/zero", src}, "/dev/zero: not a regular file"},
	} {
		args := append([]string{"convert", "-spec", spec, "-reference", ref, "-o", out}, tt.args...)
		code, stdout, stderr := cliRun(t, "", args...)
		if code != 1 || !strings.Contains(stderr, tt.want) || strings.Contains(stdout, "converted") {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit 1 and %q", tt.args, code, stdout, stderr, tt.want)
		}
	}
	assertDir(t, dir, "fifo.pt")
}

// hostileArchive is D1's file: two entries named archive/data.pkl, the
// first (the one torch.load took) running `touch marker` through
// os.system, the last mlp_state.pt's benign state dict (the one the Go
// reader took), followed by mlp_state.pt's other entries.
func hostileArchive(t *testing.T, marker string) string {
	t.Helper()
	src, err := os.ReadFile(fixture("convert/testdata/mlp_state.pt"))
	if err != nil {
		t.Fatal(err)
	}
	zr, err := zip.NewReader(bytes.NewReader(src), int64(len(src)))
	if err != nil {
		t.Fatal(err)
	}
	cmd := "touch " + marker
	payload := []byte("\x80\x02cos\nsystem\nX")
	payload = binary.LittleEndian.AppendUint32(payload, uint32(len(cmd)))
	payload = append(append(payload, cmd...), "\x85R."...)
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	add := func(name string, data []byte) {
		w, err := zw.CreateHeader(&zip.FileHeader{Name: name, Method: zip.Store})
		if err != nil {
			t.Fatal(err)
		}
		w.Write(data)
	}
	add("archive/data.pkl", payload)
	for _, f := range zr.File {
		rc, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		_, rest, _ := strings.Cut(f.Name, "/")
		add("archive/"+rest, data)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "hostile.pt")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestConvertNeverRunsTheFile is D1 end to end: the hostile archive given
// to `signalforge convert` with verification through the real PyTorch
// bridge (and with the torch exporter, the benchmark and even
// -trust-pickle) is refused as ambiguous, and its payload never runs.
func TestConvertNeverRunsTheFile(t *testing.T) {
	needTorch(t)
	marker := filepath.Join(t.TempDir(), "pwned")
	src := hostileArchive(t, marker)
	spec := fixture("convert/testdata/mlp_state.spec.json")
	out := filepath.Join(t.TempDir(), "x.onnx")
	for _, extra := range [][]string{
		nil,
		{"-exporter", "torch", "-input-shape", "-1,8"},
		{"-benchmark", "-bench-iterations", "1"},
		{"-trust-pickle"},
		{"-trust-pickle", "-exporter", "torch", "-input-shape", "-1,8"},
	} {
		args := append(append([]string{"convert", "-spec", spec, "-o", out}, extra...), src)
		code, stdout, stderr := cliRun(t, "", args...)
		if code != 1 || !strings.Contains(stderr, `two entries named "archive/data.pkl"`) {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want the ambiguous archive refused", extra, code, stdout, stderr)
		}
		if _, err := os.Stat(marker); err == nil {
			t.Fatalf("%v: the file's payload ran (%s exists)", extra, marker)
		}
	}
	if _, err := os.Stat(out); err == nil {
		t.Errorf("%s written", out)
	}
}

// TestConvertTrustFlags: -allow-class refuses system modules and
// functions before anything is read, -load-limit names the limits it
// sets, and a file over a limit is refused naming the flag that raises it.
func TestConvertTrustFlags(t *testing.T) {
	src := fixture("convert/testdata/mlp_state.pt")
	spec := fixture("convert/testdata/mlp_state.spec.json")
	ref := fixture("convert/testdata/mlp_state.ref.json")
	out := filepath.Join(t.TempDir(), "x.onnx")
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"-allow-class", "os.system"}, "--allow-class os.system: os is a system or library module"},
		{[]string{"-allow-class", "builtins.eval"}, "--allow-class builtins.eval"},
		{[]string{"-allow-class", "subprocess.Popen"}, "--allow-class subprocess.Popen"},
		{[]string{"-load-limit", "MaxPickleDepth=1"}, "over the MaxPickleDepth limit of 1 (raise LoadOptions.MaxPickleDepth, or signalforge convert -load-limit MaxPickleDepth=N)"},
		{[]string{"-load-limit", "MaxBogus=3"}, `unknown limit "MaxBogus"`},
		{[]string{"-load-limit", "MaxTensorBytes=0"}, "want NAME=N with N ≥ 1"},
	} {
		args := append(append([]string{"convert", "-spec", spec, "-reference", ref, "-o", out}, tt.args...), src)
		code, stdout, stderr := cliRun(t, "", args...)
		if code == 0 || !strings.Contains(stderr, tt.want) {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want %q", tt.args, code, stdout, stderr, tt.want)
		}
	}
	// Raised, the limit lets the file through.
	code, stdout, stderr := cliRun(t, "", "convert", "-spec", spec, "-reference", ref, "-o", out,
		"-load-limit", "MaxPickleDepth=64", "-load-limit", "MaxTensorBytes=1000000", src)
	if code != 0 || !strings.Contains(stdout, "verify: ok") {
		t.Errorf("raised limits: exit %d, %s%s", code, stdout, stderr)
	}
}
