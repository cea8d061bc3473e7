package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/onnx/onnxtest"
	"github.com/signalforge/signalforge/registry"
	"github.com/signalforge/signalforge/tensor"
)

// modelsRun runs `signalforge models args…` against the registry in dir.
// The engine check uses the real ONNX Runtime (found in the project's
// .deps folder, as `make test` installs it).
func modelsRun(t *testing.T, dir string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	return modelsRunAs(t, dir, "tester", args...)
}

// modelsRunAs is modelsRun with $USER set to user ("" for unset).
func modelsRunAs(t *testing.T, dir, user string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	e := &env{stdout: &out, stderr: &errb, getenv: func(k string) string {
		if k == modelsEnvRegistry {
			return dir
		}
		if k == "USER" {
			return user
		}
		return os.Getenv(k)
	}}
	code = run(context.Background(), e, append([]string{"models"}, args...))
	return code, out.String(), errb.String()
}

func modelsWriteMLP(t *testing.T, dir, name string, seed uint64) string {
	t.Helper()
	m, err := onnxtest.NewMLP(onnxtest.MLPConfig{Sizes: []int{2, 4, 1}, Seed: seed, Features: []string{"rsi_14", "macd"}})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := m.Save(path); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestModelsCLI(t *testing.T) {
	dir := t.TempDir()
	reg := filepath.Join(dir, "reg")
	a := modelsWriteMLP(t, dir, "a.onnx", 1)
	b := modelsWriteMLP(t, dir, "b.onnx", 2)
	if code, _, errs := modelsRun(t, reg, "list"); code != 1 || !strings.Contains(errs, "no registry in") {
		t.Fatalf("list without a registry: exit %d, %s", code, errs)
	}
	if _, err := os.Stat(reg); !os.IsNotExist(err) {
		t.Fatalf("list created the registry folder: %v", err)
	}
	ok := func(want string, args ...string) string {
		t.Helper()
		code, out, errs := modelsRun(t, reg, args...)
		if code != 0 || !strings.Contains(out, want) {
			t.Fatalf("models %q: exit %d\nstdout: %s\nstderr: %s\nwant stdout containing %q", args, code, out, errs, want)
		}
		return out
	}
	fail := func(wantCode int, want string, args ...string) {
		t.Helper()
		code, out, errs := modelsRun(t, reg, args...)
		if code != wantCode || !strings.Contains(errs, want) {
			t.Fatalf("models %q: exit %d (want %d)\nstdout: %s\nstderr: %s\nwant stderr containing %q", args, code, wantCode, out, errs, want)
		}
	}
	ok("registered lstm_model:v1 (staging)", "register", "--name", "lstm_model", "--metric", "val_mae=0.021", "--tag", "team=quant", a)
	ok("registered lstm_model:v2", "register", b, "--name", "lstm_model", "--features", "rsi_14,macd", "--parent", "v1",
		"--source", a, "--conversion", "opset=17", "--bench", "p50_us=2.6")
	ok("lstm_model traffic: v1=100%", "promote", "lstm_model:v1", "--traffic", "5")
	ok("lstm_model traffic: v1=95% v2=5%", "promote", "--traffic", "5", "lstm_model:v2")
	ok("v1=50% v2=50%", "traffic", "lstm_model:v2", "50")
	out := ok("lstm_model  v1       production  50%", "list")
	if !strings.Contains(out, "val_mae=0.021") || !strings.Contains(out, "team=quant") {
		t.Fatalf("list lacks metrics or tags:\n%s", out)
	}
	show := ok("parent:", "show", "lstm_model:v2")
	norm := strings.Join(strings.Fields(show), " ")
	for _, want := range []string{"traffic: 50%", "features: rsi_14, macd", "input: x float32 [-1 2]", "conversion: opset=17", "benchmarks: p50_us=2.6", "source sha256: e", "by tester"} {
		if !strings.Contains(norm, want) {
			t.Errorf("show lacks %q:\n%s", want, show)
		}
	}
	fail(1, "serves 50% of traffic", "archive", "lstm_model:v1")
	ok("v1=80% v2=20%", "traffic", "lstm_model", "v1=80,v2=20")
	fail(1, "must total 100%", "traffic", "lstm_model", "v1=80,v2=30")
	ok("rolled back", "traffic", "--rollback", "lstm_model")
	ok("lstm_model traffic: v2=100%", "archive", "--force", "lstm_model:v1")
	hist := ok("SEQ", "history", "lstm_model")
	for _, want := range []string{"register", "promote", "set-traffic", "set-split", "rollback", "archive", "tester", "v1=95% v2=5%"} {
		if !strings.Contains(hist, want) {
			t.Errorf("history lacks %q:\n%s", want, hist)
		}
	}

	// --json gives the registry's types.
	var vs []registry.Version
	if err := json.Unmarshal([]byte(ok("[", "list", "--all", "--json")), &vs); err != nil || len(vs) != 2 {
		t.Fatalf("list --json: %v, %d versions", err, len(vs))
	}
	if vs[0].Status != registry.StatusArchived || vs[1].Traffic != 100 || vs[1].Lineage.Parent != "v1" {
		t.Fatalf("list --json = %+v", vs)
	}
	if _, err := os.Stat(vs[1].Artifact.Path); err != nil || !filepath.IsAbs(vs[1].Artifact.Path) {
		t.Fatalf("artifact path %q: %v; want an existing absolute path", vs[1].Artifact.Path, err)
	}
	var evs []registry.Event
	if err := json.Unmarshal([]byte(ok("[", "history", "--json", "lstm_model")), &evs); err != nil || len(evs) != 8 {
		t.Fatalf("history --json: %v, %d events", err, len(evs))
	}
	if got := ok("lstm_model", "list"); strings.Contains(got, "archived") {
		t.Fatalf("list shows archived versions without --all:\n%s", got)
	}
	ok("v2", "list", "--production")
	ok("lstm_model  v1", "list", "--tag", "team=quant")

	// Mistakes: clear errors, exit 1 for bad input, 2 for bad usage.
	fail(1, "not found: version lstm_model:v9", "show", "lstm_model:v9")
	fail(1, "invalid name", "show", "../x:v1")
	fail(1, "invalid name", "register", "--name", "../x", a)
	fail(1, "features do not match", "register", "--name", "lstm_model", "--features", "rsi_14,volume", a)
	fail(2, "--traffic is required", "promote", "lstm_model:v2")
	fail(2, "wrong number of arguments", "show")
	fail(2, "unknown command", "frobnicate")
	fail(1, "cannot go from archived to production", "promote", "--traffic", "5", "lstm_model:v1")
}

// TestModelsRegisterLoadsInONNXRuntime: a file that parses as ONNX but that
// ONNX Runtime cannot load is refused, and the registry stays empty.
func TestModelsRegisterLoadsInONNXRuntime(t *testing.T) {
	dir := t.TempDir()
	reg := filepath.Join(dir, "reg")
	bld := onnx.NewBuilder("bad", onnx.Opset(17))
	x := bld.Input("x", tensor.Float32, onnx.Dim("batch"), onnx.Dim(2))
	y := bld.Node("NoSuchOperator", []string{x}, onnx.Outputs("y"))
	bld.Output(y, tensor.Float32, onnx.Dim("batch"), onnx.Dim(2))
	bld.SetMetadata("signalforge.features", "rsi_14,macd")
	m, err := bld.Build()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "bad.onnx")
	if err := onnx.Save(path, m); err != nil {
		t.Fatal(err)
	}
	code, _, errs := modelsRun(t, reg, "register", "--name", "m", path)
	if code != 1 || !strings.Contains(errs, "invalid artifact") || !strings.Contains(errs, "onnxruntime") {
		t.Fatalf("register of a model ONNX Runtime cannot load: exit %d, %s", code, errs)
	}
	code, out, _ := modelsRun(t, reg, "list", "--json")
	if code != 0 || strings.TrimSpace(out) != "[]" {
		t.Fatalf("the registry is not empty after a refused register: %s", out)
	}
	// The same file passes the parse-only check, which is why the engine
	// check is the default.
	code, out, errs = modelsRun(t, reg, "register", "--name", "m", "--skip-engine-check", path)
	if code != 0 || !strings.Contains(out, "registered m:v1") {
		t.Fatalf("--skip-engine-check: exit %d, %s %s", code, out, errs)
	}
}

