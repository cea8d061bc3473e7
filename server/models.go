package server

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/signalforge/signalforge/batch"
	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/registry"
	"github.com/signalforge/signalforge/route"
	"github.com/signalforge/signalforge/tensor"
)

// loaded is one serving model version: a warmed session behind a batcher.
// Requests hold a reference (acquire/release) while they use it; a retired
// version is closed only when its last reference is released, so a hot swap
// fails no request.
type loaded struct {
	ref     registry.Ref
	meta    registry.Version
	sess    infer.Session
	pred    *infer.Predictor // nil if the model is not a named-feature model
	predErr error            // why pred is nil
	// sortedFeatures are pred's feature names sorted, so that cache keys
	// of complete rows skip a sort per request.
	sortedFeatures []string
	batcher        *batch.Batcher

	mu      sync.Mutex // guards refs, retired
	refs    int
	retired bool
	idle    chan struct{} // closed when retired and refs reach 0
}

// acquire takes a reference; it fails once the version is retired.
func (l *loaded) acquire() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.retired {
		return false
	}
	l.refs++
	return true
}

func (l *loaded) release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.refs--
	if l.retired && l.refs == 0 {
		close(l.idle)
	}
}

// retire stops new references, waits for the current ones (or ctx), then
// drains the batcher and closes the session.
func (l *loaded) retire(ctx context.Context) error {
	l.mu.Lock()
	if !l.retired {
		l.retired = true
		if l.refs == 0 {
			close(l.idle)
		}
	}
	l.mu.Unlock()
	select {
	case <-l.idle:
	case <-ctx.Done():
	}
	err := l.batcher.Close(ctx)
	if cerr := l.sess.Close(); err == nil {
		err = cerr
	}
	return err
}

// table is an immutable snapshot of the loaded versions: model → version.
type table map[string]map[string]*loaded

func (t table) get(model, version string) *loaded { return t[model][version] }

func (t table) clone() table {
	out := make(table, len(t))
	for m, vs := range t {
		out[m] = maps.Clone(vs)
	}
	return out
}

// modelSet owns the loaded versions. follow (one goroutine) is the only
// writer; request handlers read the current table through an atomic pointer.
type modelSet struct {
	s   *Server
	tab atomic.Pointer[table]

	retiring sync.WaitGroup // retire goroutines
	// failed counts the versions the last reconcile could not load and
	// may load on a retry; while it is not zero, follow retries. Only
	// follow touches it.
	failed int
	// stale is set when the last reconcile could not read the registry
	// (database down): the change that triggered it is not applied yet,
	// so follow retries until a read succeeds. Only follow touches it.
	stale bool
	// health is what the last reconcile could not load, for /v1/models,
	// readiness and metrics. follow writes it; handlers read it.
	health atomic.Pointer[health]
	// served remembers which versions were in production, to bump their
	// cache generation when they (re)enter it. Only follow touches it.
	served map[registry.Ref]bool
	// seeded is set after the first reconcile: what is in production when
	// a server starts is not "entering production", and bumping it then
	// would empty a shared cache on every replica start.
	seeded bool
	// checked holds Config.ChildCheck's verdict (nil: admitted) per
	// artifact sha256. Only follow touches it.
	checked map[string]error
}

func newModelSet(s *Server) *modelSet {
	m := &modelSet{s: s, served: map[registry.Ref]bool{}, checked: map[string]error{}}
	t := table{}
	m.tab.Store(&t)
	m.health.Store(&health{})
	return m
}

// loadFailure is why a version could not be loaded.
type loadFailure struct {
	sha256 string // the artifact that failed
	err    string
	at     time.Time
	// permanent is set when loading the same artifact again cannot help
	// (its warm-up needs more memory than allowed): it is not retried.
	permanent bool
}

// health is an immutable snapshot of what the server cannot serve.
type health struct {
	// failed are the versions that should be loaded but are not.
	failed map[registry.Ref]loadFailure
	// unservable are the models with production traffic none of whose
	// production versions is loaded, sorted, each with the reason.
	unservable []unservable
}

