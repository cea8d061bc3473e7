package registry

import (
	"context"
	"fmt"
	"math"
)

// eps is the tolerance, in percentage points, for a split's total.
const eps = 1e-6

func checkPct(p float64) error {
	if math.IsNaN(p) || p < 0 || p > 100 {
		return fmt.Errorf("%w: %v%% is not a percentage between 0 and 100", ErrTraffic, p)
	}
	return nil
}

// othersTotal returns the traffic of m's production versions other than v.
func othersTotal(m *Model, v string) (total float64, others int) {
	for _, x := range m.Versions {
		if x.Status == StatusProduction && x.Version != v {
			total += x.Traffic
			others++
		}
	}
	return total, others
}

// give sets v's traffic to pct and rescales the other production versions
// proportionally so the total is 100. The caller checked that the others
// have traffic (or pct is 100).
func give(m *Model, v string, pct float64) {
	total, _ := othersTotal(m, v)
	for i := range m.Versions {
		x := &m.Versions[i]
		switch {
		case x.Version == v:
			x.Traffic = pct
		case x.Status == StatusProduction && total > 0:
			x.Traffic = x.Traffic * (100 - pct) / total
		}
	}
	normalize(m, v)
}

// normalize rounds traffic to 1e-9 points and puts any rounding residue on
// the production version with the most traffic other than keep, so a split
// totals exactly 100 (or stays 0).
func normalize(m *Model, keep string) {
	total, largest := 0.0, -1
	for i := range m.Versions {
		x := &m.Versions[i]
		if x.Status != StatusProduction {
			x.Traffic = 0
			continue
		}
		x.Traffic = math.Round(x.Traffic*1e9) / 1e9
		total += x.Traffic
		if x.Version != keep && (largest < 0 || x.Traffic > m.Versions[largest].Traffic) {
			largest = i
		}
	}
	if total > 0 && largest >= 0 && m.Versions[largest].Traffic > 0 {
		m.Versions[largest].Traffic = math.Round((m.Versions[largest].Traffic+100-total)*1e9) / 1e9
	}
}

// promote moves a staging version of m to production with pct of the
// traffic. If no other production version has traffic, it gets 100%: a
// model's traffic always totals 100 once anything serves.
func promote(m *Model, version string, pct float64) (detail string, err error) {
	if err := checkPct(pct); err != nil {
		return "", err
	}
	v := m.version(version)
	ref := Ref{m.Name, version}
	if v == nil {
		return "", fmt.Errorf("%w: version %s", ErrNotFound, ref)
	}
	switch v.Status {
	case StatusProduction:
		return "", &TransitionError{ref, v.Status, StatusProduction, "already in production (set its traffic instead)"}
	case StatusArchived:
		return "", &TransitionError{ref, v.Status, StatusProduction, "archived versions never serve again; register it as a new version"}
	}
	v.Status = StatusProduction
	if total, _ := othersTotal(m, version); total <= eps {
		give(m, version, 100)
		if pct != 100 {
			return fmt.Sprintf("asked %s%%, got 100%%: no other production version has traffic", FormatPercent(pct)), nil
		}
		return "", nil
	}
	give(m, version, pct)
	return "", nil
}

// ChangeOption adjusts a lifecycle call (Archive, Demote, Rollback).
type ChangeOption func(*changeOptions)

type changeOptions struct {
	allowEmpty bool
}

func applyOptions(opts []ChangeOption) changeOptions {
	var o changeOptions
	for _, f := range opts {
		if f != nil {
			f(&o)
		}
	}
	return o
}

// AllowEmpty lets Archive, Demote or Rollback leave a model with no version
// serving traffic, which takes the model offline: every request for it
// fails until a version is promoted again. Without it such a change is
// refused with an *EmptySplitError, because one mistyped command must not
// take a model down; going offline has to be asked for.
func AllowEmpty() ChangeOption {
	return func(o *changeOptions) { o.allowEmpty = true }
}

// takeTraffic removes a production version's traffic for Archive and
// Demote: without force it must have none; with force the others are
// rescaled to take its share. When no other version could take it, the
// change would take the model offline and needs allowEmpty as well.
func takeTraffic(m *Model, v *Version, to Status, force, allowEmpty bool, op Action) (detail string, err error) {
	ref := v.Ref()
	if v.Traffic <= eps {
		v.Traffic = 0
		return "", nil
	}
	if !force {
		return "", &TransitionError{ref, v.Status, to, fmt.Sprintf("it serves %s%% of traffic; move its traffic to other versions first, or force", FormatPercent(v.Traffic))}
	}
	total, others := othersTotal(m, v.Version)
	if total <= eps {
		if others > 0 {
			return "", &TransitionError{ref, v.Status, to, "no other production version has traffic to scale up; set a split first"}
		}
		if !allowEmpty {
			return "", &EmptySplitError{Name: m.Name, Action: op,
				Hint: fmt.Sprintf("%s serves all its traffic; promote another version or set a split first, or allow an empty split", ref)}
		}
		v.Traffic = 0
		return fmt.Sprintf("forced, empty split allowed: %s had all the traffic; nothing serves the model now", ref), nil
	}
	was := v.Traffic
	give(m, v.Version, 0)
	return fmt.Sprintf("forced: its %s%% rescaled onto the other production versions", FormatPercent(was)), nil
}

