package registry

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/signalforge/signalforge/infer"
)

// Errors. Every error the registry returns for a caller's mistake wraps one
// of these, so a server can map them to status codes with errors.Is:
// ErrNotFound → 404; ErrExists, ErrTransition → 409; ErrInvalidName,
// ErrInvalidArtifact, ErrFeatures, ErrTraffic → 400.
var (
	ErrNotFound        = errors.New("registry: not found")
	ErrExists          = errors.New("registry: version already exists")
	ErrInvalidName     = errors.New("registry: invalid name")
	ErrInvalidArtifact = errors.New("registry: invalid artifact")
	ErrFeatures        = errors.New("registry: features do not match the model inputs")
	ErrTransition      = errors.New("registry: transition not allowed")
	ErrTraffic         = errors.New("registry: invalid traffic")
	ErrClosed          = errors.New("registry: closed")
	// ErrNoServing marks a change refused because it would leave a model
	// with no version serving traffic (see AllowEmpty). Errors wrapping it
	// also wrap ErrTransition.
	ErrNoServing = errors.New("registry: the model would have no serving version")
	// ErrStaleRevision marks a canary plan change refused because the
	// plan's Revision is no longer the one the caller read: another actor
	// (or an earlier attempt of the same one) changed it first. Re-read the
	// plan and decide again; never apply the change blindly.
	ErrStaleRevision = errors.New("registry: stale canary plan revision")
	// ErrCanary marks a canary plan or shadow setting that is refused: a
	// plan already running, canary and baseline the same version, steps
	// that do not increase within (0, 100], a rate out of range, … Errors
	// wrapping it are *CanaryError.
	ErrCanary = errors.New("registry: invalid canary plan or shadow setting")
)

// EmptySplitError refuses a change that would leave a model with no
// version serving traffic (see AllowEmpty). It wraps ErrNoServing and
// ErrTransition.
type EmptySplitError struct {
	Name   string
	Action Action // ActionRollback, ActionArchive or ActionDemote
	Hint   string // why, and what to do instead
}

func (e *EmptySplitError) Error() string {
	return fmt.Sprintf("registry: %s would leave %s with no serving version: %s", e.Action, e.Name, e.Hint)
}

// Unwrap returns ErrNoServing and ErrTransition.
func (e *EmptySplitError) Unwrap() []error { return []error{ErrNoServing, ErrTransition} }

// TransitionError explains a refused lifecycle change. It wraps
// ErrTransition.
type TransitionError struct {
	Ref      Ref
	From, To Status
	Reason   string
}

func (e *TransitionError) Error() string {
	return fmt.Sprintf("registry: %s: cannot go from %s to %s: %s", e.Ref, e.From, e.To, e.Reason)
}

// Unwrap returns ErrTransition.
func (e *TransitionError) Unwrap() error { return ErrTransition }

// Status is a version's lifecycle stage.
//
// Allowed transitions:
//
//	staging    → production  Promote, SetSplit, Rollback
//	staging    → archived    Archive
//	production → staging     Demote (only without traffic, or with force)
//	production → archived    Archive (only without traffic, or with force)
//
// Archived is final: an archived version is kept (its artifact and lineage
// stay readable) but never serves again; register a new version instead.
type Status string

// The lifecycle stages.
const (
	StatusStaging    Status = "staging"
	StatusProduction Status = "production"
	StatusArchived   Status = "archived"
)

func (s Status) valid() bool {
	return s == StatusStaging || s == StatusProduction || s == StatusArchived
}

// Lineage records where a version came from.
type Lineage struct {
	// SourceCheckpoint is the training checkpoint (e.g. a .pt path or URI).
	SourceCheckpoint string `json:"source_checkpoint,omitempty"`
	// SourceSHA256 is the hex sha256 of the checkpoint's bytes.
	SourceSHA256 string `json:"source_sha256,omitempty"`
	// Parent is the version this one was derived from (e.g. the fp32
	// version an INT8 version was quantized from), in the same model.
	Parent string `json:"parent,omitempty"`
	// Conversion holds the PyTorch→ONNX conversion parameters (opset, …).
	Conversion map[string]string `json:"conversion,omitempty"`
	// Quantization holds the quantization parameters (mode, per-channel, …).
	Quantization map[string]string `json:"quantization,omitempty"`
	// CalibrationSHA256 is the hex sha256 of the calibration set used by
	// static quantization.
	CalibrationSHA256 string `json:"calibration_sha256,omitempty"`
	// Benchmarks holds benchmark results (e.g. "p50_us_batch1": 12.5).
	Benchmarks map[string]float64 `json:"benchmarks,omitempty"`
}

