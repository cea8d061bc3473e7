// Package ort is the ONNX Runtime inference engine: an infer.Engine backed by
// the ONNX Runtime C library through github.com/yalue/onnxruntime_go. It is
// the only package of SignalForge that uses cgo; everything else is written
// against the interfaces in package infer.
//
// The C library is not linked at build time: New finds libonnxruntime.so and
// loads it at run time (see FindLibrary for the search order), so a binary
// built without it still starts and reports one clear error.
//
//	eng, err := ort.New(ort.Config{})
//	if err != nil { … } // names every path tried and how to install
//	defer eng.Close()
//	sess, err := eng.LoadFile(ctx, "model.onnx", infer.Options{WarmupBatchSizes: []int{1, 32}})
//	out, err := sess.Run(ctx, []tensor.Tensor{x})
//
// Sessions are goroutine-safe (the binding's DynamicAdvancedSession); a
// cancelled or expired ctx stops a running inference through ONNX Runtime's
// RunOptions terminate flag.
//
// The hot path is kept close to a bare binding call: small runs reuse
// pooled ONNX Runtime values (Go memory, copied in and out) instead of
// creating and releasing values per call, outputs whose shapes follow from
// the inputs are never allocated by ONNX Runtime, and RunOptions are
// reused. On a 100-50-10 MLP at batch 1, Session.Run costs about 1.15× a
// raw binding call with a background ctx and about 1.28× with a
// cancellable one (the context.AfterFunc hook); see BenchmarkMLP100Overhead.
package ort

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	ortgo "github.com/yalue/onnxruntime_go"

	"github.com/signalforge/signalforge/infer"
)

// Version is the ONNX Runtime release the project pins (scripts/deps.sh).
const Version = "1.30.0"

// EnvLibrary names the environment variable that points at the ONNX Runtime
// shared library, for users with their own install.
const EnvLibrary = "SIGNALFORGE_ORT_LIB"

// EnvRoot names the environment variable holding the project's root folder
// (set by the Makefile); its .deps folder is searched for the library.
const EnvRoot = "SIGNALFORGE_ROOT"

// depsLibrary is the library's path relative to the project root, where
// `make deps` puts it.
var depsLibrary = filepath.Join(".deps", "onnxruntime-"+Version, "libonnxruntime.so.1")

// systemLibraries are the system locations searched last.
var systemLibraries = []string{
	"/usr/local/lib/libonnxruntime.so",
	"/usr/local/lib/libonnxruntime.so.1",
	"/usr/lib/libonnxruntime.so",
	"/usr/lib/libonnxruntime.so.1",
	"/usr/lib/x86_64-linux-gnu/libonnxruntime.so",
	"/usr/lib/x86_64-linux-gnu/libonnxruntime.so.1",
}

// ErrLibraryNotFound is wrapped by the error New returns when no ONNX Runtime
// library is found. The message lists every path tried.
var ErrLibraryNotFound = errors.New("ort: ONNX Runtime library not found")

// Config configures the engine. The zero value finds the library on its own.
type Config struct {
	// LibraryPath is the ONNX Runtime shared library to load. If empty, it
	// is looked up as FindLibrary describes.
	LibraryPath string
	// LibrarySetting names where LibraryPath came from, for error messages
	// ("--ort-lib" for a command-line flag). If empty, "Config.LibraryPath".
	LibrarySetting string
	// Getenv reads environment variables (SIGNALFORGE_ORT_LIB,
	// SIGNALFORGE_ROOT). If nil, os.Getenv.
	Getenv func(string) string
}

