// Package registry is SignalForge's model registry: versions of ONNX models
// with metrics, tags, feature names and lineage; a lifecycle (staging →
// production → archived) where production versions share a model's traffic
// by percentage; an append-only audit log that answers which version served
// what share of traffic when; and Watch, which the router and the server use
// to follow changes, including changes made by another process.
//
//	reg, _ := registry.Open(ctx, registry.Config{Dir: "models"})
//	v, _ := reg.Register(ctx, registry.RegisterRequest{
//		Name: "lstm_model", ONNXPath: "lstm.onnx",
//		Features: []string{"rsi_14", "macd"},
//		Metrics:  map[string]float64{"val_mae": 0.021},
//	}) // lstm_model:v1, staging
//	reg.Promote(ctx, v.Ref(), 5)        // canary: 5%, other production versions rescaled to 95%
//	reg.SetTraffic(ctx, v.Ref(), 50)    // 50/50
//	prod, _ := reg.Production(ctx)      // what serves now
//	reg.Rollback(ctx, "lstm_model", 0)  // back to the previous split, in one call
//
// A server follows the registry without a gap like this:
//
//	seq, _ := reg.Seq(ctx)           // 1. where the log stands
//	prod, _ := reg.Production(ctx)   // 2. load v.Artifact.Path, route by v.Traffic
//	for ev := range reg.Watch(ctx, seq) {
//		split, _ := reg.Split(ctx, ev.Name) // 3. reload what changed
//		…
//	}
//
// Names and versions match [A-Za-z0-9][A-Za-z0-9._-]{0,127} (ValidateName)
// and are checked before anything touches storage. Storage sits behind the
// Store interface; FileStore (a local directory, crash-safe and shared safely
// by several processes) is the default. A store's state is checked when it is
// loaded (ValidateModel); if it is lost or breaks the rules, Repair rebuilds
// it from the audit log, whose register events record each version whole and
// whose every event records the resulting split.
package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/signalforge/signalforge/onnx"
)

// Config configures a Registry. The zero value opens a FileStore in
// "models" and validates artifacts as ONNX without loading them in an
// engine.
type Config struct {
	// Store holds the registry. If nil, a FileStore in Dir is opened (and
	// closed by Close); a Store passed in is the caller's to close.
	Store Store
	// Dir is the FileStore directory used when Store is nil. If empty,
	// "models".
	Dir string
	// Validator loads each artifact in the serving engine before it is
	// registered (use EngineValidator over infer/ort). If nil, only
	// InspectONNX runs: the artifact must parse as ONNX, but nothing proves
	// the engine can load it. InspectONNX runs in either case.
	Validator Validator
	// MaxArtifactBytes caps an artifact's size. If zero, 2 GiB (protobuf's
	// limit for a model without external data).
	MaxArtifactBytes int64
	// PollInterval is how often each Watch asks the store whether another
	// process changed it (for the FileStore: one open+fstat of state.json;
	// changes made through this Registry are delivered at once). If zero,
	// 250ms, or 2s when the store is a Notifier (PostgreSQL): its
	// notifications deliver other processes' changes at once and the poll
	// is only the safety net for a notification that never came. If
	// negative, Watch sees only this Registry's changes (and the
	// Notifier's, if any).
	PollInterval time.Duration
	// Logger receives warnings (e.g. a Watch poll failing). If nil, they
	// are discarded.
	Logger *slog.Logger
	// Now is the clock for event and version times. If nil, time.Now.
	Now func() time.Time
}

// Registry is the model registry. It is safe for concurrent use.
type Registry struct {
	store     Store
	ownStore  bool
	validator Validator
	maxBytes  int64
	poll      time.Duration
	log       *slog.Logger
	now       func() time.Time

	notifier Notifier // the store's change notifications, or nil

	mu      sync.Mutex    // guards changed, closed, health
	changed chan struct{} // closed and replaced after every local commit
	closed  bool
	health  Stats         // what the watches last learnt of the store
	done    chan struct{} // closed by Close
	wg      sync.WaitGroup
}

