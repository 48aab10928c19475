// Package access enforces each domain's access policy on the request path: IP rules, a rate limit per
// visitor, basic auth and single sign-on, checked before a byte of the request enters a tunnel.
package access

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hopgate/hopgate/internal/gateway/metrics"
	"github.com/hopgate/hopgate/internal/gateway/policy"
)

// The headers that tell the target who the visitor is. The proxy removes client-sent copies before
// Admit; Admit sets them only from a verified identity.
const (
	HeaderUser  = "X-Hopgate-User"
	HeaderEmail = "X-Hopgate-Email"
)

// ReservedPrefix is the path under which a domain with single sign-on answers for itself (callback,
// logout) instead of its target.
const ReservedPrefix = "/.hopgate/"

// The reasons of a Denial, the label values of hopgate_access_denied_total.
const (
	ReasonIP   = "ip"
	ReasonAuth = "auth"
	ReasonRate = "rate"
	ReasonSSO  = "sso"
)

// Identity is who a visitor proved to be: the basic-auth user, or the SSO account.
type Identity struct{ User, Email string }

// Denial is a refused request: the proxy renders Status with its error page, adds Header
// (WWW-Authenticate, Retry-After), counts Reason in hopgate_access_denied_total and logs it.
type Denial struct {
	Reason  string // ReasonIP, ReasonAuth, ReasonRate or ReasonSSO
	Status  int
	Header  http.Header // nil when there is nothing to add
	Message string      // for the visitor: says what to do, never why a credential failed
}

func (d *Denial) Error() string {
	return "access denied (" + d.Reason + ", " + strconv.Itoa(d.Status) + "): " + d.Message
}

var (
	// ErrHandled means Admit (or SSO) has written the whole response itself (a redirect to the
	// provider, the callback, logout); the proxy writes nothing more.
	ErrHandled = errors.New("access: response already written")
	// ErrStoreUnavailable means the policy could not be read (or not be put to use); the proxy answers
	// 503. Errors that wrap it also carry the cause.
	ErrStoreUnavailable = errors.New("access: policy unavailable")
)

// Store reads a domain's policy. The zero Spec means no policy; an adapter over the registry turns
// its ErrNotFound into the zero Spec, so that every error here means "could not tell".
type Store interface {
	Policy(ctx context.Context, domain string) (policy.Spec, error)
}

// SSO is single sign-on for one domain (package sso implements it).
type SSO interface {
	// Reserved answers a request under /.hopgate/ (callback, logout): writes the response and returns
	// ErrHandled, or returns a *Denial (e.g. an account outside the allowed set: 403, reason "sso").
	// nil means the path is not one of its own: the request goes on through the other checks.
	Reserved(w http.ResponseWriter, r *http.Request) error
	// Identify returns the signed-in visitor from the request's session cookie.
	Identify(r *http.Request) (Identity, bool)
	// Challenge starts sign-in for a visitor without a session: redirects a browser navigation
	// (GET/HEAD accepting text/html) to the provider and returns ErrHandled; otherwise returns a
	// *Denial (401, reason "sso").
	Challenge(w http.ResponseWriter, r *http.Request) error
}

// SSOBuilder makes the SSO of one domain from its policy's OIDC part.
type SSOBuilder func(domain string, cfg policy.OIDC) (SSO, error)

// Options configure a Guard.
type Options struct {
	Store Store
	// SSO builds single sign-on for a policy with an OIDC part. nil: such a policy cannot be
	// enforced, so its domain answers 503 (ErrStoreUnavailable) and a line is logged.
	SSO SSOBuilder
	// Metrics is not written by the Guard: a denial is counted once, by the proxy, where it renders it.
	Metrics *metrics.Metrics
	Logger  *slog.Logger // slog.Default() when nil
	Now     func() time.Time
	// TTL is how long a loaded policy is trusted without Invalidate (default 30 s): the safety net for
	// changes made elsewhere, e.g. by another gateway on the same database.
	TTL time.Duration
}

const defaultTTL = 30 * time.Second

