// Package pgstore is a registry.Store in PostgreSQL, for registries shared
// by many replicas and CLIs on many machines: one database is the one
// truth.
//
//	s, err := pgstore.Open(ctx, pgstore.Config{URL: "postgres://signalforge@db:5432/registry?sslmode=require"})
//	…
//	reg, err := registry.Open(ctx, registry.Config{Store: s})
//
// Schema (migrations/*.sql, applied by Open):
//
//	registry_seq(seq)                    the last committed event's Seq (one row)
//	models(name, doc json, updated_seq)  each model with its versions, as JSON
//	events(seq, model, doc json, at)     the audit log
//	artifacts(sha256, size, oid)         artifact bytes in PostgreSQL large objects
//	leases(name, holder, expires_at, epoch)  leases (registry.Leaser, e.g. who runs the autopilot)
//	fleet_snapshots(model, replica, at, expires, body jsonb)  each replica's request counters (Fleet)
//	schema_migrations(version, name, applied_at)
//
// Every change is one transaction: Update takes a transaction-scoped
// advisory lock on the model's name (two writers of one model queue; writers
// of different models do not), reads the model, runs the registry's change
// on it, checks the result with registry.ValidateModel, then takes the
// registry_seq row (which orders committers, so event numbers are gap-free
// and increase in commit order across machines), writes the model and its
// events and NOTIFYs NotifyChannel with the new Seq, and commits. A
// transaction aborted by PostgreSQL (serialization failure, deadlock) is
// retried a few times; when retries run out the error wraps ErrConflict.
// A client that vanishes mid-change cannot hold a model's lock for long:
// sessions set idle_in_transaction_session_timeout (unless the URL sets it).
//
// Watching: the Store is a registry.Notifier. The first Changed call (a
// registry Watch makes it) starts one goroutine with a connection of its
// own, outside the pool, in LISTEN on NotifyChannel; each notification wakes
// the watches, which read the new events from the events table. A Watch so
// sees another machine's commit within milliseconds, and polls Seq only as
// a safety net (every 2 s by default). When the connection breaks (the
// database restarts, the network drops) the listener reconnects with
// backoff (50 ms doubling to 2 s) and wakes the watches once it is back,
// so that they catch up from their last Seq: no event is lost. Close stops
// the listener and waits for it.
//
// Artifacts are streamed into and out of large objects in 1 MiB chunks and
// never held whole in memory by PutArtifactFrom, OpenArtifact or
// ArtifactPath; every read is verified against the sha256. ArtifactPath
// downloads an artifact once per machine into Config.CacheDir, named by its
// sha256, so a model crosses the network once per machine.
//
// An S3-compatible object store would plug in behind the same methods: the
// artifacts table would hold the object key (the sha256) instead of the
// large object's oid; PutArtifactFrom would stream to PutObject (multipart
// for big files) while hashing, then insert the row; OpenArtifact would
// stream GetObject through the same verifying reader; the disk cache and
// its verification stay as they are.
//
// Leases: the Store is a registry.Leaser. TryAcquire is one UPSERT on the
// leases row that succeeds only if the lease is free, expired or already
// the holder's, with expiry by the database's clock (replicas' clocks do
// not matter); Release NOTIFYs NotifyChannel so that stand-by Electors
// take over at once.
//
// Fleet counters: Fleet returns a fleet.Store in the same database, so
// that replicas sharing a PostgreSQL registry judge canaries on the whole
// fleet's traffic without Redis. Publish upserts a row per (model,
// replica) with its expiry by the database's clock; Snapshots reads the
// rows not yet expired; publishes delete expired rows a few at a time.
//
// Migrations are plain SQL files embedded in the binary rather than a
// migration library: there are two tables' worth of schema, a library would
// be one more dependency to trust and update, and the advisory lock that
// keeps two replicas starting at once from both migrating is needed either
// way. A database whose schema is newer than this build knows is refused
// (*SchemaError).
package pgstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/signalforge/signalforge/registry"
)

