package manager

import (
	"fmt"
	"iter"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/signalforge/signalforge/registry"
)

// Snapshot is an immutable view of the loaded versions. The zero Snapshot
// is empty.
type Snapshot struct {
	m table
}

// table maps model → version → loaded version. A published table is never
// modified: changes build a new one.
type table map[string]map[string]*Version

func (t table) get(model, version string) *Version { return t[model][version] }

func (t table) clone() table {
	out := make(table, len(t))
	for m, vs := range t {
		out[m] = maps.Clone(vs)
	}
	return out
}

// Get returns a loaded version, or nil. Use Manager.Acquire to use it for
// a request: a version in a snapshot may be retiring.
func (s Snapshot) Get(model, version string) *Version { return s.m.get(model, version) }

// HasModel reports whether any version of model is loaded.
func (s Snapshot) HasModel(model string) bool { return len(s.m[model]) > 0 }

// Models returns the models with a loaded version, sorted.
func (s Snapshot) Models() []string { return slices.Sorted(maps.Keys(s.m)) }

// Versions yields model's loaded versions by version name, in sorted order.
func (s Snapshot) Versions(model string) iter.Seq2[string, *Version] {
	return func(yield func(string, *Version) bool) {
		vs := s.m[model]
		for _, name := range slices.Sorted(maps.Keys(vs)) {
			if !yield(name, vs[name]) {
				return
			}
		}
	}
}

// All yields every loaded version, sorted by model and version.
func (s Snapshot) All() iter.Seq2[registry.Ref, *Version] {
	return func(yield func(registry.Ref, *Version) bool) {
		for _, model := range s.Models() {
			for name, v := range s.Versions(model) {
				if !yield(registry.Ref{Name: model, Version: name}, v) {
					return
				}
			}
		}
	}
}

// Len is the number of loaded versions.
func (s Snapshot) Len() int {
	n := 0
	for _, vs := range s.m {
		n += len(vs)
	}
	return n
}

// Failure is why a version that should serve is not loaded.
type Failure struct {
	Ref registry.Ref
	// SHA256 is the artifact that failed: a failure says nothing about
	// another artifact registered under the same version later.
	SHA256 string
	Err    error
	At     time.Time
	// Permanent is set when loading the same artifact again cannot help
	// (its warm-up needs more memory than allowed): it is not retried.
	Permanent bool
}

// Unservable is a model with production traffic none of whose production
// versions is loaded.
type Unservable struct {
	Model string
	// Reason says, per production version with traffic, why it is not
	// loaded.
	Reason string
}

// health is an immutable snapshot of what the manager cannot serve.
type health struct {
	failed     map[registry.Ref]Failure
	unservable []Unservable // sorted by model
}

// newHealth lists the failed versions and the models with production
// traffic that have no loaded production version.
func newHealth(want map[string]registry.Model, next table, failed map[registry.Ref]Failure) *health {
	h := &health{failed: failed}
	for _, name := range slices.Sorted(maps.Keys(want)) {
		var reasons []string
		serving, loaded := false, false
		for _, v := range want[name].Versions {
			if v.Status != registry.StatusProduction || v.Traffic <= 0 {
				continue
			}
			serving = true
			if next.get(name, v.Version) != nil {
				loaded = true
				break
			}
			if f, ok := failed[v.Ref()]; ok {
				reasons = append(reasons, fmt.Sprintf("%s failed to load: %v", v.Version, f.Err))
			} else {
				reasons = append(reasons, v.Version+" is not loaded")
			}
		}
		if serving && !loaded {
			h.unservable = append(h.unservable, Unservable{Model: name, Reason: strings.Join(reasons, "; ")})
		}
	}
	return h
}
