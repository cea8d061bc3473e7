package registry

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
)

// checkImport checks what an Importer is asked to commit: events numbered
// 1, 2, 3, … without gaps, each for a valid model name; models with
// versions, each named once and keeping the registry's rules.
func checkImport(models []Model, events []Event) error {
	for i, e := range events {
		if e.Seq != uint64(i+1) {
			return fmt.Errorf("registry: import: event %d has seq %d; events must be numbered 1, 2, 3, … without gaps", i+1, e.Seq)
		}
		if err := ValidateName(e.Name); err != nil {
			return fmt.Errorf("registry: import: event %d: model name: %w", e.Seq, err)
		}
	}
	seen := map[string]bool{}
	for _, m := range models {
		if seen[m.Name] {
			return fmt.Errorf("registry: import: model %q is listed twice", m.Name)
		}
		seen[m.Name] = true
		if len(m.Versions) == 0 {
			return fmt.Errorf("registry: import: model %q has no versions", m.Name)
		}
		if err := ValidateModel(m); err != nil {
			return fmt.Errorf("registry: import: %w", err)
		}
	}
	return nil
}

// countModels counts the models that have versions (a Store holds no
// others).
func countModels(ms map[string]Model) int {
	n := 0
	for _, m := range ms {
		if len(m.Versions) > 0 {
			n++
		}
	}
	return n
}

// importedModel is m as a store keeps it: a deep copy without local
// artifact paths.
func importedModel(m Model) Model {
	m = m.Clone()
	for i := range m.Versions {
		m.Versions[i].Artifact.Path = ""
	}
	return m
}

// MigrateOptions adjusts Migrate. The zero value migrates.
type MigrateOptions struct {
	// DryRun reads and checks everything Migrate would (the source's
	// consistency and every source artifact's sha256, what the destination
	// holds) and writes nothing.
	DryRun bool
	// Progress, if not nil, is called after each artifact is copied (or
	// found already in the destination, or checked in a dry run).
	Progress func(MigrateProgress)
}

// MigrateProgress reports one artifact done: the Index-th (from 1) of Total.
type MigrateProgress struct {
	Index, Total int
	Artifact     ArtifactCopy
}

// ArtifactCopy is what Migrate did with one artifact.
type ArtifactCopy struct {
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
	// Copied is the number of bytes written to the destination (in a dry
	// run: that would be); 0 when the destination already held it.
	Copied int64 `json:"bytes_copied"`
	// Present is set when the destination already held the artifact
	// (its sha256 checked).
	Present bool `json:"already_present"`
	// Versions are the versions (NAME:VERSION) that use it.
	Versions []string `json:"versions"`
}

// MigrateReport says what Migrate found and did.
type MigrateReport struct {
	Models   int    `json:"models"`
	Versions int    `json:"versions"`
	Events   int    `json:"events"`
	Seq      uint64 `json:"seq"`
	// Artifacts lists every artifact a version refers to, in the order of
	// the versions (models by name, versions in registration order).
	Artifacts   []ArtifactCopy `json:"artifacts"`
	BytesCopied int64          `json:"bytes_copied"`
	// Streamed is set when artifacts were streamed (both stores implement
	// ArtifactOpener and ArtifactWriter) rather than read whole.
	Streamed bool `json:"streamed"`
	// AlreadyMigrated is set when the destination already held exactly the
	// source's models and events: nothing was copied.
	AlreadyMigrated bool `json:"already_migrated"`
	DryRun          bool `json:"dry_run"`
	// Verified is set when the destination was checked after the
	// migration: the same models, versions and events (Seq included), and
	// every artifact re-read from it hashes to its sha256.
	Verified bool `json:"verified"`
}

// snapshot is a store's models and events as of one Seq.
type snapshot struct {
	models []Model
	events []Event
	seq    uint64
}

func (s *snapshot) versions() int {
	n := 0
	for _, m := range s.models {
		n += len(m.Versions)
	}
	return n
}