// Stats is a snapshot of what the registry's watches know about the store
// (see Registry.Stats).
type Stats struct {
	// Up is false while the store cannot be read: the last read a Watch
	// made failed (the database is down or unreachable, the folder is
	// damaged). Servers keep serving what they loaded meanwhile. It is
	// true before any Watch has read the store.
	Up bool
	// LastError is the failed read's error while Up is false, else "".
	LastError string
	// Since is when Up last changed (zero if it never did).
	Since time.Time
	// Seq is the highest Seq a Watch has read from the store (or started
	// from).
	Seq uint64
}

// Open opens a registry.
func Open(ctx context.Context, cfg Config) (*Registry, error) {
	if cfg.MaxArtifactBytes < 0 {
		return nil, errors.New("registry: negative MaxArtifactBytes")
	}
	r := &Registry{
		store:     cfg.Store,
		validator: cfg.Validator,
		maxBytes:  cfg.MaxArtifactBytes,
		poll:      cfg.PollInterval,
		log:       cfg.Logger,
		now:       cfg.Now,
		changed:   make(chan struct{}),
		done:      make(chan struct{}),
	}
	if r.maxBytes == 0 {
		r.maxBytes = 2 << 30
	}
	r.health.Up = true
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if r.now == nil {
		r.now = time.Now
	}
	if r.store == nil {
		dir := cfg.Dir
		if dir == "" {
			dir = "models"
		}
		fs, err := OpenFileStore(dir)
		if err != nil {
			return nil, err
		}
		r.store, r.ownStore = fs, true
	}
	r.notifier, _ = r.store.(Notifier)
	if r.poll == 0 {
		r.poll = 250 * time.Millisecond
		if r.notifier != nil {
			r.poll = 2 * time.Second
		}
	}
	return r, nil
}

// Stats returns what the registry's watches know about the store: whether
// it could be read the last time (Up), and the highest Seq delivered. A
// server exports it as its registry health.
func (r *Registry) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.health
}

// observe records the result of a watch's read of the store, and logs when
// the store becomes unreadable and when it is readable again — once per
// transition, not on every poll.
func (r *Registry) observe(seq uint64, err error) {
	r.mu.Lock()
	was := r.health
	if seq > r.health.Seq {
		r.health.Seq = seq
	}
	switch {
	case err != nil:
		r.health.LastError = err.Error()
		if was.Up {
			r.health.Up, r.health.Since = false, r.now()
		}
	case !was.Up:
		r.health.Up, r.health.LastError, r.health.Since = true, "", r.now()
	}
	r.mu.Unlock()
	switch {
	case err != nil && was.Up:
		r.log.Warn("registry: unreachable or unreadable: reading changes failed; keeping what is loaded and retrying", "err", err)
	case err == nil && !was.Up:
		r.log.Info("registry: reading changes works again; catching up", "down_for", r.now().Sub(was.Since).Round(time.Millisecond))
	}
}

// Close stops every Watch and closes the store if Open opened it. It is
// safe to call more than once.
func (r *Registry) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	close(r.done)
	r.mu.Unlock()
	r.wg.Wait()
	if r.ownStore {
		return r.store.Close()
	}
	return nil
}

// Store returns the registry's store.
func (r *Registry) Store() Store { return r.store }

type actorKey struct{}

// WithActor returns a context that attributes the registry changes made
// with it to actor (a user name, a token's subject) in the audit log.
func WithActor(ctx context.Context, actor string) context.Context {
	return context.WithValue(ctx, actorKey{}, actor)
}

// ActorFrom returns the actor set by WithActor, or "".
func ActorFrom(ctx context.Context) string {
	a, _ := ctx.Value(actorKey{}).(string)
	return a
}

