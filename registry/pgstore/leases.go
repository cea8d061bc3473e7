package pgstore

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/signalforge/signalforge/registry"
)

var _ registry.Leaser = (*Store)(nil)

// acquireSQL takes or renews a lease in one statement, by the database's
// clock: the row is written only if the lease is free, expired or already
// the holder's; the epoch increases unless it is a renewal. The primary
// key serializes contenders, so two can never both be told they hold it.
const acquireSQL = `
INSERT INTO leases AS l (name, holder, expires_at, epoch)
VALUES ($1, $2, now() + $3 * interval '1 microsecond', 1)
ON CONFLICT (name) DO UPDATE
	SET holder = excluded.holder,
	    expires_at = excluded.expires_at,
	    epoch = CASE WHEN l.holder = excluded.holder AND l.expires_at > now() THEN l.epoch ELSE l.epoch + 1 END
	WHERE l.holder = excluded.holder OR l.holder = '' OR l.expires_at <= now()
RETURNING holder, expires_at, epoch, (extract(epoch FROM greatest(expires_at - now(), interval '0')) * 1000000)::bigint`

// currentSQL reads a lease (ReadLease, or another holder's in TryAcquire).
const currentSQL = `
SELECT holder, expires_at, epoch, (extract(epoch FROM greatest(expires_at - now(), interval '0')) * 1000000)::bigint
FROM leases WHERE name = $1`

// TryAcquire implements registry.Leaser (see the leases table).
func (s *Store) TryAcquire(ctx context.Context, name, holder string, ttl time.Duration) (registry.Lease, error) {
	if err := registry.CheckLeaseRequest(name, holder, ttl); err != nil {
		return registry.Lease{}, err
	}
	if err := s.checkOpen(); err != nil {
		return registry.Lease{}, err
	}
	l := registry.Lease{Name: name}
	var epoch, leftMicros int64
	scan := func(row pgx.Row) error { return row.Scan(&l.Holder, &l.Expires, &epoch, &leftMicros) }
	err := scan(s.pool.QueryRow(ctx, acquireSQL, name, holder, ttl.Microseconds()))
	if errors.Is(err, pgx.ErrNoRows) {
		// Another holder's live lease: report it. (It may have changed
		// since; the answer is a snapshot either way.)
		err = scan(s.pool.QueryRow(ctx, currentSQL, name))
	}
	if err != nil {
		return registry.Lease{}, s.fail(ctx, "lease "+name, err)
	}
	l.Epoch = uint64(epoch)
	if l.Holder != "" {
		l.Left = time.Duration(leftMicros) * time.Microsecond
	}
	l.Held = l.Holder == holder && l.Left > 0
	return l, nil
}

// ReadLease implements registry.Leaser.
func (s *Store) ReadLease(ctx context.Context, name string) (registry.Lease, error) {
	if err := registry.CheckReleaseRequest(name, "-"); err != nil {
		return registry.Lease{}, err
	}
	if err := s.checkOpen(); err != nil {
		return registry.Lease{}, err
	}
	l := registry.Lease{Name: name}
	var epoch, leftMicros int64
	err := s.pool.QueryRow(ctx, currentSQL, name).Scan(&l.Holder, &l.Expires, &epoch, &leftMicros)
	if errors.Is(err, pgx.ErrNoRows) {
		return l, nil
	}
	if err != nil {
		return registry.Lease{}, s.fail(ctx, "read lease "+name, err)
	}
	l.Epoch = uint64(epoch)
	if l.Holder != "" {
		l.Left = time.Duration(leftMicros) * time.Microsecond
	}
	return l, nil
}

// Release implements registry.Leaser. A release NOTIFYs NotifyChannel
// (payload "lease NAME"), which wakes the other contenders' Electors.
func (s *Store) Release(ctx context.Context, name, holder string) error {
	if err := registry.CheckReleaseRequest(name, holder); err != nil {
		return err
	}
	if err := s.checkOpen(); err != nil {
		return err
	}
	// The notification wakes the contenders waiting on Changed, so that
	// one takes over at once.
	_, err := s.pool.Exec(ctx, `
WITH released AS (
	UPDATE leases SET holder = '', expires_at = now() WHERE name = $1 AND holder = $2 RETURNING name
)
SELECT pg_notify($3, 'lease ' || name) FROM released`, name, holder, NotifyChannel)
	return s.fail(ctx, "release lease "+name, err)
}