// readSnapshot reads s's models and events consistently: the Seq is read
// before and after, and the read is retried if a writer committed
// meanwhile.
func readSnapshot(ctx context.Context, s Store, which string) (*snapshot, error) {
	for range 5 {
		before, err := s.Seq(ctx)
		if err != nil {
			return nil, fmt.Errorf("registry: migrate: reading the %s: %w", which, err)
		}
		models, err := s.Models(ctx)
		if err != nil {
			return nil, fmt.Errorf("registry: migrate: reading the %s's models: %w", which, err)
		}
		events, err := s.Events(ctx, "", 0)
		if err != nil {
			return nil, fmt.Errorf("registry: migrate: reading the %s's audit log: %w", which, err)
		}
		after, err := s.Seq(ctx)
		if err != nil {
			return nil, fmt.Errorf("registry: migrate: reading the %s: %w", which, err)
		}
		if before != after || lastSeq(events) != after {
			continue // a writer committed while we read
		}
		for i, e := range events {
			if e.Seq != uint64(i+1) {
				return nil, fmt.Errorf("registry: migrate: the %s's audit log has seq %d as event %d; it must number events 1, 2, 3, … without gaps", which, e.Seq, i+1)
			}
		}
		snap := &snapshot{seq: after, events: make([]Event, len(events)), models: make([]Model, len(models))}
		for i, e := range events {
			snap.events[i] = cloneEvent(e)
			if r := snap.events[i].Record; r != nil {
				r.Artifact.Path = ""
			}
		}
		for i, m := range models {
			snap.models[i] = importedModel(m)
		}
		return snap, nil
	}
	return nil, fmt.Errorf("registry: migrate: the %s kept changing while it was read; stop the processes writing to it and try again", which)
}

func lastSeq(events []Event) uint64 {
	if len(events) == 0 {
		return 0
	}
	return events[len(events)-1].Seq
}

// canonical encodes v for comparison across stores: times in UTC (a store
// may give them back in another zone), no local artifact paths.
func canonical(v any) []byte {
	var b []byte
	var err error
	switch x := v.(type) {
	case []Event:
		out := make([]Event, len(x))
		for i, e := range x {
			e = cloneEvent(e)
			e.Time = e.Time.UTC()
			if e.Record != nil {
				*e.Record = canonicalVersion(*e.Record)
			}
			out[i] = e
		}
		b, err = json.Marshal(out)
	case []Model:
		out := make([]Model, len(x))
		for i, m := range x {
			m = m.Clone()
			for j := range m.Versions {
				m.Versions[j] = canonicalVersion(m.Versions[j])
			}
			out[i] = m
		}
		b, err = json.Marshal(out)
	default:
		panic(fmt.Sprintf("registry: canonical(%T)", v))
	}
	if err != nil {
		// Stored models and events always encode; keep comparisons false.
		return []byte(err.Error())
	}
	return b
}

func canonicalVersion(v Version) Version {
	v.Artifact.Path = ""
	v.CreatedAt, v.UpdatedAt = v.CreatedAt.UTC(), v.UpdatedAt.UTC()
	return v
}

func sameEvents(a, b []Event) bool    { return bytes.Equal(canonical(a), canonical(b)) }
func sameModelList(a, b []Model) bool { return bytes.Equal(canonical(a), canonical(b)) }