// Promote moves a staging version to production with pct percent (0–100)
// of the model's traffic and rescales the other production versions
// proportionally so the total stays 100%: promoting v2 at 5% over v1=100%
// gives v1=95% v2=5%. The first version to serve gets 100% whatever pct
// says (the event's detail notes it). It returns the new split.
//
// Versions that share traffic must take the same inputs (see
// MismatchError): promoting a version whose features differ from those
// of the versions serving is refused with an error wrapping ErrFeatures.
// The same holds for SetTraffic, SetSplit, Rollback and Register with
// StatusProduction.
func (r *Registry) Promote(ctx context.Context, ref Ref, pct float64) (Split, error) {
	return r.change(ctx, ref, sameInputs(func(m *Model, ev *Event) error {
		detail, err := promote(m, ref.Version, pct)
		ev.Action, ev.Detail = ActionPromote, detail
		return err
	}))
}

// SetTraffic gives a production version pct percent of the model's traffic
// and rescales the other production versions proportionally so the total
// stays 100%. It fails if no other production version has traffic and pct
// is not 100 (the total could not be 100), or if it would leave versions
// with different inputs sharing traffic (*MismatchError).
func (r *Registry) SetTraffic(ctx context.Context, ref Ref, pct float64) (Split, error) {
	return r.change(ctx, ref, sameInputs(func(m *Model, ev *Event) error {
		ev.Action = ActionSetTraffic
		if err := checkPct(pct); err != nil {
			return err
		}
		v := m.version(ref.Version)
		if v.Status != StatusProduction {
			return fmt.Errorf("%w: %s is %s, not production; promote it first", ErrTraffic, ref, v.Status)
		}
		if total, _ := othersTotal(m, ref.Version); total <= eps && math.Abs(pct-100) > eps {
			return fmt.Errorf("%w: %s is the only production version with traffic, so it keeps 100%% (promote another version first)", ErrTraffic, ref)
		}
		give(m, ref.Version, pct)
		return nil
	}))
}

// SetSplit sets the traffic of a model's versions at once. The percentages
// must total 100. Staging versions named in split are promoted; production
// versions not named keep production status with 0%; archived versions are
// refused, and so is a split whose versions with traffic take different
// inputs (*MismatchError).
func (r *Registry) SetSplit(ctx context.Context, name string, split Split) (Split, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	for _, k := range sortedVersions(split) {
		if err := ValidateName(k); err != nil {
			return nil, fmt.Errorf("version of %s: %w", name, err)
		}
		if err := checkPct(split[k]); err != nil {
			return nil, fmt.Errorf("%s:%s: %w", name, k, err)
		}
	}
	if t := split.Total(); math.Abs(t-100) > eps {
		return nil, fmt.Errorf("%w: the split %v totals %s%%; it must total 100%%", ErrTraffic, split, FormatPercent(t))
	}
	return r.changeModel(ctx, name, sameInputs(func(m *Model, ev *Event) error {
		ev.Action = ActionSetSplit
		return applySplit(m, split, false)
	}))
}

// applySplit makes split the model's traffic: versions named get their
// share (staging ones are promoted); production versions not named get 0%,
// or go back to staging if demote is set.
func applySplit(m *Model, split Split, demote bool) error {
	for _, k := range sortedVersions(split) {
		v := m.version(k)
		if v == nil {
			return fmt.Errorf("%w: version %s:%s", ErrNotFound, m.Name, k)
		}
		if v.Status == StatusArchived {
			return &TransitionError{v.Ref(), v.Status, StatusProduction, "archived versions never serve again"}
		}
	}
	for i := range m.Versions {
		v := &m.Versions[i]
		if pct, ok := split[v.Version]; ok {
			v.Status, v.Traffic = StatusProduction, pct
		} else if v.Status == StatusProduction {
			v.Traffic = 0
			if demote {
				v.Status = StatusStaging
			}
		}
	}
	normalize(m, "")
	return nil
}

// Archive retires a version for good. A production version that still has
// traffic is refused unless force is set, in which case its share is
// rescaled onto the other production versions (and refused if none of them
// has traffic while some exist: set a split first). Archiving the only
// version with traffic would leave the model with no serving version: that
// needs AllowEmpty besides force.
func (r *Registry) Archive(ctx context.Context, ref Ref, force bool, opts ...ChangeOption) (Split, error) {
	return r.retire(ctx, ref, StatusArchived, ActionArchive, force, opts, func(v *Version) error {
		if v.Status == StatusArchived {
			return &TransitionError{ref, v.Status, StatusArchived, "already archived"}
		}
		return nil
	})
}

// Demote moves a production version back to staging, with the same traffic
// rules as Archive (AllowEmpty included).
func (r *Registry) Demote(ctx context.Context, ref Ref, force bool, opts ...ChangeOption) (Split, error) {
	return r.retire(ctx, ref, StatusStaging, ActionDemote, force, opts, func(v *Version) error {
		if v.Status != StatusProduction {
			return &TransitionError{ref, v.Status, StatusStaging, "only production versions can be demoted"}
		}
		return nil
	})
}

