package registry_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/signalforge/signalforge/registry"
)

// TestFileStoreDamagedLeasesRefused: a leases.json that does not parse is
// reported (naming the file) and never silently replaced, since that would
// reset the epochs that fence deposed leaders.
func TestFileStoreDamagedLeasesRefused(t *testing.T) {
	dir := t.TempDir()
	s, err := registry.OpenFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if _, err := s.TryAcquire(ctx, "autopilot", "A", time.Minute); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "leases.json")
	if err := os.WriteFile(path, []byte(`{"autopilot": {"holder": `), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.TryAcquire(ctx, "autopilot", "B", time.Minute); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("TryAcquire over a damaged leases.json: error = %v; want one naming %s", err, path)
	}
	if data, _ := os.ReadFile(path); string(data) != `{"autopilot": {"holder": ` {
		t.Fatalf("leases.json was rewritten: %q", data)
	}
}

func TestLeasesOfClosedStore(t *testing.T) {
	ctx := context.Background()
	f, err := registry.OpenFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []interface {
		registry.Store
		registry.Leaser
	}{registry.NewMemStore(), f} {
		s.Close()
		if _, err := s.TryAcquire(ctx, "autopilot", "A", time.Minute); !errors.Is(err, registry.ErrClosed) {
			t.Errorf("%T: TryAcquire after Close: error = %v; want ErrClosed", s, err)
		}
		if err := s.Release(ctx, "autopilot", "A"); !errors.Is(err, registry.ErrClosed) {
			t.Errorf("%T: Release after Close: error = %v; want ErrClosed", s, err)
		}
		if _, err := s.ReadLease(ctx, "autopilot"); !errors.Is(err, registry.ErrClosed) {
			t.Errorf("%T: ReadLease after Close: error = %v; want ErrClosed", s, err)
		}
	}
}