// NotifyChannel is the PostgreSQL channel every commit NOTIFYs, with the
// new Seq (decimal) as payload; a lease's release NOTIFYs it too, with
// "lease NAME".
const NotifyChannel = "signalforge_registry"

// ErrConflict marks an Update that PostgreSQL kept aborting (serialization
// failures, deadlocks) until the retries ran out, and an Import into a
// store that is not empty.
var ErrConflict = errors.New("pgstore: conflict")

// Config configures Open.
type Config struct {
	// URL is the database, e.g.
	// postgres://user:password@host:5432/db?sslmode=require (any
	// libpq-style URL or key=value string pgx accepts). Required.
	URL string
	// CacheDir is the local artifact cache (ArtifactPath). If empty,
	// os.UserCacheDir()/signalforge/artifacts.
	CacheDir string
	// MaxConns caps the connection pool. If zero, pgx's default (the
	// larger of 4 and the number of CPUs), or pool_max_conns in URL.
	MaxConns int32
	// Logger receives warnings (a retried transaction, a re-downloaded
	// cache file). If nil, they are discarded.
	Logger *slog.Logger
}

// Store is a registry.Store in PostgreSQL. It is safe for concurrent use,
// also by many processes on many machines sharing the database.
type Store struct {
	pool     *pgxpool.Pool
	target   string // host:port/db, for errors (never the password)
	password string // to scrub from error messages
	cacheDir string
	log      *slog.Logger
	closed   atomic.Bool

	fleetInvalid atomic.Int64 // stored fleet snapshots that did not decode (fleet.go)

	mu       sync.Mutex             // guards verified and fetching
	verified map[string]fileStamp   // cache files hashed by this process
	fetching map[string]*sync.Mutex // one download per sha256 at a time

	listenCfg  *pgx.ConnConfig    // the listener's connection (notify.go)
	lmu        sync.Mutex         // guards changed, stopListen, listenDone
	changed    chan struct{}      // closed and replaced by broadcast
	stopListen context.CancelFunc // stops the listener; nil until Changed starts it
	listenDone chan struct{}      // closed when the listener has returned
}

var _ registry.Store = (*Store)(nil)
var _ registry.Importer = (*Store)(nil)

