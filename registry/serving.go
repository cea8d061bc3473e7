package registry

import (
	"fmt"
	"strings"
)

// MismatchError refuses a change that would let two versions of one model
// whose inputs differ share its traffic. The router picks a version per
// request by id, while the client sends one set of named features for the
// model: if the versions do not take the same features (compared as sets;
// order does not matter because features are sent by name) and, for
// sequence models, the same number of time steps, a share of all requests
// would fail. Such a version belongs under another model name.
//
// It wraps ErrFeatures (a 400 at the server).
type MismatchError struct {
	// Ref is the version refused; Serving a version it would share
	// traffic with (the one that served the most before the change).
	Ref, Serving Ref
	// Extra lists the features Ref takes and Serving does not, in Ref's
	// input order; Missing those Serving takes and Ref does not, in
	// Serving's order.
	Extra, Missing []string
	// Steps and ServingSteps describe the time axis of each version's
	// input ("one value per feature", "sequences of 16 time steps") when
	// the feature sets agree but these differ; empty otherwise.
	Steps, ServingSteps string
}

// maxListed is how many feature names an error message lists before "…".
const maxListed = 4

func (e *MismatchError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "registry: %s cannot share traffic with %s: ", e.Ref, e.Serving)
	if e.Steps != "" || e.ServingSteps != "" {
		fmt.Fprintf(&b, "it takes %s, %s takes %s; versions that share traffic must take the same inputs", e.Steps, e.Serving.Version, e.ServingSteps)
	} else {
		if len(e.Extra) > 0 {
			fmt.Fprintf(&b, "it takes features %s does not (%s)", e.Serving.Version, shortList(e.Extra))
		}
		if len(e.Missing) > 0 {
			if len(e.Extra) > 0 {
				b.WriteString(" and lacks ")
			} else {
				b.WriteString("it lacks ")
			}
			fmt.Fprintf(&b, "%s", shortList(e.Missing))
		}
		b.WriteString("; versions that share traffic must take the same features")
	}
	b.WriteString(" — register it under another model name")
	return b.String()
}

// Unwrap returns ErrFeatures.
func (e *MismatchError) Unwrap() error { return ErrFeatures }

// shortList formats names as "a, b, c, d, … 100 in all", or "a, b" when
// there are at most maxListed.
func shortList(names []string) string {
	if len(names) <= maxListed {
		return strings.Join(names, ", ")
	}
	return fmt.Sprintf("%s, … %d in all", strings.Join(names[:maxListed], ", "), len(names))
}

// sameInputs wraps a change (Promote, SetTraffic, SetSplit, Rollback) so
// that it is refused with a *MismatchError when it leaves versions with
// different inputs sharing the model's traffic (see checkServing). As fn's
// error aborts the Store.Update, nothing is written when refused.
//
// Archive and Demote are not wrapped: they only ever take a version out of
// the split, so they cannot create a mismatch, and they must stay possible
// to repair a model that was left mixed by an older registry.
func sameInputs(fn func(m *Model, ev *Event) error) func(m *Model, ev *Event) error {
	return func(m *Model, ev *Event) error {
		before := m.Clone()
		if err := fn(m, ev); err != nil {
			return err
		}
		return checkServing(&before, m)
	}
}

// checkServing returns a *MismatchError if two of after's production
// versions with traffic take different inputs. Each is compared with the
// one that had the most traffic in before (ties: registration order), so
// that the error names the newcomer and what already serves.
func checkServing(before, after *Model) error {
	var serving []*Version
	for i := range after.Versions {
		if v := &after.Versions[i]; v.Status == StatusProduction && v.Traffic > eps {
			serving = append(serving, v)
		}
	}
	if len(serving) < 2 {
		return nil
	}
	base, most := serving[0], -1.0
	for _, v := range serving {
		was := 0.0
		if old := before.version(v.Version); old != nil && old.Status == StatusProduction {
			was = old.Traffic
		}
		if was > most {
			base, most = v, was
		}
	}
	for _, v := range serving {
		if v != base {
			if err := compareInputs(v, base); err != nil {
				return err
			}
		}
	}
	return nil
}

// compareInputs returns a *MismatchError if v and base take different
// feature sets or, when both recorded their inputs, a differently shaped
// time axis: one value per feature ([batch, F]) against sequences
// ([batch, T, F]), or two fixed, different T. A dynamic T matches any T.
func compareInputs(v, base *Version) error {
	e := &MismatchError{Ref: v.Ref(), Serving: base.Ref(),
		Extra: without(v.Features, base.Features), Missing: without(base.Features, v.Features)}
	if len(e.Extra) > 0 || len(e.Missing) > 0 {
		return e
	}
	if len(v.Inputs) == 0 || len(base.Inputs) == 0 {
		return nil
	}
	a, b := v.Inputs[0].Shape, base.Inputs[0].Shape
	switch {
	case len(a) != len(b) && (len(a) == 2 || len(b) == 2):
	case len(a) == 3 && len(b) == 3 && a[1] > 0 && b[1] > 0 && a[1] != b[1]:
	default:
		return nil
	}
	e.Steps, e.ServingSteps = describeSteps(a), describeSteps(b)
	return e
}

// describeSteps says what an input of this shape takes per feature.
func describeSteps(shape []int64) string {
	switch {
	case len(shape) != 3:
		return "one value per feature"
	case shape[1] > 0:
		return fmt.Sprintf("sequences of %d time steps", shape[1])
	}
	return "sequences of any length"
}

// without returns the names of a not in b, in a's order.
func without(a, b []string) []string {
	in := make(map[string]bool, len(b))
	for _, f := range b {
		in[f] = true
	}
	var out []string
	for _, f := range a {
		if !in[f] {
			out = append(out, f)
		}
	}
	return out
}
