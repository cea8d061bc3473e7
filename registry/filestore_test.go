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
