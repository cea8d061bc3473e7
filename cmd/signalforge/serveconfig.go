package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/signalforge/signalforge/server"
)

// fileConfig is the YAML configuration of `signalforge serve`
// (configs/serve.example.yaml documents every key). Zero values mean the
// documented defaults; unknown keys are errors, so a typo does not silently
// fall back to a default.
type fileConfig struct {
	// Addr is the listen address. Default "127.0.0.1:8080" (this machine
	// only); use ":8080" to serve others, with an admin token.
	Addr string `yaml:"addr"`
	// Registry is the registry: a folder (the file store, for one
	// machine) or a postgres:// URL (PostgreSQL, shared by every replica).
	// Default "models". A URL with a password belongs in the environment
	// (SIGNALFORGE_REGISTRY, which overrides it), not in this file.
	Registry string `yaml:"registry"`
	// RegistryMaxConns caps a PostgreSQL registry's connection pool per
	// process. If zero, pool_max_conns in the URL, else the larger of 4
	// and the number of CPUs. Ignored for a folder.
	RegistryMaxConns int32 `yaml:"registry_max_conns"`
	// RegistryCacheDir is where a PostgreSQL registry's artifacts are
	// cached on this machine, by sha256. If empty, the user's cache folder
	// ($XDG_CACHE_HOME/signalforge/artifacts). Ignored for a folder.
	RegistryCacheDir string `yaml:"registry_cache_dir"`
	// AdminToken protects the admin endpoints (env SIGNALFORGE_ADMIN_TOKEN).
	// Without one the admin endpoints are closed (403).
	AdminToken string `yaml:"admin_token"`
	// AdminOpenLoopback opens the admin endpoints without a token, for
	// development on one machine; only allowed with a loopback Addr.
	AdminOpenLoopback bool `yaml:"admin_open_loopback"`
	// ImportDir is the only folder register-by-path ("onnx_path") may read
	// models from. Default: none (register-by-path refused).
	ImportDir string `yaml:"import_dir"`
	// Demo registers the demo model into an empty registry. Default true.
	Demo *bool `yaml:"demo"`
	// ServeStaging loads staging versions so clients can pin them. Default true.
	ServeStaging *bool `yaml:"serve_staging"`
	// ShutdownTimeout bounds graceful shutdown. Default 30s.
	ShutdownTimeout yamlDuration `yaml:"shutdown_timeout"`
	Limits          struct {
		MaxBodyBytes   int64        `yaml:"max_body_bytes"`   // default 1 MiB
		MaxUploadBytes int64        `yaml:"max_upload_bytes"` // admin model uploads; default 256 MiB
		MaxUploads     int          `yaml:"max_uploads"`      // registrations at once; default 2
		MaxRows        int          `yaml:"max_rows"`         // default 1024
		DefaultTimeout yamlDuration `yaml:"default_timeout"`  // default 2s
		MaxTimeout     yamlDuration `yaml:"max_timeout"`      // default 30s
	} `yaml:"limits"`
	// Timeouts bound slow clients (server.Timeouts documents each).
	Timeouts struct {
		ReadHeader yamlDuration `yaml:"read_header"` // default 5s
		Probe      yamlDuration `yaml:"probe"`       // health, metrics, listings: whole request; default 5s
		Body       yamlDuration `yaml:"body"`        // predict, infer, admin bodies; default 10s
		Upload     yamlDuration `yaml:"upload"`      // admin model uploads; default 5m
		Write      yamlDuration `yaml:"write"`       // writing an answer; default 10s
		Idle       yamlDuration `yaml:"idle"`        // keep-alive connections; default 60s
	} `yaml:"timeouts"`
	Batch struct {
		MaxBatchSize int          `yaml:"max_batch_size"` // default 32
		Window       yamlDuration `yaml:"window"`         // default: the batch package's
		MaxQueue     int          `yaml:"max_queue"`      // rows; default 32 × max_batch_size
		MaxInFlight  int          `yaml:"max_in_flight"`  // default GOMAXPROCS / session.intra_op_threads
	} `yaml:"batch"`
	Session struct {
		IntraOpThreads int `yaml:"intra_op_threads"` // default 1
		// MaxWarmupBytes caps the input and output tensors one warm-up run
		// of a version needs, as its model declares them, at the largest
		// batch. A version over it is marked failed instead of loaded, and
		// registration through this server refuses it. Default 1 GiB.
		MaxWarmupBytes int64 `yaml:"max_warmup_bytes"`
		// MaxAdmissionMemory is the memory a model may take while it is
		// loaded and warmed in the child process that checks it, at
		// registration through this server and before this server first
		// loads an artifact (`signalforge serve`); beyond it the child
		// fails, and the model is refused or its version marked failed.
		// Default 4 GiB (registry.DefaultChildMemory).
		MaxAdmissionMemory int64 `yaml:"max_admission_memory"`
	} `yaml:"session"`
	Cache struct {
		// Enabled turns the prediction cache on. Default true.
		Enabled *bool `yaml:"enabled"`
		// Redis is a redis:// or rediss:// URL (env SIGNALFORGE_REDIS); a
		// cluster is redis://host:port?addr=host2:port2. Empty: the
		// in-memory cache.
		Redis      string                  `yaml:"redis"`
		DefaultTTL yamlDuration            `yaml:"default_ttl"` // default 300s
		TypeTTL    map[string]yamlDuration `yaml:"type_ttl"`    // per prediction type "h<horizon>"
		Timeout    yamlDuration            `yaml:"timeout"`     // per cache call; default 50ms
		MaxEntries int                     `yaml:"max_entries"` // in-memory bound; default 100000
	} `yaml:"cache"`
	Log struct {
		Level  string `yaml:"level"`  // debug, info (default), warn, error
		Format string `yaml:"format"` // text (default) or json
	} `yaml:"log"`
}

