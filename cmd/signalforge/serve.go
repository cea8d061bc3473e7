package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/signalforge/signalforge/batch"
	"github.com/signalforge/signalforge/cache"
	"github.com/signalforge/signalforge/cache/rediscache"
	"github.com/signalforge/signalforge/infer"
	"github.com/signalforge/signalforge/infer/ort"
	"github.com/signalforge/signalforge/internal/demo"
	"github.com/signalforge/signalforge/registry"
	"github.com/signalforge/signalforge/registry/pgstore"
	"github.com/signalforge/signalforge/route/fleet"
	"github.com/signalforge/signalforge/server"
)

const serveSynopsis = `[flags]

Serves the registry's production (and staging) model versions over HTTP:
  POST /v1/models/{name}/predict            native JSON API
  POST /v2/models/{name}[/versions/{v}]/infer  Open Inference Protocol v2
  GET  /v1/models, /v2/health/ready, /metrics, /v1/admin/...

With no flags it serves the registry folder ./models with the in-memory
cache on 127.0.0.1:8080, and registers demo models when the registry is
empty (forecast_mlp, v1.0/v2.0 at 80/20; forecast_lstm, 16 time steps).
To serve beyond this machine, listen on ":8080". Replicas on several
machines share one registry in PostgreSQL: --registry (or
SIGNALFORGE_REGISTRY) postgres://user@host:5432/db?sslmode=verify-full;
the config keys registry_max_conns and registry_cache_dir size its pool
and place the artifact cache.
Canary plans and shadows are registry state that every replica follows.
Each replica publishes its per-version counters to the fleet store (Redis
with --redis, else the registry's PostgreSQL database, else the registry
folder's fleet subfolder, for replicas on one machine), and the replicas
elect, on a lease in the registry's store, the one whose autopilot judges
canaries on the whole fleet's counters; give each replica its own
--replica id.
The admin API (/v1/admin/...) is closed unless an admin token is set
(--admin-token, SIGNALFORGE_ADMIN_TOKEN); --admin-open-loopback opens it
without a token for development, on a loopback address only. Registering a
model by path reads only from the --import-dir folder.
Environment: SIGNALFORGE_REGISTRY, SIGNALFORGE_REDIS, SIGNALFORGE_ADMIN_TOKEN,
SIGNALFORGE_REPLICA, SIGNALFORGE_ORT_LIB (ONNX Runtime library).

Examples:
  signalforge serve
  signalforge serve --config configs/serve.example.yaml
  signalforge serve --addr :9000 --redis redis://127.0.0.1:6379/0
  signalforge serve --addr :8080 --admin-token TOKEN --replica web-1 --redis redis://cache:6379/0
  SIGNALFORGE_REGISTRY='postgres://signalforge:PASSWORD@db:5432/registry?sslmode=verify-full' signalforge serve --addr :8080 --admin-token TOKEN`