type unservable struct {
	Model  string `json:"model"`
	Reason string `json:"reason"`
}

func (m *modelSet) failure(ref registry.Ref) (loadFailure, bool) {
	f, ok := m.health.Load().failed[ref]
	return f, ok
}

// modelFailure explains why none of model's production versions is
// loaded, or "" if that is not the case.
func (m *modelSet) modelFailure(model string) string {
	for _, u := range m.health.Load().unservable {
		if u.Model == model {
			return u.Reason
		}
	}
	return ""
}

func (m *modelSet) current() table { return *m.tab.Load() }

func (m *modelSet) count() int {
	n := 0
	for _, vs := range m.current() {
		n += len(vs)
	}
	return n
}

// follow loads what the registry serves, calls onFirst, then follows every
// registry change until ctx is done. Failed loads, and a reconcile that
// could not read the registry, are retried every Config.ReconcileRetry.
func (m *modelSet) follow(ctx context.Context, onFirst func()) {
	reg := m.s.reg
	seq, err := reg.Seq(ctx)
	if err != nil {
		m.s.log.Error("registry: reading sequence", "err", err)
	}
	m.reconcile(ctx)
	onFirst()
	events := reg.Watch(ctx, seq)
	retry := time.NewTimer(m.s.cfg.ReconcileRetry)
	defer retry.Stop()
	for {
		var retryC <-chan time.Time
		if m.failed > 0 || m.stale {
			retryC = retry.C
		}
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				return
			}
			m.s.log.Info("registry changed", "seq", ev.Seq, "model", ev.Name, "action", ev.Action)
			// Coalesce a burst of events into one reconcile.
			for more := true; more; {
				select {
				case _, ok := <-events:
					if !ok {
						return
					}
				default:
					more = false
				}
			}
			m.reconcile(ctx)
		case <-retryC:
			m.reconcile(ctx)
		}
		if !retry.Stop() {
			select {
			case <-retry.C:
			default:
			}
		}
		retry.Reset(m.s.cfg.ReconcileRetry)
	}
}