// Open connects to cfg.URL, applies the migrations this build knows that the
// database lacks, and returns the store. It fails if the database cannot
// be reached or its schema is newer than this build (*SchemaError).
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.URL == "" {
		return nil, errors.New("pgstore: empty database URL")
	}
	if cfg.MaxConns < 0 {
		return nil, fmt.Errorf("pgstore: MaxConns %d is negative", cfg.MaxConns)
	}
	password := urlPassword(cfg.URL)
	pcfg, err := pgxpool.ParseConfig(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("pgstore: invalid database URL: %s", scrub(err.Error(), password))
	}
	if pcfg.ConnConfig.Password != "" {
		password = pcfg.ConnConfig.Password
	}
	if cfg.MaxConns > 0 {
		pcfg.MaxConns = cfg.MaxConns
	}
	// A cancelled ctx cancels the query on the server too (by default pgx
	// only drops the connection, and a backend waiting for a lock would
	// wait on).
	pcfg.ConnConfig.BuildContextWatcherHandler = func(c *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: c, DeadlineDelay: 2 * time.Second}
	}
	if _, ok := pcfg.ConnConfig.RuntimeParams["idle_in_transaction_session_timeout"]; !ok {
		pcfg.ConnConfig.RuntimeParams["idle_in_transaction_session_timeout"] = "60s"
	}
	cacheDir := cfg.CacheDir
	if cacheDir == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			return nil, fmt.Errorf("pgstore: no CacheDir given and no user cache folder: %w", err)
		}
		cacheDir = filepath.Join(base, "signalforge", "artifacts")
	}
	if cacheDir, err = filepath.Abs(cacheDir); err != nil {
		return nil, fmt.Errorf("pgstore: cache folder: %w", err)
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("pgstore: cache folder: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	removeStaleDownloads(cacheDir)
	s := &Store{
		target:    describe(&pcfg.ConnConfig.Config),
		password:  password,
		cacheDir:  cacheDir,
		log:       log,
		verified:  map[string]fileStamp{},
		fetching:  map[string]*sync.Mutex{},
		listenCfg: listenConfig(pcfg.ConnConfig),
	}
	if s.pool, err = pgxpool.NewWithConfig(ctx, pcfg); err != nil {
		return nil, s.fail(ctx, "connect", err)
	}
	if err := s.migrate(ctx); err != nil {
		s.pool.Close()
		return nil, err
	}
	return s, nil
}

// Close stops the change listener (see Changed), waiting for it, and
// closes the connection pool. It is safe to call more than once.
func (s *Store) Close() error {
	if s.closed.CompareAndSwap(false, true) {
		s.stopListener()
		s.pool.Close()
	}
	return nil
}

// Target is the database as host:port/name, for logs and messages.
func (s *Store) Target() string { return s.target }

func (s *Store) checkOpen() error {
	if s.closed.Load() {
		return registry.ErrClosed
	}
	return nil
}

// describe names the database as host:port/db.
func describe(c *pgconn.Config) string {
	host := c.Host
	if strings.HasPrefix(host, "/") { // a unix socket folder
		return fmt.Sprintf("%s:%d/%s", host, c.Port, c.Database)
	}
	return net.JoinHostPort(host, strconv.Itoa(int(c.Port))) + "/" + c.Database
}

// urlPassword returns the password in a postgres:// URL, if any (parsed
// without pgx so that it is known even when pgx refuses the URL).
func urlPassword(raw string) string {
	if u, err := url.Parse(raw); err == nil && u.User != nil {
		p, _ := u.User.Password()
		return p
	}
	return ""
}

// scrub removes password from msg.
func scrub(msg, password string) string {
	if password == "" {
		return msg
	}
	msg = strings.ReplaceAll(msg, password, "xxxxx")
	if esc := url.UserPassword("", password).String(); esc != ":"+password { // percent-encoded form
		msg = strings.ReplaceAll(msg, strings.TrimPrefix(esc, ":"), "xxxxx")
	}
	return msg
}

// DBError is a failure talking to PostgreSQL. Its message names the
// database as host:port/name and never the password.
type DBError struct {
	Op     string // what the store was doing
	Target string // host:port/db
	Err    error
	msg    string // Err's message, password removed
}

func (e *DBError) Error() string {
	return fmt.Sprintf("pgstore: %s: PostgreSQL at %s: %s", e.Op, e.Target, e.msg)
}

func (e *DBError) Unwrap() error { return e.Err }

// fail wraps a database error. If ctx ended, the error is ctx's, so that
// callers can tell a cancellation from a database failure.
func (s *Store) fail(ctx context.Context, op string, err error) error {
	if err == nil {
		return nil
	}
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("pgstore: %s: %w", op, cerr)
	}
	if s.closed.Load() {
		return registry.ErrClosed
	}
	return &DBError{Op: op, Target: s.target, Err: err, msg: scrub(err.Error(), s.password)}
}

// retryable reports whether PostgreSQL aborted a transaction that may
// succeed if run again.
func retryable(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "40001" || pe.Code == "40P01")
}

// closeQuietly is for cleanup paths whose error would hide the real one.
func closeQuietly(c io.Closer) { _ = c.Close() }

// removeStaleDownloads removes the temporary files of downloads that a
// killed process left in the cache more than an hour ago (younger ones may
// belong to a live download).
func removeStaleDownloads(dir string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".") || !strings.HasSuffix(e.Name(), ".tmp") {
			continue
		}
		if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > time.Hour {
			_ = os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}
