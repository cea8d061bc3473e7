package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/signalforge/signalforge/registry"
)

// modelsListNoPaths returns `models list --all --json` of reg with the
// artifacts' local paths left out (they differ between registries).
func modelsListNoPaths(t *testing.T, reg string) []registry.Version {
	t.Helper()
	code, out, errs := modelsRun(t, reg, "list", "--all", "--json")
	if code != 0 {
		t.Fatalf("list %s: exit %d: %s", reg, code, errs)
	}
	var vs []registry.Version
	if err := json.Unmarshal([]byte(out), &vs); err != nil {
		t.Fatal(err)
	}
	for i := range vs {
		vs[i].Artifact.Path = ""
	}
	return vs
}

// modelsArtifactFiles returns the artifact files of the registry folder
// reg, by name relative to it.
func modelsArtifactFiles(t *testing.T, reg string) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	root := filepath.Join(reg, "artifacts")
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		rel, _ := filepath.Rel(root, p)
		files[rel] = data
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// TestModelsMigrate: `models migrate` copies a registry built through the
// CLI (register, promote, traffic, split, rollback, archive; metrics, tags,
// lineage) into a new folder: the same versions, the same history,
// byte-identical artifacts; a dry run creates nothing; a second run copies
// nothing; a missing source, a destination holding another registry, the
// same folder twice and a postgres:// URL are refused clearly.
func TestModelsMigrate(t *testing.T) {
	reg, run := modelsRepairSetup(t)
	tmp := t.TempDir()
	dst := filepath.Join(tmp, "dst")

	out, _ := run(0, "dry run: would copy", "migrate", "--from", reg, "--to", dst, "--dry-run")
	if !strings.Contains(out, "artifact 3/3 lstm_model:v3") || !strings.Contains(out, "nothing written") {
		t.Fatalf("dry run output:\n%s", out)
	}
	if _, err := os.Stat(dst); !os.IsNotExist(err) {
		t.Fatalf("a dry run created the destination folder: %v", err)
	}

	out, _ = run(0, "migrated "+reg+" to "+dst+": 1 model, 3 versions, 9 events (seq 9), 3 artifacts", "migrate", "--from", reg, "--to", dst)
	for _, want := range []string{"artifact 1/3 lstm_model:v1", "bytes copied (streamed)", "verified: "} {
		if !strings.Contains(out, want) {
			t.Errorf("migrate output lacks %q:\n%s", want, out)
		}
	}
	if a, b := modelsListNoPaths(t, reg), modelsListNoPaths(t, dst); len(a) != 3 || !migrateJSONEqual(t, a, b) {
		t.Fatalf("versions differ:\nsource %+v\ndestination %+v", a, b)
	}
	_, h1, _ := modelsRun(t, reg, "history", "--json", "lstm_model")
	_, h2, _ := modelsRun(t, dst, "history", "--json", "lstm_model")
	if h1 != h2 || !strings.Contains(h1, `"seq": 9`) {
		t.Fatalf("histories differ:\nsource\n%s\ndestination\n%s", h1, h2)
	}
	srcArts, dstArts := modelsArtifactFiles(t, reg), modelsArtifactFiles(t, dst)
	if len(srcArts) != 3 || len(dstArts) != 3 {
		t.Fatalf("%d source and %d destination artifact files; want 3 each", len(srcArts), len(dstArts))
	}
	for name, data := range srcArts {
		if !bytes.Equal(dstArts[name], data) {
			t.Fatalf("artifact %s is not byte-identical in the destination", name)
		}
	}

	run(0, "already migrated: 0 copied", "migrate", "--from", reg, "--to", dst)
	code, js, errs := modelsRun(t, reg, "migrate", "--from", reg, "--to", dst, "--json")
	var rep migrateOutput
	if err := json.Unmarshal([]byte(js), &rep); code != 0 || err != nil {
		t.Fatalf("--json: exit %d, %v\n%s\n%s", code, err, js, errs)
	}
	if !rep.AlreadyMigrated || rep.BytesCopied != 0 || !rep.Verified || rep.Events != 9 || !strings.Contains(errs, "artifact 3/3") {
		t.Fatalf("--json report %+v, progress on stderr:\n%s", rep, errs)
	}

	// The source moves on: migrating again into the old copy is refused.
	run(0, "v2=90% v3=10%", "promote", "--traffic", "10", "lstm_model:v3")
	_, errs = run(1, "holds the first 9 of the source's 10 events", "migrate", "--from", reg, "--to", dst)
	if !strings.Contains(errs, "not empty") {
		t.Errorf("refusal: %s", errs)
	}

	missing := filepath.Join(tmp, "nothing")
	run(1, "--from "+missing+": no registry in "+missing, "migrate", "--from", missing, "--to", filepath.Join(tmp, "x"))
	for _, p := range []string{missing, filepath.Join(tmp, "x")} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Fatalf("a refused migration created %s", p)
		}
	}
	_, errs = run(1, "127.0.0.1:1", "migrate", "--from", reg, "--to", "postgres://sf:s3cret@127.0.0.1:1/registry")
	if strings.Contains(errs, "s3cret") {
		t.Fatalf("postgres refusal must name the host, never the password: %s", errs)
	}
	run(1, "are the same registry", "migrate", "--from", reg, "--to", reg+"/.")
	run(2, "--from and --to are required", "migrate", "--from", reg)
	run(0, "", "migrate", "-h")
}

// TestModelsMigrateDamagedArtifact: a source artifact changed on disk stops
// the migration, naming the artifact and its version; the destination
// folder the command created is removed, and an existing empty one keeps
// no models or events.
func TestModelsMigrateDamagedArtifact(t *testing.T) {
	reg, run := modelsRepairSetup(t)
	vs := modelsListNoPaths(t, reg)
	v2 := vs[1]
	path := filepath.Join(reg, "artifacts", "sha256", v2.Artifact.SHA256[:2], v2.Artifact.SHA256+".onnx")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 1
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "dst")
	_, errs := run(1, "artifact "+v2.Artifact.SHA256+" of lstm_model:v2 in the source", "migrate", "--from", reg, "--to", dst)
	if !strings.Contains(errs, "changed or damaged") || !strings.Contains(errs, "nothing was imported") {
		t.Fatalf("refusal: %s", errs)
	}
	if _, err := os.Stat(dst); !os.IsNotExist(err) {
		t.Fatalf("the failed migration left the destination folder it created: %v", err)
	}
	// Into an existing empty registry: it stays without models or events.
	empty := filepath.Join(t.TempDir(), "empty")
	s, err := registry.OpenFileStore(empty)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	run(1, "changed or damaged", "migrate", "--from", reg, "--to", empty)
	if code, out, _ := modelsRun(t, empty, "list", "--all"); code != 0 || !strings.Contains(out, "no versions in") {
		t.Fatalf("list of the destination after a failed migration: exit %d\n%s", code, out)
	}
	if code, out, _ := modelsRun(t, empty, "history", "--json", "lstm_model"); code == 0 && strings.Contains(out, `"seq"`) {
		t.Fatalf("the destination has history after a failed migration:\n%s", out)
	}
}

func migrateJSONEqual(t *testing.T, a, b any) bool {
	t.Helper()
	ja, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	jb, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Equal(ja, jb)
}