// TestModelsCannotTakeAModelOffline: rolling back a model's first
// promotion, rolling back to its registration, or force-archiving its only
// serving version are refused, say why and how to do it anyway, and leave
// the model serving; --allow-empty does it.
func TestModelsCannotTakeAModelOffline(t *testing.T) {
	dir := t.TempDir()
	reg := filepath.Join(dir, "reg")
	a := modelsWriteMLP(t, dir, "a.onnx", 1)
	run := func(wantCode int, want string, args ...string) string {
		t.Helper()
		code, out, errs := modelsRun(t, reg, args...)
		if code != wantCode || !strings.Contains(out+errs, want) {
			t.Fatalf("models %q: exit %d (want %d)\nstdout: %s\nstderr: %s\nwant output containing %q", args, code, wantCode, out, errs, want)
		}
		return out + errs
	}
	run(0, "registered forecast_mlp:v1", "register", "--skip-engine-check", "--name", "forecast_mlp", a)
	run(0, "forecast_mlp traffic: v1=100%", "promote", "--traffic", "100", "forecast_mlp:v1")
	var evs []registry.Event
	if err := json.Unmarshal([]byte(run(0, "[", "history", "--json", "forecast_mlp")), &evs); err != nil || len(evs) != 2 {
		t.Fatalf("history: %v, %d events", err, len(evs))
	}
	registered := strconv.FormatUint(evs[0].Seq, 10)
	for _, args := range [][]string{
		{"traffic", "--rollback", "forecast_mlp"},
		{"traffic", "--rollback", "--to", registered, "forecast_mlp"},
		{"archive", "--force", "forecast_mlp:v1"},
	} {
		msg := run(1, "would leave forecast_mlp with no serving version", args...)
		if !strings.Contains(msg, "--allow-empty") {
			t.Errorf("models %q: the refusal does not name --allow-empty: %s", args, msg)
		}
		run(0, "forecast_mlp  v1       production  100%", "list")
	}
	run(2, "go with --rollback", "traffic", "--allow-empty", "forecast_mlp:v1", "50")
	run(0, "forecast_mlp traffic: (none)", "traffic", "--rollback", "--allow-empty", "forecast_mlp")
	run(0, "forecast_mlp traffic: v1=100%", "traffic", "--rollback", "forecast_mlp")
	run(0, "forecast_mlp traffic: (none)", "archive", "--force", "--allow-empty", "forecast_mlp:v1")
}

