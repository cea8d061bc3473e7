package registry_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/signalforge/signalforge/registry"
)

// setup registers versions v1..vn of model m and applies the given split
// (staging versions named in it are promoted), then archives the versions
// listed in archived.
func setup(t *testing.T, n int, split registry.Split, archived ...string) (*registry.Registry, string) {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	r := openReg(t, dir)
	art := onnxModel(t, 1, feats...)
	for range n {
		if _, err := r.Register(ctx, registry.RegisterRequest{Name: "m", ONNX: art}); err != nil {
			t.Fatal(err)
		}
	}
	if len(split) > 0 {
		if _, err := r.SetSplit(ctx, "m", split); err != nil {
			t.Fatal(err)
		}
	}
	for _, v := range archived {
		if _, err := r.Archive(ctx, ref("m:"+v), false); err != nil {
			t.Fatal(err)
		}
	}
	return r, dir
}

func states(t *testing.T, r *registry.Registry) string {
	t.Helper()
	vs, err := r.Versions(context.Background(), "m")
	if err != nil {
		t.Fatal(err)
	}
	out := ""
	for _, v := range vs {
		out += fmt.Sprintf("%s:%s:%s ", v.Version, v.Status, registry.FormatPercent(v.Traffic))
	}
	return out
}

// TestTransitions tries every lifecycle operation from every state.
// v1 production 100%, v2 production 0%, v3 staging, v4 archived.
func TestTransitions(t *testing.T) {
	ctx := context.Background()
	start := registry.Split{"v1": 100, "v2": 0}
	const initial = "v1:production:100 v2:production:0 v3:staging:0 v4:archived:0 "
	for _, tc := range []struct {
		name string
		op   func(r *registry.Registry) error
		want error  // nil: allowed
		end  string // states afterwards (initial if refused)
	}{
		{"staging→production", func(r *registry.Registry) error { _, err := r.Promote(ctx, ref("m:v3"), 10); return err }, nil,
			"v1:production:90 v2:production:0 v3:production:10 v4:archived:0 "},
		{"staging→archived", func(r *registry.Registry) error { _, err := r.Archive(ctx, ref("m:v3"), false); return err }, nil,
			"v1:production:100 v2:production:0 v3:archived:0 v4:archived:0 "},
		{"staging→staging refused", func(r *registry.Registry) error { _, err := r.Demote(ctx, ref("m:v3"), false); return err }, registry.ErrTransition, initial},
		{"staging traffic refused", func(r *registry.Registry) error { _, err := r.SetTraffic(ctx, ref("m:v3"), 10); return err }, registry.ErrTraffic, initial},
		{"production→production refused", func(r *registry.Registry) error { _, err := r.Promote(ctx, ref("m:v1"), 10); return err }, registry.ErrTransition, initial},
		{"production→archived without traffic", func(r *registry.Registry) error { _, err := r.Archive(ctx, ref("m:v2"), false); return err }, nil,
			"v1:production:100 v2:archived:0 v3:staging:0 v4:archived:0 "},
		{"production→archived with traffic refused", func(r *registry.Registry) error { _, err := r.Archive(ctx, ref("m:v1"), false); return err }, registry.ErrTransition, initial},
		{"production→staging without traffic", func(r *registry.Registry) error { _, err := r.Demote(ctx, ref("m:v2"), false); return err }, nil,
			"v1:production:100 v2:staging:0 v3:staging:0 v4:archived:0 "},
		{"production→staging with traffic refused", func(r *registry.Registry) error { _, err := r.Demote(ctx, ref("m:v1"), false); return err }, registry.ErrTransition, initial},
		{"forced archive, no one to take traffic, refused", func(r *registry.Registry) error { _, err := r.Archive(ctx, ref("m:v1"), true); return err }, registry.ErrTransition, initial},
		{"archived→production refused", func(r *registry.Registry) error { _, err := r.Promote(ctx, ref("m:v4"), 10); return err }, registry.ErrTransition, initial},
		{"archived→archived refused", func(r *registry.Registry) error { _, err := r.Archive(ctx, ref("m:v4"), true); return err }, registry.ErrTransition, initial},
		{"archived→staging refused", func(r *registry.Registry) error { _, err := r.Demote(ctx, ref("m:v4"), true); return err }, registry.ErrTransition, initial},
		{"archived traffic refused", func(r *registry.Registry) error { _, err := r.SetTraffic(ctx, ref("m:v4"), 10); return err }, registry.ErrTraffic, initial},
		{"archived in split refused", func(r *registry.Registry) error {
			_, err := r.SetSplit(ctx, "m", registry.Split{"v1": 50, "v4": 50})
			return err
		}, registry.ErrTransition, initial},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, dir := setup(t, 4, start, "v4")
			if got := states(t, r); got != initial {
				t.Fatalf("setup: %s", got)
			}
			err := tc.op(r)
			if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("error = %v; want %v", err, tc.want)
			}
			var te *registry.TransitionError
			if errors.Is(err, registry.ErrTransition) && (!errors.As(err, &te) || te.Reason == "") {
				t.Fatalf("a refused transition must be a *TransitionError with a reason: %v", err)
			}
			if got := states(t, r); got != tc.end {
				t.Fatalf("states = %s; want %s", got, tc.end)
			}
			checkConsistent(t, dir)
		})
	}
}