// reconcile makes the loaded set match the registry. Order matters for a
// swap without failed requests: (1) load and warm new versions and publish
// them alongside the old; (2) point the router at the new split; (3) drop
// the versions no longer served from the table; (4) drain and close them
// once their last request is done.
func (m *modelSet) reconcile(ctx context.Context) {
	s := m.s
	models, err := s.reg.Models(ctx)
	if err != nil {
		if ctx.Err() == nil && !m.stale {
			s.log.Error("registry: listing models failed; keeping the loaded versions and retrying", "err", err)
		}
		m.stale = true
		return
	}
	m.stale = false
	old := m.current()
	next := table{}
	want := map[string]registry.Model{}
	prevFailed := m.health.Load().failed
	failed := map[registry.Ref]loadFailure{}
	m.failed = 0
	for _, md := range models {
		want[md.Name] = md
		for _, v := range md.Versions {
			// The model's shadow version is loaded too (predictions
			// still refuse to pin a version the server does not serve).
			shadow := md.Shadow != nil && md.Shadow.Version == v.Version && v.Status != registry.StatusArchived
			if v.Status != registry.StatusProduction && !(s.cfg.ServeStaging && v.Status == registry.StatusStaging) && !shadow {
				continue
			}
			if l := old.get(v.Name, v.Version); l != nil && l.meta.Artifact.SHA256 == v.Artifact.SHA256 {
				l.meta = v // status and traffic may have changed; artifact has not
				if next[v.Name] == nil {
					next[v.Name] = map[string]*loaded{}
				}
				next[v.Name][v.Version] = l
				continue
			}
			ref := v.Ref()
			if f, ok := prevFailed[ref]; ok && f.permanent && f.sha256 == v.Artifact.SHA256 {
				failed[ref] = f
				continue
			}
			l, err := m.load(ctx, v)
			if err != nil {
				if ctx.Err() != nil {
					continue // shutting down: not the version's fault
				}
				f := loadFailure{sha256: v.Artifact.SHA256, err: err.Error(), at: time.Now(), permanent: errors.Is(err, infer.ErrWarmupMemory)}
				failed[ref] = f
				s.met.loadFailures.WithLabelValues(v.Name, v.Version).Inc()
				if f.permanent {
					s.log.Error("loading model version failed; marked failed, not retried (other versions keep serving)", "model", v.Name, "version", v.Version, "sha256", v.Artifact.SHA256, "err", err)
				} else {
					m.failed++
					s.log.Error("loading model version failed; marked failed, will retry (other versions keep serving)", "model", v.Name, "version", v.Version, "sha256", v.Artifact.SHA256, "err", err)
				}
				continue
			}
			s.log.Info("loaded model version", "model", v.Name, "version", v.Version, "status", v.Status, "path", v.Artifact.Path)
			if next[v.Name] == nil {
				next[v.Name] = map[string]*loaded{}
			}
			next[v.Name][v.Version] = l
		}
	}

	// (1) old ∪ new
	union := old.clone()
	for name, vs := range next {
		if union[name] == nil {
			union[name] = map[string]*loaded{}
		}
		maps.Copy(union[name], vs)
	}
	m.tab.Store(&union)

	// (2) router: each model's registry split over its loaded versions.
	names := map[string]bool{}
	for n := range want {
		names[n] = true
	}
	for n := range old {
		names[n] = true
	}
	for _, n := range slices.Sorted(maps.Keys(names)) {
		split := route.Split{}
		total := 0.0
		if md, ok := want[n]; ok {
			for _, v := range md.Versions {
				if v.Status == registry.StatusProduction && v.Traffic > 0 && next.get(n, v.Version) != nil {
					split[v.Version] = v.Traffic
					total += v.Traffic
				}
			}
		}
		for v := range split {
			split[v] /= total
		}
		if err := s.router.Apply(n, split); err != nil {
			s.log.Error("router: applying split", "model", n, "err", err)
		}
		// A version entering production gets a fresh cache generation,
		// so it can never serve entries written before.
		if md, ok := want[n]; ok && s.cache != nil {
			for _, v := range md.Versions {
				inProd := v.Status == registry.StatusProduction
				ref := v.Ref()
				if m.seeded && inProd && !m.served[ref] && next.get(n, v.Version) != nil {
					if _, err := s.cache.BumpGeneration(ctx, n, v.Version); err != nil {
						s.log.Warn("cache: bumping generation", "model", n, "version", v.Version, "err", err)
					}
				}
				m.served[ref] = inProd
			}
		}
	}

	m.seeded = true

	// (3) publish the final table, and what could not be loaded.
	m.tab.Store(&next)
	m.health.Store(newHealth(want, next, failed))
	s.syncShadows(want)

	// (4) retire what is gone.
	for name, vs := range old {
		for ver, l := range vs {
			if next.get(name, ver) == l {
				continue
			}
			m.retiring.Add(1)
			go func() {
				defer m.retiring.Done()
				rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.MaxTimeout+s.cfg.ShutdownTimeout)
				defer cancel()
				if err := l.retire(rctx); err != nil {
					s.log.Warn("retiring model version", "model", name, "version", ver, "err", err)
				} else {
					s.log.Info("retired model version", "model", name, "version", ver)
				}
			}()
		}
	}
}

// newHealth lists the failed versions and the models with production
// traffic that have no loaded production version.
func newHealth(want map[string]registry.Model, next table, failed map[registry.Ref]loadFailure) *health {
	h := &health{failed: failed}
	for _, name := range slices.Sorted(maps.Keys(want)) {
		var reasons []string
		serving, loaded := false, false
		for _, v := range want[name].Versions {
			if v.Status != registry.StatusProduction || v.Traffic <= 0 {
				continue
			}
			serving = true
			if next.get(name, v.Version) != nil {
				loaded = true
				break
			}
			if f, ok := failed[v.Ref()]; ok {
				reasons = append(reasons, fmt.Sprintf("%s failed to load: %s", v.Version, f.err))
			} else {
				reasons = append(reasons, v.Version+" is not loaded")
			}
		}
		if serving && !loaded {
			h.unservable = append(h.unservable, unservable{Model: name, Reason: strings.Join(reasons, "; ")})
		}
	}
	return h
}