// Guard enforces the policies of all domains. It is safe for concurrent use.
type Guard struct {
	store    Store
	buildSSO SSOBuilder
	log      *slog.Logger
	clock    func() time.Time // Options.Now; nil: the real clocks
	epoch    time.Time        // the origin of elapsed
	ttl      time.Duration

	// entries maps a domain to its *entry. A sync.Map because the request path only reads it and
	// its keys are stable: Load takes no lock and allocates nothing.
	entries   sync.Map
	lastSweep atomic.Int64 // elapsed at the last sweep of idle entries

	basic *verifier
}

// New returns a Guard over o.Store.
func New(o Options) *Guard {
	g := &Guard{store: o.Store, buildSSO: o.SSO, log: o.Logger, clock: o.Now, ttl: o.TTL, basic: newVerifier()}
	if g.log == nil {
		g.log = slog.Default()
	}
	if g.ttl <= 0 {
		g.ttl = defaultTTL
	}
	g.epoch = g.now()
	return g
}

// now is the wall-clock time, for the rate limiter.
func (g *Guard) now() time.Time {
	if g.clock != nil {
		return g.clock()
	}
	return time.Now()
}

// elapsed is the time since New. The cache's deadlines are kept in it rather than in time.Time
// because the request path of a domain without a policy reads the clock on every request, and
// time.Since reads only the monotonic clock: half the cost of time.Now, which reads the wall clock too.
func (g *Guard) elapsed() time.Duration {
	if g.clock != nil {
		return g.clock().Sub(g.epoch)
	}
	return time.Since(g.epoch)
}

// Admit checks r against domain's policy, visitor being the visitor's real address (the proxy
// computes it after HOP_SERVER_TRUSTED_PROXIES). nil lets r through; Admit may then have set
// X-HopGate-User / X-HopGate-Email and removed Authorization on r.Header. Otherwise it returns
// ErrHandled, a *Denial, or an error wrapping ErrStoreUnavailable.
//
// Every configured check must pass, cheapest and least revealing first: IP rules, rate limit, the
// reserved single sign-on paths, basic auth, then the single sign-on session.
func (g *Guard) Admit(w http.ResponseWriter, r *http.Request, domain string, visitor netip.Addr) error {
	p, err := g.policy(r.Context(), domain)
	if err != nil || p == nil {
		return err
	}
	if d := g.checkAddr(p, visitor); d != nil {
		return d
	}
	if p.sso != nil && strings.HasPrefix(r.URL.Path, ReservedPrefix) {
		if err := p.sso.Reserved(w, r); err != nil {
			return err
		}
	}
	if len(p.users) > 0 {
		user, ok := g.basic.check(r, p.users)
		if !ok {
			return &Denial{Reason: ReasonAuth, Status: http.StatusUnauthorized,
				Header:  http.Header{"Www-Authenticate": {p.realm}},
				Message: "This site needs a user name and password."}
		}
		// The credentials are the gateway's, not the target's: they must not travel on.
		r.Header.Del("Authorization")
		setIdentity(r, Identity{User: user})
	}
	if p.sso != nil {
		id, ok := p.sso.Identify(r)
		if !ok {
			if err := p.sso.Challenge(w, r); err != nil {
				return err
			}
			// A Challenge that neither answered nor refused must not let an anonymous visitor in.
			return &Denial{Reason: ReasonSSO, Status: http.StatusUnauthorized, Message: "Sign in to visit this site."}
		}
		// With basic auth too, the account wins: it names a person, a basic-auth user is often shared.
		setIdentity(r, id)
	}
	return nil
}

// MaxBodyBytes is domain's request body limit from its policy (max_body_bytes); 0 when it sets none.
// It reads the cached policy Admit has just loaded, so it costs no store round trip; a store
// failure Admit would have refused on counts as no limit.
func (g *Guard) MaxBodyBytes(ctx context.Context, domain string) int64 {
	p, err := g.policy(ctx, domain)
	if err != nil || p == nil {
		return 0
	}
	return p.spec.MaxBodyBytes
}

