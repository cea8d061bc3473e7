package registry

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// ArtifactCheck verifies that a version's artifact is stored intact: it
// exists and its bytes hash to a.SHA256 and number a.Size. Rebuild leaves
// out a version whose artifact fails the check.
type ArtifactCheck func(ctx context.Context, a Artifact) error

// StoredArtifacts checks artifacts by reading them from s and hashing them.
func StoredArtifacts(s Store) ArtifactCheck {
	return func(ctx context.Context, a Artifact) error {
		data, err := s.ReadArtifact(ctx, a.SHA256)
		if err != nil {
			return err
		}
		return checkBytes(a, int64(len(data)), sha256.Sum256(data))
	}
}

// fileArtifacts checks artifacts in a FileStore folder without opening the
// store, streaming each file through sha256.
func fileArtifacts(dir string) ArtifactCheck {
	return func(ctx context.Context, a Artifact) error {
		if err := checkSHA(a.SHA256); err != nil {
			return err
		}
		f, err := os.Open(artifactPathIn(dir, a.SHA256))
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("%w: artifact %s is missing", ErrNotFound, a.SHA256)
			}
			return err
		}
		defer f.Close()
		h := sha256.New()
		n, err := io.Copy(h, f)
		if err != nil {
			return err
		}
		var sum [sha256.Size]byte
		h.Sum(sum[:0])
		return checkBytes(a, n, sum)
	}
}

func checkBytes(a Artifact, n int64, sum [sha256.Size]byte) error {
	if got := hex.EncodeToString(sum[:]); got != a.SHA256 {
		return fmt.Errorf("%w: the stored file of artifact %s hashes to %s: it was changed or damaged", ErrInvalidArtifact, a.SHA256, got)
	}
	if n != a.Size {
		return fmt.Errorf("%w: artifact %s has %d bytes; the record says %d", ErrInvalidArtifact, a.SHA256, n, a.Size)
	}
	return nil
}

// RebuildProblem is something Rebuild could not rebuild, or had to change.
type RebuildProblem struct {
	// Seq is the event that shows the problem (0 for a model-wide one)
	// and Action its action.
	Seq    uint64 `json:"seq,omitempty"`
	Action Action `json:"action,omitempty"`
	Model  string `json:"model"`
	// Version is "" for a model-wide problem.
	Version string `json:"version,omitempty"`
	Reason  string `json:"reason"`
}

func (p RebuildProblem) String() string {
	if p.Seq == 0 {
		return fmt.Sprintf("model %s: %s", p.Model, p.Reason)
	}
	what := p.Model
	if p.Version != "" {
		what += ":" + p.Version
	}
	return fmt.Sprintf("event %d (%s %s): %s", p.Seq, p.Action, what, p.Reason)
}

// Rebuilt is the state Rebuild replayed from an audit log.
type Rebuilt struct {
	// Models are the rebuilt models, sorted by name, versions in
	// registration order, as a Store holds them (no artifact paths).
	Models []Model `json:"models"`
	// Seq is the last event replayed; Events how many there were.
	Seq    uint64 `json:"seq"`
	Events int    `json:"events"`
	// Problems lists the versions left out and why, and anything else the
	// replay had to change, in log order.
	Problems []RebuildProblem `json:"problems"`
	// Notes lists what was rebuilt from elsewhere than the log (Repair
	// takes a version whose register event predates records from the old
	// state.json when that still parses).
	Notes []RebuildProblem `json:"notes,omitempty"`
}

// Versions returns how many versions were rebuilt.
func (r *Rebuilt) Versions() int {
	n := 0
	for _, m := range r.Models {
		n += len(m.Versions)
	}
	return n
}

