package route

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"math/rand/v2"
	"regexp"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Errors returned by the router. Use errors.Is.
var (
	ErrUnknownModel   = errors.New("route: no split for model")
	ErrUnknownVersion = errors.New("route: unknown version")
	ErrInvalidSplit   = errors.New("route: invalid split")
	ErrInvalidName    = errors.New("route: invalid model or version name")
	ErrClosed         = errors.New("route: closed")
)

// namePattern is the API contract for model names and versions.
var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

func validName(s string) bool { return namePattern.MatchString(s) }

// Split maps a model's versions to traffic weights in [0, 1] that total 1.
// {"v1.0": 0.8, "v2.0": 0.2} sends 80% of request ids to v1.0.
type Split map[string]float64

// Config configures a Router. The zero value is ready to use.
type Config struct {
	// Salt is mixed into every routing hash together with the model name.
	// Changing it reshuffles which ids go where (a fresh experiment).
	// Every replica must use the same Salt. If empty, none.
	Salt string
	// Epsilon is how far a split's total may be from 1. If zero, 1e-6.
	Epsilon float64
	// Window is the span of the sliding-window statistics. If zero, 5m.
	Window time.Duration
	// WindowBuckets is how many slices the window rotates through; the
	// window covers between (n-1)/n and n/n of Window. If zero, 10.
	WindowBuckets int
	// MinSamples is the fewest windowed requests ShouldRollback needs
	// before it may answer true: two errors in the first three requests
	// are not a 66% error rate worth a rollback. If zero, 100; negative
	// disables the guard (the seed's bare threshold check).
	MinSamples int
	// Logger receives Follow's reports of rejected updates. If nil, discarded.
	Logger *slog.Logger
}

func (c *Config) setDefaults() error {
	if c.Epsilon == 0 {
		c.Epsilon = 1e-6
	}
	if c.Window == 0 {
		c.Window = 5 * time.Minute
	}
	if c.WindowBuckets == 0 {
		c.WindowBuckets = 10
	}
	if c.MinSamples == 0 {
		c.MinSamples = 100
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case c.Epsilon < 0 || c.Epsilon >= 0.5 || math.IsNaN(c.Epsilon):
		return fmt.Errorf("route: Epsilon %v out of range (0, 0.5)", c.Epsilon)
	case c.Window < 0:
		return fmt.Errorf("route: negative Window %v", c.Window)
	case c.WindowBuckets < 1 || c.WindowBuckets > 3600:
		return fmt.Errorf("route: WindowBuckets %d out of range [1, 3600]", c.WindowBuckets)
	case c.Window/time.Duration(c.WindowBuckets) <= 0:
		return fmt.Errorf("route: Window %v too short for %d buckets", c.Window, c.WindowBuckets)
	}
	return nil
}

// Router routes requests to model versions and keeps per-version stats.
// All methods are safe for concurrent use. Route and Record never block on
// writers: they read an immutable table through an atomic pointer.
type Router struct {
	cfg Config

	mu    sync.Mutex                 // guards known and writes of splits and stats
	known map[string]map[string]bool // model → declared versions

	splits atomic.Pointer[splitTable] // immutable; replaced on every change
	stats  atomic.Pointer[statsTable] // immutable map; entries are mutable
}

// New returns a Router with no models.
func New(cfg Config) (*Router, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	r := &Router{cfg: cfg, known: map[string]map[string]bool{}}
	r.splits.Store(&splitTable{models: map[string]*modelSplit{}})
	r.stats.Store(&statsTable{models: map[string]map[string]*versionStats{}})
	return r, nil
}

// splitTable is never modified after it is published.
type splitTable struct {
	models map[string]*modelSplit
}

type modelSplit struct {
	salt     uint64 // hash of Config.Salt and the model name
	versions []versionWeight
	split    Split  // normalized copy, for Split()
	only     string // set when a single version has all the weight
}

type versionWeight struct {
	name   string
	seed   uint64  // per-version hash seed
	weight float64 // > 0; zero-weight versions are left out
}