// retire moves ref's version to status to (Archive, Demote) once allowed
// says the move is legal from its current status. A production version's
// traffic is taken from it first, by takeTraffic's rules (force,
// AllowEmpty), which also give the event's detail.
func (r *Registry) retire(ctx context.Context, ref Ref, to Status, action Action, force bool, opts []ChangeOption, allowed func(v *Version) error) (Split, error) {
	o := applyOptions(opts)
	return r.change(ctx, ref, func(m *Model, ev *Event) error {
		ev.Action = action
		v := m.version(ref.Version)
		if err := allowed(v); err != nil {
			return err
		}
		if v.Status == StatusProduction {
			detail, err := takeTraffic(m, v, to, force, o.allowEmpty, action)
			if err != nil {
				return err
			}
			ev.Detail = detail
		}
		v.Status = to
		return nil
	})
}

// Rollback restores a previous split in one call. With toSeq 0 it undoes
// the model's most recent traffic change (so two Rollbacks in a row swap
// back); otherwise it restores the split that was in force right after
// event toSeq of this model. The restored split is applied exactly:
// versions in it become production with their share, other production
// versions go back to staging. A version archived since is refused.
//
// A restored split in which no version has traffic (undoing a model's
// first promotion, or rolling back to its registration) would take the
// model offline; it is refused with an *EmptySplitError unless AllowEmpty
// is passed. A restored split whose versions with traffic take different
// inputs (possible only in a log written before that was refused) is
// refused with a *MismatchError.
func (r *Registry) Rollback(ctx context.Context, name string, toSeq uint64, opts ...ChangeOption) (Split, error) {
	o := applyOptions(opts)
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	// The audit log is read before the model is locked; if another writer
	// changes the split in between, the undo would be of the wrong change,
	// so that case is detected under the lock and retried.
	for attempt := 0; ; attempt++ {
		split, err := r.rollback(ctx, name, toSeq, o)
		if err != errStaleRollback || attempt == 4 {
			return split, err
		}
	}
}

var errStaleRollback = fmt.Errorf("%w: the split changed while rolling back; try again", ErrTraffic)

func (r *Registry) rollback(ctx context.Context, name string, toSeq uint64, o changeOptions) (Split, error) {
	evs, err := r.store.Events(ctx, name, 0)
	if err != nil {
		return nil, err
	}
	var target Split
	var from *Event
	for i := len(evs) - 1; i >= 0; i-- {
		e := &evs[i]
		if toSeq == 0 && !e.SplitBefore.Equal(e.SplitAfter) {
			target, from = e.SplitBefore, e
			break
		}
		if toSeq != 0 && e.Seq == toSeq {
			target, from = e.SplitAfter, e
			break
		}
	}
	if from == nil {
		if toSeq != 0 {
			return nil, fmt.Errorf("%w: event %d of model %q", ErrNotFound, toSeq, name)
		}
		return nil, fmt.Errorf("%w: no traffic change of model %q to roll back", ErrNotFound, name)
	}
	return r.changeModel(ctx, name, sameInputs(func(m *Model, ev *Event) error {
		if toSeq == 0 && !m.Split().Equal(from.SplitAfter) {
			return errStaleRollback
		}
		if target.Total() <= eps && m.Split().Total() > eps && !o.allowEmpty {
			return &EmptySplitError{Name: name, Action: ActionRollback,
				Hint: fmt.Sprintf("it would restore the split %s; archive or set a split explicitly, or allow an empty split", target)}
		}
		ev.Action = ActionRollback
		if toSeq == 0 {
			ev.Detail = fmt.Sprintf("undid event %d (%s %s)", from.Seq, from.Action, from.SplitAfter)
		} else {
			ev.Detail = fmt.Sprintf("restored the split after event %d (%s)", from.Seq, from.Action)
		}
		ev.Detail += ", back to " + target.String()
		return applySplit(m, target, true)
	}))
}

// change runs fn on the model of ref, after checking the version exists,
// and returns the model's split afterwards.
func (r *Registry) change(ctx context.Context, ref Ref, fn func(m *Model, ev *Event) error) (Split, error) {
	if err := ref.Validate(); err != nil {
		return nil, err
	}
	return r.changeModel(ctx, ref.Name, func(m *Model, ev *Event) error {
		ev.Version = ref.Version
		if m.version(ref.Version) == nil {
			return fmt.Errorf("%w: version %s", ErrNotFound, ref)
		}
		return fn(m, ev)
	})
}

func (r *Registry) changeModel(ctx context.Context, name string, fn func(m *Model, ev *Event) error) (Split, error) {
	var split Split
	err := r.update(ctx, name, func(m *Model, ev *Event) error {
		if len(m.Versions) == 0 {
			return fmt.Errorf("%w: model %q", ErrNotFound, name)
		}
		if err := fn(m, ev); err != nil {
			return err
		}
		split = m.Split()
		return nil
	})
	if err != nil {
		return nil, err
	}
	return split, nil
}
