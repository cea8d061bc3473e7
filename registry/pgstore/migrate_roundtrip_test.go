package pgstore_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/signalforge/signalforge/internal/demo"
	"github.com/signalforge/signalforge/internal/testpg"
	"github.com/signalforge/signalforge/registry"
)

// TestMigrateRoundTrip: the demo registry, with a change history on top,
// goes folder → PostgreSQL → a new folder: the same models, the same audit
// history (the audit log byte for byte, sequence numbers included) and
// byte-identical artifacts at every step; a second run copies nothing.
func TestMigrateRoundTrip(t *testing.T) {
	ctx := registry.WithActor(context.Background(), "migrate-test")
	srcDir := filepath.Join(t.TempDir(), "src")
	r, err := registry.Open(ctx, registry.Config{Dir: srcDir, PollInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	if seeded, err := demo.Seed(ctx, r); err != nil || !seeded {
		t.Fatalf("demo.Seed = %v, %v", seeded, err)
	}
	for _, step := range []func() error{
		func() error {
			_, err := r.SetTraffic(ctx, registry.Ref{Name: demo.ModelName, Version: "v2.0"}, 50)
			return err
		},
		func() error { _, err := r.Rollback(ctx, demo.ModelName, 0); return err },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	r.Close()

	src, err := registry.OpenFileStore(srcDir)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	pg := open(t, testpg.NewDatabase(t))
	rep, err := registry.Migrate(ctx, src, pg, registry.MigrateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Verified || rep.BytesCopied == 0 || rep.Events == 0 {
		t.Fatalf("folder → PostgreSQL: %+v", rep)
	}
	again, err := registry.Migrate(ctx, src, pg, registry.MigrateOptions{})
	if err != nil || !again.AlreadyMigrated || again.BytesCopied != 0 {
		t.Fatalf("second run: %+v, %v; want already migrated, nothing copied", again, err)
	}

	backDir := filepath.Join(t.TempDir(), "back")
	back, err := registry.OpenFileStore(backDir)
	if err != nil {
		t.Fatal(err)
	}
	defer back.Close()
	if _, err := registry.Migrate(ctx, pg, back, registry.MigrateOptions{}); err != nil {
		t.Fatal(err)
	}

	for _, s := range []registry.Store{pg, back} {
		wantModels, _ := src.Models(ctx)
		gotModels, err := s.Models(ctx)
		if err != nil || len(gotModels) != len(wantModels) {
			t.Fatalf("models: got %d (%v), want %d", len(gotModels), err, len(wantModels))
		}
		wantEvents, _ := src.Events(ctx, "", 0)
		gotEvents, err := s.Events(ctx, "", 0)
		if err != nil || len(gotEvents) != len(wantEvents) {
			t.Fatalf("events: got %d (%v), want %d", len(gotEvents), err, len(wantEvents))
		}
		for i := range wantEvents {
			if gotEvents[i].Seq != wantEvents[i].Seq || gotEvents[i].Action != wantEvents[i].Action || !gotEvents[i].Time.Equal(wantEvents[i].Time) {
				t.Fatalf("event %d: got %+v, want %+v", i, gotEvents[i], wantEvents[i])
			}
		}
		for _, m := range wantModels {
			for _, v := range m.Versions {
				want, err := src.ReadArtifact(ctx, v.Artifact.SHA256)
				if err != nil {
					t.Fatal(err)
				}
				got, err := s.ReadArtifact(ctx, v.Artifact.SHA256)
				if err != nil || !bytes.Equal(got, want) {
					t.Fatalf("artifact of %s differs after migration (%v)", v.Ref(), err)
				}
			}
		}
	}
	a, err := os.ReadFile(filepath.Join(srcDir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(backDir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Fatal("the audit log after folder → PostgreSQL → folder differs from the original")
	}
}
