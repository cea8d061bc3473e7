package registry

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strings"
)

// ErrInvalidState marks a stored state that breaks the registry's rules (a
// model's traffic not totalling 100 or 0, traffic on a version that is not
// in production, an unknown status, a malformed artifact sha256, …). A
// store refuses to load such a state rather than serve from it; Repair
// rebuilds it from the audit log. Errors wrapping it are *StateError.
var ErrInvalidState = errors.New("registry: invalid state")

// ErrStateMissing marks a FileStore folder whose state.json is gone while
// its audit log or artifacts show the registry was not empty: opening it
// would start an empty registry over real history, so it is refused until
// Repair rebuilds the state.
var ErrStateMissing = errors.New("registry: state missing")

// RepairHint is what the errors wrapping ErrInvalidState or ErrStateMissing
// tell the user to do.
const RepairHint = "rebuild it from the audit log and the artifacts with `signalforge models repair`"

// StateError names the model, version and field of a stored state that
// breaks the registry's rules. It wraps ErrInvalidState.
type StateError struct {
	Model   string
	Version string // "" for a model-wide problem (its traffic total)
	Field   string // "name", "status", "traffic", "artifact.sha256", …
	Problem string
}

func (e *StateError) Error() string {
	where := fmt.Sprintf("model %q", e.Model)
	if e.Version != "" {
		where += fmt.Sprintf(" version %q", e.Version)
	}
	return fmt.Sprintf("registry: invalid state: %s: %s: %s", where, e.Field, e.Problem)
}

// Unwrap returns ErrInvalidState.
func (e *StateError) Unwrap() error { return ErrInvalidState }

// ValidateModel checks that a stored model keeps the registry's rules: its
// name and its versions' names are valid (and unique), every status is
// known, every traffic is a finite percentage between 0 and 100 held only
// by a production version, the production traffic totals 100 or 0 (within
// 1e-6 points), every artifact is a well-formed sha256 with a size, and
// the canary plan and shadow setting, if any, name existing versions (not
// archived while the plan is active, never for the shadow) with steps
// increasing within (0, 100], a known state and a rate within (0, 1].
// Stores call it on what they load and before they commit; the error is a
// *StateError.
func ValidateModel(m Model) error {
	bad := func(version, field, format string, args ...any) error {
		return &StateError{Model: m.Name, Version: version, Field: field, Problem: fmt.Sprintf(format, args...)}
	}
	if err := ValidateName(m.Name); err != nil {
		return bad("", "name", "%v", err)
	}
	seen := make(map[string]bool, len(m.Versions))
	total := 0.0
	for _, v := range m.Versions {
		if err := ValidateName(v.Version); err != nil {
			return bad(v.Version, "version", "%v", err)
		}
		if seen[v.Version] {
			return bad(v.Version, "version", "listed twice")
		}
		seen[v.Version] = true
		if v.Name != m.Name {
			return bad(v.Version, "name", "the version names model %q", v.Name)
		}
		if !v.Status.valid() {
			return bad(v.Version, "status", "%q is not staging, production or archived", v.Status)
		}
		switch t := v.Traffic; {
		case math.IsNaN(t) || math.IsInf(t, 0):
			return bad(v.Version, "traffic", "%v is not a finite number", t)
		case t < 0 || t > 100:
			return bad(v.Version, "traffic", "%s%% is not between 0 and 100", FormatPercent(t))
		case t != 0 && v.Status != StatusProduction:
			return bad(v.Version, "traffic", "%s%% on a %s version (only production versions have traffic)", FormatPercent(t), v.Status)
		}
		total += v.Traffic
		if err := checkSHA(v.Artifact.SHA256); err != nil {
			return bad(v.Version, "artifact.sha256", "%q is not 64 lowercase hex digits", v.Artifact.SHA256)
		}
		if v.Artifact.Size <= 0 {
			return bad(v.Version, "artifact.size", "%d bytes", v.Artifact.Size)
		}
	}
	if math.Abs(total-100) > eps && math.Abs(total) > eps {
		return bad("", "traffic", "the production versions' traffic totals %s%% (%s); it must total 100%% or 0%%", FormatPercent(total), m.Split())
	}
	if m.Canary != nil {
		if field, problem := checkPlan(&m, m.Canary); field != "" {
			return bad("", "canary."+field, "%s", problem)
		}
	}
	if m.Shadow != nil {
		if field, problem := checkShadow(&m, m.Shadow); field != "" {
			return bad("", "shadow."+field, "%s", problem)
		}
	}
	return nil
}

// validateModels checks every model of a stored state, keyed by name.
func validateModels(models map[string]Model) error {
	for name, m := range models {
		if m.Name != name {
			return &StateError{Model: name, Field: "name", Problem: fmt.Sprintf("stored under %q but named %q", name, m.Name)}
		}
		if err := ValidateModel(m); err != nil {
			return err
		}
	}
	return nil
}

// CheckFileStoreState reports whether dir's state.json is missing while
// the folder holds a registry's history: it returns an error wrapping
// ErrStateMissing when state.json is absent but audit.log has data or
// artifacts/ holds artifacts, and nil otherwise (state.json present, or a
// folder with no registry in it at all).
func CheckFileStoreState(dir string) error {
	if _, err := os.Stat(filepath.Join(dir, stateFile)); err == nil || !errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	var found []string
	if info, err := os.Stat(filepath.Join(dir, auditFile)); err == nil && info.Size() > 0 {
		found = append(found, fmt.Sprintf("%s has %d bytes of history", auditFile, info.Size()))
	}
	if n := len(listArtifacts(dir)); n > 0 {
		found = append(found, fmt.Sprintf("%s/ holds %d artifacts", artifactDir, n))
	}
	if len(found) == 0 {
		return nil
	}
	msg := found[0]
	if len(found) > 1 {
		msg += " and " + found[1]
	}
	return fmt.Errorf("%w: %s is missing but %s, so the registry is not empty; %s", ErrStateMissing, filepath.Join(dir, stateFile), msg, RepairHint)
}

// listArtifacts returns the sha256 of every artifact file in dir's
// artifacts folder.
func listArtifacts(dir string) []string {
	var out []string
	root := filepath.Join(dir, artifactDir, "sha256")
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		name := d.Name()
		if sha, ok := strings.CutSuffix(name, ".onnx"); ok && checkSHA(sha) == nil {
			out = append(out, sha)
		}
		return nil
	})
	return out
}
