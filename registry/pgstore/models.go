package pgstore

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/signalforge/signalforge/registry"
)

// modelLockSpace is the first key of the transaction-scoped advisory locks
// Update takes on a model (the second is a hash of its name). Two names
// with the same hash only queue behind each other.
const modelLockSpace int32 = 0x53464d4c // "SFML"

// updateAttempts bounds Update's retries of transactions PostgreSQL aborts.
const updateAttempts = 5

// modelLockKey hashes a model name into the advisory lock's second key.
func modelLockKey(name string) int32 {
	h := fnv.New32a()
	h.Write([]byte(name))
	return int32(h.Sum32())
}

// decodeModel parses a models row and checks it as the file store checks
// its state: a model that breaks the registry's rules is refused.
func decodeModel(name string, doc []byte) (registry.Model, error) {
	var m registry.Model
	if err := json.Unmarshal(doc, &m); err != nil {
		return registry.Model{}, fmt.Errorf("%w: pgstore: row %q of table models is not a model: %v; %s", registry.ErrInvalidState, name, err, registry.RepairHint)
	}
	if m.Name != name {
		return registry.Model{}, fmt.Errorf("%w (in table models); %s", &registry.StateError{Model: name, Field: "name", Problem: fmt.Sprintf("stored under %q but named %q", name, m.Name)}, registry.RepairHint)
	}
	if err := registry.ValidateModel(m); err != nil {
		return registry.Model{}, fmt.Errorf("%w (in table models); %s", err, registry.RepairHint)
	}
	return m, nil
}

// Model implements registry.Store.
func (s *Store) Model(ctx context.Context, name string) (registry.Model, error) {
	if err := s.checkOpen(); err != nil {
		return registry.Model{}, err
	}
	var doc []byte
	err := s.pool.QueryRow(ctx, "SELECT doc FROM models WHERE name = $1", name).Scan(&doc)
	if errors.Is(err, pgx.ErrNoRows) {
		return registry.Model{}, fmt.Errorf("%w: model %q", registry.ErrNotFound, name)
	}
	if err != nil {
		return registry.Model{}, s.fail(ctx, "read model "+strconv.Quote(name), err)
	}
	m, err := decodeModel(name, doc)
	if err != nil {
		return registry.Model{}, err
	}
	if len(m.Versions) == 0 {
		return registry.Model{}, fmt.Errorf("%w: model %q", registry.ErrNotFound, name)
	}
	return m, nil
}

// Models implements registry.Store.
func (s *Store) Models(ctx context.Context) ([]registry.Model, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	rows, err := s.pool.Query(ctx, "SELECT name, doc FROM models")
	if err != nil {
		return nil, s.fail(ctx, "read models", err)
	}
	out := []registry.Model{}
	var name string
	var doc []byte
	_, err = pgx.ForEachRow(rows, []any{&name, &doc}, func() error {
		m, err := decodeModel(name, doc)
		if err != nil {
			return err
		}
		if len(m.Versions) > 0 {
			out = append(out, m)
		}
		return nil
	})
	if err != nil {
		if errors.Is(err, registry.ErrInvalidState) {
			return nil, err
		}
		return nil, s.fail(ctx, "read models", err)
	}
	// Sorted here, not by ORDER BY: the database's collation is not Go's.
	slices.SortFunc(out, func(a, b registry.Model) int { return cmp.Compare(a.Name, b.Name) })
	return out, nil
}

// Seq implements registry.Store: one single-row read.
func (s *Store) Seq(ctx context.Context) (uint64, error) {
	if err := s.checkOpen(); err != nil {
		return 0, err
	}
	var seq int64
	if err := s.pool.QueryRow(ctx, "SELECT seq FROM registry_seq").Scan(&seq); err != nil {
		return 0, s.fail(ctx, "read seq", err)
	}
	return uint64(seq), nil
}

