package access

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/hopgate/hopgate/internal/gateway/policy"
)

const (
	// loadTimeout bounds one read of the store. The read is shared by every request waiting for the
	// domain, so it does not end with the request that happened to start it.
	loadTimeout = 5 * time.Second
	// failureTTL is how long a failed load is remembered: the domain answers 503 meanwhile, and a store
	// that is down sees at most one query (and the log one line) per domain per failureTTL.
	failureTTL = time.Second
	// idleFactor × TTL is how long an entry may go unasked before a sweep drops it.
	idleFactor = 10
)

// compiled is a policy made ready for the request path.
type compiled struct {
	spec        policy.Spec // as loaded, to tell whether a reload changed anything
	allow, deny prefixSet
	allowOnly   bool      // the allow list is not empty: anyone outside it is refused
	limit       *limiters // nil: no rate limit
	users       map[string][]byte
	realm       string // the WWW-Authenticate challenge
	sso         SSO    // nil: no single sign-on
}

// entry is a domain's slot in the cache. It is filled once: a reload, like Invalidate, puts a new
// entry in its place, so that a request never waits for a load that began before a change.
type entry struct {
	ready chan struct{}          // closed once res is set
	res   atomic.Pointer[result] // nil while the load runs
	prev  *compiled              // what the load may keep of the policy before it
	// known: prev is what the store last said (nil then meaning "no policy"), not cleared by a
	// change. A reload that fails keeps serving it: a store outage must not take down domains that
	// were serving (the registry's promise: established tunnels never need the store).
	known bool
}

// result is what a load found: a policy (nil: none), or an error, trusted until until (in
// Guard.elapsed time).
type result struct {
	pol   *compiled
	err   error
	until time.Duration
	// changed: set by Invalidate, pol is only a base for reuse, not a policy to fall back on.
	changed bool
}

// knownGood reports whether e holds, or started from, what the store last said.
func (e *entry) knownGood() bool {
	if r := e.res.Load(); r != nil {
		return r.err == nil && !r.changed || r.err != nil && e.known
	}
	return e.known
}

// reusable is the compiled policy a reload of e may keep parts of.
func (e *entry) reusable() *compiled {
	if r := e.res.Load(); r != nil && r.err == nil {
		return r.pol
	}
	// Still loading or failed: what e itself started from, so that a store outage does not reset
	// the visitors' rate budgets.
	return e.prev
}

// expiredEntry is a loaded entry that the next request must reload, keeping prev's unchanged parts.
func expiredEntry(prev *compiled, now time.Duration) *entry {
	e := &entry{ready: make(chan struct{}), prev: prev}
	e.res.Store(&result{pol: prev, until: now, changed: true})
	close(e.ready)
	return e
}

// policy returns domain's compiled policy, nil for none. A cached, fresh entry costs one sync.Map
// lookup and a clock read: this is the whole price paid by a domain without a policy.
func (g *Guard) policy(ctx context.Context, domain string) (*compiled, error) {
	if v, ok := g.entries.Load(domain); ok {
		if r := v.(*entry).res.Load(); r != nil && g.elapsed() < r.until {
			return r.pol, r.err
		}
	}
	return g.refresh(ctx, domain)
}

// refresh loads domain's policy, or waits for the load another request started: concurrent first
// requests of a domain read the store once.
func (g *Guard) refresh(ctx context.Context, domain string) (*compiled, error) {
	for {
		v, ok := g.entries.Load(domain)
		if !ok {
			e := &entry{ready: make(chan struct{})}
			if v, ok = g.entries.LoadOrStore(domain, e); !ok {
				return g.load(ctx, domain, e)
			}
		}
		e := v.(*entry)
		r := e.res.Load()
		if r == nil {
			select {
			case <-e.ready:
				// Just loaded: used as it is, even if a test clock says it is already stale.
				r = e.res.Load()
				return r.pol, r.err
			case <-ctx.Done():
				return nil, unavailable(domain, ctx.Err())
			}
		}
		if g.elapsed() < r.until {
			return r.pol, r.err
		}
		next := &entry{ready: make(chan struct{}), prev: e.reusable(), known: e.knownGood()}
		if g.entries.CompareAndSwap(domain, e, next) {
			return g.load(ctx, domain, next)
		}
		// Another request or Invalidate replaced e first: look again.
	}
}

var errLoadAborted = errors.New("the policy load did not finish")