// RegisterRequest describes a version to register.
type RegisterRequest struct {
	// Name is the model's name.
	Name string
	// Version is the version string. If empty, "v<N+1>" where N is the
	// highest leading integer of the model's versions named v<int> or
	// v<int>.<anything> ("v3", "v3.0", "v3.1-int8" all count as 3; archived
	// versions count too, so a number is never reused): v1, v2, … for a
	// fresh model, v4 after v1.0, v2.0 and v3.0.
	Version string
	// ONNX holds the artifact's bytes. If nil, ONNXPath is read.
	ONNX []byte
	// ONNXPath is a file to read the artifact from when ONNX is nil.
	ONNXPath string
	// Features are the model's input feature names, in input order (see
	// MatchFeatures). May be empty if the model lists them in metadata.
	Features []string
	// Metrics are evaluation metrics (e.g. "val_mae"). Must be finite.
	Metrics map[string]float64
	// Tags are free-form labels, found with FindByTag.
	Tags        map[string]string
	Description string
	// Status is the initial status: staging (if empty) or production.
	Status Status
	// Traffic is the percentage a version registered as production gets,
	// with the same rules as Promote (a version whose inputs differ from
	// those of the versions serving is refused: see MismatchError).
	Traffic float64
	// Lineage records where the version came from. What it leaves empty
	// is filled from the artifact's own metadata_props when our converter
	// or quantizer wrote them (see LineageFromMetadata): the source
	// sha256, the calibration sha256, and the conversion and quantization
	// parameters key by key; the request's values always win. A parent
	// recorded by the quantizer is used only if it names an existing
	// version of this model ("v1" or "NAME:v1"); otherwise it is kept only
	// in Quantization["parent"].
	Lineage Lineage
}

// autoVersion matches the versions that count for the next automatic one:
// v<int>, optionally followed by "." and anything.
var autoVersion = regexp.MustCompile(`^v([0-9]{1,18})(?:\..*)?$`)