// Events implements registry.Store.
func (s *Store) Events(ctx context.Context, name string, after uint64) ([]registry.Event, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	if after > 1<<63-1 {
		return nil, nil
	}
	var rows pgx.Rows
	var err error
	if name == "" {
		rows, err = s.pool.Query(ctx, "SELECT seq, doc FROM events WHERE seq > $1 ORDER BY seq", int64(after))
	} else {
		rows, err = s.pool.Query(ctx, "SELECT seq, doc FROM events WHERE model = $1 AND seq > $2 ORDER BY seq", name, int64(after))
	}
	if err != nil {
		return nil, s.fail(ctx, "read events", err)
	}
	var out []registry.Event
	var seq int64
	var doc []byte
	_, err = pgx.ForEachRow(rows, []any{&seq, &doc}, func() error {
		var e registry.Event
		if err := json.Unmarshal(doc, &e); err != nil {
			return fmt.Errorf("%w: pgstore: event %d in table events is not an event: %v", registry.ErrInvalidState, seq, err)
		}
		e.Seq = uint64(seq)
		out = append(out, e)
		return nil
	})
	if err != nil {
		if errors.Is(err, registry.ErrInvalidState) {
			return nil, err
		}
		return nil, s.fail(ctx, "read events", err)
	}
	return out, nil
}

// fnError carries an error of Update's fn (or of the registry's checks)
// out of the transaction unchanged, and tells it from database errors.
type fnError struct{ err error }

func (e fnError) Error() string { return e.err.Error() }

// Update implements registry.Store. fn runs inside the transaction, after
// the model's lock is taken; if PostgreSQL aborts the transaction
// (serialization failure, deadlock) fn runs again on the model as it then
// is, up to a few times. If the connection breaks at COMMIT the change may
// or may not have been committed; the error says so.
func (s *Store) Update(ctx context.Context, name string, fn func(m *registry.Model) ([]registry.Event, error)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.checkOpen(); err != nil {
		return err
	}
	var err error
	for attempt := 1; ; attempt++ {
		err = s.update(ctx, name, fn)
		var fe fnError
		if errors.As(err, &fe) {
			return fe.err
		}
		var cu commitUnknown
		if errors.As(err, &cu) {
			return s.fail(ctx, "update model "+strconv.Quote(name)+": the connection broke at COMMIT, so the change may or may not be committed (see the audit log)", cu.err)
		}
		if !retryable(err) {
			return s.fail(ctx, "update model "+strconv.Quote(name), err)
		}
		if attempt == updateAttempts {
			break
		}
		wait := time.Duration(rand.Int64N(int64(10*time.Millisecond) << attempt))
		s.log.Warn("pgstore: transaction aborted; retrying", "model", name, "attempt", attempt, "wait", wait, "err", scrub(err.Error(), s.password))
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return fmt.Errorf("%w: model %q: PostgreSQL at %s aborted the change %d times (concurrent changes); try again: %s",
		ErrConflict, name, s.target, updateAttempts, scrub(err.Error(), s.password))
}

// update is one attempt of Update.
func (s *Store) update(ctx context.Context, name string, fn func(m *registry.Model) ([]registry.Event, error)) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1, $2)", modelLockSpace, modelLockKey(name)); err != nil {
		return err
	}
	m := registry.Model{Name: name}
	var doc []byte
	switch err := tx.QueryRow(ctx, "SELECT doc FROM models WHERE name = $1", name).Scan(&doc); {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return err
	default:
		if m, err = decodeModel(name, doc); err != nil {
			return fnError{err}
		}
	}
	events, err := fn(&m)
	if err != nil {
		return fnError{err}
	}
	if len(events) == 0 {
		return nil
	}
	if err := registry.ValidateModel(m); err != nil {
		return fnError{err}
	}
	var last int64
	if err := tx.QueryRow(ctx, "UPDATE registry_seq SET seq = seq + $1 RETURNING seq", len(events)).Scan(&last); err != nil {
		return err
	}
	first := last - int64(len(events)) + 1
	for i := range events {
		events[i].Seq = uint64(first + int64(i))
		if err := insertEvent(ctx, tx, events[i]); err != nil {
			return err
		}
	}
	mdoc, err := json.Marshal(m)
	if err != nil {
		return fnError{fmt.Errorf("pgstore: encode model %q: %w", name, err)}
	}
	if _, err := tx.Exec(ctx, `INSERT INTO models (name, doc, updated_seq) VALUES ($1, $2, $3)
		ON CONFLICT (name) DO UPDATE SET doc = excluded.doc, updated_seq = excluded.updated_seq`, name, string(mdoc), last); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, "SELECT pg_notify($1, $2)", NotifyChannel, strconv.FormatInt(last, 10)); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		var pe *pgconn.PgError
		if !errors.As(err, &pe) {
			return commitUnknown{err}
		}
		return err
	}
	return nil
}