// load fills e from the store.
func (g *Guard) load(ctx context.Context, domain string, e *entry) (*compiled, error) {
	start := g.elapsed()
	var r *result
	defer func() {
		// Also when the store or the SSO builder panics: the waiters must find a result, and it
		// must not be "no policy".
		if r == nil {
			r = &result{err: unavailable(domain, errLoadAborted), until: start + min(failureTTL, g.ttl)}
		}
		e.res.Store(r)
		close(e.ready)
	}()

	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), loadTimeout)
	defer cancel()
	spec, err := g.store.Policy(lctx, domain)
	var pol *compiled
	if err == nil {
		pol, err = g.compile(domain, spec, e.prev)
	}
	switch {
	case err != nil && e.known:
		g.log.Warn("access policy could not be reloaded: keeping the last one", "domain", domain, "err", err)
		r = &result{pol: e.prev, until: start + min(failureTTL, g.ttl)}
	case err != nil:
		g.log.Warn("access policy unavailable: the domain answers 503 until it loads", "domain", domain, "err", err)
		r = &result{err: unavailable(domain, err), until: start + min(failureTTL, g.ttl)}
	default:
		r = &result{pol: pol, until: start + g.ttl}
	}
	g.sweep(start)
	return r.pol, r.err
}

// sweep drops the entries of domains nobody asked for in idleFactor × TTL, at most once per TTL so
// that its cost (one pass over the cache) stays proportional to the number of domains per TTL. An
// entry in use is reloaded every TTL, so one whose result expired that long ago has been idle since.
func (g *Guard) sweep(now time.Duration) {
	last := g.lastSweep.Load()
	if now-time.Duration(last) < g.ttl || !g.lastSweep.CompareAndSwap(last, int64(now)) {
		return
	}
	cutoff := now - idleFactor*g.ttl
	g.entries.Range(func(k, v any) bool {
		if r := v.(*entry).res.Load(); r != nil && r.until < cutoff {
			g.entries.CompareAndDelete(k, v)
		}
		return true
	})
}

// compile makes spec ready for the request path. From prev (the domain's policy before), it keeps what
// did not change: a TTL reload must neither refill every visitor's rate budget nor build single
// sign-on again (which fetches the provider's discovery document).
func (g *Guard) compile(domain string, spec policy.Spec, prev *compiled) (*compiled, error) {
	if spec.IsZero() {
		return nil, nil
	}
	if prev != nil && reflect.DeepEqual(prev.spec, spec) {
		return prev, nil
	}
	// The admin validated it before storing, but a row written by an older version or by hand must
	// not be half enforced.
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	p := &compiled{spec: spec, realm: `Basic realm="` + domain + `", charset="UTF-8"`}
	var err error
	if p.allow, err = newPrefixSet(spec.IPAllow); err != nil {
		return nil, err
	}
	if p.deny, err = newPrefixSet(spec.IPDeny); err != nil {
		return nil, err
	}
	p.allowOnly = len(spec.IPAllow) > 0

	if rl := spec.RateLimit; rl != nil {
		if prev != nil && prev.limit != nil && *prev.spec.RateLimit == *rl {
			p.limit = prev.limit
		} else {
			p.limit = newLimiters(rate.Limit(rl.RPS), rl.Burst, maxVisitors)
		}
	}

	if len(spec.BasicAuth) > 0 {
		p.users = make(map[string][]byte, len(spec.BasicAuth))
		for _, u := range spec.BasicAuth {
			// The store keeps hashes only; a plain password here means something wrote around
			// HashPasswords, and the domain is better closed than checked against it.
			if u.PasswordHash == "" {
				return nil, errors.New("basic-auth user " + u.User + " has no password hash")
			}
			p.users[u.User] = []byte(u.PasswordHash)
		}
	}

	if o := spec.OIDC; o != nil {
		switch {
		case prev != nil && prev.sso != nil && reflect.DeepEqual(*prev.spec.OIDC, *o):
			p.sso = prev.sso
		case g.buildSSO == nil:
			return nil, errors.New("the policy has single sign-on, which this gateway runs without")
		default:
			s, err := g.buildSSO(domain, *o)
			if err != nil {
				return nil, fmt.Errorf("single sign-on: %w", err)
			}
			if s == nil {
				return nil, errors.New("single sign-on: the builder returned none")
			}
			p.sso = s
		}
	}
	return p, nil
}
