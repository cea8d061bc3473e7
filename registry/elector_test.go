package registry_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/signalforge/signalforge/registry"
)

// newElector starts an elector whose changes arrive on the returned channel.
func newElector(t *testing.T, cfg registry.ElectorConfig) (*registry.Elector, <-chan registry.Leadership) {
	t.Helper()
	ch := make(chan registry.Leadership, 16)
	cfg.OnChange = func(l registry.Leadership) { ch <- l }
	e, err := registry.NewElector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e, ch
}

// next returns the next change, failing the test if none comes (the bound
// only keeps a broken elector from hanging the test).
func next(t *testing.T, who string, ch <-chan registry.Leadership) registry.Leadership {
	t.Helper()
	select {
	case l := <-ch:
		return l
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: no leadership change", who)
		return registry.Leadership{}
	}
}

// TestElectorOneLeaderAndCloseHandsOver: of two contenders one leads while
// the other keeps trying; closing the leader releases the lease, so the
// other takes over at once (the lease lasts a minute: only the release can
// hand it over within the test) with the next epoch.
func TestElectorOneLeaderAndCloseHandsOver(t *testing.T) {
	s := registry.NewMemStore()
	defer s.Close()
	cfg := registry.ElectorConfig{Leaser: s, TTL: time.Minute, Renew: 10 * time.Millisecond}
	cfg.Holder = "A"
	a, aCh := newElector(t, cfg)
	if l := next(t, "A", aCh); !l.Leader || l.Epoch != 1 {
		t.Fatalf("A's first change = %+v; want leader at epoch 1", l)
	}
	cfg.Holder = "B"
	b, bCh := newElector(t, cfg)
	for b.Stats().Attempts < 5 { // B keeps trying and keeps failing
		time.Sleep(5 * time.Millisecond)
	}
	if st := b.Stats(); st.Leader || b.IsLeader() || st.CurrentHolder != "A" || st.Terms != 0 {
		t.Fatalf("B while A leads: %+v", st)
	}
	if !a.IsLeader() || a.Stats().Terms != 1 {
		t.Fatalf("A's stats while leading: %+v", a.Stats())
	}
	a.Close()
	if l := next(t, "A", aCh); l.Leader {
		t.Fatalf("A's change on Close = %+v; want stepped down", l)
	}
	if a.IsLeader() {
		t.Fatal("A still leader after Close")
	}
	if l := next(t, "B", bCh); !l.Leader || l.Epoch != 2 {
		t.Fatalf("B's change after A closed = %+v; want leader at epoch 2", l)
	}
	if st := b.Stats(); !st.Leader || st.Epoch != 2 || st.CurrentHolder != "B" || st.Terms != 1 {
		t.Fatalf("B's stats after taking over: %+v", st)
	}
}

// cutLeaser is a Leaser whose link to the store can be cut, as a leader
// partitioned from the database (or frozen) would be.
type cutLeaser struct {
	registry.Leaser
	cut atomic.Bool
}

var errCut = errors.New("cut off")

func (c *cutLeaser) Release(ctx context.Context, name, holder string) error {
	if c.cut.Load() {
		return errCut
	}
	return c.Leaser.Release(ctx, name, holder)
}

func (c *cutLeaser) TryAcquire(ctx context.Context, name, holder string, ttl time.Duration) (registry.Lease, error) {
	if c.cut.Load() {
		return registry.Lease{}, errCut
	}
	return c.Leaser.TryAcquire(ctx, name, holder, ttl)
}

