// Package server is SignalForge Serve's HTTP server: the native JSON API and
// the Open Inference Protocol v2 (KServe v2) REST API over models from the
// registry, each version an ONNX Runtime session behind a dynamic batcher,
// with the prediction cache in front and the router choosing versions.
//
//	srv, _ := server.New(server.Config{Registry: reg, Engine: eng, Cache: c})
//	err := srv.ListenAndServe(ctx, ":8080") // until ctx is done, then drains
//
// Request path: decode and validate (4xx naming the problem) → pick the
// version (pinned, or the router's sticky choice by request_id) → cache
// lookup (single-row requests) → batcher → ONNX Runtime → cache write →
// answer. The server follows the registry (package manager): registering, promoting, changing
// a split or archiving (also from the CLI in another process) loads and
// warms new sessions before they get traffic, switches atomically and
// drains the old ones.
//
// Canary plans and shadow settings are registry state too: every replica
// runs the shadow its registry model names, publishes its per-version
// counters to Config.Fleet, and runs a canary.Pilot that acts only while
// this replica holds the autopilot lease on Config.Leaser, judging each
// plan on the whole fleet's counters.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/signalforge/signalforge/batch"
	"github.com/signalforge/signalforge/cache"
	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/internal/buildinfo"
	"github.com/signalforge/signalforge/manager"
	"github.com/signalforge/signalforge/registry"
	"github.com/signalforge/signalforge/route"
	"github.com/signalforge/signalforge/route/fleet"
)

// Config configures a Server. Registry and Engine are required; every other
// field has a default.
type Config struct {
	// Registry is followed for the models to serve. Required.
	Registry *registry.Registry
	// Engine loads the ONNX artifacts. Required.
	Engine infer.Engine
	// Cache answers repeated single-row predictions. If nil, no caching.
	Cache *cache.Cache
	// Router picks versions. If nil, a Router with default settings.
	Router *route.Router
	// Logger receives structured logs. If nil, nothing is logged.
	Logger *slog.Logger
	// Metrics is where the server registers its Prometheus collectors, and
	// Gatherer what /metrics serves. If both are nil, a fresh registry with
	// the Go runtime and process collectors is used for both (never the
	// global one).
	Metrics  prometheus.Registerer
	Gatherer prometheus.Gatherer
	// AdminToken, if set, is the bearer token the admin endpoints require.
	// If empty, the admin endpoints are closed (403) unless
	// AdminOpenLoopback is set.
	AdminToken string
	// AdminOpenLoopback opens the admin endpoints without a token, for
	// development on one machine. It is only allowed when the server
	// listens on a loopback address: Serve and ListenAndServe refuse to
	// start otherwise. Ignored when AdminToken is set.
	AdminOpenLoopback bool
	// ImportDir is the folder register-by-path ("onnx_path" in the admin
	// register request) may read models from; a path outside it, also
	// through a symbolic link, is refused. If empty, register-by-path is
	// refused (upload the file instead).
	ImportDir string
	// MaxBodyBytes caps a request body. If zero, 1 MiB. Model uploads on
	// the admin API have their own cap, MaxUploadBytes (if zero, 256 MiB),
	// and at most MaxUploads of them are read at once (if zero, 2; beyond
	// it 429 with Retry-After), so uploads cannot exhaust memory.
	MaxBodyBytes   int64
	MaxUploadBytes int64
	MaxUploads     int
	// MaxRows caps the rows of one request. If zero, 1024.
	MaxRows int
	// DefaultTimeout bounds a request that gives no timeout_ms. If zero,
	// 2s. MaxTimeout caps timeout_ms; if zero, 30s.
	DefaultTimeout time.Duration
	MaxTimeout     time.Duration
	// Batch configures every version's batcher (zero: batch defaults).
	Batch batch.Config
	// Session configures every session. If WarmupBatchSizes is empty it is
	// {1, Batch.MaxBatchSize}: the first request must not pay for lazy
	// initialisation.
	Session infer.Options
	// ServeStaging loads staging versions too, so clients can pin them
	// ("version": "v3") for tests before a promotion. If false only
	// production versions are loaded.
	ServeStaging bool
	// PredictionType names the cache type (and so the TTL) of a prediction;
	// if nil, "h<horizon>" (configure TTLs like {"h1": 1m, "h5": 5m}).
	PredictionType func(model, version string, horizon int) string
	// Timeouts bound how long a client may take to send a request and
	// read its answer; zero fields take their defaults.
	Timeouts Timeouts
	// ShutdownTimeout bounds graceful shutdown. If zero, 30s. The first
	// four fifths drain HTTP requests; connections still open after that
	// are closed (a slow client never holds shutdown longer), and the rest
	// closes batchers and sessions.
	ShutdownTimeout time.Duration
	// DrainDelay is how long the server keeps accepting after shutdown
	// starts (readiness already false, keep-alives off) so that load
	// balancers and clients move away before the listener closes. If zero,
	// 250ms; negative means none.
	DrainDelay time.Duration
	// ReconcileRetry is how long to wait before retrying a version that
	// failed to load. If zero, 5s.
	ReconcileRetry time.Duration
	// ChildCheck, if set, checks every artifact in a child process before
	// this one loads it (ChildCheck.CheckFile: loaded and warmed at
	// Session's batch sizes and MaxWarmupBytes, under the child's memory
	// budget), so that a version whose warm-up would exhaust memory — an
	// intermediate tensor of tens of gigabytes the static check of its
	// declared tensors cannot see — is marked failed instead of taking the
	// server down, on every start. The verdict is kept per artifact
	// sha256 for the life of the server: one child per new artifact (0.36 s
	// median for the demo MLP on 2 busy CPUs), none for a version whose artifact
	// was checked already. `signalforge serve` sets it to its own
	// executable. If nil, artifacts are loaded directly.
	ChildCheck *registry.ChildCheck

	// Fleet is where this replica publishes its per-version counters
	// every FleetInterval (if zero, 2s) and where the autopilot reads the
	// whole fleet's, so that a canary is judged on every replica's
	// traffic. If nil, an in-process store: this process is the fleet.
	Fleet         fleet.Store
	FleetInterval time.Duration
	// Replica is this replica's id in Fleet and as the autopilot lease's
	// holder; it must differ between replicas (two Servers in one process
	// sharing a Fleet or a Leaser need ids of their own). If empty, the
	// host name and process id.
	Replica string
	// Leaser elects the one replica that runs the canary autopilot: the
	// replicas contend for a lease on it (the registry's store: a
	// registry.FileStore, registry.MemStore or PostgreSQL store). Every
	// replica serves the admin API; only the leader judges and acts. If
	// nil, this process always leads (one process is the fleet). LeaseTTL
	// is how long a leader that died keeps the lease; if zero, 10s.
	Leaser   registry.Leaser
	LeaseTTL time.Duration
	// AutopilotTick is how often the autopilot looks at the canary plans
	// (it judges each plan every plan Interval). If zero, 1s.
	AutopilotTick time.Duration
}