// TestModelsHelpAndActor: every default is printed once; only commands
// that change the registry take -actor; with $USER unset the audit log
// records the OS account (or "unknown"), never a blank.
func TestModelsHelpAndActor(t *testing.T) {
	dir := t.TempDir()
	reg := filepath.Join(dir, "reg")
	for _, s := range modelsSubs() {
		code, out, errs := modelsRun(t, reg, s.name, "-h")
		help := out + errs
		// migrate names its two registries with --from and --to.
		if code != 0 || strings.Contains(help, "-registry") != (s.name != "migrate") {
			t.Fatalf("%s -h: exit %d\n%s", s.name, code, help)
		}
		for _, line := range strings.Split(help, "\n") {
			if strings.Count(line, "default") > 1 {
				t.Errorf("%s -h states a default twice: %q", s.name, line)
			}
		}
		if got := strings.Contains(help, "-actor"); got != s.mutates {
			t.Errorf("%s -h lists -actor: %v; want %v (only commands that change the registry)\n%s", s.name, got, s.mutates, help)
		}
	}
	if code, _, errs := modelsRun(t, reg, "list", "--actor", "x"); code != 2 || !strings.Contains(errs, "-actor") {
		t.Fatalf("list --actor: exit %d, %s; want a usage error", code, errs)
	}

	want := modelsUnknownActor
	if u, err := user.Current(); err == nil && u.Username != "" {
		want = u.Username
	}
	a := modelsWriteMLP(t, dir, "a.onnx", 1)
	if code, out, errs := modelsRunAs(t, reg, "", "register", "--skip-engine-check", "--name", "m", a); code != 0 {
		t.Fatalf("register: exit %d, %s %s", code, out, errs)
	}
	if code, out, errs := modelsRunAs(t, reg, "", "promote", "--actor", " ", "--traffic", "100", "m:v1"); code != 0 {
		t.Fatalf("promote: exit %d, %s %s", code, out, errs)
	}
	_, out, _ := modelsRunAs(t, reg, "", "history", "--json", "m")
	var evs []registry.Event
	if err := json.Unmarshal([]byte(out), &evs); err != nil || len(evs) != 2 {
		t.Fatalf("history: %v, %s", err, out)
	}
	if evs[0].Actor != want || evs[1].Actor != modelsUnknownActor {
		t.Fatalf("actors with $USER unset = %q, %q (blank --actor); want %q, %q", evs[0].Actor, evs[1].Actor, want, modelsUnknownActor)
	}
	_, out, _ = modelsRunAs(t, reg, "", "history", "m")
	if !strings.Contains(out, want) {
		t.Fatalf("history does not show the actor %q:\n%s", want, out)
	}
}