// AddVersions declares versions of a model so that SetSplit accepts them.
// It does not change routing.
func (r *Router) AddVersions(model string, versions ...string) error {
	if !validName(model) {
		return fmt.Errorf("%w: model %q", ErrInvalidName, model)
	}
	for _, v := range versions {
		if !validName(v) {
			return fmt.Errorf("%w: version %q", ErrInvalidName, v)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.addVersionsLocked(model, versions)
	return nil
}

func (r *Router) addVersionsLocked(model string, versions []string) {
	set := r.known[model]
	if set == nil {
		set = map[string]bool{}
		r.known[model] = set
	}
	for _, v := range versions {
		set[v] = true
	}
}

// RemoveVersion forgets a version (for example when it is archived). It
// fails with ErrInvalidSplit while the version still has traffic.
func (r *Router) RemoveVersion(model, version string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ms := r.splits.Load().models[model]; ms != nil && ms.split[version] > 0 {
		return fmt.Errorf("%w: %s:%s still has weight %v", ErrInvalidSplit, model, version, ms.split[version])
	}
	delete(r.known[model], version)
	return nil
}

// SetSplit replaces a model's split. Every version must have been declared
// with AddVersions; weights must be finite, non-negative and total 1 within
// Config.Epsilon (they are then normalized to total exactly 1).
func (r *Router) SetSplit(model string, s Split) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !validName(model) {
		return fmt.Errorf("%w: model %q", ErrInvalidName, model)
	}
	for v := range s {
		if !r.known[model][v] {
			return fmt.Errorf("%w: %s:%s", ErrUnknownVersion, model, v)
		}
	}
	return r.setSplitLocked(model, s)
}

// Apply sets a model's split from an authoritative source such as the
// registry: the versions it names are declared as it goes. An empty split
// removes the model from routing (Route then returns ErrUnknownModel).
// Applying the split already in force changes nothing.
func (r *Router) Apply(model string, s Split) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !validName(model) {
		return fmt.Errorf("%w: model %q", ErrInvalidName, model)
	}
	if len(s) == 0 {
		old := r.splits.Load()
		if _, ok := old.models[model]; !ok {
			return nil
		}
		next := &splitTable{models: maps.Clone(old.models)}
		delete(next.models, model)
		r.splits.Store(next)
		return nil
	}
	for v := range s {
		if !validName(v) {
			return fmt.Errorf("%w: version %q", ErrInvalidName, v)
		}
	}
	if err := r.checkSplit(model, s); err != nil {
		return err
	}
	r.addVersionsLocked(model, slices.Collect(maps.Keys(s)))
	return r.setSplitLocked(model, s)
}

func (r *Router) checkSplit(model string, s Split) error {
	if len(s) == 0 {
		return fmt.Errorf("%w: %s: no versions", ErrInvalidSplit, model)
	}
	total := 0.0
	for v, w := range s {
		if math.IsNaN(w) || math.IsInf(w, 0) || w < 0 || w > 1+r.cfg.Epsilon {
			return fmt.Errorf("%w: %s:%s weight %v not in [0, 1]", ErrInvalidSplit, model, v, w)
		}
		total += w
	}
	if math.Abs(total-1) > r.cfg.Epsilon {
		return fmt.Errorf("%w: %s: weights total %v, want 1", ErrInvalidSplit, model, total)
	}
	return nil
}

func (r *Router) setSplitLocked(model string, s Split) error {
	if err := r.checkSplit(model, s); err != nil {
		return err
	}
	old := r.splits.Load()
	if cur, ok := old.models[model]; ok && maps.Equal(cur.split, normalize(s)) {
		return nil
	}
	next := &splitTable{models: maps.Clone(old.models)}
	next.models[model] = buildModelSplit(r.cfg.Salt, model, s)
	r.splits.Store(next)
	for v := range s {
		r.statsForLocked(model, v)
	}
	return nil
}

func normalize(s Split) Split {
	total := 0.0
	for _, w := range s {
		total += w
	}
	out := make(Split, len(s))
	for v, w := range s {
		out[v] = w / total
	}
	return out
}