// Migrate copies a whole registry from src into dst: every artifact a
// version refers to, then all models and the whole audit log (through
// dst's Importer, in one transaction, events keeping their Seq), and then
// verifies dst: the same models, versions and events, and every artifact
// re-read from dst hashes to its sha256.
//
// dst must be empty (artifacts left by an earlier, failed run are fine: they
// are checked and reused). A dst that already holds exactly src's models
// and events is left alone (AlreadyMigrated; nothing is copied, dst is
// verified). Any other content is refused with an error wrapping
// ErrNotEmpty, and so is a dst holding an earlier part of src's audit log
// (src moved on since a previous migration: migrate into an empty
// destination again).
//
// Every source artifact is verified while it is copied: one whose bytes do
// not match its sha256 or size stops the migration with an error wrapping
// ErrInvalidArtifact that names it, before anything is imported, and its
// bytes are never stored in dst. Artifacts are streamed when src
// implements ArtifactOpener and dst ArtifactWriter, and read whole
// otherwise.
//
// src is read consistently (retried while another process commits to
// it); writers to src should still be stopped during a migration, since a
// change committed after the read is not migrated.
func Migrate(ctx context.Context, src, dst Store, opts MigrateOptions) (MigrateReport, error) {
	var rep MigrateReport
	rep.DryRun = opts.DryRun
	from, err := readSnapshot(ctx, src, "source")
	if err != nil {
		return rep, err
	}
	rep.Models, rep.Versions, rep.Events, rep.Seq = len(from.models), from.versions(), len(from.events), from.seq
	to, err := readSnapshot(ctx, dst, "destination")
	if err != nil {
		return rep, err
	}
	switch {
	case len(to.models) == 0 && len(to.events) == 0:
		// Empty: migrate.
	case sameEvents(to.events, from.events) && sameModelList(to.models, from.models):
		rep.AlreadyMigrated = true
	case len(to.events) > 0 && len(to.events) < len(from.events) && sameEvents(to.events, from.events[:len(to.events)]):
		return rep, fmt.Errorf("%w: it holds the first %d of the source's %d events (an earlier migration); the source has changed since, and a migration only goes into an empty destination: migrate into a new one", ErrNotEmpty, len(to.events), len(from.events))
	default:
		return rep, fmt.Errorf("%w: it holds %d models, %d versions and %d events that are not the source's; migrate into an empty registry", ErrNotEmpty, len(to.models), to.versions(), len(to.events))
	}
	imp, ok := dst.(Importer)
	if !ok && !rep.AlreadyMigrated {
		return rep, fmt.Errorf("registry: migrate: the destination store (%T) cannot import a registry", dst)
	}
	rep.Artifacts = artifactsOf(from.models)
	opener, srcStreams := src.(ArtifactOpener)
	writer, dstStreams := dst.(ArtifactWriter)
	rep.Streamed = srcStreams && dstStreams && !rep.AlreadyMigrated && !opts.DryRun
	if !rep.AlreadyMigrated {
		for i := range rep.Artifacts {
			a := &rep.Artifacts[i]
			art := Artifact{SHA256: a.SHA256, Size: a.Size}
			// A destination artifact left by an earlier run is reused once
			// its bytes check out.
			switch err := verifyStored(ctx, dst, art); {
			case err == nil:
				a.Present = true
			case !errors.Is(err, ErrNotFound):
				return rep, fmt.Errorf("registry: migrate: the destination's copy of artifact %s (%s): %w", a.SHA256, a.Versions[0], err)
			case opts.DryRun:
				if err := verifyStored(ctx, src, art); err != nil {
					return rep, srcArtifactError(a, err)
				}
				a.Copied = a.Size
			case rep.Streamed:
				if a.Copied, err = streamArtifact(ctx, opener, writer, art); err != nil {
					return rep, srcArtifactError(a, err)
				}
			default:
				data, err := src.ReadArtifact(ctx, a.SHA256)
				if err == nil {
					err = checkBytes(art, int64(len(data)), sha256.Sum256(data))
				}
				if err != nil {
					return rep, srcArtifactError(a, err)
				}
				got, err := dst.PutArtifact(ctx, data)
				if err != nil {
					return rep, fmt.Errorf("registry: migrate: storing artifact %s in the destination: %w", a.SHA256, err)
				}
				if got.SHA256 != a.SHA256 {
					return rep, fmt.Errorf("registry: migrate: the destination stored artifact %s as %s", a.SHA256, got.SHA256)
				}
				a.Copied = int64(len(data))
			}
			rep.BytesCopied += a.Copied
			if opts.Progress != nil {
				opts.Progress(MigrateProgress{Index: i + 1, Total: len(rep.Artifacts), Artifact: *a})
			}
		}
	}
	if opts.DryRun && !rep.AlreadyMigrated {
		return rep, nil
	}
	if rep.AlreadyMigrated {
		for i := range rep.Artifacts {
			rep.Artifacts[i].Present = true
		}
	} else {
		if err := imp.Import(ctx, from.models, from.events); err != nil {
			return rep, fmt.Errorf("registry: migrate: importing %d models and %d events: %w", len(from.models), len(from.events), err)
		}
	}
	if err := verifyMigrated(ctx, dst, from, rep.Artifacts, opts.Progress, rep.AlreadyMigrated); err != nil {
		return rep, err
	}
	rep.Verified = true
	return rep, nil
}

// artifactsOf lists the distinct artifacts of models' versions in version
// order, each with the versions using it.
func artifactsOf(models []Model) []ArtifactCopy {
	var out []ArtifactCopy
	index := map[string]int{}
	for _, m := range models {
		for _, v := range m.Versions {
			i, ok := index[v.Artifact.SHA256]
			if !ok {
				i = len(out)
				index[v.Artifact.SHA256] = i
				out = append(out, ArtifactCopy{SHA256: v.Artifact.SHA256, Size: v.Artifact.Size})
			}
			out[i].Versions = append(out[i].Versions, v.Ref().String())
		}
	}
	return out
}

func srcArtifactError(a *ArtifactCopy, err error) error {
	return fmt.Errorf("registry: migrate: artifact %s of %s in the source: %w; nothing was imported", a.SHA256, joinRefs(a.Versions), err)
}

func joinRefs(refs []string) string {
	if len(refs) <= 3 {
		out := ""
		for i, r := range refs {
			if i > 0 {
				out += ", "
			}
			out += r
		}
		return out
	}
	return fmt.Sprintf("%s, %s and %d other versions", refs[0], refs[1], len(refs)-2)
}