// TestModelsRegisterLineageAndVersions: lineage that the converter and
// quantizer wrote into the file reaches the registry (explicit flags win),
// and automatic versions continue after v<int>.<anything>.
func TestModelsRegisterLineageAndVersions(t *testing.T) {
	dir := t.TempDir()
	reg := filepath.Join(dir, "reg")
	src := strings.Repeat("5e", 32)
	bld := onnx.NewBuilder("quantized", onnx.Opset(17))
	x := bld.Input("x", tensor.Float32, onnx.Dim("batch"), onnx.Dim(2))
	y := bld.Node("Relu", []string{x}, onnx.Outputs("y"))
	bld.Output(y, tensor.Float32, onnx.Dim("batch"), onnx.Dim(2))
	bld.SetMetadata("signalforge.features", "rsi_14,macd")
	bld.SetMetadata(registry.MetaSourceSHA256, src)
	bld.SetMetadata(registry.MetaConvertPrefix+"opset", "17")
	bld.SetMetadata(registry.MetaQuantizePrefix+"mode", "dynamic")
	bld.SetMetadata(registry.MetaQuantizePrefix+"parent", "m:v1.0")
	m, err := bld.Build()
	if err != nil {
		t.Fatal(err)
	}
	q := filepath.Join(dir, "q.onnx")
	if err := onnx.Save(q, m); err != nil {
		t.Fatal(err)
	}
	a := modelsWriteMLP(t, dir, "a.onnx", 1)
	for _, v := range []string{"v1.0", "v2.0", "v3.0"} {
		if code, _, errs := modelsRun(t, reg, "register", "--skip-engine-check", "--name", "m", "--version", v, a); code != 0 {
			t.Fatalf("register %s: %s", v, errs)
		}
	}
	// Loaded in ONNX Runtime (the default check), then registered as v4.
	code, out, errs := modelsRun(t, reg, "register", "--name", "m", q)
	if code != 0 || !strings.Contains(out, "registered m:v4") {
		t.Fatalf("register after v3.0: exit %d, %s %s; want m:v4", code, out, errs)
	}
	_, out, _ = modelsRun(t, reg, "show", "--json", "m:v4")
	var v registry.Version
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatal(err)
	}
	if v.Lineage.SourceSHA256 != src || v.Lineage.Conversion["opset"] != "17" || v.Lineage.Quantization["mode"] != "dynamic" || v.Lineage.Parent != "v1.0" {
		t.Fatalf("lineage from the file's metadata = %+v", v.Lineage)
	}
	mine := strings.Repeat("0f", 32)
	code, out, errs = modelsRun(t, reg, "register", "--skip-engine-check", "--name", "m", "--source-sha256", mine, "--parent", "v2.0", "--conversion", "opset=13", q)
	if code != 0 || !strings.Contains(out, "registered m:v5") {
		t.Fatalf("register with explicit lineage: exit %d, %s %s", code, out, errs)
	}
	_, out, _ = modelsRun(t, reg, "show", "m:v5")
	norm := strings.Join(strings.Fields(out), " ")
	for _, want := range []string{"source sha256: " + mine, "parent: v2.0", "conversion: opset=13", "quantization: mode=dynamic parent=m:v1.0"} {
		if !strings.Contains(norm, want) {
			t.Errorf("show lacks %q:\n%s", want, out)
		}
	}
}

