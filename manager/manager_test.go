package manager_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/signalforge/signalforge/api"
	"github.com/signalforge/signalforge/batch"
	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/infer/ort"
	"github.com/signalforge/signalforge/internal/demo"
	"github.com/signalforge/signalforge/manager"
	"github.com/signalforge/signalforge/onnx"
	"github.com/signalforge/signalforge/onnx/onnxtest"
	"github.com/signalforge/signalforge/registry"
	"github.com/signalforge/signalforge/registry/registrytest"
	"github.com/signalforge/signalforge/tensor"
)

// recorder wraps the real engine and records what every session it loads
// runs and whether it was closed, by artifact path.
type recorder struct {
	infer.Engine
	mu       sync.Mutex // guards sessions
	sessions []*recSession
}

type recSession struct {
	infer.Session
	path   string
	mu     sync.Mutex // guards batches, closed
	batch  []int      // first dimension of every run's first input
	closed bool
}

func (r *recorder) LoadFile(ctx context.Context, path string, opts infer.Options) (infer.Session, error) {
	s, err := r.Engine.LoadFile(ctx, path, opts)
	if err != nil {
		return nil, err
	}
	rs := &recSession{Session: s, path: path}
	r.mu.Lock()
	r.sessions = append(r.sessions, rs)
	r.mu.Unlock()
	return rs, nil
}

// session returns the last session loaded from path.
func (r *recorder) session(path string) *recSession {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.sessions) - 1; i >= 0; i-- {
		if r.sessions[i].path == path {
			return r.sessions[i]
		}
	}
	return nil
}

func (s *recSession) Run(ctx context.Context, in []tensor.Tensor) ([]tensor.Tensor, error) {
	s.mu.Lock()
	if len(in) > 0 && len(in[0].Shape()) > 0 {
		s.batch = append(s.batch, int(in[0].Shape()[0]))
	}
	s.mu.Unlock()
	return s.Session.Run(ctx, in)
}

func (s *recSession) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	return s.Session.Close()
}

func (s *recSession) state() ([]int, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]int(nil), s.batch...), s.closed
}

type env struct {
	reg *registry.Registry
	eng *recorder
	dir string
}