// AdmitAddr checks a raw connection (a TCP port, TLS passthrough) from visitor against domain's
// policy: its IP rules, and its rate limit with each connection counted as one request. A policy that
// asks for basic auth or single sign-on refuses every raw connection: a byte stream carries no
// credentials the gateway could check, and letting it through would open what the policy closes.
// nil admits; otherwise a *Denial or an error wrapping ErrStoreUnavailable.
func (g *Guard) AdmitAddr(ctx context.Context, domain string, visitor netip.Addr) error {
	p, err := g.policy(ctx, domain)
	if err != nil || p == nil {
		return err
	}
	if d := g.checkAddr(p, visitor); d != nil {
		return d
	}
	if len(p.users) > 0 || p.sso != nil {
		return &Denial{Reason: ReasonAuth, Status: http.StatusUnauthorized,
			Message: "This domain's policy asks for a sign-in, which a TCP or passthrough connection cannot give."}
	}
	return nil
}

// checkAddr applies p's IP rules and rate limit to visitor; nil passes.
func (g *Guard) checkAddr(p *compiled, visitor netip.Addr) *Denial {
	// A dual-stack listener reports IPv4 visitors as ::ffff:a.b.c.d, while rules (and rate budgets)
	// name them by their IPv4 address; a zone is local to this host and in no rule.
	visitor = visitor.Unmap().WithZone("")
	if p.deny.contains(visitor) || p.allowOnly && !p.allow.contains(visitor) {
		return &Denial{Reason: ReasonIP, Status: http.StatusForbidden,
			Message: "Your network address may not visit this site."}
	}
	if p.limit != nil {
		if ok, wait := p.limit.allow(visitor, g.now()); !ok {
			return &Denial{Reason: ReasonRate, Status: http.StatusTooManyRequests,
				Header:  http.Header{"Retry-After": {strconv.Itoa(retryAfterSeconds(wait))}},
				Message: "Too many requests from your address; retry in a moment."}
		}
	}
	return nil
}

// setIdentity tells the target who the visitor is, and nothing else: an empty field is removed.
func setIdentity(r *http.Request, id Identity) {
	setOrDel(r.Header, HeaderUser, id.User)
	setOrDel(r.Header, HeaderEmail, id.Email)
}

func setOrDel(h http.Header, name, v string) {
	if v == "" {
		h.Del(name)
	} else {
		h.Set(name, v)
	}
}

// retryAfterSeconds rounds a wait up to whole seconds, as Retry-After takes them; at least 1, since
// 0 would invite an immediate retry that is refused again.
func retryAfterSeconds(wait time.Duration) int {
	s := wait / time.Second
	if wait%time.Second != 0 {
		s++
	}
	return max(int(s), 1)
}

// Invalidate drops the cached policy of domain (the admin calls it on every change); the next request
// reloads it. A load in flight is not waited for: requests that arrived before the change may still
// see the old policy, later ones never do.
func (g *Guard) Invalidate(domain string) {
	v, ok := g.entries.Load(domain)
	if !ok {
		return // nothing cached: the first request will read the store anyway
	}
	prev := v.(*entry).reusable()
	// An already expired entry rather than none, so that the reload can keep what did not change
	// (the visitors' rate budgets, the SSO instance).
	g.entries.Store(domain, expiredEntry(prev, g.elapsed()))
}

// Prime caches spec as domain's policy, as if a request had just loaded it. The gateway calls it when
// an agent of the domain connects (the tunnel's login reads the store anyway), so that a domain that
// is serving has its policy in memory before any visitor comes, and keeps serving it if the store
// then goes down. A spec that cannot be compiled is left for the first request to report.
func (g *Guard) Prime(domain string, spec policy.Spec) {
	var prev *compiled
	if v, ok := g.entries.Load(domain); ok {
		prev = v.(*entry).reusable()
	}
	pol, err := g.compile(domain, spec, prev)
	if err != nil {
		return
	}
	e := &entry{ready: make(chan struct{}), prev: prev, known: true}
	e.res.Store(&result{pol: pol, until: g.elapsed() + g.ttl})
	close(e.ready)
	g.entries.Store(domain, e)
}

// unavailable wraps both ErrStoreUnavailable and the cause, so that the proxy can branch on the first
// and log the second.
func unavailable(domain string, cause error) error {
	return fmt.Errorf("%w: policy of %s: %w", ErrStoreUnavailable, domain, cause)
}