// verifyStored reads artifact a from s (streamed if s is an
// ArtifactOpener) and checks its sha256 and size. It returns an error
// wrapping ErrNotFound if s does not hold it.
func verifyStored(ctx context.Context, s Store, a Artifact) error {
	if o, ok := s.(ArtifactOpener); ok {
		rc, n, err := o.OpenArtifact(ctx, a.SHA256)
		if err != nil {
			return err
		}
		defer rc.Close()
		if n != a.Size {
			return fmt.Errorf("%w: artifact %s has %d bytes; the record says %d", ErrInvalidArtifact, a.SHA256, n, a.Size)
		}
		vr := newVerifyingReader(ctx, rc, a)
		if _, err := io.Copy(io.Discard, vr); err != nil {
			return err
		}
		return nil
	}
	data, err := s.ReadArtifact(ctx, a.SHA256)
	if err != nil {
		return err
	}
	return checkBytes(a, int64(len(data)), sha256.Sum256(data))
}

// streamArtifact copies artifact a from o to w through a verifying reader:
// bytes that do not match a make the reader fail, so w stores nothing.
func streamArtifact(ctx context.Context, o ArtifactOpener, w ArtifactWriter, a Artifact) (int64, error) {
	rc, n, err := o.OpenArtifact(ctx, a.SHA256)
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	if n != a.Size {
		return 0, fmt.Errorf("%w: artifact %s has %d bytes; the record says %d", ErrInvalidArtifact, a.SHA256, n, a.Size)
	}
	vr := newVerifyingReader(ctx, rc, a)
	got, err := w.PutArtifactFrom(ctx, vr)
	if vr.err != nil {
		return 0, vr.err // the source's fault, whatever the writer said
	}
	if err != nil {
		return 0, fmt.Errorf("storing it in the destination: %w", err)
	}
	if got.SHA256 != a.SHA256 || got.Size != a.Size {
		return 0, fmt.Errorf("the destination stored it as %s (%d bytes)", got.SHA256, got.Size)
	}
	return vr.n, nil
}

// verifyingReader passes r's bytes through while hashing them; at the end
// (or past a.Size bytes) it fails with an error wrapping
// ErrInvalidArtifact instead of io.EOF if they are not a's bytes. It stops
// with ctx's error once ctx is done.
type verifyingReader struct {
	ctx context.Context
	r   io.Reader
	a   Artifact
	h   hash.Hash
	n   int64
	err error // set when the bytes are not a's (or reading failed)
}

func newVerifyingReader(ctx context.Context, r io.Reader, a Artifact) *verifyingReader {
	return &verifyingReader{ctx: ctx, r: r, a: a, h: sha256.New()}
}

func (v *verifyingReader) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	if err := v.ctx.Err(); err != nil {
		v.err = err
		return 0, err
	}
	n, err := v.r.Read(p)
	v.h.Write(p[:n])
	v.n += int64(n)
	switch {
	case v.n > v.a.Size:
		v.err = fmt.Errorf("%w: artifact %s has more than the %d bytes its record says", ErrInvalidArtifact, v.a.SHA256, v.a.Size)
	case err == io.EOF:
		var sum [sha256.Size]byte
		v.h.Sum(sum[:0])
		v.err = checkBytes(v.a, v.n, sum)
	case err != nil:
		v.err = err
	}
	if v.err != nil {
		return n, v.err
	}
	return n, err
}

// verifyMigrated checks dst against the source snapshot: the same models
// and events (Seq included), and every artifact's bytes.
func verifyMigrated(ctx context.Context, dst Store, from *snapshot, arts []ArtifactCopy, progress func(MigrateProgress), already bool) error {
	to, err := readSnapshot(ctx, dst, "destination")
	if err != nil {
		return err
	}
	fail := func(format string, args ...any) error {
		return fmt.Errorf("registry: migrate: verifying the destination: "+format, args...)
	}
	switch {
	case len(to.models) != len(from.models):
		return fail("%d models; the source has %d", len(to.models), len(from.models))
	case to.versions() != from.versions():
		return fail("%d versions; the source has %d", to.versions(), from.versions())
	case len(to.events) != len(from.events) || to.seq != from.seq:
		return fail("%d events up to seq %d; the source has %d up to seq %d", len(to.events), to.seq, len(from.events), from.seq)
	case !sameModelList(to.models, from.models):
		return fail("its models differ from the source's")
	case !sameEvents(to.events, from.events):
		return fail("its audit log differs from the source's")
	}
	for i, a := range arts {
		if err := verifyStored(ctx, dst, Artifact{SHA256: a.SHA256, Size: a.Size}); err != nil {
			return fail("artifact %s (%s): %w", a.SHA256, joinRefs(a.Versions), err)
		}
		if already && progress != nil {
			progress(MigrateProgress{Index: i + 1, Total: len(arts), Artifact: a})
		}
	}
	return nil
}