func cmdServe(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "serve", serveSynopsis)
	cfgPath := fs.String("config", "", "YAML configuration file (see configs/serve.example.yaml)")
	addr := fs.String("addr", "", "listen address (default \"127.0.0.1:8080\"; \":8080\" for all interfaces)")
	dir := fs.String("registry", "", "registry: a folder, or a postgres:// URL shared by many replicas (default $SIGNALFORGE_REGISTRY, else \"models\")")
	redisURL := fs.String("redis", "", "Redis URL for the shared prediction cache (default: in-memory; env SIGNALFORGE_REDIS)")
	noCache := fs.Bool("no-cache", false, "disable the prediction cache")
	noDemo := fs.Bool("no-demo", false, "do not register the demo model into an empty registry")
	token := fs.String("admin-token", "", "bearer token for the admin endpoints (env SIGNALFORGE_ADMIN_TOKEN); without one they are closed")
	adminOpen := fs.Bool("admin-open-loopback", false, "open the admin endpoints without a token (development; only with a loopback --addr)")
	importDir := fs.String("import-dir", "", "folder the admin API may register models from by path (\"onnx_path\"); default: none")
	logLevel := fs.String("log-level", "", "debug, info, warn or error (default info)")
	logJSON := fs.Bool("log-json", false, "log JSON lines instead of text")
	window := fs.Duration("batch-window", 0, "batching window: the longest a request waits for company while another batch of its model runs; an idle model runs it at once (default "+batch.DefaultWindow.String()+")")
	maxBatch := fs.Int("max-batch", 0, "largest batch in rows (default 32)")
	ortLib := fs.String("ort-lib", "", "ONNX Runtime library (default $SIGNALFORGE_ORT_LIB, the project's .deps copy, then system paths)")
	replica := fs.String("replica", "", "this replica's id in the fleet and as the autopilot's lease holder; unique per replica (default $SIGNALFORGE_REPLICA, else host name and process id)")
	leaseTTL := fs.Duration("lease-ttl", 10*time.Second, "how long the autopilot lease lasts unless renewed: a leader that dies is replaced within it")
	fleetInterval := fs.Duration("fleet-interval", 2*time.Second, "how often this replica publishes its per-version counters to the fleet")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(e.stderr, "signalforge serve: unexpected argument %q\n", fs.Arg(0))
		return errUsage
	}
	var fc fileConfig
	if *cfgPath != "" {
		var err error
		if fc, err = loadFileConfig(*cfgPath); err != nil {
			return err
		}
	}
	// Flags, then environment, override the file.
	set := func(dst *string, vals ...string) {
		for _, v := range vals {
			if v != "" {
				*dst = v
				return
			}
		}
	}
	set(&fc.Addr, *addr, fc.Addr, "127.0.0.1:8080")
	set(&fc.Registry, *dir, e.getenv("SIGNALFORGE_REGISTRY"), fc.Registry, "models")
	set(&fc.Cache.Redis, *redisURL, e.getenv("SIGNALFORGE_REDIS"), fc.Cache.Redis)
	set(&fc.AdminToken, *token, e.getenv("SIGNALFORGE_ADMIN_TOKEN"), fc.AdminToken)
	set(&fc.ImportDir, *importDir, fc.ImportDir)
	fc.AdminOpenLoopback = fc.AdminOpenLoopback || *adminOpen
	set(&fc.Log.Level, *logLevel, fc.Log.Level, "info")
	if *logJSON {
		fc.Log.Format = "json"
	}
	if *window > 0 {
		fc.Batch.Window = yamlDuration(*window)
	}
	if *maxBatch > 0 {
		fc.Batch.MaxBatchSize = *maxBatch
	}

	if *window < 0 || *maxBatch < 0 {
		return fmt.Errorf("--batch-window and --max-batch must not be negative")
	}
	if *leaseTTL <= 0 || *fleetInterval <= 0 {
		return fmt.Errorf("--lease-ttl and --fleet-interval must be positive")
	}
	set(replica, *replica, e.getenv("SIGNALFORGE_REPLICA"))
	switch strings.ToLower(fc.Log.Level) {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("--log-level %q: want debug, info, warn or error", fc.Log.Level)
	}
	log := newLogger(e, fc.Log.Level, fc.Log.Format)
	// go-redis logs through a process-wide logger; send it to ours.
	redis.SetLogger(redisLogger{log})
	switch {
	case fc.AdminToken != "":
		if fc.AdminOpenLoopback {
			log.Info("admin endpoints need the admin token (--admin-open-loopback is ignored when a token is set)")
		}
	case fc.AdminOpenLoopback:
		if !server.LoopbackAddr(fc.Addr) {
			return fmt.Errorf("--admin-open-loopback (admin_open_loopback) opens the admin API without a token and needs a loopback --addr like 127.0.0.1:8080, not %q; set --admin-token (or SIGNALFORGE_ADMIN_TOKEN) to serve admin beyond this machine", fc.Addr)
		}
		log.Warn("admin endpoints are open without a token to clients on this machine (--admin-open-loopback)", "addr", fc.Addr)
	default:
		log.Info("admin endpoints are closed: no admin token (set --admin-token or SIGNALFORGE_ADMIN_TOKEN)")
	}
	// Bind first: a taken port must fail before anything else is done.
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", fc.Addr)
	if err != nil {
		return err
	}
	defer ln.Close()
	ocfg := ort.Config{Getenv: e.getenv, LibraryPath: *ortLib}
	if *ortLib != "" {
		ocfg.LibrarySetting = "--ort-lib"
	}
	eng, err := ort.New(ocfg)
	if err != nil {
		return err
	}
	defer eng.Close()

	// Admission through this server (admin uploads) warms a model as the
	// server will: at batch 1 and the largest batch, within the same memory
	// budget.
	warmMax := fc.Batch.MaxBatchSize
	if warmMax == 0 {
		warmMax = 32
	}
	admission := registry.AdmissionConfig{WarmupBatchSizes: []int{1, warmMax}, MaxWarmupBytes: fc.Session.MaxWarmupBytes,
		Session: infer.Options{IntraOpThreads: fc.Session.IntraOpThreads}}
	// The load and warm-up of admission run in a child process of this
	// executable under a memory limit (session.max_admission_memory), and
	// so does a first load of every artifact the registry serves (the
	// verdict kept per sha256): a model whose warm-up would exhaust memory
	// is refused or marked failed, and this server stays up.
	check, err := childCheck(e, ocfg, fc.Session.MaxAdmissionMemory)
	if err != nil {
		return err
	}
	reg, closeReg, err := openRegistryWith(ctx, fc.Registry, true, registry.Config{Validator: registry.NewChildValidator(check, admission), Logger: log},
		storeOptions{maxConns: fc.RegistryMaxConns, cacheDir: fc.RegistryCacheDir})
	if err != nil {
		return err
	}
	defer closeReg()
	if boolOr(fc.Demo, true) && !*noDemo {
		seeded, err := demo.Seed(ctx, reg)
		if err != nil {
			return err
		}
		if seeded {
			log.Info("registered the demo models into the empty registry", "models", demo.ModelName+" (v1.0=80% v2.0=20%), "+demo.SeqModelName+" (v1.0)", "registry", fc.Registry)
		}
	}

	// Redis, when given, holds the prediction cache and the fleet's
	// counters.
	var rs *rediscache.Store
	if fc.Cache.Redis != "" {
		opts, err := rediscache.ParseURL(fc.Cache.Redis)
		if err != nil {
			return err
		}
		if rs, err = rediscache.New(opts); err != nil {
			return err
		}
		defer rs.Close()
		log.Info("Redis", "addrs", strings.Join(opts.Addrs, ","))
	}
	var c *cache.Cache
	if boolOr(fc.Cache.Enabled, true) && !*noCache {
		var store cache.Store
		if rs != nil {
			store = rs
			log.Info("prediction cache: Redis")
		} else {
			ms, err := cache.NewMemory(cache.MemoryConfig{MaxEntries: fc.Cache.MaxEntries})
			if err != nil {
				return err
			}
			defer ms.Close()
			store = ms
			log.Info("prediction cache: in-memory")
		}
		ttl := map[string]time.Duration{}
		for k, v := range fc.Cache.TypeTTL {
			ttl[k] = time.Duration(v)
		}
		c, err = cache.New(store, cache.Config{DefaultTTL: time.Duration(fc.Cache.DefaultTTL), TypeTTL: ttl, Timeout: time.Duration(fc.Cache.Timeout),
			ComputeTimeout: time.Duration(fc.Limits.DefaultTimeout), Logger: log})
		if err != nil {
			return err
		}
	}

	fleetStore, where, err := openFleet(rs, reg.Store())
	if err != nil {
		return err
	}
	// Every store the registry can live in grants leases: the replicas
	// sharing it elect the one that runs the canary autopilot.
	leaser, _ := reg.Store().(registry.Leaser)
	log.Info("fleet: counters and autopilot", "fleet_store", where, "replica", *replica, "elects_leader", leaser != nil)

	srv, err := server.New(server.Config{
		Registry: reg, Engine: eng, Cache: c, Logger: log,
		AdminToken:        fc.AdminToken,
		AdminOpenLoopback: fc.AdminOpenLoopback,
		ImportDir:         fc.ImportDir,
		MaxUploadBytes:    fc.Limits.MaxUploadBytes,
		MaxUploads:        fc.Limits.MaxUploads,
		Timeouts:          fc.serverTimeouts(),
		MaxBodyBytes:      fc.Limits.MaxBodyBytes,
		MaxRows:           fc.Limits.MaxRows,
		DefaultTimeout:    time.Duration(fc.Limits.DefaultTimeout),
		MaxTimeout:        time.Duration(fc.Limits.MaxTimeout),
		Batch:             batch.Config{MaxBatchSize: fc.Batch.MaxBatchSize, Window: time.Duration(fc.Batch.Window), MaxQueue: fc.Batch.MaxQueue, MaxInFlight: fc.Batch.MaxInFlight},
		Session:           infer.Options{IntraOpThreads: fc.Session.IntraOpThreads, MaxWarmupBytes: fc.Session.MaxWarmupBytes},
		ServeStaging:      boolOr(fc.ServeStaging, true),
		ShutdownTimeout:   time.Duration(fc.ShutdownTimeout),
		ChildCheck:        &check,
		Fleet:             fleetStore,
		FleetInterval:     *fleetInterval,
		Replica:           *replica,
		Leaser:            leaser,
		LeaseTTL:          *leaseTTL,
	})
	if err != nil {
		return err
	}
	if err := srv.Serve(ctx, ln); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// openFleet picks where the replicas' counters meet: Redis when one is
