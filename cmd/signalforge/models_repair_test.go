package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/signalforge/signalforge/registry"
)

// modelsRepairSetup builds a registry through the CLI with every kind of
// change (register, promote, traffic, split, rollback, archive) and
// returns a func running `signalforge models` on it that checks the exit
// status and output.
func modelsRepairSetup(t *testing.T) (reg string, run func(wantCode int, want string, args ...string) (stdout, stderr string)) {
	t.Helper()
	dir := t.TempDir()
	reg = filepath.Join(dir, "reg")
	run = func(wantCode int, want string, args ...string) (string, string) {
		t.Helper()
		code, out, errs := modelsRun(t, reg, args...)
		if code != wantCode || !strings.Contains(out+errs, want) {
			t.Fatalf("models %q: exit %d (want %d)\nstdout: %s\nstderr: %s\nwant output containing %q", args, code, wantCode, out, errs, want)
		}
		return out, errs
	}
	run(0, "registered lstm_model:v1", "register", "--name", "lstm_model", "--metric", "val_mae=0.021", "--tag", "team=quant",
		"--description", "first", modelsWriteMLP(t, dir, "a.onnx", 1))
	run(0, "registered lstm_model:v2", "register", "--name", "lstm_model", "--parent", "v1", "--conversion", "opset=17", modelsWriteMLP(t, dir, "b.onnx", 2))
	run(0, "v1=100%", "promote", "--traffic", "5", "lstm_model:v1")
	run(0, "v1=95% v2=5%", "promote", "--traffic", "5", "lstm_model:v2")
	run(0, "v1=50% v2=50%", "traffic", "lstm_model:v2", "50")
	run(0, "registered lstm_model:v3", "register", "--name", "lstm_model", modelsWriteMLP(t, dir, "c.onnx", 3))
	run(0, "v1=20% v2=30% v3=50%", "traffic", "lstm_model", "v1=20,v2=30,v3=50")
	run(0, "v1=50% v2=50%", "traffic", "--rollback", "lstm_model")
	run(0, "v2=100%", "archive", "--force", "lstm_model:v1")
	return reg, run
}

// TestModelsRepairRebuildsDeletedState: with state.json deleted, every
// command says the state is missing and how to rebuild it (never "register
// a model first"); `models repair` rebuilds exactly the models, versions
// and splits the registry had.
func TestModelsRepairRebuildsDeletedState(t *testing.T) {
	reg, run := modelsRepairSetup(t)
	before, _ := run(0, "[", "list", "--all", "--json")
	history, _ := run(0, "[", "history", "--json", "lstm_model")
	if err := os.Remove(filepath.Join(reg, "state.json")); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"list"},
		{"show", "lstm_model:v2"},
		{"history", "lstm_model"},
		{"promote", "--traffic", "10", "lstm_model:v3"},
		{"register", "--name", "lstm_model", filepath.Join(reg, "nothing.onnx")},
	} {
		_, errs := run(1, "state.json is missing", args...)
		if strings.Contains(errs, "register a model first") || !strings.Contains(errs, "signalforge models repair --registry "+reg) {
			t.Errorf("models %q without state.json: %s", args, errs)
		}
	}
	if _, err := os.Stat(filepath.Join(reg, "state.json")); err == nil {
		t.Fatal("a command wrote an empty state.json over the registry's history")
	}

	run(0, "dry run: nothing written", "repair", "--dry-run")
	out, _ := run(0, "wrote state.json", "repair")
	for _, want := range []string{"state.json missing", "1 model, 3 versions", "lstm_model: v2=100%", "lstm_model  v1       archived"} {
		if !strings.Contains(out, want) {
			t.Errorf("repair output lacks %q:\n%s", want, out)
		}
	}
	if after, _ := run(0, "[", "list", "--all", "--json"); after != before {
		t.Fatalf("after repair, list gives\n%s\nbefore it gave\n%s", after, before)
	}
	if after, _ := run(0, "[", "history", "--json", "lstm_model"); after != history {
		t.Fatal("repair changed the audit log")
	}
	run(0, "state.json already matches the audit log", "repair")
	run(0, "v2=90% v3=10%", "promote", "--traffic", "10", "lstm_model:v3")
}

// TestModelsRefuseHandEditedTraffic: a state.json hand-edited to give a
// version 500% of traffic is refused by every command with the model,
// version and field named and the repair command; `models repair` keeps
// the edited file aside and restores the state.
func TestModelsRefuseHandEditedTraffic(t *testing.T) {
	reg, run := modelsRepairSetup(t)
	before, _ := run(0, "[", "list", "--all", "--json")
	path := filepath.Join(reg, "state.json")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	edited := strings.Replace(string(data), `"traffic": 100`, `"traffic": 500`, 1)
	if edited == string(data) {
		t.Fatalf("no 100%% traffic to edit in:\n%s", data)
	}
	os.WriteFile(path, []byte(edited), 0o644)
	for _, args := range [][]string{{"list"}, {"traffic", "lstm_model", "v2=50,v3=50"}} {
		_, errs := run(1, `model "lstm_model" version "v2": traffic: 500% is not between 0 and 100`, args...)
		if !strings.Contains(errs, "signalforge models repair --registry "+reg) {
			t.Errorf("models %q: the refusal does not name the repair: %s", args, errs)
		}
	}
	out, _ := run(0, "wrote state.json", "repair")
	if !strings.Contains(out, "state.json invalid: ") || !strings.Contains(out, "kept the old state.json as "+path+".broken-") {
		t.Fatalf("repair output:\n%s", out)
	}
	if after, _ := run(0, "[", "list", "--all", "--json"); after != before {
		t.Fatalf("after repair, list gives\n%s\nbefore the edit\n%s", after, before)
	}
}

// TestModelsRepairFlagsTamperedArtifact: a version whose stored artifact no
// longer matches its sha256 is not rebuilt; repair says so and exits 1.
func TestModelsRepairFlagsTamperedArtifact(t *testing.T) {
	reg, run := modelsRepairSetup(t)
	out, _ := run(0, "[", "list", "--all", "--json")
	var vs []registry.Version
	if err := json.Unmarshal([]byte(out), &vs); err != nil || len(vs) != 3 {
		t.Fatalf("list: %v, %d versions", err, len(vs))
	}
	v3 := vs[2]
	if err := os.WriteFile(v3.Artifact.Path, []byte("not the registered model"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(reg, "state.json"))
	out, errs := run(1, "could not rebuild:", "repair")
	if !strings.Contains(out, "(register lstm_model:v3): registry: invalid artifact: the stored file of artifact "+v3.Artifact.SHA256+" hashes to ") ||
		!strings.Contains(errs, "1 problem:") {
		t.Fatalf("repair output:\n%s\n%s", out, errs)
	}
	out, _ = run(0, "lstm_model  v2", "list", "--all")
	if strings.Contains(out, "v3") {
		t.Fatalf("the tampered version was rebuilt:\n%s", out)
	}
}
