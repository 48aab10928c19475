package access

import (
	"net/netip"
	"runtime"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

func TestBucketKey(t *testing.T) {
	same := [][2]string{
		{"2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ffff"}, // one /64
		{"203.0.113.5", "203.0.113.5"},
	}
	differ := [][2]string{
		{"2001:db8:1:2::1", "2001:db8:1:3::1"},
		{"203.0.113.5", "203.0.113.6"},
		{"0.0.0.0", "::1"}, // an IPv4 key never meets an IPv6 /64 key
		{"203.0.113.5", "::"},
	}
	key := func(s string) [16]byte { return bucketKey(netip.MustParseAddr(s)) }
	for _, p := range same {
		if key(p[0]) != key(p[1]) {
			t.Errorf("%s and %s have different keys", p[0], p[1])
		}
	}
	for _, p := range differ {
		if key(p[0]) == key(p[1]) {
			t.Errorf("%s and %s share a key", p[0], p[1])
		}
	}
}

// addr returns the i-th of many distinct IPv4 addresses.
func addr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
}

func heapAfterGC() uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// TestLimitersBounded sends 100 000 distinct addresses, then 100 000 more, at one domain's limiter:
// the table stays at its cap, and the heap it holds stops growing once the cap is reached.
func TestLimitersBounded(t *testing.T) {
	const n = 100_000
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	before := heapAfterGC()
	s := newLimiters(rate.Limit(1), 5, maxVisitors)
	for i := range n {
		if ok, _ := s.allow(addr(i), now); !ok {
			t.Fatalf("address %d refused on its first request", i)
		}
		if s.len() > maxVisitors {
			t.Fatalf("%d visitors tracked after %d addresses, cap %d", s.len(), i+1, maxVisitors)
		}
	}
	first := heapAfterGC()
	for i := range n {
		s.allow(addr(n+i), now)
	}
	second := heapAfterGC()
	if got := s.len(); got != maxVisitors {
		t.Errorf("%d visitors tracked, want %d", got, maxVisitors)
	}
	perEntry := float64(first-before) / maxVisitors
	t.Logf("heap before %d B; after %d addresses %d B (+%.1f MB, %.0f B per tracked visitor); after %d more %d B (%+.1f MB)",
		before, n, first, float64(first-before)/1e6, perEntry, n, second, (float64(second)-float64(first))/1e6)
	if grown := first - before; grown > 32<<20 {
		t.Errorf("the full table holds %d B, want under 32 MiB", grown)
	}
	if second > first && second-first > 2<<20 {
		t.Errorf("another %d addresses grew the heap by %d B: the table is not bounded", n, second-first)
	}
	runtime.KeepAlive(s)
}

func TestLimitersEvictLeastRecentlySeen(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	s := newLimiters(rate.Limit(0.001), 2, 2)
	a, b, c := addr(1), addr(2), addr(3)
	s.allow(a, now)
	s.allow(a, now)
	if ok, _ := s.allow(a, now); ok {
		t.Fatal("a over its burst was let through")
	}
	s.allow(b, now)
	s.allow(a, now) // a is now the most recently seen, b the least
	s.allow(c, now) // evicts b
	if ok, _ := s.allow(a, now); ok {
		t.Error("a was evicted instead of b, the least recently seen")
	}
	s.allow(b, now)       // evicts c
	s.allow(addr(4), now) // evicts a
	if ok, _ := s.allow(a, now); !ok {
		t.Error("an evicted visitor must start again with a full burst")
	}
	if got := s.len(); got > 2 {
		t.Errorf("%d tracked, cap 2", got)
	}
}

func TestLimitersDropRefilledVisitors(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	s := newLimiters(rate.Limit(10), 20, maxVisitors) // refills in 2 s
	for i := range 1000 {
		s.allow(addr(i), now)
	}
	now = now.Add(2 * time.Second)
	for range 500 {
		s.allow(addr(0), now)
		now = now.Add(time.Millisecond)
	}
	// Each request drops up to idleChecks refilled visitors from the tail.
	if got := s.len(); got > 1 {
		t.Errorf("%d tracked after the flood passed, want 1", got)
	}
}

func TestSecondsSaturates(t *testing.T) {
	if got := seconds(1e15); got != time.Duration(1<<63-1) {
		t.Errorf("seconds(1e15) = %v", got)
	}
	if got := seconds(1.5); got != 1500*time.Millisecond {
		t.Errorf("seconds(1.5) = %v", got)
	}
	s := newLimiters(rate.Limit(1e-9), 1, 10)
	now := time.Now()
	s.allow(addr(1), now)
	if ok, wait := s.allow(addr(1), now); ok || wait <= 0 || retryAfterSeconds(wait) < 1e9 {
		t.Errorf("tiny rate: ok %v, wait %v, Retry-After %d", ok, wait, retryAfterSeconds(wait))
	}
}
