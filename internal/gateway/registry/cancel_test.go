package registry

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/hopgate/hopgate/internal/gateway/apikey"
	"github.com/hopgate/hopgate/internal/testutil/pgtest"
	"github.com/hopgate/hopgate/internal/testutil/poll"
)

// TestAuthenticateCancelled hammers Authenticate on Postgres with contexts cancelled at random
// points, mixed with calls that run to the end. A cancelled lookup is abandoned by untilDone while
// its query still holds a pooled connection: a mix-up there could hand one caller another's row, and
// a leak would leave the pool's connections in use or the lookup goroutines running.
//
// Not parallel: the goroutine count is compared with the one before the test, which other tests of
// the package running at the same time would change.
func TestAuthenticateCancelled(t *testing.T) {
	const (
		domains  = 20
		calls    = 2000
		inFlight = 64
		maxOpen  = 8
	)
	baseline := goleak.IgnoreCurrent()
	s, err := Open(context.Background(), Options{DSN: pgtest.DSN(t), MaxOpenConns: maxOpen})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			s.Close()
		}
	})

	ctx := context.Background()
	names := make([]string, domains)
	keys := make([]string, domains)
	for i := range names {
		names[i] = fmt.Sprintf("cancel-%02d.example.test", i)
		if _, keys[i], err = s.Register(ctx, names[i], ""); err != nil {
			t.Fatalf("Register %s: %v", names[i], err)
		}
	}

	type outcome struct{ ok, refused, cancelled, other atomic.Int64 }
	var got outcome
	var (
		mu       sync.Mutex
		failures []string
	)
	fail := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		if len(failures) < 20 {
			failures = append(failures, fmt.Sprintf(format, args...))
		}
	}

	sem := make(chan struct{}, inFlight)
	var wg sync.WaitGroup
	deadline := time.Now().Add(2 * time.Minute)
	for i := range calls {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d calls started in time", i, calls)
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			rng := rand.New(rand.NewPCG(uint64(i), 21))
			d := rng.IntN(domains)
			key, rightKey := keys[d], true
			if rng.IntN(3) == 0 {
				// Another domain's key, or no valid key at all.
				if rng.IntN(2) == 0 {
					key = keys[(d+1+rng.IntN(domains-1))%domains]
				} else {
					key = "hg_not-a-real-key"
				}
				rightKey = false
			}
			callCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			cancelled := true
			switch rng.IntN(4) {
			case 0:
				cancel()
			case 1:
				timer := time.AfterFunc(time.Duration(rng.IntN(500))*time.Microsecond, cancel)
				defer timer.Stop()
			case 2:
				timer := time.AfterFunc(time.Duration(1+rng.IntN(20))*time.Millisecond, cancel)
				defer timer.Stop()
			default:
				cancelled = false
			}
			dom, err := s.Authenticate(callCtx, names[d], key)
			switch {
			case err == nil:
				got.ok.Add(1)
				if !rightKey {
					fail("call %d: %s accepted a wrong key", i, names[d])
				}
				if dom.Name != names[d] {
					fail("call %d: asked for %s, got the row of %q", i, names[d], dom.Name)
				}
				if dom.KeyID != KeyID(apikey.Hash(key)) {
					fail("call %d: %s: key id %q is not the id of the key used", i, names[d], dom.KeyID)
				}
			case errors.Is(err, ErrKeyMismatch):
				got.refused.Add(1)
				if rightKey {
					fail("call %d: %s refused its own key: %v", i, names[d], err)
				}
			case cancelled && (errors.Is(err, context.Canceled) || errors.Is(err, ErrUnavailable)):
				got.cancelled.Add(1)
			default:
				got.other.Add(1)
				fail("call %d: %s (cancelled %v, right key %v): %v", i, names[d], cancelled, rightKey, err)
			}
			if !cancelled && rightKey && err != nil {
				fail("call %d: uncancelled call with the right key for %s failed: %v", i, names[d], err)
			}
		}()
	}
	wg.Wait()
	for _, f := range failures {
		t.Error(f)
	}
	t.Logf("ok %d, refused %d, cancelled %d, other %d", got.ok.Load(), got.refused.Load(), got.cancelled.Load(), got.other.Load())
	if got.ok.Load() == 0 || got.refused.Load() == 0 || got.cancelled.Load() == 0 {
		t.Errorf("the mix did not exercise every outcome")
	}

	// Abandoned lookups finish on their own; their connections must then go back to the pool.
	poll.Until(t, 10*time.Second, "pool connections released", func() bool {
		return s.db.Stats().InUse == 0
	})
	if st := s.db.Stats(); st.OpenConnections > maxOpen {
		t.Errorf("pool has %d open connections, max is %d", st.OpenConnections, maxOpen)
	}
	// The store still serves after the storm.
	if dom, err := s.Authenticate(ctx, names[0], keys[0]); err != nil || dom.Name != names[0] {
		t.Errorf("Authenticate after the storm = %+v, %v", dom, err)
	}
	s.Close()
	closed = true
	goleak.VerifyNone(t, baseline)
}
