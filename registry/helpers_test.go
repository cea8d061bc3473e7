package registry_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/signalforge/signalforge/onnx/onnxtest"
	"github.com/signalforge/signalforge/registry"
)

// onnxModel returns a tiny MLP whose metadata lists features (or, with
// noMeta, none).
func onnxModel(t testing.TB, seed uint64, features ...string) []byte {
	t.Helper()
	b, err := modelBytes(seed, features...)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func modelBytes(seed uint64, features ...string) ([]byte, error) {
	m, err := onnxtest.NewMLP(onnxtest.MLPConfig{Sizes: []int{len(features), 2}, Seed: seed, Features: features})
	if err != nil {
		return nil, err
	}
	return m.Bytes()
}

func openReg(t testing.TB, dir string) *registry.Registry {
	t.Helper()
	r, err := registry.Open(context.Background(), registry.Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func ref(s string) registry.Ref {
	r, err := registry.ParseRef(s)
	if err != nil {
		panic(err)
	}
	return r
}

// checkConsistent verifies the invariants a registry must keep whatever
// happened to it (including SIGKILL mid-write): every version's artifact is
// present and intact, each model's production traffic totals 100 or 0,
// the audit log's Seqs are 1..n without gaps, and replaying the audit log's
// changes gives exactly the current status and traffic of every version.
func checkConsistent(t testing.TB, dir string) (versions int) {
	t.Helper()
	ctx := context.Background()
	s, err := registry.OpenFileStore(dir)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer s.Close()
	ms, err := s.Models(ctx)
	if err != nil {
		t.Fatalf("Models: %v", err)
	}
	evs, err := s.Events(ctx, "", 0)
	if err != nil {
		t.Fatalf("Events: %v", err)
	}
	seq, _ := s.Seq(ctx)
	if uint64(len(evs)) != seq {
		t.Fatalf("%d events but Seq %d", len(evs), seq)
	}
	replay := map[registry.Ref]registry.State{}
	for i, e := range evs {
		if e.Seq != uint64(i+1) {
			t.Fatalf("event %d has Seq %d", i, e.Seq)
		}
		for _, c := range e.Changes {
			r := registry.Ref{Name: e.Name, Version: c.Version}
			if replay[r] != c.Before {
				t.Fatalf("event %d: %s was %+v, the event says %+v", e.Seq, r, replay[r], c.Before)
			}
			replay[r] = c.After
		}
	}
	for _, m := range ms {
		total := 0.0
		for _, v := range m.Versions {
			versions++
			if got := replay[v.Ref()]; got != (registry.State{Status: v.Status, Traffic: v.Traffic}) {
				t.Fatalf("%s is %s %v%% but the audit log replays to %+v", v.Ref(), v.Status, v.Traffic, got)
			}
			delete(replay, v.Ref())
			data, err := s.ReadArtifact(ctx, v.Artifact.SHA256)
			if err != nil {
				t.Fatalf("%s: artifact: %v", v.Ref(), err)
			}
			sum := sha256.Sum256(data)
			if hex.EncodeToString(sum[:]) != v.Artifact.SHA256 || int64(len(data)) != v.Artifact.Size {
				t.Fatalf("%s: artifact does not match its sha256/size", v.Ref())
			}
			if v.Status == registry.StatusProduction {
				total += v.Traffic
			} else if v.Traffic != 0 {
				t.Fatalf("%s is %s with traffic %v", v.Ref(), v.Status, v.Traffic)
			}
		}
		if math.Abs(total-100) > 1e-6 && total != 0 {
			t.Fatalf("model %s: production traffic totals %v", m.Name, total)
		}
	}
	if len(replay) != 0 {
		t.Fatalf("the audit log has versions the state does not: %v", replay)
	}
	return versions
}

// snapshot returns the registry directory's committed content (state.json
// and the artifact names) to compare before and after a refused call.
func snapshot(t testing.TB, dir string) string {
	t.Helper()
	state, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	var arts []string
	filepath.WalkDir(filepath.Join(dir, "artifacts"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			arts = append(arts, p)
		}
		return nil
	})
	slices.Sort(arts)
	audit, _ := os.ReadFile(filepath.Join(dir, "audit.log"))
	return fmt.Sprintf("%s\n%q\n%s", state, arts, audit)
}