// commitUnknown is a COMMIT whose answer was lost (the connection broke):
// PostgreSQL may or may not have committed.
type commitUnknown struct{ err error }

func (e commitUnknown) Error() string { return e.err.Error() }
func (e commitUnknown) Unwrap() error { return e.err }

func insertEvent(ctx context.Context, tx pgx.Tx, e registry.Event) error {
	doc, err := json.Marshal(e)
	if err != nil {
		return fnError{fmt.Errorf("pgstore: encode event %d: %w", e.Seq, err)}
	}
	at := e.Time
	if at.IsZero() {
		at = time.Now()
	}
	_, err = tx.Exec(ctx, "INSERT INTO events (seq, model, doc, at) VALUES ($1, $2, $3, $4)", int64(e.Seq), e.Name, string(doc), at)
	return err
}

// Import implements registry.Importer: models and events are committed as
// given, in one transaction, into a store that holds no models and no
// events (else the error wraps ErrConflict). Events keep their Seq, which
// must increase strictly; the store's Seq becomes the last one. Every
// model is checked with registry.ValidateModel first.
func (s *Store) Import(ctx context.Context, models []registry.Model, events []registry.Event) error {
	if err := s.checkOpen(); err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, m := range models {
		if seen[m.Name] {
			return fmt.Errorf("pgstore: import: model %q is given twice", m.Name)
		}
		seen[m.Name] = true
		if err := registry.ValidateModel(m); err != nil {
			return fmt.Errorf("pgstore: import: %w", err)
		}
	}
	var prev uint64
	for i, e := range events {
		if e.Seq <= prev || e.Seq > 1<<63-1 {
			return fmt.Errorf("pgstore: import: event %d has Seq %d after Seq %d; Seqs must increase", i, e.Seq, prev)
		}
		prev = e.Seq
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var seq int64
		if err := tx.QueryRow(ctx, "SELECT seq FROM registry_seq FOR UPDATE").Scan(&seq); err != nil {
			return err
		}
		var nModels, nEvents int64
		if err := tx.QueryRow(ctx, "SELECT (SELECT count(*) FROM models), (SELECT count(*) FROM events)").Scan(&nModels, &nEvents); err != nil {
			return err
		}
		if nModels != 0 || nEvents != 0 || seq != 0 {
			return fnError{fmt.Errorf("%w: pgstore: import into %s: the database already holds %d models and %d events; import only into an empty registry (%w)",
				registry.ErrNotEmpty, s.target, nModels, nEvents, ErrConflict)}
		}
		// COPY: a long history goes in one stream, not a round trip per
		// event.
		lastSeq := map[string]uint64{}
		rows := make([][]any, len(events))
		for i, e := range events {
			doc, err := json.Marshal(e)
			if err != nil {
				return fnError{fmt.Errorf("pgstore: import: encode event %d: %w", e.Seq, err)}
			}
			at := e.Time
			if at.IsZero() {
				at = time.Now()
			}
			rows[i] = []any{int64(e.Seq), e.Name, string(doc), at}
			lastSeq[e.Name] = e.Seq
		}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"events"}, []string{"seq", "model", "doc", "at"}, pgx.CopyFromRows(rows)); err != nil {
			return err
		}
		for _, m := range models {
			doc, err := json.Marshal(m)
			if err != nil {
				return fnError{fmt.Errorf("pgstore: import: encode model %q: %w", m.Name, err)}
			}
			if _, err := tx.Exec(ctx, "INSERT INTO models (name, doc, updated_seq) VALUES ($1, $2, $3)", m.Name, string(doc), int64(lastSeq[m.Name])); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(ctx, "UPDATE registry_seq SET seq = $1", int64(prev)); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "SELECT pg_notify($1, $2)", NotifyChannel, strconv.FormatUint(prev, 10))
		return err
	})
	var fe fnError
	if errors.As(err, &fe) {
		return fe.err
	}
	return s.fail(ctx, "import", err)
}