// configured; else the registry's own store — its PostgreSQL database (the
// fleet_snapshots table) or, for a folder, the subfolder fleet (replicas
// on one machine); else this process alone. It also says which, for the
// log.
func openFleet(rs *rediscache.Store, regStore registry.Store) (fleet.Store, string, error) {
	if rs != nil {
		return fleet.NewRedis(rs.Client(), "signalforge"), "redis", nil
	}
	switch st := regStore.(type) {
	case *pgstore.Store:
		return st.Fleet(), "the registry's PostgreSQL database", nil
	case *registry.FileStore:
		d, err := fleet.NewDir(filepath.Join(st.Dir(), "fleet"))
		if err != nil {
			return nil, "", err
		}
		return d, "folder " + d.Path(), nil
	}
	return fleet.NewMemory(), "memory (this replica only)", nil
}

func newLogger(e *env, level, format string) *slog.Logger {
	var lv slog.Level
	switch strings.ToLower(level) {
	case "debug":
		lv = slog.LevelDebug
	case "warn":
		lv = slog.LevelWarn
	case "error":
		lv = slog.LevelError
	default:
		lv = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: lv}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(e.stderr, opts))
	}
	return slog.New(slog.NewTextHandler(e.stderr, opts))
}

// redisLogger sends go-redis's own log lines to slog at debug level: the
// cache already counts and reports Redis failures (fail-open), so these
// lines are detail, not news.
type redisLogger struct{ log *slog.Logger }

func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	l.log.DebugContext(ctx, "redis: "+fmt.Sprintf(format, v...))
}