// load opens, warms and wraps one version. A version whose declared
// tensors do not fit the warm-up memory budget is refused before anything
// is allocated (an error wrapping infer.ErrWarmupMemory), and one whose
// warm-up fails is not served: it would fail requests at the batch sizes
// the batcher makes.
func (m *modelSet) load(ctx context.Context, v registry.Version) (*loaded, error) {
	s := m.s
	if v.Artifact.Path == "" {
		return nil, fmt.Errorf("version %s has no artifact path", v.Ref())
	}
	opts := s.cfg.Session
	warm := opts.WarmupBatchSizes
	opts.WarmupBatchSizes = nil
	if err := m.childCheck(ctx, v, warm, opts); err != nil {
		return nil, err
	}
	sess, err := s.engine.LoadFile(ctx, v.Artifact.Path, opts)
	if err != nil {
		return nil, err
	}
	if err := infer.Warmup(ctx, sess, warm, opts.MaxWarmupBytes); err != nil {
		sess.Close()
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	l := &loaded{ref: v.Ref(), meta: v, sess: sess, idle: make(chan struct{})}
	l.pred, l.predErr = infer.NewPredictor(sess, infer.PredictorConfig{Features: v.Features, MaxRows: s.cfg.MaxRows})
	if l.pred != nil {
		l.sortedFeatures = l.pred.Features()
		slices.Sort(l.sortedFeatures)
	}
	bcfg := s.cfg.Batch
	bcfg.Logger = s.log.With("model", v.Name, "version", v.Version)
	b, err := batch.New(bcfg, func(ctx context.Context, in []tensor.Tensor) ([]tensor.Tensor, error) {
		return sess.Run(ctx, in)
	})
	if err != nil {
		sess.Close()
		return nil, err
	}
	l.batcher = b
	return l, nil
}

// childCheck runs Config.ChildCheck on v's artifact, once per sha256: a
// refusal (a *registry.BudgetError when its warm-up exhausted the child's
// memory) is kept and returned for every later load of the same artifact.
// Failures that say nothing about the model (the child could not run, ctx
// is done) are not kept.
func (m *modelSet) childCheck(ctx context.Context, v registry.Version, warm []int, opts infer.Options) error {
	cc := m.s.cfg.ChildCheck
	if cc == nil {
		return nil
	}
	err, ok := m.checked[v.Artifact.SHA256]
	if !ok {
		start := time.Now()
		_, err = cc.CheckFile(ctx, v.Artifact.Path, registry.AdmissionConfig{WarmupBatchSizes: warm, MaxWarmupBytes: opts.MaxWarmupBytes, Session: opts})
		if err != nil {
			err = fmt.Errorf("admission check in a child process: %w", err)
		}
		if ctx.Err() != nil || errors.Is(err, registry.ErrChildCheck) {
			return err
		}
		m.checked[v.Artifact.SHA256] = err
		m.s.log.Debug("checked model version in a child process", "model", v.Name, "version", v.Version, "sha256", v.Artifact.SHA256, "took", time.Since(start), "err", err)
	}
	return err
}

// acquire finds a serving version and takes a reference on it.
func (m *modelSet) acquire(model, version string) (*loaded, bool) {
	for range 3 {
		l := m.current().get(model, version)
		if l == nil {
			return nil, false
		}
		if l.acquire() {
			return l, true
		}
		// Retired between lookup and acquire: the table has moved on.
	}
	return nil, false
}

// closeAll retires every version (shutdown).
func (m *modelSet) closeAll(ctx context.Context) error {
	old := m.current()
	empty := table{}
	m.tab.Store(&empty)
	var mu sync.Mutex
	var errs []error
	for name, vs := range old {
		for ver, l := range vs {
			m.retiring.Add(1)
			go func() {
				defer m.retiring.Done()
				if err := l.retire(ctx); err != nil {
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
