package gateway

import (
	"context"
	"sync"
	"time"
)

// Answers the proxy asks of the store for names without an agent, and how long a "not registered"
// is trusted. Names served through a wildcard domain ask first whether the exact name is registered
// (it would win), so without this every such request would be a store round trip, and a store outage
// would answer 503 for them while exact names kept serving. A registration of an exact name under a
// wildcard therefore takes over within unknownTTL; a flood of random Host headers costs one lookup
// per name and unknownTTL, in at most unknownMax entries.
const (
	unknownTTL = 10 * time.Second
	unknownMax = 8192
)

// registeredLookup is how the cache asks the store.
type registeredLookup interface {
	Registered(ctx context.Context, name string) (bool, error)
}

// unknownCache remembers names the store said are not registered. A name it remembers is still
// "not registered" when the store cannot be reached, however old the answer (the same rule as the
// access policies: an outage keeps the last answer the store gave).
type unknownCache struct {
	next registeredLookup
	now  func() time.Time

	mu    sync.Mutex
	until map[string]time.Time
	order []string // insertion order, for evicting the oldest when full
}

func newUnknownCache(next registeredLookup) *unknownCache {
	return &unknownCache{next: next, now: time.Now, until: make(map[string]time.Time)}
}

func (c *unknownCache) Registered(ctx context.Context, name string) (bool, error) {
	c.mu.Lock()
	until, seen := c.until[name]
	c.mu.Unlock()
	if seen && c.now().Before(until) {
		return false, nil
	}
	known, err := c.next.Registered(ctx, name)
	switch {
	case err != nil && seen:
		return false, nil
	case err != nil:
		return false, err
	case known:
		c.forget(name)
	default:
		c.remember(name)
	}
	return known, nil
}

func (c *unknownCache) remember(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.until[name]; !ok {
		if len(c.order) >= unknownMax {
			delete(c.until, c.order[0])
			c.order = c.order[1:]
		}
		c.order = append(c.order, name)
	}
	c.until[name] = c.now().Add(unknownTTL)
}

func (c *unknownCache) forget(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.until, name) // its slot in order goes when it reaches the front
}
