package pgstore

import (
	"cmp"
	"context"
	"maps"
	"slices"
	"time"

	"github.com/signalforge/signalforge/route/fleet"
)

// Fleet returns the fleet.Store in this database: the table
// fleet_snapshots, one row per (model, replica). Replicas that share a
// PostgreSQL registry so share their request counters too, with no Redis.
//
// Publish upserts all its snapshots in one statement, with expires = now()
// + TTL by the database's clock, then deletes up to 100 rows that expired
// (skipping rows another transaction holds, so that it never waits and
// never removes a row a publish has just renewed). Snapshots selects the
// model's rows that have not expired. A stored body that does not decode
// is skipped and counted (the returned store has an Invalid() int64
// method), so one bad writer does not blind the judge to the rest of the
// fleet.
//
// The store shares the Store's pool and ends with Close.
func (s *Store) Fleet() fleet.Store { return &fleetStore{s: s} }

type fleetStore struct{ s *Store }

// sweepLimit bounds the expired rows one Publish deletes.
const sweepLimit = 100

// publishFleetSQL upserts the snapshots given as parallel arrays; $5 is
// the TTL in microseconds.
const publishFleetSQL = `
INSERT INTO fleet_snapshots AS f (model, replica, at, expires, body)
SELECT u.model, u.replica, u.at, now() + $5 * interval '1 microsecond', u.body
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::jsonb[]) AS u(model, replica, at, body)
ON CONFLICT (model, replica) DO UPDATE
	SET at = excluded.at, expires = excluded.expires, body = excluded.body`

// sweepFleetSQL deletes some expired rows. FOR UPDATE re-checks expiry on
// the latest version of a row, so a row renewed meanwhile is kept; SKIP
// LOCKED passes over rows a publish is writing.
const sweepFleetSQL = `
DELETE FROM fleet_snapshots WHERE (model, replica) IN (
	SELECT model, replica FROM fleet_snapshots WHERE expires <= now()
	LIMIT $1 FOR UPDATE SKIP LOCKED)`

// Publish implements fleet.Store.
func (f *fleetStore) Publish(ctx context.Context, ttl time.Duration, snaps ...fleet.Snapshot) error {
	if err := fleet.CheckTTL(ttl); err != nil {
		return err
	}
	if err := f.s.checkOpen(); err != nil {
		return err
	}
	type key struct{ model, replica string }
	last := make(map[key]int, len(snaps)) // the last snapshot of a (model, replica) wins
	bodies := make([][]byte, len(snaps))
	for i, sn := range snaps {
		b, err := fleet.Encode(sn)
		if err != nil {
			return err
		}
		bodies[i] = b
		last[key{sn.Model, sn.Replica}] = i
	}
	if err := ctx.Err(); err != nil || len(last) == 0 {
		return err
	}
	// Rows are written in key order: two publishes of overlapping rows
	// take their locks in the same order and cannot deadlock.
	keys := slices.SortedFunc(maps.Keys(last), func(a, b key) int {
		return cmp.Or(cmp.Compare(a.model, b.model), cmp.Compare(a.replica, b.replica))
	})
	models, replicas := make([]string, len(keys)), make([]string, len(keys))
	ats, docs := make([]time.Time, len(keys)), make([][]byte, len(keys))
	for i, k := range keys {
		sn := snaps[last[k]]
		models[i], replicas[i], ats[i], docs[i] = sn.Model, sn.Replica, sn.At, bodies[last[k]]
	}
	if _, err := f.s.pool.Exec(ctx, publishFleetSQL, models, replicas, ats, docs, ttl.Microseconds()); err != nil {
		return f.s.fail(ctx, "publish fleet snapshots", err)
	}
	// A separate statement: holding the deleted rows' locks while
	// upserting could deadlock two publishers.
	if _, err := f.s.pool.Exec(ctx, sweepFleetSQL, sweepLimit); err != nil && ctx.Err() == nil {
		f.s.log.Warn("pgstore: deleting expired fleet snapshots", "err", f.s.fail(ctx, "sweep", err))
	}
	return nil
}

// Snapshots implements fleet.Store.
func (f *fleetStore) Snapshots(ctx context.Context, model string) ([]fleet.Snapshot, error) {
	if err := f.s.checkOpen(); err != nil {
		return nil, err
	}
	rows, err := f.s.pool.Query(ctx, `SELECT replica, body FROM fleet_snapshots WHERE model = $1 AND expires > now()`, model)
	if err != nil {
		return nil, f.s.fail(ctx, "read the fleet snapshots of "+model, err)
	}
	defer rows.Close()
	var out []fleet.Snapshot
	for rows.Next() {
		var replica string
		var body []byte
		if err := rows.Scan(&replica, &body); err != nil {
			return nil, f.s.fail(ctx, "read the fleet snapshots of "+model, err)
		}
		sn, err := fleet.Decode(body)
		if err != nil || sn.Model != model || sn.Replica != replica {
			f.s.fleetInvalid.Add(1)
			continue
		}
		out = append(out, sn)
	}
	if err := rows.Err(); err != nil {
		return nil, f.s.fail(ctx, "read the fleet snapshots of "+model, err)
	}
	return out, nil
}

// Invalid returns how many stored fleet snapshots Snapshots skipped (of
// every Fleet of the Store) because they did not decode or were not in
// their own row.
func (f *fleetStore) Invalid() int64 { return f.s.fleetInvalid.Load() }