func (l Lineage) clone() Lineage {
	l.Conversion = maps.Clone(l.Conversion)
	l.Quantization = maps.Clone(l.Quantization)
	l.Benchmarks = maps.Clone(l.Benchmarks)
	return l
}

// Artifact is a stored ONNX file, addressed by the sha256 of its bytes.
type Artifact struct {
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
	// Path is a local file holding the bytes, for engines that load files.
	// The registry fills it on every read from Store.ArtifactPath; it is
	// not persisted (stores may move their files).
	Path string `json:"path,omitempty"`
}

// IO describes one model input as found when the version was registered.
type IO struct {
	Name  string `json:"name"`
	DType string `json:"dtype"`
	// Shape has -1 for a dynamic dimension.
	Shape []int64 `json:"shape"`
}

// Version is one registered model version and its current state.
type Version struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Status  Status `json:"status"`
	// Traffic is the percentage (0–100) of the model's requests this version
	// serves. Only production versions have traffic; the traffic of a
	// model's production versions totals 100 (or 0 when none has any).
	Traffic     float64            `json:"traffic"`
	Features    []string           `json:"features"`
	Inputs      []IO               `json:"inputs,omitempty"`
	Metrics     map[string]float64 `json:"metrics,omitempty"`
	Tags        map[string]string  `json:"tags,omitempty"`
	Description string             `json:"description,omitempty"`
	Lineage     Lineage            `json:"lineage"`
	Artifact    Artifact           `json:"artifact"`
	CreatedAt   time.Time          `json:"created_at"`
	UpdatedAt   time.Time          `json:"updated_at"`
	// CreatedBy is the actor who registered it (see WithActor), if known.
	CreatedBy string `json:"created_by,omitempty"`
}

// Ref returns name:version.
func (v Version) Ref() Ref { return Ref{v.Name, v.Version} }

// clone returns a deep copy.
func (v Version) clone() Version {
	v.Features = slices.Clone(v.Features)
	v.Inputs = slices.Clone(v.Inputs)
	for i := range v.Inputs {
		v.Inputs[i].Shape = slices.Clone(v.Inputs[i].Shape)
	}
	v.Metrics = maps.Clone(v.Metrics)
	v.Tags = maps.Clone(v.Tags)
	v.Lineage = v.Lineage.clone()
	return v
}

// Model is a named model and all its versions in registration order. It is
// the unit a Store reads and updates atomically.
type Model struct {
	Name     string    `json:"name"`
	Versions []Version `json:"versions"`
	// Canary is the model's canary plan: the one running or paused, or the
	// last one until another starts (nil if none was ever started).
	Canary *CanaryPlan `json:"canary,omitempty"`
	// Shadow is the version the model's traffic is mirrored to, if any.
	Shadow *ShadowSetting `json:"shadow,omitempty"`
}

// Clone returns a deep copy.
func (m Model) Clone() Model {
	m.Versions = slices.Clone(m.Versions)
	for i := range m.Versions {
		m.Versions[i] = m.Versions[i].clone()
	}
	m.Canary = m.Canary.clone()
	m.Shadow = m.Shadow.clone()
	return m
}

// version returns a pointer to the named version, or nil.
func (m *Model) version(v string) *Version {
	for i := range m.Versions {
		if m.Versions[i].Version == v {
			return &m.Versions[i]
		}
	}
	return nil
}

// Split returns the traffic of the model's production versions.
func (m *Model) Split() Split {
	s := Split{}
	for _, v := range m.Versions {
		if v.Status == StatusProduction {
			s[v.Version] = v.Traffic
		}
	}
	return s
}

// Split maps the versions of one model to their traffic percentage.
type Split map[string]float64

// Total returns the sum of the percentages.
func (s Split) Total() float64 {
	t := 0.0
	for _, k := range slices.Sorted(maps.Keys(s)) {
		t += s[k]
	}
	return t
}

// Equal reports whether two splits give every version the same share
// (within 1e-9 percentage points; absent means 0).
func (s Split) Equal(o Split) bool {
	for k, v := range s {
		if abs(v-o[k]) > 1e-9 {
			return false
		}
	}
	for k, v := range o {
		if _, ok := s[k]; !ok && abs(v) > 1e-9 {
			return false
		}
	}
	return true
}

// String formats the split as "v1=95% v2=5%", versions sorted.
func (s Split) String() string {
	if len(s) == 0 {
		return "(none)"
	}
	out := ""
	for i, k := range slices.Sorted(maps.Keys(s)) {
		if i > 0 {
			out += " "
		}
		out += fmt.Sprintf("%s=%s%%", k, FormatPercent(s[k]))
	}
	return out
}