func TestTrafficRules(t *testing.T) {
	ctx := context.Background()
	r, dir := setup(t, 4, nil)
	step := func(what string, split registry.Split, err error, want registry.Split) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		got, _ := r.Split(ctx, "m")
		if !split.Equal(want) || !got.Equal(want) {
			t.Fatalf("%s: split %v (stored %v); want %v", what, split, got, want)
		}
		if tot := got.Total(); tot != 100 && tot != 0 {
			t.Fatalf("%s: total %v", what, tot)
		}
	}
	refused := func(what string, err, want error) {
		t.Helper()
		if !errors.Is(err, want) {
			t.Fatalf("%s: error %v; want %v", what, err, want)
		}
	}
	s, err := r.Promote(ctx, ref("m:v1"), 5)
	step("first promote gets 100%", s, err, registry.Split{"v1": 100})
	h, _ := r.History(ctx, "m")
	if h[len(h)-1].Detail == "" {
		t.Fatal("the first promote's forced 100% is not explained in the audit log")
	}
	_, err = r.SetTraffic(ctx, ref("m:v1"), 50)
	refused("only version to 50%", err, registry.ErrTraffic)
	s, err = r.Promote(ctx, ref("m:v2"), 5)
	step("canary 5%", s, err, registry.Split{"v1": 95, "v2": 5})
	s, err = r.Promote(ctx, ref("m:v3"), 10)
	step("others rescale proportionally", s, err, registry.Split{"v1": 85.5, "v2": 4.5, "v3": 10})
	s, err = r.SetTraffic(ctx, ref("m:v3"), 50)
	step("SetTraffic rescales the others", s, err, registry.Split{"v1": 47.5, "v2": 2.5, "v3": 50})
	s, err = r.SetTraffic(ctx, ref("m:v2"), 100/3.0)
	step("thirds", s, err, registry.Split{"v1": 47.5 * (200.0 / 3) / 97.5, "v2": 100 / 3.0, "v3": 50 * (200.0 / 3) / 97.5})
	for _, bad := range []float64{-1, 100.5} {
		_, err = r.SetTraffic(ctx, ref("m:v2"), bad)
		refused(fmt.Sprint("pct ", bad), err, registry.ErrTraffic)
	}
	_, err = r.SetSplit(ctx, "m", registry.Split{"v1": 50, "v2": 40})
	refused("split totals 90", err, registry.ErrTraffic)
	_, err = r.SetSplit(ctx, "m", registry.Split{"v1": 60, "v2": 50})
	refused("split totals 110", err, registry.ErrTraffic)
	s, err = r.SetSplit(ctx, "m", registry.Split{"v1": 70, "v4": 30})
	step("split promotes staging, zeroes the unnamed", s, err, registry.Split{"v1": 70, "v2": 0, "v3": 0, "v4": 30})
	if got := states(t, r); got != "v1:production:70 v2:production:0 v3:production:0 v4:production:30 " {
		t.Fatalf("states = %s", got)
	}
	_, err = r.Archive(ctx, ref("m:v4"), false)
	refused("archive with traffic", err, registry.ErrTransition)
	s, err = r.Archive(ctx, ref("m:v4"), true)
	step("forced archive rescales", s, err, registry.Split{"v1": 100, "v2": 0, "v3": 0})

	// Rollback undoes the last traffic change; twice swaps back.
	_, err = r.Rollback(ctx, "m", 0)
	refused("rollback onto an archived version", err, registry.ErrTransition)
	s, err = r.SetSplit(ctx, "m", registry.Split{"v1": 80, "v2": 20})
	step("split", s, err, registry.Split{"v1": 80, "v2": 20, "v3": 0})
	s, err = r.Rollback(ctx, "m", 0)
	step("rollback", s, err, registry.Split{"v1": 100, "v2": 0, "v3": 0})
	s, err = r.Rollback(ctx, "m", 0)
	step("rollback the rollback", s, err, registry.Split{"v1": 80, "v2": 20, "v3": 0})
	h, _ = r.History(ctx, "m")
	var canary uint64
	for _, e := range h {
		if e.Action == registry.ActionPromote && e.Version == "v2" {
			canary = e.Seq
		}
	}
	s, err = r.Rollback(ctx, "m", canary)
	step("rollback to the canary's split", s, err, registry.Split{"v1": 95, "v2": 5})
	if got := states(t, r); got != "v1:production:95 v2:production:5 v3:staging:0 v4:archived:0 " {
		t.Fatalf("after rollback: %s (versions not in the restored split go back to staging)", got)
	}
	_, err = r.Rollback(ctx, "m", 999)
	refused("rollback to an unknown event", err, registry.ErrNotFound)
	checkConsistent(t, dir)

	// A model whose traffic never changed has nothing to roll back.
	r.Register(ctx, registry.RegisterRequest{Name: "other", ONNX: onnxModel(t, 1, feats...)})
	_, err = r.Rollback(ctx, "other", 0)
	refused("nothing to roll back", err, registry.ErrNotFound)
}

