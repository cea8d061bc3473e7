package registry_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/signalforge/signalforge/registry"
	"github.com/signalforge/signalforge/registry/registrytest"
)

func TestFileStoreConformance(t *testing.T) {
	registrytest.Run(t, func(t *testing.T) registrytest.Opener {
		dir := t.TempDir()
		return func(t *testing.T) registry.Store {
			s, err := registry.OpenFileStore(dir)
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
	})
}

// memHandle is one "process's" handle on a shared MemStore: closing it does
// not drop the shared content.
type memHandle struct {
	*registry.MemStore
}

func (memHandle) Close() error { return nil }

func TestMemStoreConformance(t *testing.T) {
	registrytest.Run(t, func(t *testing.T) registrytest.Opener {
		shared := registry.NewMemStore()
		t.Cleanup(func() { shared.Close() })
		return func(t *testing.T) registry.Store { return memHandle{shared} }
	})
}

// TestUncommittedTail: what a writer killed between appending to the audit
// log and renaming the new state leaves behind (a tail past the committed
// size, possibly a half line, and a temporary state file) is invisible to
// readers and cleaned up by the next writer.
func TestUncommittedTail(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	r := openReg(t, dir)
	if _, err := r.Register(ctx, registry.RegisterRequest{Name: "m", ONNX: onnxModel(t, 1, feats...)}); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "audit.log"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"seq":2,"action":"promote","name":"m","version":"v1"}` + "\n" + `{"seq":3,"act`)
	f.Close()
	os.WriteFile(filepath.Join(dir, "tmp", "state.json.123"), []byte(`{"format":1,"seq":3,"mod`), 0o644)

	other := openReg(t, dir) // as another process would
	h, err := other.History(ctx, "m")
	if err != nil || len(h) != 1 {
		t.Fatalf("History = %d events, %v; the uncommitted tail must be invisible", len(h), err)
	}
	if s, err := other.Promote(ctx, ref("m:v1"), 100); err != nil || !s.Equal(registry.Split{"v1": 100}) {
		t.Fatalf("Promote after a crash = %v, %v", s, err)
	}
	h, _ = r.History(ctx, "m")
	if len(h) != 2 || h[1].Seq != 2 || h[1].Action != registry.ActionPromote || h[1].Time.IsZero() {
		t.Fatalf("History = %+v; want the real promote as event 2", h)
	}
	data, _ := os.ReadFile(filepath.Join(dir, "audit.log"))
	if strings.Contains(string(data), `"seq":3`) || strings.Count(string(data), "\n") != 2 {
		t.Fatalf("audit.log still holds the crashed writer's tail:\n%s", data)
	}
	checkConsistent(t, dir)
}

// TestCorruptStateIsReported: a damaged state.json is an error, not an
// empty registry.
func TestCorruptStateIsReported(t *testing.T) {
	dir := t.TempDir()
	s, err := registry.OpenFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	os.WriteFile(filepath.Join(dir, "state.json"), []byte(`{"format":1,"seq":`), 0o644)
	if _, err := registry.OpenFileStore(dir); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("OpenFileStore over a corrupt state = %v", err)
	}
	os.Remove(filepath.Join(dir, "state.json"))
	os.WriteFile(filepath.Join(dir, "audit.log"), []byte("{}\n"), 0o644)
	if _, err := registry.OpenFileStore(dir); err == nil || !strings.Contains(err.Error(), "refusing") {
		t.Fatalf("OpenFileStore with a log but no state = %v", err)
	}
}