// FormatPercent formats a percentage with at most 4 decimals and no
// trailing zeros ("5", "33.3333").
func FormatPercent(p float64) string {
	s := fmt.Sprintf("%.4f", p)
	for s[len(s)-1] == '0' {
		s = s[:len(s)-1]
	}
	if s[len(s)-1] == '.' {
		s = s[:len(s)-1]
	}
	return s
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}

// Action names a kind of change in the audit log.
type Action string

// The audit log's actions.
const (
	ActionRegister   Action = "register"
	ActionPromote    Action = "promote"
	ActionSetTraffic Action = "set-traffic"
	ActionSetSplit   Action = "set-split"
	ActionDemote     Action = "demote"
	ActionArchive    Action = "archive"
	ActionRollback   Action = "rollback"

	// Canary plan changes (see StartCanary, UpdateCanary). Their events
	// carry the resulting plan in Event.Canary.
	ActionCanaryStart    Action = "canary-start"
	ActionCanaryStep     Action = "canary-step"     // moved to another step (its traffic in the same event)
	ActionCanaryPromote  Action = "canary-promote"  // reached its last step
	ActionCanaryRollback Action = "canary-rollback" // the canary's traffic taken away after a bad verdict
	ActionCanaryPause    Action = "canary-pause"
	ActionCanaryResume   Action = "canary-resume"
	ActionCanaryAbort    Action = "canary-abort"
	ActionCanaryUpdate   Action = "canary-update" // any other plan change (judge state, note)

	// Shadow setting changes (see SetShadow, ClearShadow). Their events
	// carry the resulting setting in Event.Shadow (nil for a clear).
	ActionShadowSet   Action = "shadow-set"
	ActionShadowClear Action = "shadow-clear"
)

// IsCanary reports whether a is a canary plan change.
func (a Action) IsCanary() bool {
	switch a {
	case ActionCanaryStart, ActionCanaryStep, ActionCanaryPromote, ActionCanaryRollback,
		ActionCanaryPause, ActionCanaryResume, ActionCanaryAbort, ActionCanaryUpdate:
		return true
	}
	return false
}

// IsShadow reports whether a is a shadow setting change.
func (a Action) IsShadow() bool { return a == ActionShadowSet || a == ActionShadowClear }

// State is a version's lifecycle state at one moment.
type State struct {
	Status  Status  `json:"status"`
	Traffic float64 `json:"traffic"`
}

// Change is one version's state before and after an event. Before is the
// zero State for a registration.
type Change struct {
	Version string `json:"version"`
	Before  State  `json:"before"`
	After   State  `json:"after"`
}

// Event is one entry of the append-only audit log.
type Event struct {
	// Seq numbers events 1, 2, 3, … across the whole registry, in commit
	// order, without gaps. Stores assign it.
	Seq    uint64    `json:"seq"`
	Time   time.Time `json:"time"`
	Actor  string    `json:"actor,omitempty"`
	Action Action    `json:"action"`
	Name   string    `json:"name"`
	// Version is the version acted on ("" for set-split and rollback).
	Version string `json:"version,omitempty"`
	// Changes lists every version whose status or traffic changed.
	Changes []Change `json:"changes,omitempty"`
	// SplitBefore and SplitAfter are the model's production traffic before
	// and after the event: what served what share from Time on.
	SplitBefore Split `json:"split_before"`
	SplitAfter  Split `json:"split_after"`
	// Detail says more in words ("force", "rescaled v1 95%→50%", the event
	// rolled back, …).
	Detail string `json:"detail,omitempty"`
	// Record is the version as committed by a register event: artifact
	// sha256 and size, features, inputs, metrics, tags, description,
	// lineage, status, traffic, creation time and actor (never the
	// artifact's local path). With Changes and SplitAfter of every event it
	// is what Rebuild needs to rebuild the state from the audit log. Nil in
	// other events, and in register events written before it existed.
	Record *Version `json:"record,omitempty"`
	// Canary is the model's canary plan as committed by a canary event
	// (Action.IsCanary), Revision included; nil in other events. Rebuild
	// takes the plan from it.
	Canary *CanaryPlan `json:"canary,omitempty"`
	// Shadow is the model's shadow setting as committed by a shadow-set
	// event; nil in other events (a shadow-clear leaves none).
	Shadow *ShadowSetting `json:"shadow,omitempty"`
}

// inputsFrom converts engine IO info into the stored form.
func inputsFrom(in []infer.IOInfo) []IO {
	out := make([]IO, len(in))
	for i, x := range in {
		out[i] = IO{Name: x.Name, DType: x.DType.String(), Shape: slices.Clone([]int64(x.Shape))}
	}
	return out
}
