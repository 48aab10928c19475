package access

import (
	"math"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// maxVisitors bounds each domain's table of visitors (about 10 MB when full). Past it, the least
// recently seen visitor is forgotten: it starts again with a full burst, which is lenient but keeps
// memory fixed whatever the number of addresses an attacker can send from.
const maxVisitors = 1 << 16

// idleChecks is how many of the least recently seen visitors each request looks at to drop those
// whose bucket has refilled: the table shrinks back after a flood at no cost beyond a constant.
const idleChecks = 2

// limiters holds one token bucket per visitor of a domain, evicted least recently used first.
type limiters struct {
	limit rate.Limit
	burst int
	// full is the time an empty bucket takes to refill: a visitor unseen that long has a full
	// bucket, so forgetting it changes nothing.
	full time.Duration
	max  int

	mu    sync.Mutex
	byKey map[[16]byte]*bucket
	lru   bucket // sentinel of a ring: lru.next is the most recently seen, lru.prev the least
}

type bucket struct {
	key        [16]byte
	lim        *rate.Limiter
	seen       int64 // UnixNano of the last request
	prev, next *bucket
}

func newLimiters(limit rate.Limit, burst, max int) *limiters {
	s := &limiters{limit: limit, burst: burst, full: seconds(float64(burst) / float64(limit)), max: max,
		byKey: make(map[[16]byte]*bucket)}
	s.lru.prev, s.lru.next = &s.lru, &s.lru
	return s
}

// allow spends one token of visitor's bucket at now; when there is none it reports how long until
// there is one.
func (s *limiters) allow(visitor netip.Addr, now time.Time) (bool, time.Duration) {
	key := bucketKey(visitor)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dropIdle(now)
	b := s.byKey[key]
	if b == nil {
		if len(s.byKey) >= s.max {
			s.remove(s.lru.prev)
		}
		b = &bucket{key: key, lim: rate.NewLimiter(s.limit, s.burst)}
		s.byKey[key] = b
	} else {
		b.prev.next, b.next.prev = b.next, b.prev
	}
	b.prev, b.next = &s.lru, s.lru.next
	s.lru.next.prev = b
	s.lru.next = b
	b.seen = now.UnixNano()

	if b.lim.AllowN(now, 1) {
		return true, 0
	}
	return false, seconds((1 - b.lim.TokensAt(now)) / float64(s.limit))
}

func (s *limiters) dropIdle(now time.Time) {
	for range idleChecks {
		b := s.lru.prev
		if b == &s.lru || time.Duration(now.UnixNano()-b.seen) < s.full {
			return
		}
		s.remove(b)
	}
}

func (s *limiters) remove(b *bucket) {
	b.prev.next, b.next.prev = b.next, b.prev
	b.prev, b.next = nil, nil
	delete(s.byKey, b.key)
}

// len is the number of visitors tracked.
func (s *limiters) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.byKey)
}

// bucketKey is what a visitor is counted by: an IPv4 address, or the /64 of an IPv6 one. One host (or
// one home network) is usually handed a whole /64 and may use any address in it, so counting each
// IPv6 address apart would give it 2⁶⁴ budgets. The two kinds of key cannot meet: an IPv4 key is
// ::ffff:a.b.c.d, an IPv6 key has its low 64 bits zero.
func bucketKey(a netip.Addr) [16]byte {
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr().As16()
	}
	return a.As16()
}

// seconds converts to a Duration, saturating: a rate of 10⁻⁹ per second is valid and its waits
// overflow.
func seconds(s float64) time.Duration {
	if d := s * float64(time.Second); d < math.MaxInt64 {
		return time.Duration(d)
	}
	return math.MaxInt64
}
