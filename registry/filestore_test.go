package registry_test

import (
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
