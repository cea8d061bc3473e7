package registry

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Leaser is a Store that grants named leases, one holder at a time across
// every process sharing the store: the replicas of a fleet elect the one
// that acts for all of them (the canary autopilot) by contending for a
// lease. MemStore, FileStore and the PostgreSQL store implement it; Elector
// drives one.
//
// A lease expires ttl after it was last taken or renewed, by the store's
// clock (the database's for PostgreSQL, so replicas' clocks do not
// matter; the machine's for the folder store, which is shared on one
// machine only). A holder that stops renewing (killed, cut off) so loses it
// to the next contender after at most ttl.
type Leaser interface {
	// TryAcquire takes the lease name for holder for ttl if it is free,
	// expired or already holder's (then it is renewed), and returns the
	// lease as it stands afterwards: Held tells whether holder holds it
	// now; otherwise Holder is the one who does.
	TryAcquire(ctx context.Context, name, holder string, ttl time.Duration) (Lease, error)
	// Release gives up the lease name if holder holds it, so that another
	// contender can take it at once. It does nothing (and returns nil) if
	// holder does not hold it: nobody can release another's lease.
	Release(ctx context.Context, name, holder string) error
	// ReadLease returns the lease name as it stands, without taking it
	// (Held is false): who leads, until when, at which epoch. Left is 0
	// if the lease expired or was released; a lease never taken is
	// returned with Epoch 0.
	ReadLease(ctx context.Context, name string) (Lease, error)
}

// Lease is the state of a named lease as a Leaser answered.
type Lease struct {
	Name string `json:"name"`
	// Holder holds the lease until Expires; "" if nobody ever took it or
	// its last holder released it.
	Holder string `json:"holder"`
	// Expires is when the lease ends unless renewed, by the store's
	// clock. Compare it only with other times from the same store: use
	// Left to plan against the local clock.
	Expires time.Time `json:"expires"`
	// Left is how long the lease had left when the store answered
	// (Expires minus the store's clock then; 0 if expired or released).
	Left time.Duration `json:"-"`
	// Held reports whether the holder that asked holds the lease now.
	Held bool `json:"-"`
	// Epoch increases each time the lease is taken (not renewed): by a
	// new holder, or by the same holder after it had expired or been
	// released. It is a fencing token: an action tagged with an epoch
	// older than the lease's current one comes from a deposed holder and
	// must be refused.
	Epoch uint64 `json:"epoch"`
}

// ErrInvalidLease marks a lease request with an empty name or holder or a
// ttl that is not positive.
var ErrInvalidLease = errors.New("registry: invalid lease request")

// checkLease validates a TryAcquire or Release request (ttl < 0 skips the
// ttl check, for Release).
func checkLease(name, holder string, ttl time.Duration, acquire bool) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty lease name", ErrInvalidLease)
	case holder == "":
		return fmt.Errorf("%w: lease %q: empty holder", ErrInvalidLease, name)
	case acquire && ttl <= 0:
		return fmt.Errorf("%w: lease %q: ttl %v is not positive", ErrInvalidLease, name, ttl)
	}
	return nil
}

// CheckLeaseRequest returns an error wrapping ErrInvalidLease if name or
// holder is empty or ttl is not positive. Leaser implementations outside
// this package call it first.
func CheckLeaseRequest(name, holder string, ttl time.Duration) error {
	return checkLease(name, holder, ttl, true)
}

// CheckReleaseRequest returns an error wrapping ErrInvalidLease if name or
// holder is empty (ReadLease: pass any holder to check the name).
func CheckReleaseRequest(name, holder string) error {
	return checkLease(name, holder, 0, false)
}

// leaseRec is a lease as the memory and folder stores keep it.
type leaseRec struct {
	Holder  string    `json:"holder"`
	Expires time.Time `json:"expires"`
	Epoch   uint64    `json:"epoch"`
}

// acquireRec applies TryAcquire to rec at time now and returns the new
// record and whether it changed.
func acquireRec(rec leaseRec, holder string, ttl time.Duration, now time.Time) (leaseRec, bool) {
	live := rec.Holder != "" && now.Before(rec.Expires)
	switch {
	case live && rec.Holder == holder:
		rec.Expires = now.Add(ttl)
		return rec, true
	case live:
		return rec, false
	default:
		return leaseRec{Holder: holder, Expires: now.Add(ttl), Epoch: rec.Epoch + 1}, true
	}
}

// leaseOf turns rec into the Lease holder asked about at time now.
func leaseOf(name, holder string, rec leaseRec, now time.Time) Lease {
	l := Lease{Name: name, Holder: rec.Holder, Expires: rec.Expires, Epoch: rec.Epoch}
	if rec.Holder != "" && now.Before(rec.Expires) {
		l.Left = rec.Expires.Sub(now)
		l.Held = holder != "" && rec.Holder == holder
	}
	return l
}

// releaseRec applies Release to rec at time now and reports whether it
// changed.
func releaseRec(rec leaseRec, holder string, now time.Time) (leaseRec, bool) {
	if rec.Holder != holder {
		return rec, false
	}
	rec.Holder = ""
	rec.Expires = now
	return rec, true
}
