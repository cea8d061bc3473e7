package registrytest

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/signalforge/signalforge/registry"
)

// runLeases checks a store that implements registry.Leaser, with holders
// on two handles (as two processes): one holder at a time; renewal keeps
// the lease and its epoch; expiry and release hand it over and increase
// the epoch; nobody releases another's lease; contenders racing for a free
// lease get it once; ReadLease reports the lease without taking it.
func runLeases(t *testing.T, open func(t *testing.T) (registry.Store, Opener)) {
	ctx := context.Background()
	s, _ := open(t)
	if _, ok := s.(registry.Leaser); !ok {
		return
	}
	// two returns leasers on two handles of fresh storage.
	two := func(t *testing.T) (a, b registry.Leaser) {
		s, o := open(t)
		s2 := o(t)
		t.Cleanup(func() { s2.Close() })
		return s.(registry.Leaser), s2.(registry.Leaser)
	}
	acquire := func(t *testing.T, l registry.Leaser, name, holder string, ttl time.Duration) registry.Lease {
		t.Helper()
		got, err := l.TryAcquire(ctx, name, holder, ttl)
		if err != nil {
			t.Fatalf("TryAcquire(%s, %s): %v", name, holder, err)
		}
		if got.Name != name {
			t.Fatalf("TryAcquire(%s, %s) = %+v: wrong name", name, holder, got)
		}
		return got
	}
	const long = time.Minute

	t.Run("LeaseOneHolderAtATime", func(t *testing.T) {
		a, b := two(t)
		la := acquire(t, a, "autopilot", "A", long)
		if !la.Held || la.Holder != "A" || la.Epoch == 0 || la.Left <= 0 || la.Left > long {
			t.Fatalf("first TryAcquire = %+v; want held by A, epoch > 0, 0 < Left <= %v", la, long)
		}
		lb := acquire(t, b, "autopilot", "B", long)
		if lb.Held || lb.Holder != "A" || lb.Epoch != la.Epoch || !lb.Expires.Equal(la.Expires) {
			t.Fatalf("B's TryAcquire of A's lease = %+v; want not held, holder A, epoch %d, expiry %v", lb, la.Epoch, la.Expires)
		}
		if r, err := b.ReadLease(ctx, "autopilot"); err != nil || r.Held || r.Holder != "A" || r.Epoch != la.Epoch || !r.Expires.Equal(la.Expires) || r.Left <= 0 {
			t.Fatalf("ReadLease = %+v, %v; want A's lease at epoch %d, not held by the reader", r, err, la.Epoch)
		}
		if r, err := b.ReadLease(ctx, "never"); err != nil || r.Name != "never" || r.Holder != "" || r.Epoch != 0 || r.Held || r.Left != 0 {
			t.Fatalf("ReadLease of a lease never taken = %+v, %v; want empty, epoch 0", r, err)
		}
		if r, _ := b.ReadLease(ctx, "never"); r.Epoch != 0 {
			t.Fatalf("ReadLease took the lease: %+v", r)
		}
		// Renewal keeps the lease and its epoch and moves the expiry on.
		time.Sleep(5 * time.Millisecond)
		renewed := acquire(t, a, "autopilot", "A", long)
		if !renewed.Held || renewed.Epoch != la.Epoch || !renewed.Expires.After(la.Expires) {
			t.Fatalf("renewal = %+v after %+v; want held, same epoch, later expiry", renewed, la)
		}
		// Another name is another lease.
		if other := acquire(t, b, "other", "B", long); !other.Held {
			t.Fatalf("B's TryAcquire of a free lease = %+v; want held", other)
		}
		if lb := acquire(t, b, "autopilot", "B", long); lb.Held {
			t.Fatalf("B took A's live lease: %+v", lb)
		}
	})

	t.Run("LeaseReleaseHandsOver", func(t *testing.T) {
		a, b := two(t)
		la := acquire(t, a, "autopilot", "A", long)
		// B cannot release A's lease.
		if err := b.Release(ctx, "autopilot", "B"); err != nil {
			t.Fatalf("B's Release of A's lease: %v; want nil (nothing to do)", err)
		}
		if lb := acquire(t, b, "autopilot", "B", long); lb.Held || lb.Holder != "A" {
			t.Fatalf("after B's Release, B's TryAcquire = %+v; want A still holding", lb)
		}
		if err := a.Release(ctx, "autopilot", "A"); err != nil {
			t.Fatal(err)
		}
		if r, err := b.ReadLease(ctx, "autopilot"); err != nil || r.Holder != "" || r.Left != 0 || r.Epoch != la.Epoch {
			t.Fatalf("ReadLease after the release = %+v, %v; want free at epoch %d", r, err, la.Epoch)
		}
		lb := acquire(t, b, "autopilot", "B", long)
		if !lb.Held || lb.Holder != "B" || lb.Epoch != la.Epoch+1 {
			t.Fatalf("after A's Release, B's TryAcquire = %+v; want held at epoch %d", lb, la.Epoch+1)
		}
		if la := acquire(t, a, "autopilot", "A", long); la.Held || la.Holder != "B" {
			t.Fatalf("A's TryAcquire of B's lease = %+v; want not held, holder B", la)
		}
		// A released lease taken again by its old holder is a new term.
		if err := b.Release(ctx, "autopilot", "B"); err != nil {
			t.Fatal(err)
		}
		if again := acquire(t, b, "autopilot", "B", long); !again.Held || again.Epoch != lb.Epoch+1 {
			t.Fatalf("B's TryAcquire after its own Release = %+v; want held at epoch %d", again, lb.Epoch+1)
		}
	})

	t.Run("LeaseExpiryHandsOver", func(t *testing.T) {
		a, b := two(t)
		const ttl = 300 * time.Millisecond
		la := acquire(t, a, "autopilot", "A", ttl)
		if !la.Held {
			t.Fatalf("TryAcquire = %+v; want held", la)
		}
		if lb := acquire(t, b, "autopilot", "B", long); lb.Held {
			t.Fatalf("B took A's live lease: %+v", lb)
		}
		time.Sleep(la.Left + 50*time.Millisecond) // A stops renewing
		if r, err := b.ReadLease(ctx, "autopilot"); err != nil || r.Left != 0 || r.Epoch != la.Epoch {
			t.Fatalf("ReadLease after the expiry = %+v, %v; want no time left, epoch %d", r, err, la.Epoch)
		}
		lb := acquire(t, b, "autopilot", "B", long)
		if !lb.Held || lb.Holder != "B" || lb.Epoch != la.Epoch+1 {
			t.Fatalf("after A's lease expired, B's TryAcquire = %+v; want held at epoch %d", lb, la.Epoch+1)
		}
		// The deposed holder's renewal fails: it has lost the lease.
		if late := acquire(t, a, "autopilot", "A", ttl); late.Held || late.Holder != "B" || late.Epoch != lb.Epoch {
			t.Fatalf("A's late renewal = %+v; want not held, holder B at epoch %d", late, lb.Epoch)
		}
		// An expired lease renewed by its own holder is a new term too:
		// others may have acted on its expiry meanwhile.
		short := acquire(t, b, "autopilot", "B", ttl)
		time.Sleep(short.Left + 50*time.Millisecond)
		if again := acquire(t, b, "autopilot", "B", long); !again.Held || again.Epoch != lb.Epoch+1 {
			t.Fatalf("B's TryAcquire after its lease expired = %+v; want held at epoch %d", again, lb.Epoch+1)
		}
	})

	t.Run("LeaseContendersRaceOnce", func(t *testing.T) {
		a, b := two(t)
		const n = 8
		var wg sync.WaitGroup
		got := make([]registry.Lease, 2*n)
		errs := make([]error, 2*n)
		start := make(chan struct{})
		for i := range got {
			l := a
			if i%2 == 1 {
				l = b
			}
			wg.Go(func() {
				<-start
				got[i], errs[i] = l.TryAcquire(ctx, "autopilot", string(rune('a'+i)), long)
			})
		}
		close(start)
		wg.Wait()
		held := 0
		for i, l := range got {
			if errs[i] != nil {
				t.Fatalf("contender %d: %v", i, errs[i])
			}
			if l.Held {
				held++
			}
			if l.Epoch != 1 {
				t.Errorf("contender %d saw epoch %d; want 1 (taken once)", i, l.Epoch)
			}
		}
		if held != 1 {
			t.Fatalf("%d contenders hold the lease; want exactly 1: %+v", held, got)
		}
	})

	t.Run("LeaseRefusesBadRequests", func(t *testing.T) {
		a, _ := two(t)
		for _, c := range []struct {
			name, holder string
			ttl          time.Duration
		}{{"", "A", long}, {"x", "", long}, {"x", "A", 0}, {"x", "A", -time.Second}} {
			if _, err := a.TryAcquire(ctx, c.name, c.holder, c.ttl); !errors.Is(err, registry.ErrInvalidLease) {
				t.Errorf("TryAcquire(%q, %q, %v) error = %v; want ErrInvalidLease", c.name, c.holder, c.ttl, err)
			}
		}
		if err := a.Release(ctx, "x", ""); !errors.Is(err, registry.ErrInvalidLease) {
			t.Errorf("Release with an empty holder: error = %v; want ErrInvalidLease", err)
		}
		if _, err := a.ReadLease(ctx, ""); !errors.Is(err, registry.ErrInvalidLease) {
			t.Errorf("ReadLease of an empty name: error = %v; want ErrInvalidLease", err)
		}
	})
}
