package supervisor

import (
	"context"
	"math/rand/v2"
	"net"
	"testing"
	"time"

	"github.com/hopgate/hopgate/internal/testutil/fakeclock"
)

func testDelays(clock *fakeclock.Clock, rnd func() float64) *reconnectDelay {
	r := newReconnectDelay(time.Second, time.Minute, 30*time.Second)
	r.now, r.rand = clock.Now, rnd
	return r
}

// ceilingOf is the full-jitter bound after n failures in a row with min 1 s and max 60 s.
func ceilingOf(n int) time.Duration {
	if n >= 6 {
		return time.Minute
	}
	return time.Second << n
}

func TestReconnectDelayBounds(t *testing.T) {
	clock := fakeclock.New(time.Unix(1e9, 0))
	for seed := range uint64(500) {
		rng := rand.New(rand.NewPCG(seed, 4))
		r := testDelays(clock, rng.Float64)
		for n := 0; n <= 20; n++ {
			r.begin()
			clock.Advance(time.Second) // a tunnel that dies quickly, or never comes up
			d := r.next(n%2 == 0)
			if d < 0 || d > ceilingOf(n) {
				t.Fatalf("seed %d attempt %d: delay %v outside [0, %v]", seed, n, d, ceilingOf(n))
			}
		}
	}
	// The edges of the random source reach the edges of the interval, and no further.
	for _, tc := range []struct {
		name string
		rnd  float64
		n    int
		want time.Duration
	}{
		{"lowest first", 0, 0, 0},
		{"highest first", 0.999999, 0, time.Duration(0.999999 * float64(time.Second))},
		{"highest third", 0.999999, 2, time.Duration(0.999999 * float64(4*time.Second))},
		{"highest capped", 0.999999, 20, time.Duration(0.999999 * float64(time.Minute))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := testDelays(clock, func() float64 { return tc.rnd })
			var d time.Duration
			for range tc.n + 1 {
				r.begin()
				d = r.next(false)
			}
			if d != tc.want {
				t.Errorf("delay %v, want %v", d, tc.want)
			}
		})
	}
}

func TestReconnectDelayCapNoOverflow(t *testing.T) {
	r := newReconnectDelay(time.Second, time.Minute, time.Second)
	for _, n := range []int{6, 30, 62, 63, 64, 1000} {
		if c := r.ceiling(n); c != time.Minute {
			t.Errorf("ceiling(%d) = %v, want the cap", n, c)
		}
	}
	huge := newReconnectDelay(time.Hour, time.Duration(1<<62), time.Second)
	for n := range 100 {
		if c := huge.ceiling(n); c <= 0 || c > time.Duration(1<<62) {
			t.Fatalf("ceiling(%d) = %v", n, c)
		}
	}
}

func TestReconnectDelayHealthyResets(t *testing.T) {
	clock := fakeclock.New(time.Unix(1e9, 0))
	top := func() float64 { return 0.999999 } // the largest delay each attempt allows
	r := testDelays(clock, top)
	for range 10 {
		r.begin()
		clock.Advance(time.Second)
		r.next(false)
	}
	// Up for longer than HealthyAfter on the test's clock: the next retry is fast again.
	r.begin()
	clock.Advance(31 * time.Second)
	if d := r.next(true); d > time.Second {
		t.Errorf("first retry after a healthy tunnel waits %v, want ≤ 1s", d)
	}

	// Up, but for less than HealthyAfter: the delay keeps growing.
	r = testDelays(clock, top)
	var last time.Duration
	for n := range 6 {
		r.begin()
		clock.Advance(29 * time.Second)
		d := r.next(true)
		if n > 0 && d <= last {
			t.Errorf("attempt %d: a tunnel that died after 29s waits %v, not more than the %v before", n, d, last)
		}
		last = d
	}
	if last < 30*time.Second {
		t.Errorf("after 6 short-lived tunnels the delay is %v, want it near the cap", last)
	}

	// A GoAway starts over whatever the count was.
	r.reset()
	r.begin()
	if d := r.next(false); d > time.Second {
		t.Errorf("retry after reset waits %v", d)
	}
}

// TestRunBackoff runs the real loop against an address that refuses connections: every attempt
// fails before the tunnel is up, so the delays Run asks for must grow up to the cap.
func TestRunBackoff(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now: dials fail fast

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	clock := fakeclock.New(time.Unix(1e9, 0))
	const attempts = 10
	var delays []time.Duration
	o := Options{
		ServerAddr: addr, Domain: "example.test", APIKey: "k", AgentID: "a",
		now:  clock.Now,
		rand: func() float64 { return 0.999999 },
		sleep: func(ctx context.Context, d time.Duration) error {
			delays = append(delays, d)
			clock.Advance(d)
			if len(delays) == attempts {
				cancel()
			}
			return ctx.Err()
		},
	}
	if err := Run(ctx, o); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(delays) != attempts {
		t.Fatalf("Run slept %d times, want %d (test deadline hit?)", len(delays), attempts)
	}
	for n, d := range delays {
		lo, hi := ceilingOf(n)*99/100, ceilingOf(n)
		if d < lo || d > hi {
			t.Errorf("attempt %d: delay %v, want in [%v, %v]", n, d, lo, hi)
		}
	}
}