// TestModelsRefusesMixedFeatures: QA's repro through the CLI. v4.0 takes
// f000…f099 while v1.0 and v2.0 take the market features (v2.0 in another
// order): promoting, splitting or registering v4.0 into the serving split
// fails with the registry's message and changes nothing; v2.0 is accepted.
func TestModelsRefusesMixedFeatures(t *testing.T) {
	dir := t.TempDir()
	reg := filepath.Join(dir, "reg")
	write := func(name string, seed uint64, features ...string) string {
		t.Helper()
		m, err := onnxtest.NewMLP(onnxtest.MLPConfig{Sizes: []int{len(features), 1}, Seed: seed, Features: features})
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, name)
		if err := m.Save(path); err != nil {
			t.Fatal(err)
		}
		return path
	}
	wide := make([]string, 100)
	for i := range wide {
		wide[i] = fmt.Sprintf("f%03d", i)
	}
	v1 := write("v1.onnx", 1, "rsi_14", "macd", "ema_12")
	v2 := write("v2.onnx", 2, "ema_12", "rsi_14", "macd")
	v4 := write("v4.onnx", 4, wide...)
	run := func(wantCode int, want string, args ...string) string {
		t.Helper()
		code, out, errs := modelsRun(t, reg, args...)
		if code != wantCode || !strings.Contains(out+errs, want) {
			t.Fatalf("models %q: exit %d (want %d)\nstdout: %s\nstderr: %s\nwant output containing %q", args, code, wantCode, out, errs, want)
		}
		return out
	}
	run(0, "registered forecast_mlp:v1.0", "register", "--skip-engine-check", "--name", "forecast_mlp", "--version", "v1.0", "--status", "production", "--traffic", "100", v1)
	run(0, "registered forecast_mlp:v2.0", "register", "--skip-engine-check", "--name", "forecast_mlp", "--version", "v2.0", v2)
	run(0, "registered forecast_mlp:v4.0", "register", "--skip-engine-check", "--name", "forecast_mlp", "--version", "v4.0", v4)
	run(0, "forecast_mlp traffic: v1.0=50% v2.0=50%", "promote", "--traffic", "50", "forecast_mlp:v2.0")
	refusal := " cannot share traffic with forecast_mlp:v1.0: it takes features v1.0 does not (f000, f001, f002, f003, … 100 in all) and lacks rsi_14, macd, ema_12"
	for _, tc := range []struct {
		refused string
		args    []string
	}{
		{"forecast_mlp:v4.0", []string{"promote", "--traffic", "50", "forecast_mlp:v4.0"}},
		{"forecast_mlp:v4.0", []string{"traffic", "forecast_mlp", "v1.0=40,v2.0=40,v4.0=20"}},
		{"forecast_mlp:v4.1", []string{"register", "--skip-engine-check", "--name", "forecast_mlp", "--version", "v4.1", "--status", "production", "--traffic", "10", v4}},
	} {
		before := run(0, "[", "history", "--json", "forecast_mlp")
		run(1, tc.refused+refusal, tc.args...)
		if after := run(0, "[", "history", "--json", "forecast_mlp"); after != before {
			t.Errorf("models %q was refused but the audit log changed:\n%s", tc.args, after)
		}
	}
	run(0, "forecast_mlp  v4.0     staging", "list")
	run(1, "not found", "show", "forecast_mlp:v4.1")
}