func buildModelSplit(salt, model string, s Split) *modelSplit {
	ms := &modelSplit{salt: modelSalt(salt, model), split: normalize(s)}
	// Sorted order keeps float ties (vanishingly rare) deterministic.
	for _, v := range slices.Sorted(maps.Keys(ms.split)) {
		w := ms.split[v]
		if w <= 0 {
			continue
		}
		ms.versions = append(ms.versions, versionWeight{name: v, seed: versionSeed(ms.salt, v), weight: w})
	}
	if len(ms.versions) == 1 {
		ms.only = ms.versions[0].name
	}
	return ms
}

// Split returns a copy of the model's split in force.
func (r *Router) Split(model string) (Split, bool) {
	ms, ok := r.splits.Load().models[model]
	if !ok {
		return nil, false
	}
	return maps.Clone(ms.split), true
}

// Models returns the models that have a split, sorted.
func (r *Router) Models() []string {
	return slices.Sorted(maps.Keys(r.splits.Load().models))
}

// Route picks the version that serves key (a request id or user id). The
// same key reaches the same version while the split is unchanged, on every
// replica with the same Config.Salt. An empty key is routed at random (no
// stickiness). Route does not allocate.
func (r *Router) Route(model, key string) (string, error) {
	ms, ok := r.splits.Load().models[model]
	if !ok {
		return "", ErrUnknownModel
	}
	return ms.pick(key), nil
}

func (ms *modelSplit) pick(key string) string {
	if ms.only != "" {
		return ms.only
	}
	var h uint64
	if key == "" {
		h = rand.Uint64()
	} else {
		h = hashString(ms.salt, key)
	}
	best, bestScore := 0, math.Inf(1)
	for i := range ms.versions {
		v := &ms.versions[i]
		// -ln(u)/w with u uniform in (0,1): Exp(1) scaled by 1/w. The
		// smallest wins, with probability w/Σw.
		score := -math.Log(unitFloat(mix64(h^v.seed))) / v.weight
		if score < bestScore {
			best, bestScore = i, score
		}
	}
	return ms.versions[best].name
}

// SplitUpdate is one change from a SplitSource. An empty Split removes the
// model from routing.
type SplitUpdate struct {
	Model string
	Split Split
}

// SplitSource is what the router follows when a registry is attached. The
// registry package does not need to implement it directly; the server
// adapts the registry's Watch (traffic percentages / 100 per version).
type SplitSource interface {
	// Watch sends the current split of every model first, then every
	// change, until ctx is done; then it closes the channel.
	Watch(ctx context.Context) (<-chan SplitUpdate, error)
}

// Follow applies every update from src until ctx is done or the source
// closes its channel. A rejected update is logged and the model keeps its
// previous split, so one bad registry entry cannot stop routing.
func (r *Router) Follow(ctx context.Context, src SplitSource) error {
	ch, err := src.Watch(ctx)
	if err != nil {
		return fmt.Errorf("route: watch: %w", err)
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case u, ok := <-ch:
			if !ok {
				return nil
			}
			if err := r.Apply(u.Model, u.Split); err != nil {
				r.cfg.Logger.Warn("route: split update rejected", "model", u.Model, "err", err)
			}
		}
	}
}

// setWeight gives version the weight w and spreads 1-w over the model's
// other versions in proportion to their current weights (to fallback when
// they have none). It is how Autopilot steps a canary up and rolls it back.
func (r *Router) setWeight(model, version, fallback string, w float64) (from, to Split, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ms, ok := r.splits.Load().models[model]
	if !ok {
		return nil, nil, fmt.Errorf("%w: %s", ErrUnknownModel, model)
	}
	from = maps.Clone(ms.split)
	rest := 0.0
	for v, x := range from {
		if v != version {
			rest += x
		}
	}
	to = Split{version: w}
	for v, x := range from {
		if v == version {
			continue
		}
		if rest > 0 {
			to[v] = x / rest * (1 - w)
		} else {
			to[v] = 0
		}
	}
	if rest <= 0 {
		to[fallback] += 1 - w
	}
	r.addVersionsLocked(model, []string{version, fallback})
	if err := r.setSplitLocked(model, to); err != nil {
		return nil, nil, err
	}
	return from, to, nil
}