// newEnv opens a folder registry with the demo models (forecast_mlp
// v1.0 and v2.0 at 80/20, forecast_lstm v1.0) over real ONNX Runtime.
func newEnv(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	eng, err := ort.New(ort.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	dir := t.TempDir()
	reg, err := registry.Open(ctx, registry.Config{Dir: dir, Validator: registry.EngineValidator(eng), PollInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	if _, err := demo.Seed(ctx, reg); err != nil {
		t.Fatal(err)
	}
	return &env{reg: reg, eng: &recorder{Engine: eng}, dir: dir}
}

func logger() *slog.Logger {
	w := io.Discard
	if testing.Verbose() {
		w = os.Stderr
	}
	return slog.New(slog.NewTextHandler(w, nil))
}

// start runs a Manager over e until the test ends and waits for its first
// load.
func (e *env) start(t *testing.T, cfg manager.Config) *manager.Manager {
	t.Helper()
	cfg.Registry, cfg.Engine = e.reg, e.eng
	if cfg.ReconcileRetry == 0 {
		cfg.ReconcileRetry = 50 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = logger()
	}
	m, err := manager.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if err := m.Close(context.Background()); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	select {
	case <-m.Loaded():
	case <-time.After(30 * time.Second):
		t.Fatal("not loaded after 30s")
	}
	return m
}

func (e *env) path(t *testing.T, ref registry.Ref) string {
	t.Helper()
	v, err := e.reg.Get(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	return v.Artifact.Path
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after 20s: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// predict runs one demo row through v's batcher.
func predict(ctx context.Context, v *manager.Version) ([][]float32, error) {
	row := api.Features{}
	for i, name := range demo.Features {
		row[name] = api.Scalar(float64(i) / 10)
	}
	x, err := infer.EncodeRows(v.Predictor(), []api.Features{row})
	if err != nil {
		return nil, err
	}
	out, err := v.Batcher().Predict(ctx, []tensor.Tensor{x})
	if err != nil {
		return nil, err
	}
	return v.Predictor().Decode(out)
}

var (
	mlp1 = registry.Ref{Name: demo.ModelName, Version: "v1.0"}
	mlp2 = registry.Ref{Name: demo.ModelName, Version: "v2.0"}
	lstm = registry.Ref{Name: demo.SeqModelName, Version: "v1.0"}
)

// TestLoadsAndWarmsServingVersions: every production version is loaded
// before Loaded closes, each session already ran at the warm-up batch
// sizes, and an acquired version answers through its batcher.
func TestLoadsAndWarmsServingVersions(t *testing.T) {
	e := newEnv(t)
	m := e.start(t, manager.Config{Batch: batch.Config{MaxBatchSize: 8}})
	var got []string
	for ref := range m.Current().All() {
		got = append(got, ref.String())
	}
	if want := []string{lstm.String(), mlp1.String(), mlp2.String()}; strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("loaded %v, want %v", got, want)
	}
	for _, ref := range []registry.Ref{mlp1, mlp2, lstm} {
		s := e.eng.session(e.path(t, ref))
		if s == nil {
			t.Fatalf("%s: no session loaded from its artifact", ref)
		}
		if runs, _ := s.state(); !slices.Equal(runs, []int{1, 8}) {
			t.Errorf("%s warmed at batch sizes %v before Loaded, want [1 8]", ref, runs)
		}
	}
	v, ok := m.Acquire(mlp1.Name, mlp1.Version)
	if !ok {
		t.Fatal("Acquire(v1.0) failed")
	}
	preds, err := predict(context.Background(), v)
	v.Release()
	if err != nil || len(preds) != 1 || len(preds[0]) != 1 {
		t.Fatalf("predict = %v, %v", preds, err)
	}
	if v.Ref() != mlp1 || len(v.SortedFeatures()) != len(demo.Features) {
		t.Errorf("Ref %v, SortedFeatures %v", v.Ref(), v.SortedFeatures())
	}
	if _, ok := m.Acquire(mlp1.Name, "v9"); ok {
		t.Error("Acquire of a version that does not exist succeeded")
	}
	st := m.Stats()
	if st.Loaded != 3 || st.Loads != 3 || st.Failed != 0 || st.LoadFailures != 0 || st.Reconciles < 1 || st.RegistryStale {
		t.Errorf("Stats = %+v", st)
	}
}

// TestHotSwapOnPromote: a staging version is not loaded (ServeStaging is
// off); promoted, it is loaded and warmed, OnChange sees it serving beside
// the old versions while both are acquirable, and a request holding the
// old version across the swap completes.
func TestHotSwapOnPromote(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	changes := make(chan manager.Change, 16)
	var m *manager.Manager
	acquirable := make(chan bool, 16)
	m = e.start(t, manager.Config{OnChange: func(_ context.Context, c manager.Change) {
		if c.Serving.Get(demo.ModelName, "v3.0") != nil && c.Previous.Get(demo.ModelName, "v3.0") == nil {
			// The new version is published before the hook runs.
			v, ok := m.Acquire(demo.ModelName, "v3.0")
			if ok {
				v.Release()
			}
			acquirable <- ok
		}
		changes <- c
	}})
	first := <-changes
	if !first.First || first.Serving.Len() != 3 || first.Previous.Len() != 0 || len(first.Models) != 2 {
		t.Fatalf("first change: First %v, %d serving, %d before, %d models", first.First, first.Serving.Len(), first.Previous.Len(), len(first.Models))
	}

	held, ok := m.Acquire(mlp1.Name, mlp1.Version)
	if !ok {
		t.Fatal("Acquire(v1.0) failed")
	}
	art, err := demo.MLP(9, demo.Features, 8, 16, 1)
	if err != nil {
		t.Fatal(err)
	}
	v3 := registry.Ref{Name: demo.ModelName, Version: "v3.0"}
	if _, err := e.reg.Register(ctx, registry.RegisterRequest{Name: v3.Name, Version: v3.Version, ONNX: art, Features: demo.Features}); err != nil {
		t.Fatal(err)
	}
	c := <-changes
	if c.First || c.Serving.Get(v3.Name, v3.Version) != nil || m.Current().Get(v3.Name, v3.Version) != nil {
		t.Fatal("a staging version was loaded without ServeStaging")
	}
	if _, err := e.reg.Promote(ctx, v3, 50); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "v3.0 loaded after its promotion", func() bool { return m.Current().Get(v3.Name, v3.Version) != nil })
	if !<-acquirable {
		t.Error("v3.0 was not acquirable when OnChange ran")
	}
	if runs, _ := e.eng.session(e.path(t, v3)).state(); !slices.Equal(runs, []int{1, 32}) {
		t.Errorf("v3.0 served after warm-up runs at %v, want [1 32]", runs)
	}
	// All traffic to v3.0, the old versions archived: they stop serving.
	if _, err := e.reg.SetSplit(ctx, demo.ModelName, registry.Split{"v3.0": 100}); err != nil {
		t.Fatal(err)
	}
	for _, ref := range []registry.Ref{mlp1, mlp2} {
		if _, err := e.reg.Archive(ctx, ref, false); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "v1.0 and v2.0 leave the snapshot", func() bool {
		return m.Current().Get(mlp1.Name, mlp1.Version) == nil && m.Current().Get(mlp2.Name, mlp2.Version) == nil
	})
	if _, ok := m.Acquire(mlp1.Name, mlp1.Version); ok {
		t.Error("Acquire(v1.0) succeeded after it stopped serving")
	}
	// The request that held v1.0 across the swap still completes.
	if _, err := predict(ctx, held); err != nil {
		t.Fatalf("a request holding v1.0 across the swap failed: %v", err)
	}
	held.Release()
	waitFor(t, "v1.0 closed after its last request", func() bool { _, closed := e.eng.session(e.path(t, mlp1)).state(); return closed })
	if _, err := predict(ctx, held); !errors.Is(err, batch.ErrClosed) {
		t.Errorf("predict on a retired version = %v, want batch.ErrClosed", err)
	}
	v, ok := m.Acquire(v3.Name, v3.Version)
	if !ok {
		t.Fatal("Acquire(v3.0) failed")
	}
	defer v.Release()
	if _, err := predict(ctx, v); err != nil {
		t.Fatal(err)
	}
}

// TestArchiveDrainsAndCloses: an archived version leaves the snapshot at
// once but is closed only when the request holding it releases it.
func TestArchiveDrainsAndCloses(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	m := e.start(t, manager.Config{})
	held, ok := m.Acquire(mlp2.Name, mlp2.Version)
	if !ok {
		t.Fatal("Acquire(v2.0) failed")
	}
	if _, err := e.reg.Archive(ctx, mlp2, true); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "v2.0 leaves the snapshot", func() bool { return m.Current().Get(mlp2.Name, mlp2.Version) == nil })
	if _, ok := m.Acquire(mlp2.Name, mlp2.Version); ok {
		t.Fatal("Acquire(v2.0) succeeded after its archive")
	}
	sess := e.eng.session(e.path(t, mlp2))
	time.Sleep(100 * time.Millisecond)
	if _, closed := sess.state(); closed {
		t.Fatal("v2.0 closed while a request held it")
	}
	if _, err := predict(ctx, held); err != nil {
		t.Fatalf("the request holding v2.0 failed: %v", err)
	}
	held.Release()
	waitFor(t, "v2.0 closed after its last request", func() bool { _, closed := sess.state(); return closed })
	waitFor(t, "Stats counts the retired version", func() bool { return m.Stats().Retired == 1 })
	if _, closed := e.eng.session(e.path(t, mlp1)).state(); closed || m.Current().Get(mlp1.Name, mlp1.Version) == nil {
		t.Error("archiving v2.0 closed v1.0")
	}
	if st := m.Stats(); st.Loaded != 2 {
		t.Errorf("Stats = %+v, want 2 loaded", st)
	}
}

// TestUnloadableVersionFailedThenRetried: a version whose external weights
// are missing beside its stored artifact is marked failed (Failure,
// Failures, Unservable, ModelFailure, Stats, OnLoadFailure) while the
// other models keep serving, and is retried: once the weights are there
// it loads and the failure is gone.
func TestUnloadableVersionFailedThenRetried(t *testing.T) {
	e := newEnv(t)
	failures := make(chan manager.Failure, 64)
	m := e.start(t, manager.Config{OnLoadFailure: func(f manager.Failure) {
		select {
		case failures <- f:
		default:
		}
	}})
	mlp := onnxtest.MustMLP(1, 2, 1)
	blob, err := onnxtest.Externalize(mlp.Model, "weights.bin")
	if err != nil {
		t.Fatal(err)
	}
	model, err := onnx.Marshal(mlp.Model)
	if err != nil {
		t.Fatal(err)
	}
	ext := registry.Ref{Name: "ext", Version: "v1"}
	registrytest.WriteUnchecked(t, e.dir, ext, registry.StatusProduction, 100, model, []string{"f0", "f1"})

	f := <-failures
	if f.Ref != ext || f.Permanent || f.Err == nil || !strings.Contains(f.Err.Error(), "weights.bin") || f.SHA256 == "" {
		t.Fatalf("OnLoadFailure got %+v", f)
	}
	waitFor(t, "ext:v1 marked failed", func() bool { _, ok := m.Failure(ext); return ok })
	if got := m.Failures(); len(got) != 1 || got[0].Ref != ext {
		t.Errorf("Failures = %+v", got)
	}
	if u := m.Unservable(); len(u) != 1 || u[0].Model != "ext" || !strings.Contains(u[0].Reason, "v1 failed to load") {
		t.Errorf("Unservable = %+v", u)
	}
	if why := m.ModelFailure("ext"); !strings.Contains(why, "weights.bin") {
		t.Errorf("ModelFailure(ext) = %q", why)
	}
	if m.ModelFailure(demo.ModelName) != "" {
		t.Errorf("ModelFailure(%s) = %q for a serving model", demo.ModelName, m.ModelFailure(demo.ModelName))
	}
	if st := m.Stats(); st.Failed != 1 || st.Unservable != 1 || st.LoadFailures < 1 || st.Loaded != 3 {
		t.Errorf("Stats = %+v", st)
	}
	v, ok := m.Acquire(mlp1.Name, mlp1.Version)
	if !ok {
		t.Fatal("the demo model stopped serving")
	}
	if _, err := predict(context.Background(), v); err != nil {
		t.Fatal(err)
	}
	v.Release()

	// The weights appear beside the stored artifact: the next retry loads it.
	if err := os.WriteFile(filepath.Join(filepath.Dir(e.path(t, ext)), "weights.bin"), blob, 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "ext:v1 loaded on a retry", func() bool { return m.Current().Get(ext.Name, ext.Version) != nil })
	if _, ok := m.Failure(ext); ok || len(m.Unservable()) != 0 {
		t.Errorf("after loading: Failure %v, Unservable %+v", ok, m.Unservable())
	}
}

// TestWarmupOverBudgetFailsForGood: versions whose warm-up needs more than
// Session.MaxWarmupBytes are refused before anything is allocated, marked
// failed for good, and not loaded again on later reconciles.
func TestWarmupOverBudgetFailsForGood(t *testing.T) {
	e := newEnv(t)
	m := e.start(t, manager.Config{Session: infer.Options{MaxWarmupBytes: 64}})
	if n := m.Current().Len(); n != 0 {
		t.Fatalf("%d versions loaded over a 64-byte warm-up budget", n)
	}
	fs := m.Failures()
	if len(fs) != 3 {
		t.Fatalf("Failures = %+v, want the 3 demo versions", fs)
	}
	for _, f := range fs {
		if !f.Permanent || !errors.Is(f.Err, infer.ErrWarmupMemory) {
			t.Errorf("%s: Permanent %v, Err %v; want a permanent ErrWarmupMemory", f.Ref, f.Permanent, f.Err)
		}
	}
	if u := m.Unservable(); len(u) != 2 {
		t.Errorf("Unservable = %+v, want both demo models", u)
	}
	before := m.Stats()
	if _, err := e.reg.SetTraffic(context.Background(), mlp2, 50); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a reconcile after the change", func() bool { return m.Stats().Reconciles > before.Reconciles })
	if st := m.Stats(); st.LoadFailures != before.LoadFailures || st.Failed != 3 {
		t.Errorf("after a reconcile: Stats %+v; before %+v: a permanent failure was retried", st, before)
	}
}

// TestLifecycle: configuration errors, Run once, Close idempotent, and
// nothing acquirable or open after Close.
func TestLifecycle(t *testing.T) {
	e := newEnv(t)
	for _, tt := range []struct {
		cfg  manager.Config
		want string
	}{
		{manager.Config{Engine: e.eng}, "Registry is required"},
		{manager.Config{Registry: e.reg}, "Engine is required"},
		{manager.Config{Registry: e.reg, Engine: e.eng, ReconcileRetry: -1}, "negative ReconcileRetry"},
		{manager.Config{Registry: e.reg, Engine: e.eng, MaxRows: -1}, "negative MaxRows"},
	} {
		if _, err := manager.New(tt.cfg); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("New(%+v) = %v, want %q", tt.cfg, err, tt.want)
		}
	}

	m, err := manager.New(manager.Config{Registry: e.reg, Engine: e.eng, Logger: logger()})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- m.Run(context.Background()) }()
	<-m.Loaded()
	if err := m.Run(context.Background()); err == nil {
		t.Error("a second Run succeeded")
	}
	v, ok := m.Acquire(mlp1.Name, mlp1.Version)
	if !ok {
		t.Fatal("Acquire failed")
	}
	closed := make(chan error, 1)
	go func() { closed <- m.Close(context.Background()) }()
	if err := <-done; err != nil {
		t.Errorf("Run after Close = %v, want nil", err)
	}
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while a request held a version", err)
	case <-time.After(100 * time.Millisecond):
	}
	v.Release()
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	for _, ref := range []registry.Ref{mlp1, mlp2, lstm} {
		if _, closed := e.eng.session(e.path(t, ref)).state(); !closed {
			t.Errorf("%s still open after Close", ref)
		}
	}
	if _, ok := m.Acquire(mlp1.Name, mlp1.Version); ok || m.Current().Len() != 0 {
		t.Error("a version is acquirable after Close")
	}
	if err := m.Close(context.Background()); err != nil {
		t.Errorf("second Close = %v", err)
	}
	if err := m.Run(context.Background()); !errors.Is(err, manager.ErrClosed) {
		t.Errorf("Run after Close = %v, want ErrClosed", err)
	}
}