// Register validates the artifact (InspectONNX, then Config.Validator),
// matches its inputs to the declared features, stores it content-addressed
// and commits the new version with a register event. Nothing is written
// unless every check passed. The returned Version's Artifact.Path is the
// stored ONNX file.
//
// Should the commit fail after the artifact was stored (another writer took
// the same version string in between), the artifact stays unreferenced: it
// is harmless, and reused if the same bytes are registered again.
func (r *Registry) Register(ctx context.Context, req RegisterRequest) (Version, error) {
	if err := r.checkOpen(); err != nil {
		return Version{}, err
	}
	if err := ValidateName(req.Name); err != nil {
		return Version{}, fmt.Errorf("model name: %w", err)
	}
	if req.Version != "" {
		if err := ValidateName(req.Version); err != nil {
			return Version{}, fmt.Errorf("version of %s: %w", req.Name, err)
		}
	}
	switch req.Status {
	case "", StatusStaging:
		if req.Traffic != 0 {
			return Version{}, fmt.Errorf("%w: traffic %v given for a staging version (register as production, or promote later)", ErrTraffic, req.Traffic)
		}
	case StatusProduction:
		if err := checkPct(req.Traffic); err != nil {
			return Version{}, err
		}
	default:
		return Version{}, fmt.Errorf("%w: %s:%s cannot be registered as %q (staging or production)", ErrTransition, req.Name, req.Version, req.Status)
	}
	if err := checkFinite("metric", req.Metrics); err != nil {
		return Version{}, err
	}
	if err := checkFinite("benchmark", req.Lineage.Benchmarks); err != nil {
		return Version{}, err
	}
	for k := range req.Tags {
		if k == "" {
			return Version{}, fmt.Errorf("registry: empty tag key")
		}
	}
	for what, sum := range map[string]string{"source_sha256": req.Lineage.SourceSHA256, "calibration_sha256": req.Lineage.CalibrationSHA256} {
		if sum != "" && checkSHA(sum) != nil {
			return Version{}, fmt.Errorf("registry: lineage %s %q is not a lowercase hex sha256", what, sum)
		}
	}
	if req.Lineage.Parent != "" {
		if err := ValidateName(req.Lineage.Parent); err != nil {
			return Version{}, fmt.Errorf("lineage parent: %w", err)
		}
	}

	data := req.ONNX
	if data == nil {
		if req.ONNXPath == "" {
			return Version{}, fmt.Errorf("%w: no artifact given", ErrInvalidArtifact)
		}
		var err error
		if data, err = r.readArtifactFile(req.ONNXPath); err != nil {
			return Version{}, err
		}
	}
	if int64(len(data)) > r.maxBytes {
		return Version{}, fmt.Errorf("%w: %d bytes is more than the %d allowed", ErrInvalidArtifact, len(data), r.maxBytes)
	}
	info, err := InspectONNX(data)
	if err != nil {
		return Version{}, err
	}
	found := LineageFromMetadata(info.Metadata)
	lineage := mergeLineage(req.Lineage, found)
	// Only what the artifact supplied needs checking; the request's own
	// values were checked above.
	for key, sum := range map[string]string{MetaSourceSHA256: found.SourceSHA256, MetaQuantizePrefix + "calibration_sha256": found.CalibrationSHA256} {
		explicit := req.Lineage.SourceSHA256
		if key != MetaSourceSHA256 {
			explicit = req.Lineage.CalibrationSHA256
		}
		if explicit == "" && sum != "" && checkSHA(sum) != nil {
			return Version{}, fmt.Errorf("%w: metadata %s %q is not a lowercase hex sha256", ErrInvalidArtifact, key, sum)
		}
	}
	if r.validator != nil {
		if info, err = r.validator.Validate(ctx, data); err != nil {
			if !errors.Is(err, ErrInvalidArtifact) && ctx.Err() == nil {
				err = fmt.Errorf("%w: %w", ErrInvalidArtifact, err)
			}
			return Version{}, err
		}
	}
	features, err := MatchFeatures(req.Features, info)
	if err != nil {
		return Version{}, err
	}

	// Refuse a taken version, and a production version whose inputs differ
	// from those serving, before writing the artifact, so that a refusal
	// leaves nothing behind (Update checks again under the lock).
	if m, err := r.store.Model(ctx, req.Name); err == nil {
		if req.Version != "" && m.version(req.Version) != nil {
			return Version{}, fmt.Errorf("%w: %s:%s", ErrExists, req.Name, req.Version)
		}
		if req.Status == StatusProduction {
			trial := Version{Name: req.Name, Version: req.Version, Status: StatusStaging, Features: features, Inputs: inputsFrom(info.Inputs)}
			if trial.Version == "" {
				trial.Version = nextVersion(&m)
			}
			m.Versions = append(m.Versions, trial)
			if err := sameInputs(func(m *Model, _ *Event) error {
				_, err := promote(m, trial.Version, req.Traffic)
				return err
			})(&m, nil); err != nil {
				return Version{}, err
			}
		}
	}
	art, err := r.store.PutArtifact(ctx, data)
	if err != nil {
		return Version{}, err
	}
	now := r.now().UTC()
	v := Version{
		Name:        req.Name,
		Version:     req.Version,
		Status:      StatusStaging,
		Features:    features,
		Inputs:      inputsFrom(info.Inputs),
		Metrics:     req.Metrics,
		Tags:        req.Tags,
		Description: req.Description,
		Lineage:     lineage,
		Artifact:    Artifact{SHA256: art.SHA256, Size: art.Size},
		CreatedAt:   now,
		UpdatedAt:   now,
		CreatedBy:   ActorFrom(ctx),
	}
	v = v.clone()
	err = r.update(ctx, req.Name, func(m *Model, ev *Event) error {
		if v.Version == "" {
			v.Version = nextVersion(m)
		}
		if m.version(v.Version) != nil {
			return fmt.Errorf("%w: %s:%s", ErrExists, v.Name, v.Version)
		}
		if p := v.Lineage.Parent; p != "" && m.version(p) == nil {
			return fmt.Errorf("%w: lineage parent %s:%s", ErrNotFound, v.Name, p)
		}
		if v.Lineage.Parent == "" && found.Parent != "" {
			v.Lineage.Parent = metadataParent(m, found.Parent)
		}
		m.Versions = append(m.Versions, v)
		ev.Action, ev.Version = ActionRegister, v.Version
		if req.Status == StatusProduction {
			err := sameInputs(func(m *Model, ev *Event) error {
				detail, err := promote(m, v.Version, req.Traffic)
				ev.Detail = "registered as production; " + detail
				return err
			})(m, ev)
			if err != nil {
				return err
			}
		}
		v = *m.version(v.Version)
		return nil
	})
	if err != nil {
		return Version{}, err
	}
	v.Artifact.Path = art.Path
	if v.Artifact.Path == "" {
		v = r.withPath(ctx, v)
	}
	return v, nil
}

