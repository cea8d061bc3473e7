package server

import (
	"context"
	"maps"
	"slices"

	"github.com/signalforge/signalforge/manager"
	"github.com/signalforge/signalforge/registry"
	"github.com/signalforge/signalforge/route"
)

// newModels returns the manager of the server's model versions: it points
// the router at each model's split over its loaded versions, and gives a
// version entering production a fresh cache generation.
func newModels(s *Server) (*manager.Manager, error) {
	cfg := s.cfg
	// served remembers which versions were in production, to bump their
	// cache generation when they (re)enter it. Only the manager's Run
	// goroutine touches it (in OnChange).
	served := map[registry.Ref]bool{}
	return manager.New(manager.Config{
		Registry: cfg.Registry, Engine: cfg.Engine, Session: cfg.Session, Batch: cfg.Batch, MaxRows: cfg.MaxRows,
		ServeStaging: cfg.ServeStaging, ReconcileRetry: cfg.ReconcileRetry, ChildCheck: cfg.ChildCheck, Logger: cfg.Logger,
		DrainTimeout: cfg.MaxTimeout + cfg.ShutdownTimeout,
		OnChange:     func(ctx context.Context, c manager.Change) { s.applyChange(ctx, c, served) },
		OnLoadFailure: func(f manager.Failure) {
			s.met.loadFailures.WithLabelValues(f.Ref.Name, f.Ref.Version).Inc()
		},
	})
}

// applyChange points the router at each model's registry split over its
// loaded versions, and bumps the cache generation of every version that
// enters production, so it can never serve entries written before. What is
// in production when a server starts is not "entering production": bumping
// it then would empty a shared cache on every replica start.
func (s *Server) applyChange(ctx context.Context, c manager.Change, served map[registry.Ref]bool) {
	want := map[string]registry.Model{}
	names := map[string]bool{}
	plans := map[string]registry.CanaryPlan{}
	for _, md := range c.Models {
		want[md.Name] = md
		names[md.Name] = true
		if md.Canary != nil {
			plans[md.Name] = *md.Canary
		}
	}
	s.canaries.Store(&plans)
	for _, n := range c.Previous.Models() {
		names[n] = true
	}
	for _, n := range slices.Sorted(maps.Keys(names)) {
		split := route.Split{}
		total := 0.0
		if md, ok := want[n]; ok {
			for _, v := range md.Versions {
				if v.Status == registry.StatusProduction && v.Traffic > 0 && c.Serving.Get(n, v.Version) != nil {
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
		if md, ok := want[n]; ok && s.cache != nil {
			for _, v := range md.Versions {
				inProd := v.Status == registry.StatusProduction
				ref := v.Ref()
				if !c.First && inProd && !served[ref] && c.Serving.Get(n, v.Version) != nil {
					if _, err := s.cache.BumpGeneration(ctx, n, v.Version); err != nil {
						s.log.Warn("cache: bumping generation", "model", n, "version", v.Version, "err", err)
					}
				}
				served[ref] = inProd
			}
		}
	}
	s.syncShadows(want)
}
