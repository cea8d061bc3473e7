package route

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestCountersMatchStats(t *testing.T) {
	r := newRouter(t, Config{})
	nan := fmt.Errorf("model produced NaN: %w", ErrNonFinite)
	for i := range 300 {
		var err error
		switch {
		case i%30 == 0:
			err = nan
		case i%10 == 0:
			err = errors.New("boom")
		}
		r.Record("m", "v2", time.Duration(i+1)*100*time.Microsecond, err)
	}
	r.Record("m", "v1", time.Millisecond, nil)

	all := r.Counters()
	if len(all) != 2 || all[0].Version != "v1" || all[1].Version != "v2" {
		t.Fatalf("Counters() = %d entries %+v, want m:v1 then m:v2", len(all), all)
	}
	c := all[1].Counters
	if c.Requests != 300 || c.Errors != 30 || c.NonFinite != 10 {
		t.Errorf("requests/errors/non-finite = %d/%d/%d, want 300/30/10", c.Requests, c.Errors, c.NonFinite)
	}
	if len(c.Hist) != HistBuckets {
		t.Fatalf("len(Hist) = %d, want %d", len(c.Hist), HistBuckets)
	}
	var sum uint64
	for _, n := range c.Hist {
		sum += n
	}
	if sum != 300 {
		t.Errorf("histogram holds %d requests, want 300", sum)
	}
	st, _ := r.VersionStats("m", "v2")
	if got := c.Metrics(); got != st.Total {
		t.Errorf("Counters.Metrics() = %+v, VersionStats.Total = %+v", got, st.Total)
	}
	if (Counters{}).Metrics() != (Metrics{}) {
		t.Error("zero Counters do not give zero Metrics")
	}
}

func TestHistBounds(t *testing.T) {
	prevHi := time.Duration(0)
	for i := range HistBuckets {
		lo, hi := HistBounds(i)
		if lo != prevHi || hi <= lo {
			t.Fatalf("bucket %d = [%v, %v), previous ended at %v", i, lo, hi, prevHi)
		}
		if HistBucket(lo) != i || HistBucket(min(hi-1, 1000*time.Hour)) != i {
			t.Fatalf("bucket %d = [%v, %v) but HistBucket(lo) = %d, HistBucket(hi-1) = %d",
				i, lo, hi, HistBucket(lo), HistBucket(hi-1))
		}
		if v := histValue(i); v < lo || v >= hi {
			t.Fatalf("bucket %d midpoint %v outside [%v, %v)", i, v, lo, hi)
		}
		prevHi = hi
	}
}