// readArtifactFile reads an artifact from path without trusting it: the
// path must name a regular file (devices such as /dev/zero, FIFOs and
// directories are refused before anything is read) no larger than
// Config.MaxArtifactBytes, and the bytes read must be exactly the size the
// file had when it was opened (a file growing or shrinking underneath is
// refused). At most size+1 bytes are ever read. Symbolic links are
// followed; the file they reach is what is checked.
func (r *Registry) readArtifactFile(path string) ([]byte, error) {
	// Regular files only, checked before opening (opening a FIFO blocks)
	// and again after, read to exactly their size, at most maxBytes.
	data, err := onnx.ReadFileLimited(path, r.maxBytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidArtifact, err)
	}
	return data, nil
}

func checkFinite(what string, m map[string]float64) error {
	for k, v := range m {
		if k == "" {
			return fmt.Errorf("registry: empty %s name", what)
		}
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("registry: %s %q is %v; must be finite", what, k, v)
		}
	}
	return nil
}

// nextVersion returns v<N+1> for the highest leading integer N among m's
// versions that match autoVersion.
func nextVersion(m *Model) string {
	n := uint64(0)
	for _, v := range m.Versions {
		if sub := autoVersion.FindStringSubmatch(v.Version); sub != nil {
			if k, err := strconv.ParseUint(sub[1], 10, 64); err == nil && k > n {
				n = k
			}
		}
	}
	return "v" + strconv.FormatUint(n+1, 10)
}

// update runs fn on the model inside a Store.Update and commits one event
// whose Changes and splits are derived by comparing the model before and
// after fn. fn fills the event's Action, Version and Detail.
//
// A canary or shadow action (Action.IsCanary, IsShadow) may change the
// model's Canary or Shadow; the event then carries the result, and a
// changed plan gets the next Revision and the event's action and time as
// its LastAction. Any other action that would archive a version an active
// plan or the shadow uses is refused (see guardPlans). The optional done
// functions run on the model as committed.
func (r *Registry) update(ctx context.Context, name string, fn func(m *Model, ev *Event) error, done ...func(m *Model)) error {
	if err := r.checkOpen(); err != nil {
		return err
	}
	err := r.store.Update(ctx, name, func(m *Model) ([]Event, error) {
		before := m.Clone()
		ev := Event{Name: name, Actor: ActorFrom(ctx)}
		if err := fn(m, &ev); err != nil {
			return nil, err
		}
		if err := guardPlans(&before, m, &ev); err != nil {
			return nil, err
		}
		ev.Time = r.now().UTC()
		canaryChanged := !reflect.DeepEqual(before.Canary, m.Canary)
		shadowChanged := !reflect.DeepEqual(before.Shadow, m.Shadow)
		if (canaryChanged && !ev.Action.IsCanary()) || (shadowChanged && !ev.Action.IsShadow()) {
			return nil, fmt.Errorf("%w (%s)", errCanaryOutsideAction, ev.Action)
		}
		if canaryChanged && m.Canary != nil {
			if before.Canary != nil {
				m.Canary.Revision = before.Canary.Revision + 1
			} else {
				m.Canary.Revision = 1
			}
			m.Canary.LastAction, m.Canary.LastActionAt = ev.Action, ev.Time
		}
		if ev.Action.IsCanary() {
			ev.Canary = m.Canary.clone()
		}
		if ev.Action.IsShadow() {
			ev.Shadow = m.Shadow.clone()
		}
		ev.SplitBefore, ev.SplitAfter = before.Split(), m.Split()
		for i := range m.Versions {
			v := &m.Versions[i]
			after := State{v.Status, v.Traffic}
			var was State
			if old := before.version(v.Version); old != nil {
				was = State{old.Status, old.Traffic}
			}
			if was != after {
				ev.Changes = append(ev.Changes, Change{Version: v.Version, Before: was, After: after})
				v.UpdatedAt = ev.Time
			}
		}
		for _, f := range done {
			f(m)
		}
		if len(ev.Changes) == 0 && !canaryChanged && !shadowChanged {
			return nil, nil // nothing changed: nothing to commit
		}
		if ev.Action == ActionRegister {
			// The whole record, so the state can be rebuilt from the log.
			if v := m.version(ev.Version); v != nil {
				rec := v.clone()
				rec.Artifact.Path = ""
				ev.Record = &rec
			}
		}
		return []Event{ev}, nil
	})
	if err == nil {
		r.notify()
	}
	return err
}

