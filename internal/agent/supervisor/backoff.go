package supervisor

import (
	"math/rand/v2"
	"time"
)

// reconnectDelay is the supervisor's wait between attempts: AWS's "full jitter", a delay drawn
// uniformly from [0, min(max, min·2^n)] after the n-th failure in a row, so that a fleet cut off by
// one outage does not come back in step. A tunnel that stayed up healthyAfter starts the count over;
// one that dies sooner keeps it growing, so a gateway that accepts and then drops the agent is not
// hammered.
type reconnectDelay struct {
	min, max, healthyAfter time.Duration
	// rand returns a number in [0, 1); now tells the time. Both are replaced in tests.
	rand func() float64
	now  func() time.Time

	attempt int
	start   time.Time
}

func newReconnectDelay(min, max, healthyAfter time.Duration) *reconnectDelay {
	return &reconnectDelay{min: min, max: max, healthyAfter: healthyAfter, rand: rand.Float64, now: time.Now}
}

// begin marks the start of an attempt; next measures how long its tunnel stayed up from there.
func (r *reconnectDelay) begin() { r.start = r.now() }

// next is the delay before the following attempt; up tells whether the gateway accepted the last one.
func (r *reconnectDelay) next(up bool) time.Duration {
	if up && r.now().Sub(r.start) >= r.healthyAfter {
		r.attempt = 0
	}
	d := r.ceiling(r.attempt)
	r.attempt++
	return time.Duration(r.rand() * float64(d))
}

// reset starts the count over, as after a healthy tunnel.
func (r *reconnectDelay) reset() { r.attempt = 0 }

// ceiling is min·2^n capped at max, computed without overflowing for any n.
func (r *reconnectDelay) ceiling(n int) time.Duration {
	d := r.min
	for range n {
		if d >= r.max/2 {
			return r.max
		}
		d *= 2
	}
	return min(d, r.max)
}