// TestElectorLeaderCutOffStepsDownBeforeTakeover: a leader that can no
// longer renew stops being leader when its lease runs out, and by the time
// another contender takes the lease (after it expired in the store) the old
// leader no longer reports itself leader: never two leaders.
func TestElectorLeaderCutOffStepsDownBeforeTakeover(t *testing.T) {
	s := registry.NewMemStore()
	defer s.Close()
	link := &cutLeaser{Leaser: s}
	a, aCh := newElector(t, registry.ElectorConfig{Leaser: link, Holder: "A", TTL: 300 * time.Millisecond, Renew: 50 * time.Millisecond})
	if l := next(t, "A", aCh); !l.Leader {
		t.Fatalf("A's first change = %+v; want leader", l)
	}
	aLeadsWhenBTakesOver := make(chan bool, 1)
	b, err := registry.NewElector(registry.ElectorConfig{Leaser: s, Holder: "B", TTL: 300 * time.Millisecond, Renew: 50 * time.Millisecond,
		OnChange: func(l registry.Leadership) {
			if l.Leader {
				select {
				case aLeadsWhenBTakesOver <- a.IsLeader():
				default: // only the first term matters
				}
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	link.cut.Store(true)
	if l := next(t, "A", aCh); l.Leader {
		t.Fatalf("A's change after being cut off = %+v; want stepped down", l)
	}
	select {
	case both := <-aLeadsWhenBTakesOver:
		if both {
			t.Fatal("A still reported itself leader when B took over")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("B never took over")
	}
	if st := b.Stats(); st.Epoch != 2 {
		t.Fatalf("B's epoch = %d; want 2", st.Epoch)
	}
	if st := a.Stats(); st.Errors == 0 || st.LastError == "" || st.Leader {
		t.Fatalf("A's stats after being cut off: %+v; want errors counted, not leader", st)
	}
}

// TestElectorZeroConfig: only a Leaser given, the elector leads under the
// "autopilot" lease with a 10 s TTL and a generated holder name, and
// Close (twice) leaves the lease free for anyone.
func TestElectorZeroConfig(t *testing.T) {
	s := registry.NewMemStore()
	defer s.Close()
	e, ch := newElector(t, registry.ElectorConfig{Leaser: s})
	if l := next(t, "elector", ch); !l.Leader {
		t.Fatalf("first change = %+v; want leader", l)
	}
	st := e.Stats()
	if st.Name != "autopilot" || st.TTL != 10*time.Second || st.Holder == "" || st.Holder != e.Holder() || st.CurrentHolder != st.Holder {
		t.Fatalf("Stats = %+v", st)
	}
	if l, _ := s.TryAcquire(context.Background(), "autopilot", "other", time.Minute); l.Held {
		t.Fatalf("another holder took the elector's lease: %+v", l)
	}
	e.Close()
	e.Close()
	if l, err := s.TryAcquire(context.Background(), "autopilot", "other", time.Minute); err != nil || !l.Held {
		t.Fatalf("after Close, TryAcquire by another = %+v, %v; want held (released)", l, err)
	}
}

func TestElectorRefusesBadConfig(t *testing.T) {
	s := registry.NewMemStore()
	defer s.Close()
	for _, c := range []struct {
		name string
		cfg  registry.ElectorConfig
	}{
		{"no leaser", registry.ElectorConfig{}},
		{"negative TTL", registry.ElectorConfig{Leaser: s, TTL: -time.Second}},
		{"negative Renew", registry.ElectorConfig{Leaser: s, Renew: -time.Second}},
		{"Renew not below TTL", registry.ElectorConfig{Leaser: s, TTL: time.Second, Renew: time.Second}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if e, err := registry.NewElector(c.cfg); err == nil {
				e.Close()
				t.Fatal("NewElector accepted it")
			}
		})
	}
}

// TestElectorKilledLeaderReplacedWithinTTL (in virtual time): with the
// default 10 s lease, a leader that vanishes without releasing (its link
// cut, as a SIGKILL or a lost machine leaves it) is replaced within the
// TTL, at the next epoch, and had stopped reporting itself leader before.
func TestElectorKilledLeaderReplacedWithinTTL(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := registry.NewMemStore()
		defer s.Close()
		link := &cutLeaser{Leaser: s}
		type change struct {
			who string
			l   registry.Leadership
			at  time.Time
		}
		changes := make(chan change, 16)
		elect := func(l registry.Leaser, holder string) *registry.Elector {
			e, err := registry.NewElector(registry.ElectorConfig{Leaser: l, Holder: holder,
				OnChange: func(l registry.Leadership) { changes <- change{holder, l, time.Now()} }})
			if err != nil {
				t.Fatal(err)
			}
			return e
		}
		a := elect(link, "A")
		defer a.Close()
		synctest.Wait()
		if c := <-changes; c.who != "A" || !c.l.Leader {
			t.Fatalf("first change %+v; want A leader", c)
		}
		b := elect(s, "B")
		defer b.Close()
		time.Sleep(25 * time.Second) // many renewals
		synctest.Wait()
		if len(changes) != 0 || !a.IsLeader() || b.IsLeader() {
			t.Fatalf("while A lives: %d changes, A leader %v, B leader %v", len(changes), a.IsLeader(), b.IsLeader())
		}
		link.cut.Store(true)
		killed := time.Now()
		down, up := <-changes, <-changes
		if down.who != "A" || down.l.Leader {
			t.Fatalf("first change after the kill %+v; want A stepping down", down)
		}
		if up.who != "B" || !up.l.Leader || up.l.Epoch != 2 {
			t.Fatalf("second change after the kill %+v; want B leader at epoch 2", up)
		}
		took := up.at.Sub(killed)
		if took > 10*time.Second {
			t.Fatalf("B took over %v after the kill; want within the 10 s TTL", took)
		}
		t.Logf("takeover %v after the kill (virtual time)", took)
		if down.at.After(up.at) {
			t.Fatalf("A stepped down at %v, after B took over at %v", down.at, up.at)
		}
	})
}