// notify wakes the watchers of this Registry.
func (r *Registry) notify() {
	r.mu.Lock()
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
}

func (r *Registry) checkOpen() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return ErrClosed
	}
	return nil
}

// withPath fills v.Artifact.Path from the store.
func (r *Registry) withPath(ctx context.Context, v Version) Version {
	if p, err := r.store.ArtifactPath(ctx, v.Artifact.SHA256); err == nil {
		v.Artifact.Path = p
	}
	return v
}

// Get returns one version.
func (r *Registry) Get(ctx context.Context, ref Ref) (Version, error) {
	if err := ref.Validate(); err != nil {
		return Version{}, err
	}
	m, err := r.store.Model(ctx, ref.Name)
	if err != nil {
		return Version{}, err
	}
	v := m.version(ref.Version)
	if v == nil {
		return Version{}, fmt.Errorf("%w: version %s", ErrNotFound, ref)
	}
	return r.withPath(ctx, *v), nil
}

// Versions returns every version of a model in registration order.
func (r *Registry) Versions(ctx context.Context, name string) ([]Version, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	m, err := r.store.Model(ctx, name)
	if err != nil {
		return nil, err
	}
	for i := range m.Versions {
		m.Versions[i] = r.withPath(ctx, m.Versions[i])
	}
	return m.Versions, nil
}

// Models returns every model with its versions, sorted by name.
func (r *Registry) Models(ctx context.Context) ([]Model, error) {
	ms, err := r.store.Models(ctx)
	if err != nil {
		return nil, err
	}
	for _, m := range ms {
		for i := range m.Versions {
			m.Versions[i] = r.withPath(ctx, m.Versions[i])
		}
	}
	return ms, nil
}

// Production returns every production version of every model, sorted by
// model name, then in registration order. Their Traffic fields are the
// splits the router applies.
func (r *Registry) Production(ctx context.Context) ([]Version, error) {
	return r.filter(ctx, func(v *Version) bool { return v.Status == StatusProduction })
}

// FindByTag returns the versions whose tag key equals value (or that have
// tag key at all, if value is "").
func (r *Registry) FindByTag(ctx context.Context, key, value string) ([]Version, error) {
	return r.filter(ctx, func(v *Version) bool {
		got, ok := v.Tags[key]
		return ok && (value == "" || got == value)
	})
}

func (r *Registry) filter(ctx context.Context, keep func(*Version) bool) ([]Version, error) {
	ms, err := r.Models(ctx)
	if err != nil {
		return nil, err
	}
	var out []Version
	for _, m := range ms {
		for i := range m.Versions {
			if keep(&m.Versions[i]) {
				out = append(out, m.Versions[i])
			}
		}
	}
	return out, nil
}

// Split returns a model's production versions and their traffic.
func (r *Registry) Split(ctx context.Context, name string) (Split, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	m, err := r.store.Model(ctx, name)
	if err != nil {
		return nil, err
	}
	return m.Split(), nil
}

