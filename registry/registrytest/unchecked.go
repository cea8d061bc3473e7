package registrytest

import (
	"context"
	"testing"
	"time"

	"github.com/signalforge/signalforge/registry"
)

// WriteUnchecked commits ref with the given status and traffic (the
// model's only traffic) straight through a second FileStore on dir,
// bypassing the registry's validation — as a registry written by an older
// release, or by hand, can hold a version that does not load.
func WriteUnchecked(t testing.TB, dir string, ref registry.Ref, status registry.Status, traffic float64, artifact []byte, features []string) {
	t.Helper()
	ctx := context.Background()
	st, err := registry.OpenFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	art, err := st.PutArtifact(ctx, artifact)
	if err != nil {
		t.Fatal(err)
	}
	err = st.Update(ctx, ref.Name, func(m *registry.Model) ([]registry.Event, error) {
		now := time.Now()
		m.Versions = append(m.Versions, registry.Version{Name: ref.Name, Version: ref.Version, Status: status, Traffic: traffic,
			Features: features, Artifact: registry.Artifact{SHA256: art.SHA256, Size: art.Size}, CreatedAt: now, UpdatedAt: now})
		ev := registry.Event{Time: now, Action: registry.ActionRegister, Name: ref.Name, Version: ref.Version}
		if traffic > 0 {
			ev.SplitBefore, ev.SplitAfter = registry.Split{}, registry.Split{ref.Version: traffic}
		}
		return []registry.Event{ev}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