// Timeouts bound every request, per route class. Unauthenticated routes
// that take no body (health, readiness, metrics, model listings and
// metadata, unknown paths) get a small budget for the whole request; routes
// that take a body (predict, infer, admin) get BodyTimeout for the body,
// and a client that misses it gets 408 and a closed connection.
type Timeouts struct {
	// ReadHeader bounds reading a request's headers. If zero, 5s.
	ReadHeader time.Duration
	// Probe bounds a whole request to a route without a body, answer
	// included. If zero, 5s.
	Probe time.Duration
	// Body bounds receiving the body of a predict, infer or admin request,
	// counted from the end of its headers. If zero, 10s.
	Body time.Duration
	// Upload bounds receiving a model upload on the admin API (after the
	// token is checked). If zero, 5m.
	Upload time.Duration
	// Write bounds writing an answer once the request has been handled
	// (predict and infer: after the request's own timeout). If zero, 10s.
	Write time.Duration
	// Idle is how long a keep-alive connection may wait for its next
	// request. If zero, 60s.
	Idle time.Duration
}

func (t *Timeouts) setDefaults() error {
	for _, f := range []struct {
		d    *time.Duration
		def  time.Duration
		name string
	}{
		{&t.ReadHeader, 5 * time.Second, "ReadHeader"},
		{&t.Probe, 5 * time.Second, "Probe"},
		{&t.Body, 10 * time.Second, "Body"},
		{&t.Upload, 5 * time.Minute, "Upload"},
		{&t.Write, 10 * time.Second, "Write"},
		{&t.Idle, 60 * time.Second, "Idle"},
	} {
		if *f.d < 0 {
			return fmt.Errorf("server: Timeouts.%s must not be negative, got %v", f.name, *f.d)
		}
		if *f.d == 0 {
			*f.d = f.def
		}
	}
	return nil
}

