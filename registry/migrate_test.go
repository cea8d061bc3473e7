package registry_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/signalforge/signalforge/internal/demo"
	"github.com/signalforge/signalforge/registry"
)

// demoRegistry builds, in a new folder, the registry `make run` starts
// with (demo.Seed) and then drives it through every kind of change, with
// metrics, tags and lineage: register, promote, traffic, split, rollback,
// archive, demote. It returns the folder.
func demoRegistry(t *testing.T) string {
	t.Helper()
	ctx := registry.WithActor(context.Background(), "migrate-test")
	dir := filepath.Join(t.TempDir(), "src")
	r, err := registry.Open(ctx, registry.Config{Dir: dir, PollInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if seeded, err := demo.Seed(ctx, r); err != nil || !seeded {
		t.Fatalf("demo.Seed = %v, %v", seeded, err)
	}
	art, err := demo.MLP(7, demo.Features, len(demo.Features), 8, 1)
	if err != nil {
		t.Fatal(err)
	}
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(r.Register(ctx, registry.RegisterRequest{Name: demo.ModelName, Version: "v3.0", ONNX: art,
		Metrics: map[string]float64{"val_mae": 0.017}, Tags: map[string]string{"team": "quant"}, Description: "smaller",
		Lineage: registry.Lineage{Parent: "v2.0", SourceCheckpoint: "mlp.pt", Conversion: map[string]string{"opset": "14"},
			Quantization: map[string]string{"mode": "dynamic"}, Benchmarks: map[string]float64{"p50_us": 12.5}}}))
	must(r.Promote(ctx, ref(demo.ModelName+":v3.0"), 10))
	must(r.SetTraffic(ctx, ref(demo.ModelName+":v3.0"), 50))
	must(r.Rollback(ctx, demo.ModelName, 0))
	must(r.SetSplit(ctx, demo.ModelName, registry.Split{"v2.0": 60, "v3.0": 40}))
	must(r.Archive(ctx, ref(demo.ModelName+":v1.0"), false))
	must(r.Demote(ctx, ref(demo.ModelName+":v3.0"), true))
	return dir
}

func openStore(t *testing.T, dir string) *registry.FileStore {
	t.Helper()
	s, err := registry.OpenFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.MarshalIndent(v, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// sameRegistry checks that dst holds exactly src's models and audit log
// (events compared whole, Seq included) and byte-identical artifacts.
func sameRegistry(t *testing.T, src, dst registry.Store) {
	t.Helper()
	ctx := context.Background()
	sm, _ := src.Models(ctx)
	dm, err := dst.Models(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if a, b := mustJSON(t, sm), mustJSON(t, dm); a != b {
		t.Fatalf("models differ:\nsource\n%s\ndestination\n%s", a, b)
	}
	se, _ := src.Events(ctx, "", 0)
	de, err := dst.Events(ctx, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if a, b := mustJSON(t, se), mustJSON(t, de); a != b {
		t.Fatalf("audit logs differ:\nsource\n%s\ndestination\n%s", a, b)
	}
	ss, _ := src.Seq(ctx)
	if ds, _ := dst.Seq(ctx); ss != ds || ss != uint64(len(se)) {
		t.Fatalf("Seq: source %d, destination %d, %d events", ss, ds, len(se))
	}
	for _, m := range sm {
		for _, v := range m.Versions {
			a, err := src.ReadArtifact(ctx, v.Artifact.SHA256)
			if err != nil {
				t.Fatal(err)
			}
			b, err := dst.ReadArtifact(ctx, v.Artifact.SHA256)
			if err != nil {
				t.Fatalf("%s: destination artifact: %v", v.Ref(), err)
			}
			if !bytes.Equal(a, b) {
				t.Fatalf("%s: artifact bytes differ", v.Ref())
			}
		}
	}
}

// TestMigrateDemoRegistryFolderToFolder: the demo registry after every kind
// of change migrates into a new folder with the same versions, the same
// audit log (Seq included) and byte-identical artifacts, streamed; the
// destination works as a registry; a second run copies nothing.
func TestMigrateDemoRegistryFolderToFolder(t *testing.T) {
	ctx := context.Background()
	srcDir := demoRegistry(t)
	dstDir := filepath.Join(t.TempDir(), "dst")
	src, dst := openStore(t, srcDir), openStore(t, dstDir)

	var progress []registry.MigrateProgress
	start := time.Now()
	rep, err := registry.Migrate(ctx, src, dst, registry.MigrateOptions{Progress: func(p registry.MigrateProgress) { progress = append(progress, p) }})
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("migrated %d models, %d versions, %d events, %d artifacts (%d bytes) in %v", rep.Models, rep.Versions, rep.Events, len(rep.Artifacts), rep.BytesCopied, took)
	if rep.Models != 2 || rep.Versions != 4 || rep.Events != 11 || rep.Seq != 11 || len(rep.Artifacts) != 4 {
		t.Fatalf("report %+v; want 2 models, 4 versions, 11 events, 4 artifacts", rep)
	}
	if !rep.Verified || !rep.Streamed || rep.AlreadyMigrated || rep.DryRun {
		t.Fatalf("report flags %+v; want verified and streamed", rep)
	}
	var total int64
	for i, a := range rep.Artifacts {
		if a.Copied != a.Size || a.Present || len(a.Versions) != 1 {
			t.Fatalf("artifact %d: %+v; want copied whole, one version", i, a)
		}
		total += a.Size
	}
	if rep.BytesCopied != total {
		t.Fatalf("BytesCopied %d; the artifacts total %d", rep.BytesCopied, total)
	}
	if len(progress) != 4 || progress[3].Index != 4 || progress[3].Total != 4 || progress[0].Artifact.SHA256 != rep.Artifacts[0].SHA256 {
		t.Fatalf("progress calls %+v", progress)
	}
	sameRegistry(t, src, dst)
	if a, b := filepath.Join(srcDir, "audit.log"), filepath.Join(dstDir, "audit.log"); !sameFile(t, a, b) {
		t.Fatal("audit.log files differ")
	}
	checkConsistent(t, dstDir)

	// The destination is a working registry: it serves the same split and
	// continues the audit log.
	r := openReg(t, dstDir)
	prod, err := r.Production(ctx)
	if err != nil || len(prod) != 2 {
		t.Fatalf("Production = %+v, %v", prod, err)
	}
	before := snapshot(t, dstDir)

	rep2, err := registry.Migrate(ctx, src, dst, registry.MigrateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !rep2.AlreadyMigrated || rep2.BytesCopied != 0 || !rep2.Verified || len(rep2.Artifacts) != 4 {
		t.Fatalf("second run %+v; want already migrated, 0 bytes copied, verified", rep2)
	}
	for _, a := range rep2.Artifacts {
		if a.Copied != 0 || !a.Present {
			t.Fatalf("second run artifact %+v", a)
		}
	}
	if after := snapshot(t, dstDir); after != before {
		t.Fatal("the second run changed the destination")
	}

	if _, err := r.Promote(ctx, ref(demo.ModelName+":v3.0"), 5); err != nil {
		t.Fatal(err)
	}
	if seq, _ := dst.Seq(ctx); seq != 12 {
		t.Fatalf("Seq after a change in the destination = %d; want 12", seq)
	}
}

func sameFile(t *testing.T, a, b string) bool {
	t.Helper()
	da, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	db, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Equal(da, db)
}

// TestMigrateThroughMemoryStore: stores without streaming (the memory
// store) migrate by whole reads, folder → memory → folder, and the round
// trip gives the same registry.
func TestMigrateThroughMemoryStore(t *testing.T) {
	ctx := context.Background()
	src := openStore(t, demoRegistry(t))
	mem := registry.NewMemStore()
	defer mem.Close()
	rep, err := registry.Migrate(ctx, src, mem, registry.MigrateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Streamed || !rep.Verified {
		t.Fatalf("folder → memory report %+v; want verified, not streamed", rep)
	}
	sameRegistry(t, src, mem)
	dstDir := filepath.Join(t.TempDir(), "back")
	back := openStore(t, dstDir)
	if _, err := registry.Migrate(ctx, mem, back, registry.MigrateOptions{}); err != nil {
		t.Fatal(err)
	}
	sameRegistry(t, src, back)
	checkConsistent(t, dstDir)
}

// TestMigrateRefusesOtherContent: a destination holding another registry,
// or an earlier migration of a source that has changed since, is refused
// and left as it was.
func TestMigrateRefusesOtherContent(t *testing.T) {
	ctx := context.Background()
	srcDir := demoRegistry(t)
	src := openStore(t, srcDir)

	otherDir := filepath.Join(t.TempDir(), "other")
	other := openReg(t, otherDir)
	if _, err := other.Register(ctx, registry.RegisterRequest{Name: "m", ONNX: onnxModel(t, 1, feats...)}); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, otherDir)
	_, err := registry.Migrate(ctx, src, openStore(t, otherDir), registry.MigrateOptions{})
	if !errors.Is(err, registry.ErrNotEmpty) || !strings.Contains(err.Error(), "1 models, 1 versions and 1 events") {
		t.Fatalf("Migrate into another registry = %v; want ErrNotEmpty naming what it holds", err)
	}
	if snapshot(t, otherDir) != before {
		t.Fatal("a refused migration changed the destination")
	}

	// The source moves on after a migration.
	dstDir := filepath.Join(t.TempDir(), "dst")
	dst := openStore(t, dstDir)
	if _, err := registry.Migrate(ctx, src, dst, registry.MigrateOptions{}); err != nil {
		t.Fatal(err)
	}
	before = snapshot(t, dstDir)
	if _, err := openReg(t, srcDir).Promote(ctx, ref(demo.ModelName+":v3.0"), 5); err != nil {
		t.Fatal(err)
	}
	_, err = registry.Migrate(ctx, src, dst, registry.MigrateOptions{})
	if !errors.Is(err, registry.ErrNotEmpty) || !strings.Contains(err.Error(), "first 11 of the source's 12 events") {
		t.Fatalf("Migrate after the source changed = %v; want ErrNotEmpty saying the source moved on", err)
	}
	if snapshot(t, dstDir) != before {
		t.Fatal("a refused migration changed the destination")
	}
}

// TestMigrateDryRunWritesNothing: a dry run reports what it would copy
// and leaves the destination without models, events or artifacts.
func TestMigrateDryRunWritesNothing(t *testing.T) {
	ctx := context.Background()
	src := openStore(t, demoRegistry(t))
	dstDir := filepath.Join(t.TempDir(), "dst")
	dst := openStore(t, dstDir)
	before := snapshot(t, dstDir)
	rep, err := registry.Migrate(ctx, src, dst, registry.MigrateOptions{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.DryRun || rep.Verified || len(rep.Artifacts) != 4 || rep.BytesCopied == 0 || rep.Events != 11 {
		t.Fatalf("dry run report %+v", rep)
	}
	if snapshot(t, dstDir) != before {
		t.Fatalf("a dry run wrote into the destination:\n%s", snapshot(t, dstDir))
	}
	if seq, _ := dst.Seq(ctx); seq != 0 {
		t.Fatalf("Seq after a dry run = %d", seq)
	}
}

// TestMigrateStopsAtDamagedSourceArtifact: a source artifact whose bytes no
// longer match its sha256 (changed in place, or grown) stops the
// migration with the artifact and its version named; nothing is imported
// and the damaged bytes never reach the destination, whether the artifact
// is streamed (folder → folder) or read whole (folder → memory).
func TestMigrateStopsAtDamagedSourceArtifact(t *testing.T) {
	ctx := context.Background()
	for _, damage := range []struct {
		name string
		edit func(data []byte) []byte
	}{
		{"a byte changed", func(d []byte) []byte { d[len(d)/2] ^= 0xff; return d }},
		{"bytes appended", func(d []byte) []byte { return append(d, "junk"...) }},
	} {
		for _, to := range []string{"folder", "memory"} {
			t.Run(damage.name+" to "+to, func(t *testing.T) {
				srcDir := demoRegistry(t)
				src := openStore(t, srcDir)
				m, err := src.Model(ctx, demo.ModelName)
				if err != nil {
					t.Fatal(err)
				}
				victim := m.Versions[1] // not the first artifact copied
				path, _ := src.ArtifactPath(ctx, victim.Artifact.SHA256)
				data, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, damage.edit(data), 0o644); err != nil {
					t.Fatal(err)
				}
				var dst registry.Store
				if to == "folder" {
					dst = openStore(t, filepath.Join(t.TempDir(), "dst"))
				} else {
					mem := registry.NewMemStore()
					t.Cleanup(func() { mem.Close() })
					dst = mem
				}
				_, err = registry.Migrate(ctx, src, dst, registry.MigrateOptions{})
				if !errors.Is(err, registry.ErrInvalidArtifact) || !strings.Contains(err.Error(), victim.Artifact.SHA256) || !strings.Contains(err.Error(), victim.Ref().String()) {
					t.Fatalf("Migrate with a damaged artifact = %v; want ErrInvalidArtifact naming %s and %s", err, victim.Artifact.SHA256, victim.Ref())
				}
				if seq, _ := dst.Seq(ctx); seq != 0 {
					t.Fatalf("destination Seq = %d after a failed migration", seq)
				}
				if ms, _ := dst.Models(ctx); len(ms) != 0 {
					t.Fatalf("destination holds %d models after a failed migration", len(ms))
				}
				if _, err := dst.ReadArtifact(ctx, victim.Artifact.SHA256); !errors.Is(err, registry.ErrNotFound) {
					t.Fatalf("the damaged artifact reached the destination: %v", err)
				}
				if fs, ok := dst.(*registry.FileStore); ok {
					tmp, _ := os.ReadDir(filepath.Join(fs.Dir(), "tmp"))
					if len(tmp) != 0 {
						t.Fatalf("the failed copy left %d temporary files", len(tmp))
					}
				}
			})
		}
	}
}

// TestFileStoreImportCrash: what an Import killed after writing audit.log
// but before renaming state.json leaves (a log past the committed size 0)
// is an empty registry, and the next Import commits over it.
func TestFileStoreImportCrash(t *testing.T) {
	ctx := context.Background()
	src := openStore(t, demoRegistry(t))
	ms, _ := src.Models(ctx)
	evs, _ := src.Events(ctx, "", 0)
	data, err := os.ReadFile(filepath.Join(src.Dir(), "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "dst")
	openStore(t, dir).Close()
	if err := os.WriteFile(filepath.Join(dir, "audit.log"), data[:len(data)-7], 0o644); err != nil {
		t.Fatal(err)
	}
	s := openStore(t, dir)
	for _, m := range ms {
		for _, v := range m.Versions {
			data, err := src.ReadArtifact(ctx, v.Artifact.SHA256)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.PutArtifact(ctx, data); err != nil {
				t.Fatal(err)
			}
		}
	}
	if seq, _ := s.Seq(ctx); seq != 0 {
		t.Fatalf("Seq = %d after a crashed import; want 0", seq)
	}
	if got, _ := s.Events(ctx, "", 0); len(got) != 0 {
		t.Fatalf("a crashed import left %d events visible", len(got))
	}
	if err := s.Import(ctx, ms, evs); err != nil {
		t.Fatal(err)
	}
	if !sameFile(t, filepath.Join(src.Dir(), "audit.log"), filepath.Join(dir, "audit.log")) {
		t.Fatal("audit.log after the import differs from the source's")
	}
	checkConsistent(t, dir)
}
