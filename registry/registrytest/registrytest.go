// Package registrytest is the conformance suite for registry.Store
// implementations. A store passes if
//
//	registrytest.Run(t, func(t *testing.T) registrytest.Opener { … })
//
// passes, where each call returns an Opener over fresh, empty storage and
// every call of the Opener opens another handle on that same storage (as a
// second process would).
package registrytest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/signalforge/signalforge/registry"
)

// Opener opens a handle on one store's storage.
type Opener func(t *testing.T) registry.Store

// Run runs the conformance suite. newStorage must return an Opener over
// fresh, empty storage. Besides storage semantics it checks recovery: the
// store refuses to commit a model that breaks the registry's rules, and
// registry.Rebuild over its audit log gives back exactly its models. A
// store that implements registry.Importer is also checked to import a
// registry whole into empty storage and to refuse anything else; one that
// implements registry.Leaser, to grant each lease to one holder at a time
// (renewal, expiry, release and the fencing epoch).
func Run(t *testing.T, newStorage func(t *testing.T) Opener) {
	open := func(t *testing.T) (registry.Store, Opener) {
		o := newStorage(t)
		s := o(t)
		t.Cleanup(func() { s.Close() })
		return s, o
	}
	ctx := context.Background()

	t.Run("Empty", func(t *testing.T) {
		s, _ := open(t)
		if seq, err := s.Seq(ctx); err != nil || seq != 0 {
			t.Fatalf("Seq = %d, %v; want 0, nil", seq, err)
		}
		if ms, err := s.Models(ctx); err != nil || len(ms) != 0 {
			t.Fatalf("Models = %v, %v; want none", ms, err)
		}
		if _, err := s.Model(ctx, "m"); !errors.Is(err, registry.ErrNotFound) {
			t.Fatalf("Model(unknown) error = %v; want ErrNotFound", err)
		}
		if evs, err := s.Events(ctx, "", 0); err != nil || len(evs) != 0 {
			t.Fatalf("Events = %v, %v; want none", evs, err)
		}
	})

	t.Run("UpdateCommitsModelAndEvents", func(t *testing.T) {
		s, _ := open(t)
		commit(t, s, "b", "v1", 2)
		commit(t, s, "a", "v1", 1)
		commit(t, s, "b", "v2", 1)
		if seq, _ := s.Seq(ctx); seq != 4 {
			t.Fatalf("Seq = %d; want 4", seq)
		}
		ms, err := s.Models(ctx)
		if err != nil || len(ms) != 2 || ms[0].Name != "a" || ms[1].Name != "b" {
			t.Fatalf("Models = %+v, %v; want a and b, sorted", ms, err)
		}
		b, err := s.Model(ctx, "b")
		if err != nil || len(b.Versions) != 2 || b.Versions[0].Version != "v1" || b.Versions[1].Version != "v2" {
			t.Fatalf("Model(b) = %+v, %v", b, err)
		}
		all, _ := s.Events(ctx, "", 0)
		for i, e := range all {
			if e.Seq != uint64(i+1) {
				t.Fatalf("event %d has Seq %d; want consecutive from 1", i, e.Seq)
			}
		}
		if len(all) != 4 || all[0].Name != "b" || all[2].Name != "a" {
			t.Fatalf("Events = %+v", all)
		}
		bs, _ := s.Events(ctx, "b", 0)
		if len(bs) != 3 {
			t.Fatalf("Events(b) has %d events; want 3", len(bs))
		}
		after, _ := s.Events(ctx, "", 2)
		if len(after) != 2 || after[0].Seq != 3 {
			t.Fatalf("Events(after 2) = %+v; want seqs 3, 4", after)
		}
		if got := after[0].Detail; got != "a:v1 #0" {
			t.Fatalf("event detail = %q; stored events must round-trip", got)
		}
	})

	t.Run("FailedUpdateChangesNothing", func(t *testing.T) {
		s, _ := open(t)
		commit(t, s, "m", "v1", 1)
		boom := errors.New("boom")
		err := s.Update(ctx, "m", func(m *registry.Model) ([]registry.Event, error) {
			m.Versions[0].Status = registry.StatusArchived
			m.Versions = append(m.Versions, registry.Version{Name: "m", Version: "v2"})
			return []registry.Event{{Name: "m"}}, boom
		})
		if !errors.Is(err, boom) {
			t.Fatalf("Update error = %v; want fn's error", err)
		}
		m, _ := s.Model(ctx, "m")
		if len(m.Versions) != 1 || m.Versions[0].Status != registry.StatusStaging {
			t.Fatalf("after a failed Update the model is %+v", m)
		}
		if seq, _ := s.Seq(ctx); seq != 1 {
			t.Fatalf("Seq = %d after a failed Update; want 1", seq)
		}
		// No events means no change either.
		if err := s.Update(ctx, "m", func(m *registry.Model) ([]registry.Event, error) {
			m.Versions = nil
			return nil, nil
		}); err != nil {
			t.Fatal(err)
		}
		if m, _ := s.Model(ctx, "m"); len(m.Versions) != 1 {
			t.Fatalf("an Update without events changed the model: %+v", m)
		}
	})

	t.Run("ReturnsCopies", func(t *testing.T) {
		s, _ := open(t)
		commit(t, s, "m", "v1", 1)
		m, _ := s.Model(ctx, "m")
		m.Versions[0].Tags["k"] = "changed"
		m.Versions[0].Features[0] = "changed"
		m.Versions[0].Status = registry.StatusArchived
		again, _ := s.Model(ctx, "m")
		if v := again.Versions[0]; v.Tags["k"] != "v" || v.Features[0] != "f" || v.Status != registry.StatusStaging {
			t.Fatalf("modifying a returned model changed the store: %+v", v)
		}
	})

	t.Run("PersistsAcrossHandles", func(t *testing.T) {
		s, o := open(t)
		commit(t, s, "m", "v1", 1)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		s2 := o(t)
		defer s2.Close()
		m, err := s2.Model(ctx, "m")
		if err != nil || len(m.Versions) != 1 || m.Versions[0].Tags["k"] != "v" {
			t.Fatalf("reopened Model = %+v, %v", m, err)
		}
		if seq, _ := s2.Seq(ctx); seq != 1 {
			t.Fatalf("reopened Seq = %d; want 1", seq)
		}
	})

	t.Run("SecondHandleSeesChanges", func(t *testing.T) {
		s, o := open(t)
		s2 := o(t)
		defer s2.Close()
		commit(t, s, "m", "v1", 1)
		if seq, _ := s2.Seq(ctx); seq != 1 {
			t.Fatalf("other handle's Seq = %d; want 1", seq)
		}
		commit(t, s2, "m", "v2", 1)
		m, _ := s.Model(ctx, "m")
		if len(m.Versions) != 2 {
			t.Fatalf("first handle sees %d versions; want 2", len(m.Versions))
		}
		evs, _ := s.Events(ctx, "m", 1)
		if len(evs) != 1 || evs[0].Version != "v2" {
			t.Fatalf("first handle's Events(after 1) = %+v", evs)
		}
	})

	t.Run("ConcurrentUpdatesLoseNothing", func(t *testing.T) {
		s, o := open(t)
		s2 := o(t)
		defer s2.Close()
		const workers, each = 6, 8
		var wg sync.WaitGroup
		errs := make(chan error, workers*each)
		for w := range workers {
			st := s
			if w%2 == 1 {
				st = s2 // half the writers go through another handle
			}
			wg.Go(func() {
				for i := range each {
					name := fmt.Sprintf("m%d", w%3)
					errs <- st.Update(ctx, name, func(m *registry.Model) ([]registry.Event, error) {
						v := fmt.Sprintf("w%d-%d", w, i)
						m.Versions = append(m.Versions, version(name, v))
						return []registry.Event{{Name: name, Version: v, Action: registry.ActionRegister}}, nil
					})
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		total := 0
		ms, _ := s.Models(ctx)
		for _, m := range ms {
			total += len(m.Versions)
		}
		if total != workers*each {
			t.Fatalf("%d versions after %d concurrent registrations: updates were lost", total, workers*each)
		}
		evs, _ := s2.Events(ctx, "", 0)
		if len(evs) != workers*each {
			t.Fatalf("%d events; want %d", len(evs), workers*each)
		}
		for i, e := range evs {
			if e.Seq != uint64(i+1) {
				t.Fatalf("event %d has Seq %d", i, e.Seq)
			}
		}
	})

	t.Run("UpdateHonoursContext", func(t *testing.T) {
		s, _ := open(t)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		called := false
		err := s.Update(cctx, "m", func(m *registry.Model) ([]registry.Event, error) {
			called = true
			return nil, nil
		})
		if !errors.Is(err, context.Canceled) || called {
			t.Fatalf("Update with a cancelled ctx = %v (fn called: %v); want context.Canceled before fn", err, called)
		}
		// A writer blocked behind a slow one gives up when its ctx ends.
		hold := make(chan struct{})
		inside := make(chan struct{})
		go s.Update(ctx, "m", func(m *registry.Model) ([]registry.Event, error) {
			close(inside)
			<-hold
			return nil, nil
		})
		<-inside
		tctx, cancel2 := context.WithTimeout(ctx, 20*time.Millisecond)
		defer cancel2()
		err = s.Update(tctx, "m", func(m *registry.Model) ([]registry.Event, error) { return nil, nil })
		close(hold)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("blocked Update = %v; want context.DeadlineExceeded", err)
		}
		commit(t, s, "m", "v1", 1) // and the store still works
	})

	t.Run("Artifacts", func(t *testing.T) {
		s, o := open(t)
		data := []byte("not really onnx, stores do not care")
		sum := sha256.Sum256(data)
		want := hex.EncodeToString(sum[:])
		a, err := s.PutArtifact(ctx, data)
		if err != nil || a.SHA256 != want || a.Size != int64(len(data)) {
			t.Fatalf("PutArtifact = %+v, %v; want sha256 %s", a, err, want)
		}
		again, err := s.PutArtifact(ctx, data)
		if err != nil || again.SHA256 != a.SHA256 {
			t.Fatalf("second PutArtifact = %+v, %v", again, err)
		}
		got, err := s.ReadArtifact(ctx, want)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("ReadArtifact = %q, %v", got, err)
		}
		path, err := s.ArtifactPath(ctx, want)
		if err != nil {
			t.Fatal(err)
		}
		if onDisk, err := os.ReadFile(path); err != nil || !bytes.Equal(onDisk, data) {
			t.Fatalf("ArtifactPath %s holds %q, %v", path, onDisk, err)
		}
		s2 := o(t)
		defer s2.Close()
		if got, err := s2.ReadArtifact(ctx, want); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("other handle's ReadArtifact = %q, %v", got, err)
		}
		for _, bad := range []string{"", "../../etc/passwd", want[:63], "ZZ" + want[2:], hex.EncodeToString(make([]byte, 32))} {
			if _, err := s.ReadArtifact(ctx, bad); !errors.Is(err, registry.ErrNotFound) {
				t.Errorf("ReadArtifact(%q) error = %v; want ErrNotFound", bad, err)
			}
			if _, err := s.ArtifactPath(ctx, bad); !errors.Is(err, registry.ErrNotFound) {
				t.Errorf("ArtifactPath(%q) error = %v; want ErrNotFound", bad, err)
			}
		}
	})

	t.Run("CanaryPlansAndShadowsPersist", func(t *testing.T) {
		s, o := open(t)
		reg, err := registry.Open(ctx, registry.Config{Store: s, PollInterval: -1})
		if err != nil {
			t.Fatal(err)
		}
		defer reg.Close()
		history(t, reg)
		want, err := s.Models(ctx)
		if err != nil {
			t.Fatal(err)
		}

		// Another handle (another process, another replica) sees the
		// plan and the shadow as committed.
		s2 := o(t)
		defer s2.Close()
		gru, err := s2.Model(ctx, "gru")
		if err != nil {
			t.Fatal(err)
		}
		if p := gru.Canary; p == nil || p.Revision != 3 || p.State != registry.CanaryPaused || p.Step != 1 ||
			p.StartedBy != "conformance" || p.LastAction != registry.ActionCanaryPause || len(p.StepsPct) != 3 {
			t.Fatalf("the other handle's gru plan = %+v; want paused at step 1, revision 3, started by conformance", p)
		}
		if sp := gru.Split(); !sp.Equal(registry.Split{"v1": 50, "v2": 50}) {
			t.Fatalf("the other handle's gru split = %v; want the step's 50/50", sp)
		}
		lstm, err := s2.Model(ctx, "lstm_model")
		if err != nil {
			t.Fatal(err)
		}
		if sh := lstm.Shadow; sh == nil || sh.Version != "v2" || sh.Rate != 0.25 || sh.MaxBusy != 0.5 || sh.SetBy != "conformance" {
			t.Fatalf("the other handle's lstm_model shadow = %+v; want v2 at 0.25, max busy 0.5", sh)
		}
		got, err := s2.Models(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !sameJSON(got, want) {
			t.Fatalf("the other handle's models\n%s\ndiffer from\n%s", jsonOf(got), jsonOf(want))
		}

		// A change through the other handle moves the revision on; the
		// first registry's change at the old revision is refused there.
		reg2, err := registry.Open(ctx, registry.Config{Store: s2, PollInterval: -1})
		if err != nil {
			t.Fatal(err)
		}
		defer reg2.Close()
		if p, err := reg2.ResumeCanary(ctx, "gru", "go on"); err != nil || p.Revision != 4 {
			t.Fatalf("ResumeCanary through the other handle = %+v, %v; want revision 4", p, err)
		}
		_, _, err = reg.UpdateCanary(ctx, "gru", 3, func(c *registry.CanaryChange) error {
			c.Plan.Step, c.Action = 2, registry.ActionCanaryPromote
			c.Split = registry.Split{"v1": 0, "v2": 100}
			return nil
		})
		if !errors.Is(err, registry.ErrStaleRevision) {
			t.Fatalf("UpdateCanary at revision 3 after the other handle's change = %v; want ErrStaleRevision", err)
		}
		if sp, _ := reg.Split(ctx, "gru"); !sp.Equal(registry.Split{"v1": 50, "v2": 50}) {
			t.Fatalf("a stale UpdateCanary changed the split to %v", sp)
		}

		// Reopened, the storage still holds them.
		s.Close()
		s3 := o(t)
		defer s3.Close()
		gru, err = s3.Model(ctx, "gru")
		if err != nil || gru.Canary == nil || gru.Canary.Revision != 4 || gru.Canary.State != registry.CanaryRunning {
			t.Fatalf("reopened gru = %+v, %v; want the running plan at revision 4", gru.Canary, err)
		}
		if lstm, err := s3.Model(ctx, "lstm_model"); err != nil || lstm.Shadow == nil || lstm.Shadow.Version != "v2" {
			t.Fatalf("reopened lstm_model shadow = %+v, %v", lstm.Shadow, err)
		}
	})

	runRecovery(t, open)
	runImport(t, open)
	runLeases(t, open)
}

// commit appends version v to model name through s.Update with n events.
func commit(t *testing.T, s registry.Store, name, v string, n int) {
	t.Helper()
	err := s.Update(context.Background(), name, func(m *registry.Model) ([]registry.Event, error) {
		m.Versions = append(m.Versions, version(name, v))
		var evs []registry.Event
		for i := range n {
			evs = append(evs, registry.Event{
				Name: name, Version: v, Action: registry.ActionRegister,
				Time: time.Date(2026, 1, 1, 0, 0, i, 0, time.UTC), Detail: fmt.Sprintf("%s:%s #%d", name, v, i),
				SplitAfter: registry.Split{v: 100},
			})
		}
		return evs, nil
	})
	if err != nil {
		t.Fatalf("Update(%s): %v", name, err)
	}
}

// version returns a staging version of model name that keeps the registry's
// rules (a well-formed artifact, a known status).
func version(name, v string) registry.Version {
	sum := sha256.Sum256([]byte(name + ":" + v))
	return registry.Version{
		Name: name, Version: v, Status: registry.StatusStaging,
		Tags: map[string]string{"k": "v"}, Features: []string{"f"},
		Artifact: registry.Artifact{SHA256: hex.EncodeToString(sum[:]), Size: 1},
	}
}
