package cache

import (
	"sync"
	"time"
)

// BreakerConfig configures the circuit breaker in front of the store.
type BreakerConfig struct {
	// Failures is how many consecutive store failures open the breaker.
	// If zero, 5.
	Failures int
	// Cooldown is how long an open breaker rejects store calls before it
	// lets one probe through. If zero, 2s.
	Cooldown time.Duration
}

// Breaker states, as Stats.Breaker reports them.
const (
	BreakerClosed   = "closed"
	BreakerOpen     = "open"
	BreakerHalfOpen = "half-open"
)

// breaker is a consecutive-failure circuit breaker. Closed: every call
// goes through. Failures in a row open it. Open: calls are refused until
// the cooldown has passed, then exactly one probe goes through (half-open);
// its success closes the breaker, its failure opens it for another
// cooldown.
type breaker struct {
	failures int
	cooldown time.Duration
	now      func() time.Time

	mu       sync.Mutex // guards the fields below
	state    string
	fails    int
	openedAt time.Time
	probing  bool
	opens    int64
}

func newBreaker(cfg BreakerConfig, now func() time.Time) *breaker {
	return &breaker{failures: cfg.Failures, cooldown: cfg.Cooldown, now: now, state: BreakerClosed}
}

// allow reports whether a store call may go ahead. A true answer must be
// followed by exactly one done.
func (b *breaker) allow() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case BreakerClosed:
		return true
	case BreakerOpen:
		if b.now().Sub(b.openedAt) < b.cooldown {
			return false
		}
		b.state = BreakerHalfOpen
		b.probing = true
		return true
	default: // half-open: one probe at a time
		if b.probing {
			return false
		}
		b.probing = true
		return true
	}
}

// done records the outcome of an allowed call. It returns the new state
// if the call changed it, "" otherwise.
func (b *breaker) done(ok bool) (changed string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if ok {
		b.fails = 0
		if b.state == BreakerHalfOpen {
			b.state = BreakerClosed
			b.probing = false
			return BreakerClosed
		}
		return ""
	}
	b.fails++
	switch b.state {
	case BreakerHalfOpen:
		b.probing = false
		b.openLocked()
		return BreakerOpen
	case BreakerClosed:
		if b.fails >= b.failures {
			b.openLocked()
			return BreakerOpen
		}
	}
	return ""
}

// release gives back an allowed call whose outcome says nothing about the
// store (the caller's own context ended).
func (b *breaker) release() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == BreakerHalfOpen {
		b.probing = false
	}
}

func (b *breaker) openLocked() {
	b.state = BreakerOpen
	b.openedAt = b.now()
	b.opens++
}

func (b *breaker) snapshot() (state string, opens int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state, b.opens
}