// TestNoOneCommandTakesAModelOffline: every change that would leave a
// serving model with no version serving traffic is refused, leaves the
// registry untouched and names the model; AllowEmpty is the explicit way
// to do it anyway.
func TestNoOneCommandTakesAModelOffline(t *testing.T) {
	ctx := context.Background()
	registerSeq := func(t *testing.T, r *registry.Registry) uint64 {
		h, err := r.History(ctx, "m")
		if err != nil || h[0].Action != registry.ActionRegister {
			t.Fatalf("history: %v, %v", h, err)
		}
		return h[0].Seq
	}
	for _, tc := range []struct {
		name string
		op   func(r *registry.Registry, opts ...registry.ChangeOption) (registry.Split, error)
	}{
		{"undo the first promotion", func(r *registry.Registry, opts ...registry.ChangeOption) (registry.Split, error) {
			return r.Rollback(ctx, "m", 0, opts...)
		}},
		{"roll back to the registration", func(r *registry.Registry, opts ...registry.ChangeOption) (registry.Split, error) {
			return r.Rollback(ctx, "m", registerSeq(t, r), opts...)
		}},
		{"forced archive of the only serving version", func(r *registry.Registry, opts ...registry.ChangeOption) (registry.Split, error) {
			return r.Archive(ctx, ref("m:v1"), true, opts...)
		}},
		{"forced demote of the only serving version", func(r *registry.Registry, opts ...registry.ChangeOption) (registry.Split, error) {
			return r.Demote(ctx, ref("m:v1"), true, opts...)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// v1 promoted (100%), v2 staging: v2 exists so that "empty"
			// is not merely "the model has one version".
			r, dir := setup(t, 2, nil)
			if _, err := r.Promote(ctx, ref("m:v1"), 100); err != nil {
				t.Fatal(err)
			}
			before := snapshot(t, dir)
			_, err := tc.op(r)
			var ese *registry.EmptySplitError
			if !errors.Is(err, registry.ErrNoServing) || !errors.Is(err, registry.ErrTransition) || !errors.As(err, &ese) {
				t.Fatalf("err = %v; want an EmptySplitError (ErrNoServing, ErrTransition)", err)
			}
			if msg := err.Error(); !strings.Contains(msg, "would leave m with no serving version") {
				t.Fatalf("message %q does not say what would happen", msg)
			}
			if after := snapshot(t, dir); after != before {
				t.Fatalf("a refused change wrote to the registry:\nbefore %s\nafter %s", before, after)
			}
			s, err := tc.op(r, registry.AllowEmpty())
			if err != nil || s.Total() != 0 {
				t.Fatalf("with AllowEmpty = %v, %v; want a split with no traffic", s, err)
			}
			checkConsistent(t, dir)
		})
	}

	// Registered straight into production, then rolled back: also refused.
	r := openReg(t, t.TempDir())
	if _, err := r.Register(ctx, registry.RegisterRequest{Name: "p", ONNX: onnxModel(t, 1, feats...), Status: registry.StatusProduction, Traffic: 100}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Rollback(ctx, "p", 0); !errors.Is(err, registry.ErrNoServing) {
		t.Fatalf("rollback of a registration as production = %v; want ErrNoServing", err)
	}

	// What stays as it was: a forced archive with another version to take
	// the traffic, and a rollback between two non-empty splits.
	r2, dir := setup(t, 2, registry.Split{"v1": 50, "v2": 50})
	if s, err := r2.Archive(ctx, ref("m:v1"), true); err != nil || !s.Equal(registry.Split{"v2": 100}) {
		t.Fatalf("forced archive with another serving version = %v, %v", s, err)
	}
	if s, err := r2.Rollback(ctx, "m", 0); !errors.Is(err, registry.ErrTransition) || errors.Is(err, registry.ErrNoServing) {
		t.Fatalf("rollback onto an archived version = %v, %v; want the archived-version refusal", s, err)
	}
	checkConsistent(t, dir)
}

// eventsHook runs hook once, right after the first Events call, to make a
// change land between Rollback's read of the audit log and its update.
type eventsHook struct {
	registry.Store
	hook func()
}

func (s *eventsHook) Events(ctx context.Context, name string, after uint64) ([]registry.Event, error) {
	evs, err := s.Store.Events(ctx, name, after)
	if h := s.hook; h != nil {
		s.hook = nil
		h()
	}
	return evs, err
}

// TestRollbackRace: a split change that lands while Rollback reads the
// audit log is the change Rollback undoes, not the one before it.
func TestRollbackRace(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	fs, err := registry.OpenFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer fs.Close()
	hooked := &eventsHook{Store: fs}
	r, err := registry.Open(ctx, registry.Config{Store: hooked})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cli := openReg(t, dir)
	art := onnxModel(t, 1, feats...)
	for range 2 {
		cli.Register(ctx, registry.RegisterRequest{Name: "m", ONNX: art})
	}
	cli.SetSplit(ctx, "m", registry.Split{"v1": 90, "v2": 10})
	hooked.hook = func() {
		if _, err := cli.SetTraffic(ctx, ref("m:v2"), 50); err != nil {
			t.Error(err)
		}
	}
	s, err := r.Rollback(ctx, "m", 0)
	if err != nil || !s.Equal(registry.Split{"v1": 90, "v2": 10}) {
		t.Fatalf("Rollback = %v, %v; want the 50%% change undone, back to v1=90 v2=10", s, err)
	}
	checkConsistent(t, dir)
}
