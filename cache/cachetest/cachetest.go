// Package cachetest is the conformance suite every cache.Store must pass:
//
//	func TestConformance(t *testing.T) {
//		cachetest.Run(t, func(t *testing.T) cache.Store { return newStore(t) })
//	}
//
// newStore must return an empty store; Run closes it. The same pattern
// table runs against every store, so a store that matches glob patterns
// itself (memory) is checked against the semantics of a real Redis.
package cachetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/signalforge/signalforge/cache"
)

// Run runs the conformance suite against stores made by newStore.
func Run(t *testing.T, newStore func(t *testing.T) cache.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s cache.Store)
	}{
		{"GetMissing", testGetMissing},
		{"SetGet", testSetGet},
		{"Overwrite", testOverwrite},
		{"NoAliasing", testNoAliasing},
		{"TTLExpires", testTTLExpires},
		{"NoTTLPersists", testNoTTLPersists},
		{"SetNX", testSetNX},
		{"Delete", testDelete},
		{"ScanPatterns", testScanPatterns},
		{"ScanBatchesAndDelete", testScanBatchesAndDelete},
		{"ScanStopsOnError", testScanStopsOnError},
		{"Concurrent", testConcurrent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t)
			t.Cleanup(func() {
				if err := s.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			tt.fn(t, s)
		})
	}
}

func mustSet(t *testing.T, s cache.Store, key string, value []byte, ttl time.Duration) {
	t.Helper()
	if err := s.Set(context.Background(), key, value, ttl); err != nil {
		t.Fatalf("Set(%q): %v", key, err)
	}
}

func mustGet(t *testing.T, s cache.Store, key string) []byte {
	t.Helper()
	b, err := s.Get(context.Background(), key)
	if err != nil {
		t.Fatalf("Get(%q): %v", key, err)
	}
	return b
}

func wantMissing(t *testing.T, s cache.Store, key string) {
	t.Helper()
	if b, err := s.Get(context.Background(), key); !errors.Is(err, cache.ErrNotFound) {
		t.Fatalf("Get(%q) = %q, %v; want ErrNotFound", key, b, err)
	}
}

func testGetMissing(t *testing.T, s cache.Store) {
	wantMissing(t, s, "ct:missing")
}

func testSetGet(t *testing.T, s cache.Store) {
	values := map[string][]byte{
		"ct:empty":                {},
		"ct:binary":               {0, 1, 2, 0xff, 0, '\r', '\n'},
		"ct:big":                  bytes.Repeat([]byte("0123456789abcdef"), 64<<10/16),
		"ct:colons:a:b:c:ünïcode": []byte("text"),
	}
	for k, v := range values {
		mustSet(t, s, k, v, time.Minute)
	}
	for k, v := range values {
		if got := mustGet(t, s, k); !bytes.Equal(got, v) {
			t.Errorf("Get(%q) = %d bytes, want the %d bytes set", k, len(got), len(v))
		}
	}
}

func testOverwrite(t *testing.T, s cache.Store) {
	mustSet(t, s, "ct:k", []byte("one"), time.Minute)
	mustSet(t, s, "ct:k", []byte("two"), time.Minute)
	if got := mustGet(t, s, "ct:k"); string(got) != "two" {
		t.Fatalf("after overwrite Get = %q, want %q", got, "two")
	}
}

func testNoAliasing(t *testing.T, s cache.Store) {
	v := []byte("original")
	mustSet(t, s, "ct:k", v, time.Minute)
	copy(v, "XXXXXXXX")
	got := mustGet(t, s, "ct:k")
	if string(got) != "original" {
		t.Fatalf("store kept a reference to the caller's value: Get = %q", got)
	}
	copy(got, "YYYYYYYY")
	if again := mustGet(t, s, "ct:k"); string(again) != "original" {
		t.Fatalf("store returned its own buffer: Get after modifying the last result = %q", again)
	}
}