// TestModelsRegisterAdmitsOnlyWhatCanServe (D2, D3): `models register`
// refuses, with the reason and writing nothing, a model whose warm-up at
// the servers' batch sizes needs more memory than allowed (also with
// --skip-engine-check: that part is static) and a model whose weights are
// external data at a relative path — even run from the folder where that
// path resolves, since a server loads the stored artifact elsewhere.
func TestModelsRegisterAdmitsOnlyWhatCanServe(t *testing.T) {
	dir := t.TempDir()
	reg := filepath.Join(dir, "reg")

	bld := onnx.NewBuilder("huge", onnx.Opset(17))
	x := bld.Input("x", tensor.Float32, onnx.Dim("batch"), onnx.Dim(100000000), onnx.Dim(4))
	axes := bld.Initializer("axes", tensor.Must(tensor.Shape{1}, []int64{1}))
	bld.Output(bld.Node("ReduceSum", []string{x, axes}, onnx.Attr("keepdims", 0), onnx.Outputs("y")), tensor.Float32, onnx.Dim("batch"), onnx.Dim(4))
	bld.SetMetadata("signalforge.features", "a,b,c,d")
	m, err := bld.Build()
	if err != nil {
		t.Fatal(err)
	}
	huge := filepath.Join(dir, "huge.onnx")
	if err := onnx.Save(huge, m); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"register", "--name", "huge", huge},
		{"register", "--name", "huge", "--skip-engine-check", huge},
	} {
		code, out, errs := modelsRun(t, reg, args...)
		if code != 1 || !strings.Contains(errs, `input "x" declared [batch,100000000,4] needs`) || !strings.Contains(errs, "allowed") {
			t.Errorf("models %q: exit %d\nstdout: %s\nstderr: %s", args, code, out, errs)
		}
		t.Logf("models %q: %s", args, strings.TrimSpace(errs))
	}
	if code, _, errs := modelsRun(t, reg, "register", "--name", "huge", "--max-warmup-bytes", "4294967296", huge); !strings.Contains(errs, "warm-up batch 32") || code != 1 {
		t.Errorf("with a 4 GiB budget the refusal is at batch 32: %s", errs)
	}

	// External data beside the model, registered from that folder.
	src := filepath.Join(dir, "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	ext := onnxtest.MustMLP(1, 2, 1)
	blob, err := onnxtest.Externalize(ext.Model, "weights.bin")
	if err != nil {
		t.Fatal(err)
	}
	if err := ext.Save(filepath.Join(src, "model.onnx")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "weights.bin"), blob, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Chdir(src)
	code, out, errs := modelsRun(t, reg, "register", "--name", "ext", "model.onnx")
	if code != 1 || !strings.Contains(errs, `tensor "fc0.weight" keeps its data in the external file "weights.bin"`) || !strings.Contains(errs, "save_as_external_data=False") {
		t.Errorf("register of a model with external data: exit %d\nstdout: %s\nstderr: %s", code, out, errs)
	}
	t.Logf("external data: %s", strings.TrimSpace(errs))

	code, out, _ = modelsRun(t, reg, "list", "--json")
	if code != 0 || strings.TrimSpace(out) != "[]" {
		t.Fatalf("the registry is not empty after refused registrations: %s", out)
	}
}
