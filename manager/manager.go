package manager

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/signalforge/signalforge/batch"
	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/registry"
)

// ErrClosed is returned by Run after Close.
var ErrClosed = errors.New("manager: closed")

// Config configures a Manager. Registry and Engine are required; every
// other field has a default.
type Config struct {
	// Registry is followed for the versions to load. Required.
	Registry *registry.Registry
	// Engine loads the ONNX artifacts. Required.
	Engine infer.Engine
	// Session configures every session. If WarmupBatchSizes is empty it is
	// {1, Batch.MaxBatchSize}: the first request must not pay for lazy
	// initialisation. A version whose declared tensors need more than
	// MaxWarmupBytes at those sizes is marked failed, not loaded.
	Session infer.Options
	// Batch configures every version's batcher (zero: batch defaults, a
	// MaxBatchSize of 32). Its Logger is replaced by Logger with the
	// version's model and version; a zero RunThreads becomes
	// Session.IntraOpThreads.
	Batch batch.Config
	// MaxRows caps the rows of one request a version's Predictor encodes.
	// If zero, 1024.
	MaxRows int
	// ServeStaging loads staging versions too, so clients can pin them
	// before a promotion. If false only production versions are loaded,
	// and a model's shadow version (registry Model.Shadow) whatever its
	// status.
	ServeStaging bool
	// ReconcileRetry is how long to wait before retrying a version that
	// failed to load, or a registry that could not be read. If zero, 5s.
	ReconcileRetry time.Duration
	// DrainTimeout bounds how long a version that stopped serving waits
	// for the requests holding it before its batcher is drained and its
	// session closed anyway. If zero, 1m.
	DrainTimeout time.Duration
	// ChildCheck, if set, checks every artifact in a child process before
	// this one loads it (ChildCheck.CheckFile: loaded and warmed at
	// Session's batch sizes and MaxWarmupBytes, under the child's memory
	// budget), so that a version whose warm-up would exhaust memory — an
	// intermediate tensor the static check of its declared tensors cannot
	// see — is marked failed instead of taking the process down. The
	// verdict is kept per artifact sha256 for the life of the Manager: one
	// child per new artifact, none for a version whose artifact was
	// checked already. If nil, artifacts are loaded directly.
	ChildCheck *registry.ChildCheck
	// Logger receives structured logs. If nil, nothing is logged.
	Logger *slog.Logger
	// OnChange, if set, is called after every reconcile that could read
	// the registry, with the new versions already acquirable beside the
	// old ones and before the old ones leave the snapshot: the moment to
	// point a router at the versions of Change.Serving. It is called from
	// Run's goroutine, one call at a time, with Run's ctx; while it runs
	// no change is applied.
	OnChange func(ctx context.Context, c Change)
	// OnLoadFailure, if set, is called from Run's goroutine for every
	// failed attempt to load a version (a version retried counts each
	// time; a permanent failure is not retried).
	OnLoadFailure func(f Failure)
}

// Change is what OnChange receives.
type Change struct {
	// Models are the registry's models as this reconcile read them.
	Models []registry.Model
	// Serving are the versions that serve from now on; Previous those
	// that served before this reconcile. Versions in Previous and not in
	// Serving are drained and closed after OnChange returns.
	Serving, Previous Snapshot
	// First is set on the first reconcile that read the registry: what
	// serves then is what serves when the process starts, not a version
	// entering production.
	First bool
}