// FindLibrary returns the ONNX Runtime library New would load. The order is:
//
//  1. cfg.LibraryPath;
//  2. $SIGNALFORGE_ORT_LIB;
//  3. the project's .deps/onnxruntime-1.30.0/libonnxruntime.so.1, in
//     $SIGNALFORGE_ROOT, then next to the executable and in each folder
//     above it, then in the working directory and each folder above it up
//     to the one holding go.mod (tests run in package folders);
//  4. the system paths /usr/local/lib, /usr/lib and
//     /usr/lib/x86_64-linux-gnu (libonnxruntime.so, then .so.1).
//
// An explicit setting (1 or 2) is authoritative: if it names a missing file,
// the search stops there rather than silently loading another library. When
// nothing is found the error wraps ErrLibraryNotFound, lists every path tried
// and says how to install the library.
func FindLibrary(cfg Config) (string, error) {
	getenv := cfg.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	var tried []string
	check := func(p string) bool {
		if p == "" || slices.Contains(tried, p) {
			return false
		}
		tried = append(tried, p)
		st, err := os.Stat(p)
		return err == nil && !st.IsDir()
	}
	if p, what := explicitLibrary(cfg, getenv); p != "" {
		if check(p) {
			return p, nil
		}
		problem := "which does not exist"
		if st, err := os.Stat(p); err == nil && st.IsDir() {
			problem = "which is a folder, not the library file"
		} else if err != nil && !errors.Is(err, os.ErrNotExist) {
			problem = fmt.Sprintf("which cannot be read (%v)", err)
		}
		fallback := "unset it to use the project's copy"
		if what != "$"+EnvLibrary {
			fallback = "leave it out to use $" + EnvLibrary + " or the project's copy"
		}
		return "", fmt.Errorf("%w: %s is set to %s, %s; point it at libonnxruntime.so (ONNX Runtime %s), or %s (`make deps` installs it in the project's .deps folder)",
			ErrLibraryNotFound, what, p, problem, Version, fallback)
	}
	for _, dir := range projectDirs(getenv) {
		if p := filepath.Join(dir, depsLibrary); check(p) {
			return p, nil
		}
	}
	for _, p := range systemLibraries {
		if check(p) {
			return p, nil
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%v; tried:\n", ErrLibraryNotFound)
	for _, p := range tried {
		fmt.Fprintf(&b, "  %s\n", p)
	}
	fmt.Fprintf(&b, "install ONNX Runtime %s with `make deps` (run in the project folder), or set %s to the path of your libonnxruntime.so", Version, EnvLibrary)
	if cfg.LibrarySetting != "" {
		fmt.Fprintf(&b, " (or pass it with %s)", cfg.LibrarySetting)
	}
	return "", &notFoundError{msg: b.String()}
}

// explicitLibrary returns the library the user named, cfg.LibraryPath then
// $SIGNALFORGE_ORT_LIB, and how they named it; "" if neither is set.
func explicitLibrary(cfg Config, getenv func(string) string) (path, setting string) {
	if cfg.LibraryPath != "" {
		if cfg.LibrarySetting != "" {
			return cfg.LibraryPath, cfg.LibrarySetting
		}
		return cfg.LibraryPath, "Config.LibraryPath"
	}
	if p := getenv(EnvLibrary); p != "" {
		return p, "$" + EnvLibrary
	}
	return "", ""
}

type notFoundError struct{ msg string }

func (e *notFoundError) Error() string { return e.msg }
func (e *notFoundError) Unwrap() error { return ErrLibraryNotFound }

// projectDirs lists the folders that may hold the project's .deps folder, in
// search order, without duplicates.
func projectDirs(getenv func(string) string) []string {
	var dirs []string
	add := func(d string) {
		if d != "" && !slices.Contains(dirs, d) {
			dirs = append(dirs, d)
		}
	}
	if root := getenv(EnvRoot); root != "" {
		add(filepath.Clean(root))
	}
	if exe, err := os.Executable(); err == nil {
		if real, err := filepath.EvalSymlinks(exe); err == nil {
			exe = real
		}
		// bin/signalforge → bin, then the project root above it, and so on.
		for d := filepath.Dir(exe); ; d = filepath.Dir(d) {
			add(d)
			if isModuleRoot(d) || d == filepath.Dir(d) {
				break
			}
		}
	}
	if wd, err := os.Getwd(); err == nil {
		for d := wd; ; d = filepath.Dir(d) {
			if isModuleRoot(d) {
				add(d)
				break
			}
			if d == filepath.Dir(d) {
				// No go.mod above: only the working directory itself.
				add(wd)
				break
			}
		}
	}
	return dirs
}

func isModuleRoot(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "go.mod"))
	return err == nil
}

// runtimeEnv is the one piece of package-level state, and it is forced on us:
// the binding keeps a single process-wide ONNX Runtime environment (and the
// dlopen'ed library) in its own globals. Engines share it by reference
// count: the first New loads the library and creates the environment, the
// last Engine.Close destroys it and unloads the library.
var runtimeEnv struct {
	mu   sync.Mutex // guards refs and lib
	refs int
	lib  string // the loaded library, while refs > 0
}

