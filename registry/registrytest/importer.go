package registrytest

import (
	"context"
	"errors"
	"testing"

	"github.com/signalforge/signalforge/registry"
)

// runImport checks a store that implements registry.Importer: an import
// into empty storage gives back exactly the models and events imported
// (Seq included, also through another handle, and the next change
// continues the numbering); an import into storage holding anything, or of
// events with gaps or models breaking the rules, is refused and changes
// nothing.
func runImport(t *testing.T, open func(t *testing.T) (registry.Store, Opener)) {
	ctx := context.Background()
	// content is the models and events of a registry that went through
	// every kind of change.
	content := func(t *testing.T) ([]registry.Model, []registry.Event) {
		t.Helper()
		src, _ := open(t)
		reg, err := registry.Open(ctx, registry.Config{Store: src, PollInterval: -1})
		if err != nil {
			t.Fatal(err)
		}
		defer reg.Close()
		history(t, reg)
		ms, err := src.Models(ctx)
		if err != nil {
			t.Fatal(err)
		}
		evs, err := src.Events(ctx, "", 0)
		if err != nil {
			t.Fatal(err)
		}
		return ms, evs
	}
	importer := func(t *testing.T) (registry.Importer, registry.Store, Opener) {
		t.Helper()
		s, o := open(t)
		imp, ok := s.(registry.Importer)
		if !ok {
			t.Fatalf("%T does not implement registry.Importer", s)
		}
		return imp, s, o
	}
	probe, _ := open(t)
	if _, ok := probe.(registry.Importer); !ok {
		t.Logf("%T does not implement registry.Importer: import checks not run", probe)
		return
	}

	t.Run("ImportKeepsModelsEventsAndSeq", func(t *testing.T) {
		ms, evs := content(t)
		imp, s, o := importer(t)
		if err := imp.Import(ctx, ms, evs); err != nil {
			t.Fatal(err)
		}
		s2 := o(t) // what another process reads
		defer s2.Close()
		for _, st := range []registry.Store{s, s2} {
			gotMs, err := st.Models(ctx)
			if err != nil {
				t.Fatal(err)
			}
			gotEvs, err := st.Events(ctx, "", 0)
			if err != nil {
				t.Fatal(err)
			}
			seq, err := st.Seq(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !sameJSON(gotMs, ms) {
				t.Fatalf("imported models:\n%s\nwant\n%s", jsonOf(gotMs), jsonOf(ms))
			}
			if !sameJSON(gotEvs, evs) {
				t.Fatalf("imported events:\n%s\nwant\n%s", jsonOf(gotEvs), jsonOf(evs))
			}
			if want := evs[len(evs)-1].Seq; seq != want {
				t.Fatalf("Seq after import = %d; want %d", seq, want)
			}
			if byName, _ := st.Events(ctx, "gru", 3); len(byName) == 0 || byName[0].Name != "gru" || byName[0].Seq <= 3 {
				t.Fatalf("Events(gru, after 3) after import = %+v", byName)
			}
		}
		commit(t, s2, "new_model", "v1", 1)
		if seq, _ := s.Seq(ctx); seq != uint64(len(evs)+1) {
			t.Fatalf("Seq after an import of %d events and one change = %d; want %d", len(evs), seq, len(evs)+1)
		}
	})

	t.Run("ImportRefusesNonEmptyStore", func(t *testing.T) {
		ms, evs := content(t)
		imp, s, _ := importer(t)
		commit(t, s, "m", "v1", 1)
		before, _ := s.Models(ctx)
		if err := imp.Import(ctx, ms, evs); !errors.Is(err, registry.ErrNotEmpty) {
			t.Fatalf("Import into a store holding a model = %v; want ErrNotEmpty", err)
		}
		if after, _ := s.Models(ctx); !sameJSON(before, after) {
			t.Fatalf("a refused Import changed the models: %s", jsonOf(after))
		}
		if seq, _ := s.Seq(ctx); seq != 1 {
			t.Fatalf("Seq = %d after a refused Import; want 1", seq)
		}

		imp2, s2, _ := importer(t)
		if err := imp2.Import(ctx, ms, evs); err != nil {
			t.Fatal(err)
		}
		if err := imp2.Import(ctx, ms, evs); !errors.Is(err, registry.ErrNotEmpty) {
			t.Fatalf("a second Import = %v; want ErrNotEmpty", err)
		}
		if got, _ := s2.Events(ctx, "", 0); len(got) != len(evs) {
			t.Fatalf("%d events after a refused second Import; want %d", len(got), len(evs))
		}
	})

	t.Run("ImportRefusesBadInput", func(t *testing.T) {
		ms, evs := content(t)
		gap := append([]registry.Event(nil), evs...)
		gap[2].Seq = 7
		bad := make([]registry.Model, len(ms))
		for i, m := range ms {
			bad[i] = m.Clone()
		}
		bad[0].Versions[0].Traffic = 500
		for _, c := range []struct {
			name   string
			models []registry.Model
			events []registry.Event
		}{
			{"events with a gap", ms, gap},
			{"a model breaking the rules", bad, evs},
			{"a model listed twice", append(ms[:1:1], ms[0]), evs},
		} {
			t.Run(c.name, func(t *testing.T) {
				imp, s, _ := importer(t)
				if err := imp.Import(ctx, c.models, c.events); err == nil {
					t.Fatal("Import succeeded")
				}
				if seq, _ := s.Seq(ctx); seq != 0 {
					t.Fatalf("Seq = %d after a refused Import; want 0", seq)
				}
				if got, _ := s.Models(ctx); len(got) != 0 {
					t.Fatalf("a refused Import left models: %s", jsonOf(got))
				}
			})
		}
	})
}