// Rebuild replays an audit log (every event, Seq 1, 2, 3, …) into the
// models it describes: a register event's Record gives the version as
// registered, every event's Changes give the status and traffic each
// version had from that event on (its SplitAfter is checked against the
// replay), and canary and shadow events give the model's canary plan and
// shadow setting (a plan or setting naming a version left out is left out
// too, and reported). Each artifact is verified with check (nil: not verified).
//
// A version that cannot be rebuilt is left out and reported in Problems:
// one registered by an event written before events carried records, or
// whose artifact is missing or does not match its sha256. When a version
// left out held traffic, the model's other production versions are
// rescaled to take its share (as a forced archive would) and that is
// reported too; if none can, the model is left with no serving version.
//
// Rebuild returns an error only for a log it cannot replay at all (Seq
// numbers with gaps, an event for an invalid name).
func Rebuild(ctx context.Context, events []Event, check ArtifactCheck) (*Rebuilt, error) {
	return rebuild(ctx, events, check, nil)
}

// rebuild is Rebuild; a register event without a record takes the version
// from fallback (the old state's copy), if it has it.
func rebuild(ctx context.Context, events []Event, check ArtifactCheck, fallback map[Ref]Version) (*Rebuilt, error) {
	out := &Rebuilt{}
	models := map[string]*Model{}
	dropped := map[Ref]bool{}         // versions left out
	droppedShare := map[Ref]float64{} // their last traffic
	problem := func(e *Event, version, format string, args ...any) {
		out.Problems = append(out.Problems, RebuildProblem{Seq: e.Seq, Action: e.Action, Model: e.Name, Version: version, Reason: fmt.Sprintf(format, args...)})
	}
	for i := range events {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		e := &events[i]
		if e.Seq != uint64(i+1) {
			return nil, fmt.Errorf("registry: rebuild: event %d of the log has seq %d; the log must number its events 1, 2, 3, … without gaps", i+1, e.Seq)
		}
		if err := ValidateName(e.Name); err != nil {
			return nil, fmt.Errorf("registry: rebuild: event %d: model name: %w", e.Seq, err)
		}
		out.Seq, out.Events = e.Seq, i+1
		m := models[e.Name]
		if m == nil {
			m = &Model{Name: e.Name}
			models[e.Name] = m
		}
		if e.Action == ActionRegister {
			ref := Ref{e.Name, e.Version}
			rec, fromState := e.Record, false
			if fb, ok := fallback[ref]; ok && rec == nil {
				rec, fromState = &fb, true
			}
			switch {
			case rec == nil:
				problem(e, e.Version, "predates artifact records; cannot rebuild this version")
				dropped[ref] = true
			case rec.Name != e.Name || rec.Version != e.Version:
				problem(e, e.Version, "its record is of %s:%s; cannot rebuild this version", rec.Name, rec.Version)
				dropped[ref] = true
			case m.version(e.Version) != nil:
				problem(e, e.Version, "registers a version the log already holds; kept the first")
			default:
				v := rec.clone()
				v.Artifact.Path = ""
				if err := checkSHA(v.Artifact.SHA256); err != nil {
					problem(e, e.Version, "artifact sha256 %q is malformed; left out", v.Artifact.SHA256)
					dropped[ref] = true
					break
				}
				if check != nil {
					if err := check(ctx, v.Artifact); err != nil {
						if ctx.Err() != nil {
							return nil, ctx.Err()
						}
						problem(e, e.Version, "%v; left out", err)
						dropped[ref] = true
						break
					}
				}
				// Status and traffic come from the event's Changes below.
				v.Status, v.Traffic = "", 0
				m.Versions = append(m.Versions, v)
				if fromState {
					out.Notes = append(out.Notes, RebuildProblem{Seq: e.Seq, Action: e.Action, Model: e.Name, Version: e.Version,
						Reason: "predates artifact records; the version was taken from the old state.json (artifact verified), its status and traffic from the log"})
				}
			}
		}
		for _, c := range e.Changes {
			ref := Ref{e.Name, c.Version}
			if dropped[ref] {
				droppedShare[ref] = c.After.Traffic
				if c.After.Status != StatusProduction {
					droppedShare[ref] = 0
				}
				continue
			}
			v := m.version(c.Version)
			if v == nil {
				problem(e, c.Version, "changes %s, which no register event before it records; change ignored", ref)
				continue
			}
			if was := (State{v.Status, v.Traffic}); was != c.Before {
				problem(e, c.Version, "says %s was %s %s%%, the replay has %s %s%%; took the event's new state", c.Version, c.Before.Status, FormatPercent(c.Before.Traffic), was.Status, FormatPercent(was.Traffic))
			}
			v.Status, v.Traffic = c.After.Status, c.After.Traffic
			v.UpdatedAt = e.Time
		}
		switch {
		case e.Action.IsCanary() && e.Canary == nil:
			problem(e, e.Version, "a canary event without its plan; the plan is left as it was")
		case e.Action.IsCanary():
			m.Canary = e.Canary.clone()
		case e.Action.IsShadow():
			m.Shadow = e.Shadow.clone()
		}
		if !modelDropsAny(m.Name, dropped) && !m.Split().Equal(e.SplitAfter) {
			problem(e, "", "the replayed split %s differs from the logged split %s", m.Split(), e.SplitAfter)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(models)) {
		m := models[name]
		if len(m.Versions) == 0 {
			continue
		}
		lost := 0.0
		for ref, share := range droppedShare {
			if ref.Name == name {
				lost += share
			}
		}
		total := m.Split().Total()
		if lost > eps || (math.Abs(total-100) > eps && math.Abs(total) > eps) {
			before := m.Split()
			rescale(m)
			reason := fmt.Sprintf("versions left out served %s%%; the remaining split %s was rescaled to %s", FormatPercent(lost), before, m.Split())
			if m.Split().Total() <= eps {
				reason = fmt.Sprintf("versions left out served %s%%; no remaining version had traffic, so nothing serves the model: promote a version or set a split", FormatPercent(lost))
			}
			out.Problems = append(out.Problems, RebuildProblem{Model: name, Reason: reason})
		}
		for i := range m.Versions {
			if !m.Versions[i].Status.valid() {
				// A record whose register event logged no change.
				m.Versions[i].Status = StatusStaging
			}
		}
		if p := m.Canary; p != nil {
			if field, why := checkPlan(m, p); field != "" {
				out.Problems = append(out.Problems, RebuildProblem{Model: name, Reason: fmt.Sprintf("the canary plan (revision %d) is left out: %s: %s", p.Revision, field, why)})
				m.Canary = nil
			}
		}
		if s := m.Shadow; s != nil {
			if field, why := checkShadow(m, s); field != "" {
				out.Problems = append(out.Problems, RebuildProblem{Model: name, Reason: fmt.Sprintf("the shadow setting is left out: %s: %s", field, why)})
				m.Shadow = nil
			}
		}
		if err := ValidateModel(*m); err != nil {
			return nil, fmt.Errorf("registry: rebuild: %w", err)
		}
		out.Models = append(out.Models, *m)
	}
	return out, nil
}

func modelDropsAny(name string, dropped map[Ref]bool) bool {
	for ref := range dropped {
		if ref.Name == name {
			return true
		}
	}
	return false
}

// rescale makes a model's production traffic total 100 again by scaling it
// proportionally, or 0 if no production version has any.
func rescale(m *Model) {
	total := m.Split().Total()
	for i := range m.Versions {
		v := &m.Versions[i]
		switch {
		case v.Status != StatusProduction:
			v.Traffic = 0
		case total > eps:
			v.Traffic = v.Traffic * 100 / total
		default:
			v.Traffic = 0
		}
	}
	normalize(m, "")
}

// RepairOptions adjusts Repair.
type RepairOptions struct {
	// DryRun reports what would be rebuilt without writing anything.
	DryRun bool
	// Force replaces a state.json that loads and keeps the rules but
	// differs from the audit log's replay. Without it such a state is left
	// alone: a state that is valid is more likely right than a replay of a
	// log with old events.
	Force bool
	// Now is the clock for the name of the copy of the old state. If nil,
	// time.Now.
	Now func() time.Time
}

// RepairReport says what Repair found and did.
type RepairReport struct {
	Rebuilt
	Dir string `json:"dir"`
	// OldState describes state.json before: "missing", "valid", or why it
	// could not be used.
	OldState string `json:"old_state"`
	// Unchanged is set when state.json was valid and equal to the replay.
	Unchanged bool `json:"unchanged"`
	// Differs is set when state.json was valid but differs from the
	// replay (written only with Force).
	Differs bool `json:"differs"`
	// Tail is the number of bytes at the end of audit.log left out of the
	// replay: an uncommitted write (a half line, or events past the size
	// the old state.json committed).
	Tail int64 `json:"tail_bytes"`
	// Unreferenced lists stored artifacts no rebuilt version refers to
	// (left in place: they are harmless).
	Unreferenced []string `json:"unreferenced_artifacts"`
	// Wrote is set when state.json was replaced; KeptAs names the copy of
	// the old one (state.json.broken-<time>), if there was one.
	Wrote  bool   `json:"wrote"`
	KeptAs string `json:"kept_as,omitempty"`
}

// Repair rebuilds the state.json of the FileStore in dir from its audit log
// and artifacts (see Rebuild), for when state.json was lost, damaged or
// hand-edited into breaking the rules. Every artifact a version refers to
// is read and hashed. The log is replayed up to the size the old state.json
// committed, when that can still be read; otherwise every complete line is
// replayed (a half line at the end is an interrupted write and is left out). It holds the store's write lock while it works, so
// no writer commits meanwhile; readers see the old state until the new one
// is renamed into place. The old state.json, if any, is kept beside it as
// state.json.broken-<UTC time>.
//
// A state.json that loads and keeps the rules is left alone: if it matches
// the replay, nothing is written (Unchanged); if it differs, only with
// RepairOptions.Force. A version whose register event predates event
// records is taken from the old state.json if that still parses (listed in
// Notes). Versions that cannot be rebuilt are left out and listed in the
// report's Problems; the state is written without them.
func Repair(ctx context.Context, dir string, opts RepairOptions) (*RepairReport, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("registry: repair: %w", err)
	}
	rep := &RepairReport{Dir: dir}
	_, auditErr := os.Stat(filepath.Join(dir, auditFile))
	_, stateErr := os.Stat(filepath.Join(dir, stateFile))
	if errors.Is(auditErr, fs.ErrNotExist) && errors.Is(stateErr, fs.ErrNotExist) && len(listArtifacts(dir)) == 0 {
		return nil, fmt.Errorf("registry: repair: no registry in %s (no %s, %s or artifacts)", dir, stateFile, auditFile)
	}
	lf, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("registry: repair: %w", err)
	}
	locker := &FileStore{dir: dir, sem: make(chan struct{}, 1), lock: lf}
	release, err := locker.acquire(ctx)
	if err != nil {
		lf.Close()
		return nil, err
	}
	defer lf.Close()
	defer release()

	// The old state: its committed audit size bounds the replay when it
	// can be read at all.
	var old *fileState
	oldData, err := os.ReadFile(filepath.Join(dir, stateFile))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		rep.OldState = "missing"
	case err != nil:
		return nil, fmt.Errorf("registry: repair: %w", err)
	default:
		st := new(fileState)
		switch err := json.Unmarshal(oldData, st); {
		case err != nil:
			rep.OldState = fmt.Sprintf("corrupt: %v", err)
		case st.Format != stateFormat:
			rep.OldState = fmt.Sprintf("format %d, this build reads format %d", st.Format, stateFormat)
		default:
			old = st
			if err := validateModels(st.Models); err != nil {
				rep.OldState = "invalid: " + strings.TrimPrefix(err.Error(), "registry: invalid state: ")
			} else {
				rep.OldState = "valid"
			}
		}
	}

	log, err := os.ReadFile(filepath.Join(dir, auditFile))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("registry: repair: %w", err)
	}
	committed := int64(len(log))
	if old != nil && old.AuditSize >= 0 && old.AuditSize <= committed && (old.AuditSize == 0 || log[old.AuditSize-1] == '\n') {
		committed = old.AuditSize
	}
	events, used, err := parseLog(log[:committed])
	if err != nil {
		return nil, err
	}
	rep.Tail = int64(len(log)) - used

	// Versions registered by a build older than event records can still
	// be rebuilt from the old state, if it parses.
	var fallback map[Ref]Version
	if old != nil {
		fallback = map[Ref]Version{}
		for name, m := range old.Models {
			for _, v := range m.Versions {
				if v.Name == name {
					fallback[v.Ref()] = v
				}
			}
		}
	}
	rb, err := rebuild(ctx, events, fileArtifacts(dir), fallback)
	if err != nil {
		return nil, err
	}
	// A version the old state holds that the replay neither rebuilt nor
	// reported (an audit log cut short or replaced) is lost: say so.
	if old != nil {
		reported := map[Ref]bool{}
		for _, p := range rb.Problems {
			reported[Ref{p.Model, p.Version}] = true
		}
		rebuilt := map[Ref]bool{}
		for _, m := range rb.Models {
			for _, v := range m.Versions {
				rebuilt[v.Ref()] = true
			}
		}
		for _, name := range slices.Sorted(maps.Keys(old.Models)) {
			for _, v := range old.Models[name].Versions {
				if ref := (Ref{name, v.Version}); !rebuilt[ref] && !reported[ref] {
					rb.Problems = append(rb.Problems, RebuildProblem{Model: name, Version: v.Version,
						Reason: fmt.Sprintf("version %s is in the old state.json but no event of the audit log registers it; left out", v.Version)})
				}
			}
		}
	}
	rep.Rebuilt = *rb
	refs := map[string]bool{}
	for _, m := range rb.Models {
		for _, v := range m.Versions {
			refs[v.Artifact.SHA256] = true
		}
	}
	for _, sha := range listArtifacts(dir) {
		if !refs[sha] {
			rep.Unreferenced = append(rep.Unreferenced, sha)
		}
	}
	slices.Sort(rep.Unreferenced)

	next := &fileState{Format: stateFormat, Seq: rb.Seq, AuditSize: used, Models: map[string]Model{}}
	for _, m := range rb.Models {
		next.Models[m.Name] = m
	}
	data, err := json.MarshalIndent(next, "", " ")
	if err != nil {
		return nil, fmt.Errorf("registry: repair: %w", err)
	}
	if rep.OldState == "valid" {
		if sameModels(old.Models, next.Models) && old.Seq == next.Seq {
			rep.Unchanged = true
			return rep, nil
		}
		rep.Differs = true
		if !opts.Force {
			return rep, nil
		}
	}
	if opts.DryRun {
		return rep, nil
	}
	for _, d := range []string{filepath.Join(dir, tmpDir), filepath.Join(dir, artifactDir, "sha256")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("registry: repair: %w", err)
		}
	}
	if oldData != nil {
		// Keep the old state under another name first (a hard link, so
		// state.json is never absent), then replace state.json atomically.
		kept := filepath.Join(dir, stateFile+".broken-"+opts.Now().UTC().Format("20060102T150405.000000000Z"))
		if err := os.Link(filepath.Join(dir, stateFile), kept); err != nil {
			if err := writeFileAtomic(filepath.Join(dir, tmpDir), kept, oldData); err != nil {
				return nil, fmt.Errorf("registry: repair: keeping the old %s: %w", stateFile, err)
			}
		}
		rep.KeptAs = kept
	}
	if err := writeFileAtomic(filepath.Join(dir, tmpDir), filepath.Join(dir, stateFile), data); err != nil {
		return nil, fmt.Errorf("registry: repair: %w", err)
	}
	rep.Wrote = true
	return rep, nil
}

// parseLog parses audit.log bytes: one JSON event per line. A last line
// without its newline is a write cut short and is left out; any other line
// that does not parse is an error naming it. It returns the events and the
// number of bytes they span.
func parseLog(data []byte) ([]Event, int64, error) {
	var events []Event
	used := int64(0)
	for line := 1; used < int64(len(data)); line++ {
		rest := data[used:]
		n := bytes.IndexByte(rest, '\n')
		if n < 0 {
			break // an uncommitted half line
		}
		var e Event
		if err := json.Unmarshal(rest[:n], &e); err != nil {
			return nil, 0, fmt.Errorf("registry: repair: %s line %d (byte %d) is corrupt: %w; cannot replay past it", auditFile, line, used, err)
		}
		events = append(events, e)
		used += int64(n) + 1
	}
	return events, used, nil
}

// sameModels reports whether two states hold the same models, compared as
// they are stored.
func sameModels(a, b map[string]Model) bool {
	ja, err1 := json.Marshal(a)
	jb, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && bytes.Equal(ja, jb)
}
