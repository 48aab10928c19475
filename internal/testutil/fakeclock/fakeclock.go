// Package fakeclock is a clock for tests that moves only when the test says so, safe to read from
// the goroutines of the code under test.
package fakeclock

import (
	"sync"
	"time"
)

// Clock reads the time it was started at plus every Advance since.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// New is a clock that reads start until it is advanced.
func New(start time.Time) *Clock { return &Clock{now: start} }

// Now is the clock's time; pass it where the code under test takes a func() time.Time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}