func (c *Config) setDefaults() error {
	if c.Registry == nil {
		return errors.New("manager: Config.Registry is required")
	}
	if c.Engine == nil {
		return errors.New("manager: Config.Engine is required")
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Batch.MaxBatchSize == 0 {
		c.Batch.MaxBatchSize = 32
	}
	if len(c.Session.WarmupBatchSizes) == 0 {
		c.Session.WarmupBatchSizes = []int{1, c.Batch.MaxBatchSize}
	}
	if c.MaxRows == 0 {
		c.MaxRows = 1024
	}
	if c.ReconcileRetry == 0 {
		c.ReconcileRetry = 5 * time.Second
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = time.Minute
	}
	switch {
	case c.Batch.MaxBatchSize < 0:
		return fmt.Errorf("manager: negative Batch.MaxBatchSize %d", c.Batch.MaxBatchSize)
	case c.MaxRows < 0:
		return fmt.Errorf("manager: negative MaxRows %d", c.MaxRows)
	case c.ReconcileRetry < 0:
		return fmt.Errorf("manager: negative ReconcileRetry %v", c.ReconcileRetry)
	case c.DrainTimeout < 0:
		return fmt.Errorf("manager: negative DrainTimeout %v", c.DrainTimeout)
	}
	return nil
}

// Manager loads, warms, swaps and retires the versions the registry
// serves. Create it with New, run it with Run, stop it with Close. Its
// methods are safe for concurrent use.
type Manager struct {
	cfg Config
	log *slog.Logger
	reg *registry.Registry

	// tab is the current snapshot. Run's goroutine is its only writer
	// (and Close's, after Run returned); requests read it.
	tab atomic.Pointer[table]
	// health is what the last reconcile could not load. Run writes it;
	// readers load it.
	health atomic.Pointer[health]

	loaded   chan struct{} // closed after the first reconcile
	runDone  chan struct{} // closed when Run returns
	retiring sync.WaitGroup

	mu      sync.Mutex // guards running, closed, cancel
	running bool
	closed  bool
	cancel  context.CancelFunc // stops Run

	// retry counts the versions the last reconcile could not load and
	// may load on a retry; while it is not zero, Run retries. Only Run's
	// goroutine touches it.
	retry int
	// seeded is set after the first reconcile that read the registry.
	// Only Run's goroutine touches it.
	seeded bool
	// checked holds Config.ChildCheck's verdict (nil: admitted) per
	// artifact sha256. Only Run's goroutine touches it.
	checked map[string]error
	// stale is set when the last reconcile could not read the registry
	// (database down): the change that triggered it is not applied yet,
	// so Run retries until a read succeeds. Run writes it; Stats reads it.
	stale atomic.Bool

	// Counters for Stats.
	loads, loadFailures, retired, reconciles atomic.Uint64
}

// New returns a Manager. It loads nothing until Run.
func New(cfg Config) (*Manager, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	m := &Manager{cfg: cfg, log: cfg.Logger, reg: cfg.Registry,
		loaded: make(chan struct{}), runDone: make(chan struct{}), checked: map[string]error{}}
	t := table{}
	m.tab.Store(&t)
	m.health.Store(&health{})
	return m, nil
}

// Run loads what the registry serves, closes Loaded, then follows every
// registry change until ctx is done or Close is called, and returns nil.
// Failed loads, and a reconcile that could not read the registry, are
// retried every Config.ReconcileRetry. It returns an error if the
// registry's change feed ends first (the registry was closed): the loaded
// versions keep serving. Run may be called once.
func (m *Manager) Run(ctx context.Context) error {
	m.mu.Lock()
	switch {
	case m.closed:
		m.mu.Unlock()
		return ErrClosed
	case m.running:
		m.mu.Unlock()
		return errors.New("manager: Run called twice")
	}
	ctx, cancel := context.WithCancel(ctx)
	m.running, m.cancel = true, cancel
	m.mu.Unlock()
	defer close(m.runDone)
	defer cancel()
	m.follow(ctx)
	if ctx.Err() == nil {
		return errors.New("manager: the registry's change feed ended (registry closed)")
	}
	return nil
}

// Loaded is closed once Run's first reconcile is done: every version the
// registry serves then is loaded and warmed, or failed (see Unservable),
// or the registry could not be read (see Stats).
func (m *Manager) Loaded() <-chan struct{} { return m.loaded }

// Current returns the loaded versions.
func (m *Manager) Current() Snapshot { return Snapshot{m: *m.tab.Load()} }

// Acquire finds a loaded version and takes a reference on it: the version
// is not closed before Release. It reports false if the version is not
// loaded (or stopped serving).
func (m *Manager) Acquire(model, version string) (*Version, bool) {
	for range 3 {
		v := m.Current().Get(model, version)
		if v == nil {
			return nil, false
		}
		if v.acquire() {
			return v, true
		}
		// Retired between lookup and acquire: the table has moved on.
	}
	return nil, false
}

// Failure returns why ref should be loaded and is not, if it is not.
func (m *Manager) Failure(ref registry.Ref) (Failure, bool) {
	f, ok := m.health.Load().failed[ref]
	return f, ok
}

// Failures returns every version that should be loaded and is not, sorted.
func (m *Manager) Failures() []Failure {
	failed := m.health.Load().failed
	out := make([]Failure, 0, len(failed))
	for _, ref := range slices.SortedFunc(maps.Keys(failed), compareRefs) {
		out = append(out, failed[ref])
	}
	return out
}

func compareRefs(a, b registry.Ref) int {
	if c := strings.Compare(a.Name, b.Name); c != 0 {
		return c
	}
	return strings.Compare(a.Version, b.Version)
}

// Unservable returns the models with production traffic none of whose
// production versions is loaded, sorted, each with the reason.
func (m *Manager) Unservable() []Unservable {
	return slices.Clone(m.health.Load().unservable)
}

// ModelFailure explains why none of model's production versions is
// loaded, or returns "" if that is not the case.
func (m *Manager) ModelFailure(model string) string {
	for _, u := range m.health.Load().unservable {
		if u.Model == model {
			return u.Reason
		}
	}
	return ""
}

// Stats is a snapshot of a Manager's counters.
type Stats struct {
	// Loaded is the number of versions loaded now.
	Loaded int
	// Failed is the number of versions that should be loaded and are not;
	// Unservable the number of models with production traffic and no
	// loaded production version.
	Failed, Unservable int
	// Loads and LoadFailures count the loads since New that succeeded
	// (loaded and warmed) and failed (a retried version counts each time).
	Loads, LoadFailures uint64
	// Retired counts the versions drained and closed since New.
	Retired uint64
	// Reconciles counts the times the manager read the registry to match
	// it, successfully or not.
	Reconciles uint64
	// RegistryStale is set while the last reconcile could not read the
	// registry: the loaded versions keep serving and the read is retried.
	RegistryStale bool
}

// Stats returns the manager's counters.
func (m *Manager) Stats() Stats {
	h := m.health.Load()
	return Stats{
		Loaded: m.Current().Len(), Failed: len(h.failed), Unservable: len(h.unservable),
		Loads: m.loads.Load(), LoadFailures: m.loadFailures.Load(), Retired: m.retired.Load(),
		Reconciles: m.reconciles.Load(), RegistryStale: m.stale.Load(),
	}
}

// Close stops Run (and waits for it), then drains and closes every loaded
// version: each waits for the requests holding it until ctx is done.
// Acquire fails from then on. Close is idempotent; later calls return nil.
func (m *Manager) Close(ctx context.Context) error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		m.retiring.Wait()
		return nil
	}
	m.closed = true
	running, cancel := m.running, m.cancel
	m.mu.Unlock()
	if running {
		cancel()
		<-m.runDone // Run's load in progress notices ctx and returns
	}
	old := m.Current().m
	empty := table{}
	m.tab.Store(&empty)
	var mu sync.Mutex
	var errs []error
	for name, vs := range old {
		for ver, v := range vs {
			m.retiring.Add(1)
			go func() {
				defer m.retiring.Done()
				err := v.retire(ctx)
				m.retired.Add(1)
				if err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("%s:%s: %w", name, ver, err))
					mu.Unlock()
				}
			}()
		}
	}
	m.retiring.Wait()
	return errors.Join(errs...)
}
