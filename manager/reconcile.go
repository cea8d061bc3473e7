package manager

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/signalforge/signalforge/batch"
	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/registry"
	"github.com/signalforge/signalforge/tensor"
)

// follow loads what the registry serves, closes loaded, then follows every
// registry change until ctx is done or the change feed ends.
func (m *Manager) follow(ctx context.Context) {
	seq, err := m.reg.Seq(ctx)
	if err != nil {
		m.log.Error("registry: reading sequence", "err", err)
	}
	m.reconcile(ctx)
	close(m.loaded)
	events := m.reg.Watch(ctx, seq)
	retry := time.NewTimer(m.cfg.ReconcileRetry)
	defer retry.Stop()
	for {
		var retryC <-chan time.Time
		if m.retry > 0 || m.stale.Load() {
			retryC = retry.C
		}
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				return
			}
			m.log.Info("registry changed", "seq", ev.Seq, "model", ev.Name, "action", ev.Action)
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
		retry.Reset(m.cfg.ReconcileRetry)
	}
}

// reconcile makes the loaded set match the registry. Order matters for a
// swap without failed requests: (1) load and warm new versions and publish
// them alongside the old; (2) OnChange (the server points its router at
// the new split); (3) drop the versions no longer served from the table;
// (4) drain and close them once their last request is done.
func (m *Manager) reconcile(ctx context.Context) {
	m.reconciles.Add(1)
	models, err := m.reg.Models(ctx)
	if err != nil {
		if ctx.Err() == nil && !m.stale.Load() {
			m.log.Error("registry: listing models failed; keeping the loaded versions and retrying", "err", err)
		}
		m.stale.Store(true)
		return
	}
	m.stale.Store(false)
	old := *m.tab.Load()
	next := table{}
	want := map[string]registry.Model{}
	prevFailed := m.health.Load().failed
	failed := map[registry.Ref]Failure{}
	m.retry = 0
	for _, md := range models {
		want[md.Name] = md
		for _, v := range md.Versions {
			// The model's shadow version is loaded too, so that the
			// server can mirror requests to it.
			shadow := md.Shadow != nil && md.Shadow.Version == v.Version && v.Status != registry.StatusArchived
			if v.Status != registry.StatusProduction && !(m.cfg.ServeStaging && v.Status == registry.StatusStaging) && !shadow {
				continue
			}
			if l := old.get(v.Name, v.Version); l != nil && l.sha256 == v.Artifact.SHA256 {
				// Status and traffic may have changed; the artifact has not.
				if next[v.Name] == nil {
					next[v.Name] = map[string]*Version{}
				}
				next[v.Name][v.Version] = l
				continue
			}
			ref := v.Ref()
			if f, ok := prevFailed[ref]; ok && f.Permanent && f.SHA256 == v.Artifact.SHA256 {
				failed[ref] = f
				continue
			}
			l, err := m.load(ctx, v)
			if err != nil {
				if ctx.Err() != nil {
					continue // shutting down: not the version's fault
				}
				f := Failure{Ref: ref, SHA256: v.Artifact.SHA256, Err: err, At: time.Now(), Permanent: errors.Is(err, infer.ErrWarmupMemory)}
				failed[ref] = f
				m.loadFailures.Add(1)
				if m.cfg.OnLoadFailure != nil {
					m.cfg.OnLoadFailure(f)
				}
				if f.Permanent {
					m.log.Error("loading model version failed; marked failed, not retried (other versions keep serving)", "model", v.Name, "version", v.Version, "sha256", v.Artifact.SHA256, "err", err)
				} else {
					m.retry++
					m.log.Error("loading model version failed; marked failed, will retry (other versions keep serving)", "model", v.Name, "version", v.Version, "sha256", v.Artifact.SHA256, "err", err)
				}
				continue
			}
			m.loads.Add(1)
			m.log.Info("loaded model version", "model", v.Name, "version", v.Version, "status", v.Status, "path", v.Artifact.Path)
			if next[v.Name] == nil {
				next[v.Name] = map[string]*Version{}
			}
			next[v.Name][v.Version] = l
		}
	}

	// (1) old ∪ new
	union := old.clone()
	for name, vs := range next {
		if union[name] == nil {
			union[name] = map[string]*Version{}
		}
		maps.Copy(union[name], vs)
	}
	m.tab.Store(&union)

	// (2) the caller's hook, with both sets acquirable.
	if m.cfg.OnChange != nil {
		m.cfg.OnChange(ctx, Change{Models: models, Serving: Snapshot{m: next}, Previous: Snapshot{m: old}, First: !m.seeded})
	}
	m.seeded = true

	// (3) publish the final table, and what could not be loaded.
	m.tab.Store(&next)
	m.health.Store(newHealth(want, next, failed))

	// (4) retire what is gone.
	for name, vs := range old {
		for ver, l := range vs {
			if next.get(name, ver) == l {
				continue
			}
			m.retiring.Add(1)
			go func() {
				defer m.retiring.Done()
				rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.cfg.DrainTimeout)
				defer cancel()
				err := l.retire(rctx)
				m.retired.Add(1)
				if err != nil {
					m.log.Warn("retiring model version", "model", name, "version", ver, "err", err)
				} else {
					m.log.Info("retired model version", "model", name, "version", ver)
				}
			}()
		}
	}
}

// load opens, warms and wraps one version. A version whose declared
// tensors do not fit the warm-up memory budget is refused before anything
// is allocated (an error wrapping infer.ErrWarmupMemory), and one whose
// warm-up fails is not served: it would fail requests at the batch sizes
// the batcher makes.
func (m *Manager) load(ctx context.Context, v registry.Version) (*Version, error) {
	if v.Artifact.Path == "" {
		return nil, fmt.Errorf("version %s has no artifact path", v.Ref())
	}
	opts := m.cfg.Session
	warm := opts.WarmupBatchSizes
	opts.WarmupBatchSizes = nil
	if err := m.childCheck(ctx, v, warm, opts); err != nil {
		return nil, err
	}
	sess, err := m.cfg.Engine.LoadFile(ctx, v.Artifact.Path, opts)
	if err != nil {
		return nil, err
	}
	if err := infer.Warmup(ctx, sess, warm, opts.MaxWarmupBytes); err != nil {
		sess.Close()
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	l := &Version{ref: v.Ref(), sha256: v.Artifact.SHA256, sess: sess, idle: make(chan struct{})}
	l.pred, l.predErr = infer.NewPredictor(sess, infer.PredictorConfig{Features: v.Features, MaxRows: m.cfg.MaxRows})
	if l.pred != nil {
		l.sortedFeatures = l.pred.Features()
		slices.Sort(l.sortedFeatures)
	}
	bcfg := m.cfg.Batch
	bcfg.Logger = m.log.With("model", v.Name, "version", v.Version)
	if bcfg.RunThreads == 0 {
		// One model call keeps the session's intra-op threads busy.
		bcfg.RunThreads = opts.IntraOpThreads
	}
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
func (m *Manager) childCheck(ctx context.Context, v registry.Version, warm []int, opts infer.Options) error {
	cc := m.cfg.ChildCheck
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
		m.log.Debug("checked model version in a child process", "model", v.Name, "version", v.Version, "sha256", v.Artifact.SHA256, "took", time.Since(start), "err", err)
	}
	return err
}