// ReadArtifact returns the ONNX bytes of a version.
func (r *Registry) ReadArtifact(ctx context.Context, ref Ref) ([]byte, error) {
	v, err := r.Get(ctx, ref)
	if err != nil {
		return nil, err
	}
	return r.store.ReadArtifact(ctx, v.Artifact.SHA256)
}

// History returns a model's audit log, oldest first.
func (r *Registry) History(ctx context.Context, name string) ([]Event, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	evs, err := r.store.Events(ctx, name, 0)
	if err != nil {
		return nil, err
	}
	if len(evs) == 0 {
		return nil, fmt.Errorf("%w: model %q", ErrNotFound, name)
	}
	return evs, nil
}

// SplitAt returns the traffic split a model had at time t, from the audit
// log: what served what share then. Before the first production version it
// is empty.
func (r *Registry) SplitAt(ctx context.Context, name string, t time.Time) (Split, error) {
	evs, err := r.History(ctx, name)
	if err != nil {
		return nil, err
	}
	s := Split{}
	for _, e := range evs {
		if e.Time.After(t) {
			break
		}
		s = e.SplitAfter
	}
	return s, nil
}

// Seq returns the sequence number of the last committed change (for Watch).
func (r *Registry) Seq(ctx context.Context) (uint64, error) { return r.store.Seq(ctx) }

// Watch delivers every committed change with Seq > after, in order, until
// ctx is done or the registry is closed; then the channel is closed. To
// follow the registry without a gap, read Seq, then the state (Production,
// Models), then Watch from that Seq.
//
// Changes made through this Registry are delivered at once; changes made by
// other processes (the CLI while the server runs) at once when the store is
// a Notifier (PostgreSQL's LISTEN/NOTIFY), and in any case by polling
// Store.Seq every Config.PollInterval. Nothing is dropped: the events come
// from the durable audit log, so a slow reader only lags, and a watch whose
// store was unreachable (Stats().Up false) resumes from the last Seq it
// delivered once the store answers again.
func (r *Registry) Watch(ctx context.Context, after uint64) <-chan Event {
	ch := make(chan Event)
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		close(ch)
		return ch
	}
	r.wg.Add(1)
	r.mu.Unlock()
	go r.watch(ctx, after, ch)
	return ch
}

// watchReadTimeout bounds one read of the store by a watch, so that a
// database that stopped answering (rather than refusing) is reported as
// down instead of hanging the watch.
const watchReadTimeout = 10 * time.Second

func (r *Registry) watch(ctx context.Context, after uint64, ch chan<- Event) {
	defer r.wg.Done()
	defer close(ch)
	var tick <-chan time.Time
	if r.poll > 0 {
		t := time.NewTicker(r.poll)
		defer t.Stop()
		tick = t.C
	}
	for {
		r.mu.Lock()
		changed := r.changed
		r.mu.Unlock()
		// Taken before reading Seq: a commit after the read closes it.
		var remote <-chan struct{}
		if r.notifier != nil {
			remote = r.notifier.Changed()
		}
		evs, err := r.readChanges(ctx, after)
		if ctx.Err() != nil {
			return
		}
		read := after
		if len(evs) > 0 {
			read = evs[len(evs)-1].Seq
		}
		r.observe(read, err)
		for _, e := range evs {
			select {
			case ch <- e:
				after = e.Seq
			case <-ctx.Done():
				return
			case <-r.done:
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-r.done:
			return
		case <-changed:
		case <-remote:
		case <-tick:
		}
	}
}

// readChanges returns the events after after, reading Store.Seq first so
// that an idle poll costs one cheap read.
func (r *Registry) readChanges(ctx context.Context, after uint64) ([]Event, error) {
	rctx, cancel := context.WithTimeout(ctx, watchReadTimeout)
	defer cancel()
	seq, err := r.store.Seq(rctx)
	if err != nil || seq <= after {
		return nil, err
	}
	return r.store.Events(rctx, "", after)
}

// sortedVersions is a helper for deterministic iteration.
func sortedVersions(s Split) []string {
	out := make([]string, 0, len(s))
	for k := range s {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