func (c *Config) setDefaults() error {
	if c.Registry == nil {
		return errors.New("server: Config.Registry is required")
	}
	if c.Engine == nil {
		return errors.New("server: Config.Engine is required")
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Metrics == nil && c.Gatherer == nil {
		// A registry of our own (never the global one), with the Go runtime
		// and process collectors operators expect beside ours.
		reg := prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		c.Metrics, c.Gatherer = reg, reg
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = 1 << 20
	}
	if c.MaxUploadBytes == 0 {
		c.MaxUploadBytes = 256 << 20
	}
	if c.MaxUploads == 0 {
		c.MaxUploads = 2
	}
	if c.MaxRows == 0 {
		c.MaxRows = 1024
	}
	if err := c.Timeouts.setDefaults(); err != nil {
		return err
	}
	if c.DefaultTimeout == 0 {
		c.DefaultTimeout = 2 * time.Second
	}
	if c.MaxTimeout == 0 {
		c.MaxTimeout = 30 * time.Second
	}
	if c.Batch.MaxBatchSize == 0 {
		c.Batch.MaxBatchSize = 32
	}
	if len(c.Session.WarmupBatchSizes) == 0 {
		c.Session.WarmupBatchSizes = []int{1, c.Batch.MaxBatchSize}
	}
	if c.PredictionType == nil {
		c.PredictionType = func(_, _ string, horizon int) string { return fmt.Sprintf("h%d", horizon) }
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = 30 * time.Second
	}
	if c.DrainDelay == 0 {
		c.DrainDelay = 250 * time.Millisecond
	}
	if c.ReconcileRetry == 0 {
		c.ReconcileRetry = 5 * time.Second
	}
	if c.Fleet == nil {
		c.Fleet = fleet.NewMemory()
	}
	if c.FleetInterval == 0 {
		c.FleetInterval = 2 * time.Second
	}
	if c.Replica == "" {
		c.Replica = defaultReplica()
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = 10 * time.Second
	}
	switch {
	case c.MaxBodyBytes < 0, c.MaxUploadBytes < 0:
		return errors.New("server: negative body limit")
	case c.MaxRows < 0:
		return errors.New("server: negative MaxRows")
	case c.MaxUploads < 0:
		return errors.New("server: negative MaxUploads")
	case c.DefaultTimeout < 0, c.MaxTimeout < 0, c.DefaultTimeout > c.MaxTimeout:
		return fmt.Errorf("server: DefaultTimeout %v must be in [0, MaxTimeout %v]", c.DefaultTimeout, c.MaxTimeout)
	case !validReplica(c.Replica):
		return fmt.Errorf("server: Replica %q: want letters, digits, '.', '_', '-' (not first), at most 128", c.Replica)
	case c.FleetInterval < time.Millisecond:
		return fmt.Errorf("server: FleetInterval %v below 1ms", c.FleetInterval)
	case c.LeaseTTL < 0, c.AutopilotTick < 0:
		return fmt.Errorf("server: negative LeaseTTL %v or AutopilotTick %v", c.LeaseTTL, c.AutopilotTick)
	}
	return nil
}

// Server serves models over HTTP. Create it with New, run it with
// ListenAndServe or Serve.
type Server struct {
	cfg    Config
	log    *slog.Logger
	reg    *registry.Registry
	engine infer.Engine
	cache  *cache.Cache
	router *route.Router
	mux    *http.ServeMux
	met    *metrics
	build  buildinfo.Info // what GET /v2 and signalforge_build_info report

	models *manager.Manager
	// canaries are the models' canary plans as the manager's last read
	// of the registry had them (running or finished), for metrics: a
	// scrape never reads the registry. applyChange writes it.
	canaries atomic.Pointer[map[string]registry.CanaryPlan]
	shadows  shadowSet
	pools    pools

	// collector reads the fleet's counters; fleet holds the parts that
	// run while serving (nil before Serve).
	collector *fleet.Collector
	fleet     atomic.Pointer[fleetParts]

	// routeClass maps each route pattern to its timeout class.
	routeClass map[string]routeClass
	// uploads holds a token per model upload being read (MaxUploads).
	uploads chan struct{}
	// importAbs is ImportDir made absolute, importRoot the same with its
	// symbolic links resolved; empty when register-by-path is off.
	importAbs, importRoot string

	ready atomic.Bool // initial load done and not shutting down

	mu      sync.Mutex // guards started
	started bool
}

// New returns a Server. It loads nothing until ListenAndServe or Serve.
func New(cfg Config) (*Server, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	s := &Server{
		cfg:    cfg,
		log:    cfg.Logger,
		reg:    cfg.Registry,
		engine: cfg.Engine,
		cache:  cfg.Cache,
		router: cfg.Router,
		build:  buildinfo.Get(),
	}
	if s.router == nil {
		r, err := route.New(route.Config{Logger: cfg.Logger})
		if err != nil {
			return nil, err
		}
		s.router = r
	}
	s.canaries.Store(&map[string]registry.CanaryPlan{})
	s.uploads = make(chan struct{}, cfg.MaxUploads)
	if cfg.ImportDir != "" {
		abs, root, err := resolveImportDir(cfg.ImportDir)
		if err != nil {
			return nil, err
		}
		s.importAbs, s.importRoot = abs, root
	}
	models, err := newModels(s)
	if err != nil {
		return nil, err
	}
	s.models = models
	col, err := fleet.NewCollector(cfg.Fleet, fleet.CollectorConfig{Interval: cfg.FleetInterval})
	if err != nil {
		return nil, err
	}
	s.collector = col
	met, err := newMetrics(s, cfg.Metrics)
	if err != nil {
		return nil, err
	}
	s.met = met
	s.mux = http.NewServeMux()
	s.routeClass = map[string]routeClass{}
	s.routes()
	return s, nil
}

// Handler returns the server's HTTP handler (for tests and embedding).
func (s *Server) Handler() http.Handler { return s }

// Router returns the router the server uses.
func (s *Server) Router() *route.Router { return s.router }

// Ready reports whether the server has loaded and warmed its models and is
// not shutting down.
func (s *Server) Ready() bool { return s.ready.Load() }

// ListenAndServe listens on addr and calls Serve.
func (s *Server) ListenAndServe(ctx context.Context, addr string) error {
	if err := s.checkAdminAddr(addr); err != nil {
		return err
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	return s.Serve(ctx, ln)
}

// Serve loads the registry's serving models, serves HTTP on ln until ctx is
// done, then shuts down in order: readiness goes false, the listener stops
// accepting, in-flight requests finish, batchers drain, sessions close —
// all within Config.ShutdownTimeout; connections still open after the HTTP
// part of the budget are closed. It returns nil after a clean shutdown. It
// refuses to start when AdminOpenLoopback is set (without a token) and ln
// is not a loopback address.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	s.mu.Lock()
	if s.started {
		s.mu.Unlock()
		return errors.New("server: Serve called twice")
	}
	s.started = true
	s.mu.Unlock()
	if err := s.checkAdminAddr(ln.Addr().String()); err != nil {
		return err
	}
	// This replica's counters go to the fleet from the start; with a
	// Leaser it contends for the autopilot at once.
	fp, err := s.startFleet()
	if err != nil {
		return err
	}

	t := s.cfg.Timeouts
	hs := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: t.ReadHeader,
		// A backstop only: every route sets its own, shorter read deadline
		// (ServeHTTP), and clears it once the body is read.
		ReadTimeout: t.ReadHeader + max(t.Probe, t.Body, t.Upload),
		IdleTimeout: t.Idle,
		ErrorLog:    slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- hs.Serve(ln) }()
	s.log.Info("listening", "addr", ln.Addr().String())

	// Follow the registry; readiness turns true after the first load.
	followCtx, stopFollow := context.WithCancel(context.WithoutCancel(ctx))
	followDone := make(chan struct{})
	go func() {
		defer close(followDone)
		if err := s.models.Run(followCtx); err != nil {
			s.log.Warn("no longer following the registry; the loaded models keep serving", "err", err)
		}
	}()

	for loaded, serving := s.models.Loaded(), true; serving; {
		select {
		case <-ctx.Done():
			serving = false
		case err = <-serveErr:
			if errors.Is(err, http.ErrServerClosed) {
				err = nil
			}
			serving = false
		case <-loaded:
			loaded = nil
			s.ready.Store(true)
			s.log.Info("ready: models loaded and warmed", "versions", s.models.Current().Len())
		}
	}
	s.ready.Store(false)
	// The autopilot stops and the lease is released first, so that a
	// peer takes over at once rather than after the lease's TTL.
	fp.stopLeading()
	s.log.Info("shutting down: draining requests, batchers and sessions", "timeout", s.cfg.ShutdownTimeout)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ShutdownTimeout)
	defer cancel()
	// HTTP gets four fifths of the budget; batchers and sessions the rest.
	hctx, hcancel := context.WithTimeout(sctx, s.cfg.ShutdownTimeout*4/5)
	defer hcancel()
	// Answers now carry "Connection: close", so clients stop reusing their
	// connections before Shutdown closes the idle ones: a request written
	// onto a connection just as it closes would fail without an answer.
	hs.SetKeepAlivesEnabled(false)
	if d := s.cfg.DrainDelay; d > 0 {
		select {
		case <-time.After(d):
		case <-hctx.Done():
		}
	}
	if serr := hs.Shutdown(hctx); serr != nil {
		// Clients still sending or reading after the budget (slow or
		// stalled ones) are cut off: shutdown never waits on a client.
		s.log.Warn("shutdown: closing connections still open after the HTTP drain budget", "budget", s.cfg.ShutdownTimeout*4/5, "err", serr)
		_ = hs.Close() // its only error: the listener Shutdown closed already
	}
	// Counters are published until the requests have drained.
	fp.publisher.Close()
	stopFollow()
	<-followDone
	s.closeShadows()
	if cerr := s.models.Close(sctx); cerr != nil && err == nil {
		err = cerr
	}
	s.log.Info("shut down")
	return err
}