// Engine is the ONNX Runtime engine. Create it with New; it is safe for
// concurrent use.
type Engine struct {
	lib string

	mu       sync.Mutex // guards sessions and closed
	sessions map[*Session]struct{}
	closed   bool
}

var _ infer.Engine = (*Engine)(nil)

// New loads the ONNX Runtime library (once per process; later engines share
// it) and returns an engine. Engines are cheap; close each one.
//
// All engines in a process use the same library: asking for a different
// LibraryPath while another engine holds one open is an error.
func New(cfg Config) (*Engine, error) {
	runtimeEnv.mu.Lock()
	defer runtimeEnv.mu.Unlock()
	if runtimeEnv.refs > 0 {
		if cfg.LibraryPath != "" && !sameFile(cfg.LibraryPath, runtimeEnv.lib) {
			return nil, fmt.Errorf("ort: library %s requested, but this process already loaded %s (one ONNX Runtime per process)", cfg.LibraryPath, runtimeEnv.lib)
		}
		runtimeEnv.refs++
		return newEngine(runtimeEnv.lib), nil
	}
	lib, err := FindLibrary(cfg)
	if err != nil {
		return nil, err
	}
	ortgo.SetSharedLibraryPath(lib)
	// Log only fatal errors: every failure ONNX Runtime would log is also
	// returned, and wrapped, by the call that failed.
	if err := ortgo.InitializeEnvironment(ortgo.WithLogLevelFatal()); err != nil {
		// Most often a path set by hand to the wrong file or an
		// incompatible release: say which setting to fix.
		getenv := cfg.Getenv
		if getenv == nil {
			getenv = os.Getenv
		}
		from := ""
		if p, what := explicitLibrary(cfg, getenv); p == lib {
			from = " (set by " + what + ")"
		}
		setting := "$" + EnvLibrary
		if cfg.LibrarySetting != "" {
			setting = cfg.LibrarySetting + " or " + setting
		}
		return nil, fmt.Errorf("ort: loading ONNX Runtime from %s%s: %v; it must be libonnxruntime.so of ONNX Runtime %s or a compatible release: `make deps` installs one in the project's .deps folder, or point %s at your own",
			lib, from, err, Version, setting)
	}
	runtimeEnv.refs = 1
	runtimeEnv.lib = lib
	return newEngine(lib), nil
}

func newEngine(lib string) *Engine {
	return &Engine{lib: lib, sessions: make(map[*Session]struct{})}
}

func sameFile(a, b string) bool {
	sa, errA := os.Stat(a)
	sb, errB := os.Stat(b)
	if errA != nil || errB != nil {
		return a == b
	}
	return os.SameFile(sa, sb)
}

// Name returns "onnxruntime".
func (e *Engine) Name() string { return "onnxruntime" }

// LibraryPath returns the path of the loaded ONNX Runtime library.
func (e *Engine) LibraryPath() string { return e.lib }

// RuntimeVersion returns the loaded library's version ("1.30.0").
func (e *Engine) RuntimeVersion() string { return ortgo.GetVersion() }

// Close closes any session still open (waiting for their running calls) and
// releases the engine's share of the process-wide runtime. It is safe to call
// more than once.
func (e *Engine) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	open := make([]*Session, 0, len(e.sessions))
	for s := range e.sessions {
		open = append(open, s)
	}
	e.mu.Unlock()
	var errs []error
	for _, s := range open {
		errs = append(errs, s.Close())
	}

	runtimeEnv.mu.Lock()
	defer runtimeEnv.mu.Unlock()
	runtimeEnv.refs--
	if runtimeEnv.refs == 0 {
		runtimeEnv.lib = ""
		if err := ortgo.DestroyEnvironment(); err != nil {
			errs = append(errs, fmt.Errorf("ort: destroying environment: %v", err))
		}
	}
	return errors.Join(errs...)
}

// track registers a new session; it fails if the engine is closed.
func (e *Engine) track(s *Session) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return errEngineClosed
	}
	e.sessions[s] = struct{}{}
	return nil
}

func (e *Engine) untrack(s *Session) {
	e.mu.Lock()
	delete(e.sessions, s)
	e.mu.Unlock()
}

var errEngineClosed = errors.New("ort: engine closed")