// flakyStore fails Models while down is set, as a database that went away.
type flakyStore struct {
	registry.Store
	mu   sync.Mutex // guards down
	down bool
}

func (f *flakyStore) setDown(down bool) {
	f.mu.Lock()
	f.down = down
	f.mu.Unlock()
}

func (f *flakyStore) Models(ctx context.Context) ([]registry.Model, error) {
	f.mu.Lock()
	down := f.down
	f.mu.Unlock()
	if down {
		return nil, errors.New("flaky: registry unreachable")
	}
	return f.Store.Models(ctx)
}

// TestRegistryUnreadableKeepsServing: while the registry cannot be read
// the loaded versions keep serving and Stats says the registry is stale;
// the change made meanwhile is applied once it answers again.
func TestRegistryUnreadableKeepsServing(t *testing.T) {
	ctx := context.Background()
	fs, err := registry.OpenFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fs.Close() })
	store := &flakyStore{Store: fs}
	e := newEnv(t)
	reg, err := registry.Open(ctx, registry.Config{Store: store, PollInterval: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	if _, err := demo.Seed(ctx, reg); err != nil {
		t.Fatal(err)
	}
	e.reg = reg
	m := e.start(t, manager.Config{})
	store.setDown(true)
	if _, err := reg.Archive(ctx, mlp2, true); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the registry marked stale", func() bool { return m.Stats().RegistryStale })
	if m.Current().Get(mlp2.Name, mlp2.Version) == nil {
		t.Fatal("a change was applied while the registry could not be read")
	}
	v, ok := m.Acquire(mlp1.Name, mlp1.Version)
	if !ok {
		t.Fatal("v1.0 stopped serving while the registry is down")
	}
	v.Release()
	store.setDown(false)
	waitFor(t, "the archive applied once the registry answers", func() bool { return m.Current().Get(mlp2.Name, mlp2.Version) == nil })
	if m.Stats().RegistryStale {
		t.Error("still stale after a successful read")
	}
}

// TestShadowVersionLoaded: without ServeStaging, a staging version is
// loaded while it is the model's shadow (the server mirrors requests to
// it) and unloaded when the shadow is cleared.
func TestShadowVersionLoaded(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	m := e.start(t, manager.Config{})
	art, err := demo.MLP(9, demo.Features, 8, 16, 1)
	if err != nil {
		t.Fatal(err)
	}
	v3 := registry.Ref{Name: demo.ModelName, Version: "v3.0"}
	if _, err := e.reg.Register(ctx, registry.RegisterRequest{Name: v3.Name, Version: v3.Version, ONNX: art, Features: demo.Features}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.reg.SetShadow(ctx, v3.Name, registry.ShadowSetting{Version: v3.Version, Rate: 0.5}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the shadow version loaded", func() bool { return m.Current().Get(v3.Name, v3.Version) != nil })
	v, ok := m.Acquire(v3.Name, v3.Version)
	if !ok {
		t.Fatal("Acquire(shadow v3.0) failed")
	}
	if _, err := predict(ctx, v); err != nil {
		t.Fatal(err)
	}
	v.Release()
	if err := e.reg.ClearShadow(ctx, v3.Name); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the staging version unloaded with its shadow", func() bool { return m.Current().Get(v3.Name, v3.Version) == nil })
}
