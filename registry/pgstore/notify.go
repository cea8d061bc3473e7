package pgstore

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/signalforge/signalforge/registry"
)

var _ registry.Notifier = (*Store)(nil)

const (
	// listenCheck is how long the listener waits for a notification
	// before it pings its connection: a database that vanished without
	// closing the connection (a lost machine, a cut network) is so
	// noticed within listenCheck plus the ping's timeout.
	listenCheck = 15 * time.Second
	// listenTimeout bounds connecting, LISTEN and each ping.
	listenTimeout = 5 * time.Second
	// listenBackoffMin and listenBackoffMax bound the wait between two
	// reconnection attempts (doubling from the first to the second).
	listenBackoffMin = 50 * time.Millisecond
	listenBackoffMax = 2 * time.Second
)

// Changed implements registry.Notifier: the returned channel is closed when
// PostgreSQL delivers a NotifyChannel notification (any process's commit,
// this one's included), when the listening connection breaks or an attempt
// to reconnect fails (at most every 2 s: the caller's next read tells it
// whether the database is down), and when the connection is established
// again (the notifications sent meanwhile are lost, so the caller must read
// Seq again — which it does on any close).
//
// The first call starts the listener: one goroutine per Store that holds a
// connection of its own (outside the pool, one more per process) in LISTEN
// and reconnects with backoff when it breaks; Close stops it and waits for
// it. Stores that are never watched (the CLI) never open it.
func (s *Store) Changed() <-chan struct{} {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	if s.changed == nil {
		s.changed = make(chan struct{})
	}
	if s.stopListen == nil && !s.closed.Load() {
		ctx, cancel := context.WithCancel(context.Background())
		s.stopListen, s.listenDone = cancel, make(chan struct{})
		go s.listen(ctx, s.listenDone)
	}
	return s.changed
}

// broadcast wakes every caller waiting on Changed.
func (s *Store) broadcast() {
	s.lmu.Lock()
	if s.changed != nil {
		close(s.changed)
	}
	s.changed = make(chan struct{})
	s.lmu.Unlock()
}

// stopListener stops the listener, if it runs, and waits for it.
func (s *Store) stopListener() {
	s.lmu.Lock()
	stop, done := s.stopListen, s.listenDone
	s.lmu.Unlock()
	if stop != nil {
		stop()
		<-done
	}
}

// listenConfig derives the listener's connection settings from the pool's:
// a cancelled ctx ends a wait by a read deadline on the socket (the
// connection stays usable, and Close need not reach the server).
func listenConfig(pool *pgx.ConnConfig) *pgx.ConnConfig {
	c := pool.Copy()
	c.BuildContextWatcherHandler = func(pc *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.DeadlineContextWatcherHandler{Conn: pc.Conn()}
	}
	return c
}

// listen is the listener's loop, the only user of its connection: connect
// and LISTEN, broadcast (changes may have been missed before), broadcast on
// every notification; when the connection breaks or cannot be made,
// broadcast (the watchers then find out whether the database is down),
// wait, reconnect. A break and a recovery are logged once each, not every
// attempt.
func (s *Store) listen(ctx context.Context, done chan<- struct{}) {
	defer close(done)
	wait := listenBackoffMin
	retry := time.NewTimer(0)
	<-retry.C
	defer retry.Stop()
	broken := false // since the last connection broke, until one works again
	for {
		conn, err := s.listenConn(ctx)
		if err == nil {
			if broken {
				s.log.Info("pgstore: listening for registry changes again", "database", s.target)
				broken = false
			}
			wait = listenBackoffMin
			s.broadcast()
			err = s.waitNotifications(ctx, conn)
			cctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = conn.Close(cctx)
			cancel()
		}
		if ctx.Err() != nil {
			return
		}
		if !broken {
			s.log.Warn("pgstore: lost the registry's change notifications; reconnecting (watches poll meanwhile)",
				"database", s.target, "err", scrub(err.Error(), s.password))
			broken = true
		}
		// On every failed attempt, not only the first: a watch that read
		// the store successfully just before it went down learns of the
		// outage on its next read, at most listenBackoffMax later.
		s.broadcast()
		retry.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-retry.C:
		}
		wait = min(2*wait, listenBackoffMax)
	}
}

// listenConn opens the listener's connection and LISTENs on NotifyChannel.
func (s *Store) listenConn(ctx context.Context) (*pgx.Conn, error) {
	cctx, cancel := context.WithTimeout(ctx, listenTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(cctx, s.listenCfg.Copy())
	if err != nil {
		return nil, err
	}
	if _, err := conn.Exec(cctx, "LISTEN "+NotifyChannel); err != nil {
		_ = conn.Close(cctx)
		return nil, err
	}
	return conn, nil
}

// waitNotifications broadcasts each notification conn receives until conn
// breaks (its error is returned) or ctx is done. Every listenCheck without
// a notification it pings the server.
func (s *Store) waitNotifications(ctx context.Context, conn *pgx.Conn) error {
	for {
		wctx, cancel := context.WithTimeout(ctx, listenCheck)
		_, err := conn.WaitForNotification(wctx)
		timedOut := wctx.Err() != nil
		cancel()
		switch {
		case err == nil:
			s.broadcast()
			continue
		case ctx.Err() != nil:
			return ctx.Err()
		case !timedOut || conn.IsClosed():
			return err
		}
		pctx, cancel := context.WithTimeout(ctx, listenTimeout)
		err = conn.Ping(pctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return errors.Join(errors.New("ping after a quiet period failed"), err)
		}
	}
}