func testTTLExpires(t *testing.T, s cache.Store) {
	mustSet(t, s, "ct:short", []byte("v"), 150*time.Millisecond)
	mustSet(t, s, "ct:long", []byte("v"), time.Minute)
	if got := mustGet(t, s, "ct:short"); string(got) != "v" {
		t.Fatalf("fresh entry: Get = %q", got)
	}
	// Real stores expire on their own clock; poll rather than guess.
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := s.Get(context.Background(), "ct:short")
		if errors.Is(err, cache.ErrNotFound) {
			break
		}
		if err != nil {
			t.Fatalf("Get: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatal("entry with a 150ms TTL still there after 5s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := mustGet(t, s, "ct:long"); string(got) != "v" {
		t.Fatalf("entry with a 1 minute TTL gone with the short one: Get = %q", got)
	}
}

func testNoTTLPersists(t *testing.T, s cache.Store) {
	mustSet(t, s, "ct:forever", []byte("v"), 0)
	mustSet(t, s, "ct:short", []byte("v"), 50*time.Millisecond)
	time.Sleep(200 * time.Millisecond)
	wantMissing(t, s, "ct:short")
	if got := mustGet(t, s, "ct:forever"); string(got) != "v" {
		t.Fatalf("entry without TTL: Get = %q", got)
	}
}

func testSetNX(t *testing.T, s cache.Store) {
	ctx := context.Background()
	ok, err := s.SetNX(ctx, "ct:nx", []byte("first"), time.Minute)
	if err != nil || !ok {
		t.Fatalf("SetNX on a missing key = %v, %v; want true, nil", ok, err)
	}
	ok, err = s.SetNX(ctx, "ct:nx", []byte("second"), time.Minute)
	if err != nil || ok {
		t.Fatalf("SetNX on a present key = %v, %v; want false, nil", ok, err)
	}
	if got := mustGet(t, s, "ct:nx"); string(got) != "first" {
		t.Fatalf("SetNX overwrote: Get = %q", got)
	}
	// Exactly one of many concurrent SetNX calls wins.
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for i := range 16 {
		wg.Go(func() {
			ok, err := s.SetNX(ctx, "ct:race", fmt.Appendf(nil, "%d", i), 0)
			if err != nil {
				t.Errorf("SetNX: %v", err)
			}
			if ok {
				mu.Lock()
				wins++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if wins != 1 {
		t.Fatalf("%d of 16 concurrent SetNX calls won, want 1", wins)
	}
}

func testDelete(t *testing.T, s cache.Store) {
	ctx := context.Background()
	mustSet(t, s, "ct:a", []byte("1"), time.Minute)
	mustSet(t, s, "ct:b", []byte("2"), time.Minute)
	mustSet(t, s, "ct:c", []byte("3"), time.Minute)
	n, err := s.Delete(ctx, "ct:a", "ct:b", "ct:nope")
	if err != nil || n != 2 {
		t.Fatalf("Delete = %d, %v; want 2, nil", n, err)
	}
	wantMissing(t, s, "ct:a")
	wantMissing(t, s, "ct:b")
	if got := mustGet(t, s, "ct:c"); string(got) != "3" {
		t.Fatalf("Delete removed a key it was not given: Get = %q", got)
	}
	if n, err := s.Delete(ctx); err != nil || n != 0 {
		t.Fatalf("Delete() = %d, %v; want 0, nil", n, err)
	}
}

func scanAll(t *testing.T, s cache.Store, match string, count int) []string {
	t.Helper()
	var mu sync.Mutex
	var got []string
	err := s.Scan(context.Background(), match, count, func(keys []string) error {
		mu.Lock()
		got = append(got, keys...)
		mu.Unlock()
		return nil
	})
	if err != nil {
		t.Fatalf("Scan(%q): %v", match, err)
	}
	slices.Sort(got)
	return slices.Compact(got) // SCAN may return a key twice
}

// patternKeys and patternCases pin Redis's glob semantics (stringmatchlen).
var patternKeys = []string{
	"sf:pred:m1:v1:g1:AAPL:5:aa",
	"sf:pred:m1:v1:g2:AAPL:10:bb",
	"sf:pred:m1:v2:g1:MSFT:5:cc",
	"sf:pred:m10:v1:g1:AAPL:5:dd",
	"sf:pred:m2:v1:g1:5:5:ee",
	"sf:gen:m1:v1",
	"other:key",
	"a*b",
	"a?b",
	"axb",
	"a[b",
	"a\\b",
	"hello",
	"hallo",
	"hxllo",
	"hllo",
	"heeeello",
}

var patternCases = []struct {
	pattern string
	want    []string
}{
	{"sf:pred:m1:*", []string{"sf:pred:m1:v1:g1:AAPL:5:aa", "sf:pred:m1:v1:g2:AAPL:10:bb", "sf:pred:m1:v2:g1:MSFT:5:cc"}},
	{"sf:pred:m1:v1:*", []string{"sf:pred:m1:v1:g1:AAPL:5:aa", "sf:pred:m1:v1:g2:AAPL:10:bb"}},
	{"sf:pred:*:AAPL:*", []string{"sf:pred:m1:v1:g1:AAPL:5:aa", "sf:pred:m1:v1:g2:AAPL:10:bb", "sf:pred:m10:v1:g1:AAPL:5:dd"}},
	// '*' crosses ':' — why the cache filters ticker matches itself.
	{"sf:pred:*:5:*", []string{"sf:pred:m1:v1:g1:AAPL:5:aa", "sf:pred:m1:v2:g1:MSFT:5:cc", "sf:pred:m10:v1:g1:AAPL:5:dd", "sf:pred:m2:v1:g1:5:5:ee"}},
	{"sf:*", []string{"sf:gen:m1:v1", "sf:pred:m1:v1:g1:AAPL:5:aa", "sf:pred:m1:v1:g2:AAPL:10:bb", "sf:pred:m1:v2:g1:MSFT:5:cc", "sf:pred:m10:v1:g1:AAPL:5:dd", "sf:pred:m2:v1:g1:5:5:ee"}},
	{"h?llo", []string{"hallo", "hello", "hxllo"}},
	{"h*llo", []string{"hallo", "heeeello", "hello", "hllo", "hxllo"}},
	{"h[ae]llo", []string{"hallo", "hello"}},
	{"h[^e]llo", []string{"hallo", "hxllo"}},
	{"h[a-b]llo", []string{"hallo"}},
	{"h[b-a]llo", []string{"hallo"}}, // Redis swaps a reversed range
	{"a\\*b", []string{"a*b"}},
	{"a\\?b", []string{"a?b"}},
	{"a[\\[]b", []string{"a[b"}},
	{"a\\\\b", []string{"a\\b"}},
	{"a?b", []string{"a*b", "a?b", "a[b", "a\\b", "axb"}},
	{"hello", []string{"hello"}},
	{"nothing*", nil},
	{"**llo", []string{"hallo", "heeeello", "hello", "hllo", "hxllo"}},
	{"h[", nil},
	{"a[*", nil},
}

func testScanPatterns(t *testing.T, s cache.Store) {
	for _, k := range patternKeys {
		mustSet(t, s, k, []byte("v"), time.Minute)
	}
	for _, tc := range patternCases {
		got := scanAll(t, s, tc.pattern, 3)
		want := slices.Sorted(slices.Values(tc.want))
		if !slices.Equal(got, want) {
			t.Errorf("Scan(%q) = %q, want %q", tc.pattern, got, want)
		}
		for _, k := range patternKeys {
			if m := cache.Match(tc.pattern, k); m != slices.Contains(want, k) {
				t.Errorf("cache.Match(%q, %q) = %v, disagrees with the store", tc.pattern, k, m)
			}
		}
	}
}

func testScanBatchesAndDelete(t *testing.T, s cache.Store) {
	ctx := context.Background()
	const n = 2500
	for i := range n {
		mustSet(t, s, fmt.Sprintf("ct:del:%05d", i), []byte("v"), time.Minute)
	}
	mustSet(t, s, "ct:keep", []byte("v"), time.Minute)
	var mu sync.Mutex
	var deleted int64
	batches := 0
	err := s.Scan(ctx, "ct:del:*", 500, func(keys []string) error {
		n, err := s.Delete(ctx, keys...)
		mu.Lock()
		deleted += n
		batches++
		mu.Unlock()
		return err
	})
	if err != nil {
		t.Fatalf("Scan: %v", err)
	}
	if deleted != n {
		t.Fatalf("deleted %d keys from within Scan, want %d", deleted, n)
	}
	if batches < 2 {
		t.Fatalf("%d keys came in %d batch(es) with count 500: Scan does not batch", n, batches)
	}
	if left := scanAll(t, s, "ct:del:*", 1000); len(left) != 0 {
		t.Fatalf("%d keys left after deleting them all", len(left))
	}
	if got := mustGet(t, s, "ct:keep"); string(got) != "v" {
		t.Fatalf("a key outside the pattern was deleted")
	}
}

func testScanStopsOnError(t *testing.T, s cache.Store) {
	for i := range 50 {
		mustSet(t, s, fmt.Sprintf("ct:e:%d", i), []byte("v"), time.Minute)
	}
	full := 0
	var mu sync.Mutex
	if err := s.Scan(context.Background(), "ct:e:*", 10, func(keys []string) error {
		mu.Lock()
		full++
		mu.Unlock()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	stop := errors.New("stop")
	calls := 0
	err := s.Scan(context.Background(), "ct:e:*", 10, func(keys []string) error {
		mu.Lock()
		calls++
		mu.Unlock()
		return stop
	})
	if !errors.Is(err, stop) {
		t.Fatalf("Scan returned %v, want fn's error", err)
	}
	// A sharded store may have called fn once per shard before it saw
	// the error; it must not finish the walk.
	if calls < 1 || full > 1 && calls >= full {
		t.Fatalf("fn was called %d times (a full walk takes %d) though it returned an error", calls, full)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Scan(ctx, "ct:e:*", 10, func([]string) error { return nil }); err == nil {
		t.Fatal("Scan with a cancelled context succeeded")
	}
}

func testConcurrent(t *testing.T, s cache.Store) {
	ctx := context.Background()
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 200 {
				k := fmt.Sprintf("ct:c:%d", i%20)
				v := fmt.Appendf(nil, "%d-%d", w, i)
				if err := s.Set(ctx, k, v, time.Minute); err != nil {
					t.Errorf("Set: %v", err)
					return
				}
				if _, err := s.Get(ctx, k); err != nil && !errors.Is(err, cache.ErrNotFound) {
					t.Errorf("Get: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	for i := range 20 {
		got := mustGet(t, s, fmt.Sprintf("ct:c:%d", i))
		var w, j int
		if _, err := fmt.Sscanf(string(got), "%d-%d", &w, &j); err != nil || j%20 != i {
			t.Errorf("ct:c:%d holds %q, which no writer wrote there", i, got)
		}
	}
}