// yamlDuration is a time.Duration written as "250ms", "5s", "1m".
type yamlDuration time.Duration

// UnmarshalYAML parses a Go duration string.
func (d *yamlDuration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return fmt.Errorf("line %d: want a duration like \"250ms\" or \"5s\"", n.Line)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration (examples: \"250ms\", \"5s\", \"1m\")", n.Line, s)
	}
	if v < 0 {
		return fmt.Errorf("line %d: duration %q must not be negative", n.Line, s)
	}
	*d = yamlDuration(v)
	return nil
}

// parseFileConfig parses a YAML configuration strictly.
func parseFileConfig(b []byte) (fileConfig, error) {
	var c fileConfig
	if len(bytes.TrimSpace(b)) == 0 {
		return c, nil
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return fileConfig{}, fmt.Errorf("config: %w", err)
	}
	var extra any
	if err := dec.Decode(&extra); err == nil {
		return fileConfig{}, errors.New("config: more than one YAML document")
	}
	if err := c.validate(); err != nil {
		return fileConfig{}, err
	}
	return c, nil
}

// loadFileConfig reads and parses a YAML configuration file.
func loadFileConfig(path string) (fileConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return fileConfig{}, fmt.Errorf("config: %w", err)
	}
	c, err := parseFileConfig(b)
	if err != nil {
		return fileConfig{}, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

func (c *fileConfig) validate() error {
	switch {
	case c.Limits.MaxBodyBytes < 0:
		return errors.New("config: limits.max_body_bytes must not be negative")
	case c.RegistryMaxConns < 0:
		return errors.New("config: registry_max_conns must not be negative")
	case c.Limits.MaxUploadBytes < 0, c.Limits.MaxUploads < 0:
		return errors.New("config: limits.max_upload_bytes and limits.max_uploads must not be negative")
	case c.AdminOpenLoopback && c.AdminToken == "" && c.Addr != "" && !server.LoopbackAddr(c.Addr):
		return fmt.Errorf("config: admin_open_loopback needs a loopback addr like \"127.0.0.1:8080\", not %q; set admin_token to serve admin beyond this machine", c.Addr)
	case c.Limits.MaxRows < 0:
		return errors.New("config: limits.max_rows must not be negative")
	case c.Batch.MaxBatchSize < 0, c.Batch.MaxQueue < 0, c.Batch.MaxInFlight < 0:
		return errors.New("config: batch sizes must not be negative")
	case c.Session.IntraOpThreads < 0:
		return errors.New("config: session.intra_op_threads must not be negative")
	case c.Session.MaxAdmissionMemory < 0:
		return errors.New("config: session.max_admission_memory must not be negative")
	case c.Cache.MaxEntries < 0:
		return errors.New("config: cache.max_entries must not be negative")
	}
	for k, v := range c.Cache.TypeTTL {
		if v <= 0 {
			return fmt.Errorf("config: cache.type_ttl[%q] must be positive", k)
		}
	}
	switch strings.ToLower(c.Log.Level) {
	case "", "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("config: log.level %q: want debug, info, warn or error", c.Log.Level)
	}
	switch c.Log.Format {
	case "", "text", "json":
	default:
		return fmt.Errorf("config: log.format %q: want text or json", c.Log.Format)
	}
	return nil
}

// serverTimeouts returns the file's timeouts for server.Config.Timeouts.
func (c *fileConfig) serverTimeouts() server.Timeouts {
	t := c.Timeouts
	return server.Timeouts{ReadHeader: time.Duration(t.ReadHeader), Probe: time.Duration(t.Probe), Body: time.Duration(t.Body),
		Upload: time.Duration(t.Upload), Write: time.Duration(t.Write), Idle: time.Duration(t.Idle)}
}

// boolOr returns *b, or def when b is nil.
func boolOr(b *bool, def bool) bool {
	if b == nil {
		return def
	}
	return *b
}
