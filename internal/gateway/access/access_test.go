package access

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/hopgate/hopgate/internal/gateway/metrics"
	"github.com/hopgate/hopgate/internal/gateway/policy"
)

// fakeStore is the unit boundary: a map of policies. The registry behind the real one is tested
// with the registry.
type fakeStore struct {
	mu    sync.Mutex
	specs map[string]policy.Spec
	err   error
	calls atomic.Int64
	// gate, when set, holds every read until it is closed.
	gate chan struct{}
	// panics makes the next read panic.
	panics bool
}

func (s *fakeStore) Policy(ctx context.Context, domain string) (policy.Spec, error) {
	s.calls.Add(1)
	s.mu.Lock()
	gate, spec, err, panics := s.gate, s.specs[domain], s.err, s.panics
	s.panics = false
	s.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return policy.Spec{}, ctx.Err()
		}
	}
	if panics {
		panic("store exploded")
	}
	return spec, err
}

func (s *fakeStore) set(domain string, spec policy.Spec) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.specs == nil {
		s.specs = map[string]policy.Spec{}
	}
	s.specs[domain] = spec
}

func (s *fakeStore) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.err = err
}

// clock is a settable Options.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// fakeSSO follows the SSO contract just enough to check the order of the checks: the session is a
// cookie "session=<user>"; /.hopgate/callback answers, /.hopgate/outsider refuses, other reserved
// paths are not its own.
type fakeSSO struct{ domain string }

func (s *fakeSSO) Reserved(w http.ResponseWriter, r *http.Request) error {
	switch r.URL.Path {
	case "/.hopgate/callback":
		w.WriteHeader(http.StatusNoContent)
		return ErrHandled
	case "/.hopgate/outsider":
		return &Denial{Reason: ReasonSSO, Status: http.StatusForbidden, Message: "not allowed"}
	}
	return nil
}

func (s *fakeSSO) Identify(r *http.Request) (Identity, bool) {
	c, err := r.Cookie("session")
	if err != nil || c.Value == "" {
		return Identity{}, false
	}
	return Identity{User: c.Value, Email: c.Value + "@example.com"}, true
}

func (s *fakeSSO) Challenge(w http.ResponseWriter, r *http.Request) error {
	if r.Method == http.MethodGet && strings.Contains(r.Header.Get("Accept"), "text/html") {
		http.Redirect(w, r, "https://id.example.com/authorize", http.StatusFound)
		return ErrHandled
	}
	return &Denial{Reason: ReasonSSO, Status: http.StatusUnauthorized, Message: "sign in"}
}

// ssoBuilder counts the instances it builds.
type ssoBuilder struct {
	built atomic.Int64
	err   error
}

func (b *ssoBuilder) build(domain string, _ policy.OIDC) (SSO, error) {
	if b.err != nil {
		return nil, b.err
	}
	b.built.Add(1)
	return &fakeSSO{domain: domain}, nil
}

var (
	hashOnce sync.Once
	hashes   map[string]string
)

// hash returns a bcrypt hash of password, at MinCost except where the cost itself is under test.
func hash(t testing.TB, password string) string {
	t.Helper()
	hashOnce.Do(func() { hashes = map[string]string{} })
	if h, ok := hashes[password]; ok {
		return h
	}
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	hashes[password] = string(h)
	return string(h)
}

type fixture struct {
	store *fakeStore
	clock *clock
	sso   *ssoBuilder
	guard *Guard
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	f := &fixture{store: &fakeStore{}, clock: newClock(), sso: &ssoBuilder{}}
	f.guard = New(Options{Store: f.store, SSO: f.sso.build, Metrics: metrics.New(), Logger: quiet, Now: f.clock.Now, TTL: 30 * time.Second})
	return f
}

const domain = "app.example.com"

// quiet drops the log lines of loads that fail on purpose.
var quiet = slog.New(slog.DiscardHandler)

var (
	v4       = netip.MustParseAddr("203.0.113.5")
	v4Other  = netip.MustParseAddr("198.51.100.9")
	v4Mapped = netip.MustParseAddr("::ffff:203.0.113.5")
	v6       = netip.MustParseAddr("2001:db8:1:2::5")
	v6Other  = netip.MustParseAddr("2001:db9::1")
)

// outcome is what Admit decided, in a form tests compare.
type outcome struct {
	pass, handled, unavailable bool
	reason                     string
	status                     int
}

func (o outcome) String() string {
	switch {
	case o.pass:
		return "pass"
	case o.handled:
		return "handled"
	case o.unavailable:
		return "unavailable"
	}
	return fmt.Sprintf("denied %s %d", o.reason, o.status)
}

var (
	pass      = outcome{pass: true}
	handled   = outcome{handled: true}
	storeDown = outcome{unavailable: true}
)

func denied(reason string, status int) outcome { return outcome{reason: reason, status: status} }

func outcomeOf(t testing.TB, err error) outcome {
	t.Helper()
	var d *Denial
	switch {
	case err == nil:
		return pass
	case errors.Is(err, ErrHandled):
		return handled
	case errors.Is(err, ErrStoreUnavailable):
		return storeDown
	case errors.As(err, &d):
		return denied(d.Reason, d.Status)
	}
	t.Fatalf("Admit returned an error outside the contract: %v", err)
	return outcome{}
}

type req struct {
	method, path string
	user, pass   string // basic auth when user != ""
	header       map[string]string
	session      string
}

func (q req) build() *http.Request {
	method, path := q.method, q.path
	if method == "" {
		method = http.MethodGet
	}
	if path == "" {
		path = "/"
	}
	r := httptest.NewRequest(method, "https://"+domain+path, nil)
	if q.user != "" {
		r.SetBasicAuth(q.user, q.pass)
	}
	for k, v := range q.header {
		r.Header.Set(k, v)
	}
	if q.session != "" {
		r.AddCookie(&http.Cookie{Name: "session", Value: q.session})
	}
	return r
}

func TestAdmit(t *testing.T) {
	opsHash := hash(t, "s3cret")
	basic := []policy.BasicUser{{User: "ops", PasswordHash: opsHash}}
	oidc := &policy.OIDC{Issuer: "https://id.example.com", ClientID: "hopgate"}

	tests := []struct {
		name    string
		spec    policy.Spec
		visitor netip.Addr
		req     req
		want    outcome
		// what the target would see, for requests that pass
		wantUser, wantEmail string
		wantAuthorization   bool
		// added to the refusal
		wantHeader map[string]string
		// written by Admit itself
		wantCode int
	}{
		{name: "no policy", visitor: v4, req: req{user: "x", pass: "y"}, want: pass, wantAuthorization: true},

		{name: "v4 inside allow", spec: policy.Spec{IPAllow: []string{"203.0.113.0/24"}}, visitor: v4, want: pass},
		{name: "v4 outside allow", spec: policy.Spec{IPAllow: []string{"203.0.113.0/24"}}, visitor: v4Other, want: denied("ip", 403)},
		{name: "v4 single address allow", spec: policy.Spec{IPAllow: []string{"203.0.113.5"}}, visitor: v4, want: pass},
		{name: "v4 in deny", spec: policy.Spec{IPDeny: []string{"203.0.113.5"}}, visitor: v4, want: denied("ip", 403)},
		{name: "v4 outside deny", spec: policy.Spec{IPDeny: []string{"203.0.113.0/24"}}, visitor: v4Other, want: pass},
		{name: "deny wins over allow", spec: policy.Spec{IPAllow: []string{"203.0.113.0/24"}, IPDeny: []string{"203.0.113.5/32"}}, visitor: v4, want: denied("ip", 403)},
		{name: "allow among several lengths", spec: policy.Spec{IPAllow: []string{"10.0.0.0/8", "198.51.100.0/24", "2001:db8::/32"}}, visitor: v4Other, want: pass},

		{name: "v6 inside allow", spec: policy.Spec{IPAllow: []string{"2001:db8::/32"}}, visitor: v6, want: pass},
		{name: "v6 outside allow", spec: policy.Spec{IPAllow: []string{"2001:db8::/32"}}, visitor: v6Other, want: denied("ip", 403)},
		{name: "v6 in deny", spec: policy.Spec{IPDeny: []string{"2001:db8:1:2::5"}}, visitor: v6, want: denied("ip", 403)},
		{name: "v6 next to deny", spec: policy.Spec{IPDeny: []string{"2001:db8:1:2::6"}}, visitor: v6, want: pass},
		{name: "v6 visitor, v4 allow only", spec: policy.Spec{IPAllow: []string{"0.0.0.0/0"}}, visitor: v6, want: denied("ip", 403)},
		{name: "v6 with zone in deny", spec: policy.Spec{IPDeny: []string{"fe80::/10"}}, visitor: netip.MustParseAddr("fe80::1%eth0"), want: denied("ip", 403)},

		{name: "mapped visitor inside v4 allow", spec: policy.Spec{IPAllow: []string{"203.0.113.0/24"}}, visitor: v4Mapped, want: pass},
		{name: "mapped visitor in v4 deny", spec: policy.Spec{IPDeny: []string{"203.0.113.5"}}, visitor: v4Mapped, want: denied("ip", 403)},
		{name: "mapped rule, v4 visitor", spec: policy.Spec{IPDeny: []string{"::ffff:203.0.113.0/120"}}, visitor: v4, want: denied("ip", 403)},
		{name: "invalid visitor, allow list", spec: policy.Spec{IPAllow: []string{"0.0.0.0/0", "::/0"}}, visitor: netip.Addr{}, want: denied("ip", 403)},
		{name: "invalid visitor, deny list only", spec: policy.Spec{IPDeny: []string{"203.0.113.0/24"}}, visitor: netip.Addr{}, want: pass},

		{name: "basic right", spec: policy.Spec{BasicAuth: basic}, visitor: v4,
			req:  req{user: "ops", pass: "s3cret", header: map[string]string{HeaderEmail: "forged@example.com"}},
			want: pass, wantUser: "ops"},
		{name: "basic wrong password", spec: policy.Spec{BasicAuth: basic}, visitor: v4, req: req{user: "ops", pass: "guess"},
			want: denied("auth", 401), wantHeader: map[string]string{"WWW-Authenticate": `Basic realm="app.example.com", charset="UTF-8"`}},
		{name: "basic missing", spec: policy.Spec{BasicAuth: basic}, visitor: v4,
			want: denied("auth", 401), wantHeader: map[string]string{"WWW-Authenticate": `Basic realm="app.example.com", charset="UTF-8"`}},
		{name: "basic unknown user", spec: policy.Spec{BasicAuth: basic}, visitor: v4, req: req{user: "root", pass: "s3cret"}, want: denied("auth", 401)},
		{name: "basic user differs in case", spec: policy.Spec{BasicAuth: basic}, visitor: v4, req: req{user: "OPS", pass: "s3cret"}, want: denied("auth", 401)},
		{name: "bearer instead of basic", spec: policy.Spec{BasicAuth: basic}, visitor: v4,
			req: req{header: map[string]string{"Authorization": "Bearer s3cret"}}, want: denied("auth", 401)},
		{name: "password too long", spec: policy.Spec{BasicAuth: basic}, visitor: v4,
			req: req{user: "ops", pass: "s3cret" + strings.Repeat("x", 80)}, want: denied("auth", 401)},
		{name: "ip checked before basic", spec: policy.Spec{BasicAuth: basic, IPDeny: []string{"203.0.113.5"}}, visitor: v4,
			req: req{user: "ops", pass: "s3cret"}, want: denied("ip", 403)},
		{name: "reserved path is ordinary without oidc", spec: policy.Spec{BasicAuth: basic}, visitor: v4,
			req: req{path: "/.hopgate/callback"}, want: denied("auth", 401)},

		{name: "sso session", spec: policy.Spec{OIDC: oidc}, visitor: v4,
			req:  req{session: "alice", header: map[string]string{"Authorization": "Bearer for-the-target"}},
			want: pass, wantUser: "alice", wantEmail: "alice@example.com", wantAuthorization: true},
		{name: "sso browser without session", spec: policy.Spec{OIDC: oidc}, visitor: v4,
			req: req{header: map[string]string{"Accept": "text/html,*/*"}}, want: handled, wantCode: http.StatusFound},
		{name: "sso api call without session", spec: policy.Spec{OIDC: oidc}, visitor: v4,
			req: req{method: http.MethodPost, header: map[string]string{"Accept": "application/json"}}, want: denied("sso", 401)},
		{name: "sso callback", spec: policy.Spec{OIDC: oidc}, visitor: v4, req: req{path: "/.hopgate/callback"}, want: handled, wantCode: http.StatusNoContent},
		{name: "sso callback before basic", spec: policy.Spec{OIDC: oidc, BasicAuth: basic}, visitor: v4,
			req: req{path: "/.hopgate/callback"}, want: handled, wantCode: http.StatusNoContent},
		{name: "sso account outside the allowed set", spec: policy.Spec{OIDC: oidc}, visitor: v4, req: req{path: "/.hopgate/outsider"}, want: denied("sso", 403)},
		{name: "sso reserved path not its own still needs a session", spec: policy.Spec{OIDC: oidc}, visitor: v4,
			req: req{path: "/.hopgate/other"}, want: denied("sso", 401)},
		{name: "ip checked before sso callback", spec: policy.Spec{OIDC: oidc, IPAllow: []string{"198.51.100.0/24"}}, visitor: v4,
			req: req{path: "/.hopgate/callback"}, want: denied("ip", 403)},
		{name: "basic and sso, wrong password with session", spec: policy.Spec{OIDC: oidc, BasicAuth: basic}, visitor: v4,
			req: req{user: "ops", pass: "nope", session: "alice"}, want: denied("auth", 401)},
		{name: "basic and sso, both", spec: policy.Spec{OIDC: oidc, BasicAuth: basic}, visitor: v4,
			req: req{user: "ops", pass: "s3cret", session: "alice"}, want: pass, wantUser: "alice", wantEmail: "alice@example.com"},
		{name: "basic and sso, no session", spec: policy.Spec{OIDC: oidc, BasicAuth: basic}, visitor: v4,
			req: req{user: "ops", pass: "s3cret"}, want: denied("sso", 401)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.store.set(domain, tc.spec)
			r := tc.req.build()
			w := httptest.NewRecorder()
			err := f.guard.Admit(w, r, domain, tc.visitor)
			if got := outcomeOf(t, err); got != tc.want {
				t.Fatalf("Admit = %v (%v), want %v", got, err, tc.want)
			}
			if tc.wantCode != 0 && w.Code != tc.wantCode {
				t.Errorf("response written: %d, want %d", w.Code, tc.wantCode)
			}
			if tc.want.pass {
				if got := r.Header.Get(HeaderUser); got != tc.wantUser {
					t.Errorf("%s = %q, want %q", HeaderUser, got, tc.wantUser)
				}
				if got := r.Header.Get(HeaderEmail); got != tc.wantEmail && tc.wantUser != "" {
					t.Errorf("%s = %q, want %q", HeaderEmail, got, tc.wantEmail)
				}
				if got := r.Header.Get("Authorization") != ""; got != tc.wantAuthorization {
					t.Errorf("Authorization still there: %v, want %v", got, tc.wantAuthorization)
				}
			}
			var d *Denial
			if errors.As(err, &d) {
				for k, v := range tc.wantHeader {
					if got := d.Header.Get(k); got != v {
						t.Errorf("denial header %s = %q, want %q", k, got, v)
					}
				}
				if d.Message == "" || !strings.Contains(d.Error(), d.Reason) {
					t.Errorf("denial without a message or reason: %q", d.Error())
				}
			}
		})
	}
}

// TestDenialReasonsAreCounted checks that every reason Admit gives has a pre-created series.
func TestDenialReasonsAreCounted(t *testing.T) {
	known := map[string]bool{}
	for _, r := range metrics.AccessDeniedReasons {
		known[r] = true
	}
	for _, r := range []string{ReasonIP, ReasonAuth, ReasonRate, ReasonSSO} {
		if !known[r] {
			t.Errorf("reason %q is not in metrics.AccessDeniedReasons", r)
		}
	}
}

func TestRateLimit(t *testing.T) {
	f := newFixture(t)
	f.store.set(domain, policy.Spec{RateLimit: &policy.RateLimit{RPS: 0.25, Burst: 3}})
	admit := func(visitor netip.Addr) error {
		return f.guard.Admit(httptest.NewRecorder(), req{}.build(), domain, visitor)
	}
	for i := range 3 {
		if err := admit(v4); err != nil {
			t.Fatalf("request %d of the burst: %v", i+1, err)
		}
	}
	err := admit(v4)
	var d *Denial
	if !errors.As(err, &d) || d.Reason != ReasonRate || d.Status != http.StatusTooManyRequests {
		t.Fatalf("over the burst: %v, want 429 rate", err)
	}
	// One token every 4 s, none left: the next comes in 4 s.
	if got := d.Header.Get("Retry-After"); got != "4" {
		t.Errorf("Retry-After = %q, want 4", got)
	}

	// Other visitors have their own budget; the mapped form of the same address shares it; all the
	// addresses of an IPv6 /64 share one.
	if err := admit(v4Other); err != nil {
		t.Errorf("another visitor: %v", err)
	}
	if err := admit(v4Mapped); outcomeOf(t, err) != denied("rate", 429) {
		t.Errorf("the same visitor, IPv4-mapped: %v, want 429", err)
	}
	for i := range 3 {
		a := netip.MustParseAddr(fmt.Sprintf("2001:db8:1:2::%x", i+1))
		if err := admit(a); err != nil {
			t.Fatalf("%s: %v", a, err)
		}
	}
	if err := admit(netip.MustParseAddr("2001:db8:1:2:ffff::1")); outcomeOf(t, err) != denied("rate", 429) {
		t.Errorf("a fourth address in the same /64: %v, want 429", err)
	}
	if err := admit(netip.MustParseAddr("2001:db8:1:3::1")); err != nil {
		t.Errorf("the next /64: %v", err)
	}

	f.clock.Advance(4 * time.Second)
	if err := admit(v4); err != nil {
		t.Errorf("after a token refilled: %v", err)
	}
	if err := admit(v4); outcomeOf(t, err) != denied("rate", 429) {
		t.Errorf("that token spent: %v, want 429", err)
	}
}

func TestRetryAfterIsWholeSecondsAtLeastOne(t *testing.T) {
	for _, tc := range []struct {
		wait time.Duration
		want int
	}{{0, 1}, {time.Millisecond, 1}, {time.Second, 1}, {time.Second + 1, 2}, {2500 * time.Millisecond, 3},
		{1<<63 - 1, (1<<63-1)/int(time.Second) + 1}} {
		if got := retryAfterSeconds(tc.wait); got != tc.want {
			t.Errorf("retryAfterSeconds(%v) = %d, want %d", tc.wait, got, tc.want)
		}
	}
	f := newFixture(t)
	f.store.set(domain, policy.Spec{RateLimit: &policy.RateLimit{RPS: 100, Burst: 1}})
	_ = f.guard.Admit(httptest.NewRecorder(), req{}.build(), domain, v4)
	err := f.guard.Admit(httptest.NewRecorder(), req{}.build(), domain, v4)
	var d *Denial
	if !errors.As(err, &d) || d.Header.Get("Retry-After") != "1" {
		t.Fatalf("at 100 rps: %v, Retry-After %q, want 1", err, d.Header.Get("Retry-After"))
	}
}

// TestReloadKeepsWhatDidNotChange checks that a TTL reload of an unchanged policy keeps the visitors'
// budgets and the SSO instance, and that a real change replaces exactly the part that changed.
func TestReloadKeepsWhatDidNotChange(t *testing.T) {
	f := newFixture(t)
	oidc := &policy.OIDC{Issuer: "https://id.example.com", ClientID: "hopgate"}
	f.store.set(domain, policy.Spec{RateLimit: &policy.RateLimit{RPS: 0.001, Burst: 1}, OIDC: oidc})
	admit := func() error {
		return f.guard.Admit(httptest.NewRecorder(), req{session: "alice"}.build(), domain, v4)
	}
	if err := admit(); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(time.Minute) // past the TTL, far from refilling a token
	if err := admit(); outcomeOf(t, err) != denied("rate", 429) {
		t.Errorf("after a TTL reload: %v, want 429: the budget must survive a reload", err)
	}
	if got := f.store.calls.Load(); got != 2 {
		t.Errorf("%d store reads, want 2", got)
	}
	if got := f.sso.built.Load(); got != 1 {
		t.Errorf("SSO built %d times, want 1", got)
	}

	// Only the IP lists change: budgets and SSO are kept.
	f.store.set(domain, policy.Spec{RateLimit: &policy.RateLimit{RPS: 0.001, Burst: 1}, OIDC: oidc, IPDeny: []string{"192.0.2.1"}})
	f.guard.Invalidate(domain)
	if err := admit(); outcomeOf(t, err) != denied("rate", 429) {
		t.Errorf("after an IP change: %v, want 429", err)
	}
	// The rate changes: new budgets. The OIDC part changes: a new SSO.
	f.store.set(domain, policy.Spec{RateLimit: &policy.RateLimit{RPS: 0.001, Burst: 2},
		OIDC: &policy.OIDC{Issuer: "https://id.example.com", ClientID: "other"}})
	f.guard.Invalidate(domain)
	if err := admit(); err != nil {
		t.Errorf("after a rate change: %v, want a fresh budget", err)
	}
	if got := f.sso.built.Load(); got != 2 {
		t.Errorf("SSO built %d times, want 2", got)
	}
}

func TestSSOUnavailable(t *testing.T) {
	oidc := &policy.OIDC{Issuer: "https://id.example.com", ClientID: "hopgate"}
	t.Run("no builder", func(t *testing.T) {
		store := &fakeStore{}
		store.set(domain, policy.Spec{OIDC: oidc})
		g := New(Options{Store: store, Logger: quiet})
		err := g.Admit(httptest.NewRecorder(), req{session: "alice"}.build(), domain, v4)
		if !errors.Is(err, ErrStoreUnavailable) {
			t.Fatalf("Admit = %v, want ErrStoreUnavailable", err)
		}
	})
	t.Run("builder fails", func(t *testing.T) {
		f := newFixture(t)
		f.sso.err = errors.New("discovery: connection refused")
		f.store.set(domain, policy.Spec{OIDC: oidc})
		err := f.guard.Admit(httptest.NewRecorder(), req{session: "alice"}.build(), domain, v4)
		if !errors.Is(err, ErrStoreUnavailable) || !errors.Is(err, f.sso.err) {
			t.Fatalf("Admit = %v, want ErrStoreUnavailable wrapping the builder's error", err)
		}
	})
}

// silentSSO breaks the contract: Challenge neither answers nor refuses.
type silentSSO struct{ fakeSSO }

func (silentSSO) Challenge(http.ResponseWriter, *http.Request) error { return nil }

func TestChallengeThatLetsThroughIsRefused(t *testing.T) {
	store := &fakeStore{}
	store.set(domain, policy.Spec{OIDC: &policy.OIDC{Issuer: "https://id.example.com", ClientID: "hopgate"}})
	g := New(Options{Store: store, Logger: quiet, SSO: func(string, policy.OIDC) (SSO, error) { return &silentSSO{}, nil }})
	if err := g.Admit(httptest.NewRecorder(), req{}.build(), domain, v4); outcomeOf(t, err) != denied("sso", 401) {
		t.Fatalf("Admit = %v, want 401 sso", err)
	}
}

func TestBasicAuthCache(t *testing.T) {
	h, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.DefaultCost)
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t)
	f.store.set(domain, policy.Spec{BasicAuth: []policy.BasicUser{{User: "ops", PasswordHash: string(h)}}})
	timed := func(q req) (outcome, time.Duration) {
		r := q.build()
		start := time.Now()
		err := f.guard.Admit(httptest.NewRecorder(), r, domain, v4)
		return outcomeOf(t, err), time.Since(start)
	}
	// Load the policy first, so that only the check is timed.
	if got, _ := timed(req{}); got != denied("auth", 401) {
		t.Fatalf("without credentials: %v", got)
	}

	got, first := timed(req{user: "ops", pass: "s3cret"})
	if got != pass {
		t.Fatalf("first: %v", got)
	}
	got, second := timed(req{user: "ops", pass: "s3cret"})
	if got != pass {
		t.Fatalf("second: %v", got)
	}
	t.Logf("first check %v (bcrypt), second %v (cached)", first, second)
	if first < 10*time.Millisecond {
		t.Errorf("first check took %v: bcrypt at cost 10 should take more than 10 ms", first)
	}
	if second > time.Millisecond {
		t.Errorf("second check took %v, want under 1 ms from the cache", second)
	}

	// Wrong passwords and unknown users are never cached and cost a bcrypt each, the same for both.
	_, wrong := timed(req{user: "ops", pass: "guess"})
	_, unknown := timed(req{user: "nobody", pass: "s3cret"})
	t.Logf("wrong password %v, unknown user %v", wrong, unknown)
	if wrong < 10*time.Millisecond || unknown < 10*time.Millisecond {
		t.Errorf("wrong password %v, unknown user %v: both should cost a full bcrypt", wrong, unknown)
	}

	// A new password (a new hash) does not match what was remembered for the old one.
	f.store.set(domain, policy.Spec{BasicAuth: []policy.BasicUser{{User: "ops", PasswordHash: hash(t, "n3w")}}})
	f.guard.Invalidate(domain)
	if got, _ := timed(req{user: "ops", pass: "s3cret"}); got != denied("auth", 401) {
		t.Errorf("old password after a change: %v, want 401", got)
	}
	if got, _ := timed(req{user: "ops", pass: "n3w"}); got != pass {
		t.Errorf("new password: %v", got)
	}
}

func TestVerifiedCacheIsBounded(t *testing.T) {
	v := newVerifier()
	for i := range maxVerified + 100 {
		v.remember(v.sum(fmt.Sprint(i), "pw", dummyHash))
	}
	if n := len(v.ok); n != maxVerified {
		t.Errorf("%d remembered, want %d", n, maxVerified)
	}
}

func TestInvalidateTakesEffectAtOnce(t *testing.T) {
	f := newFixture(t)
	admit := func() outcome {
		return outcomeOf(t, f.guard.Admit(httptest.NewRecorder(), req{}.build(), domain, v4))
	}
	if got := admit(); got != pass {
		t.Fatalf("no policy: %v", got)
	}
	f.store.set(domain, policy.Spec{IPDeny: []string{"203.0.113.0/24"}})
	if got := admit(); got != pass {
		t.Fatalf("cached for the TTL without Invalidate: %v", got)
	}
	f.guard.Invalidate(domain)
	if got := admit(); got != denied("ip", 403) {
		t.Fatalf("after Invalidate: %v, want 403", got)
	}
	f.store.set(domain, policy.Spec{})
	f.guard.Invalidate(domain)
	if got := admit(); got != pass {
		t.Fatalf("policy removed: %v", got)
	}
	f.guard.Invalidate("never-seen.example.com") // nothing cached: nothing kept for it either
	if _, ok := f.guard.entries.Load("never-seen.example.com"); ok {
		t.Error("Invalidate of a domain never asked for made an entry")
	}
}

func TestTTLReload(t *testing.T) {
	f := newFixture(t)
	admit := func() outcome {
		return outcomeOf(t, f.guard.Admit(httptest.NewRecorder(), req{}.build(), domain, v4))
	}
	_ = admit()
	f.store.set(domain, policy.Spec{IPDeny: []string{"203.0.113.5"}})
	f.clock.Advance(29 * time.Second)
	if got := admit(); got != pass {
		t.Fatalf("within the TTL: %v", got)
	}
	f.clock.Advance(time.Second)
	if got := admit(); got != denied("ip", 403) {
		t.Fatalf("at the TTL: %v, want the change seen", got)
	}
	if got := f.store.calls.Load(); got != 2 {
		t.Errorf("%d store reads, want 2", got)
	}
}

func TestStoreErrorFailsClosed(t *testing.T) {
	f := newFixture(t)
	down := errors.New("connection refused")
	f.store.fail(down)
	admit := func() error { return f.guard.Admit(httptest.NewRecorder(), req{}.build(), domain, v4) }

	err := admit()
	if !errors.Is(err, ErrStoreUnavailable) || !errors.Is(err, down) {
		t.Fatalf("Admit = %v, want ErrStoreUnavailable wrapping the cause", err)
	}
	// Remembered briefly, so that a store that is down is not asked once per request.
	if err := admit(); !errors.Is(err, ErrStoreUnavailable) {
		t.Fatalf("second request: %v", err)
	}
	if got := f.store.calls.Load(); got != 1 {
		t.Errorf("%d store reads within %v, want 1", got, failureTTL)
	}
	f.store.fail(nil)
	f.clock.Advance(failureTTL)
	if err := admit(); err != nil {
		t.Fatalf("store back: %v", err)
	}

	// A policy that was known is kept when its reload fails: the store being down must not take down
	// a domain that was serving, nor open one that was closed.
	f.store.set(domain, policy.Spec{IPAllow: []string{"203.0.113.0/24"}})
	f.guard.Invalidate(domain)
	if err := admit(); err != nil {
		t.Fatal(err)
	}
	f.store.fail(down)
	f.clock.Advance(time.Minute)
	if err := admit(); err != nil {
		t.Fatalf("reload failed: %v, want the last known policy to let the allowed visitor in", err)
	}
	outside := netip.MustParseAddr("198.51.100.1")
	var d *Denial
	if err := f.guard.Admit(httptest.NewRecorder(), req{}.build(), domain, outside); !errors.As(err, &d) || d.Reason != ReasonIP {
		t.Fatalf("reload failed, visitor outside the allow list: %v, want the last known policy's 403", err)
	}
	// A change the store confirmed (Invalidate) is not known here until it loads: then 503.
	f.guard.Invalidate(domain)
	if err := admit(); !errors.Is(err, ErrStoreUnavailable) {
		t.Fatalf("after a change, store down: %v, want ErrStoreUnavailable", err)
	}
}

func TestStorePanicFailsClosed(t *testing.T) {
	f := newFixture(t)
	f.store.panics = true
	func() {
		defer func() { _ = recover() }()
		_ = f.guard.Admit(httptest.NewRecorder(), req{}.build(), domain, v4)
		t.Error("the panic did not reach the caller")
	}()
	if err := f.guard.Admit(httptest.NewRecorder(), req{}.build(), domain, v4); !errors.Is(err, ErrStoreUnavailable) {
		t.Fatalf("after a panicking load: %v, want ErrStoreUnavailable, never open", err)
	}
}

func TestInvalidPolicyFromTheStoreFailsClosed(t *testing.T) {
	for name, spec := range map[string]policy.Spec{
		"bad cidr":            {IPDeny: []string{"203.0.113.0/33"}},
		"plain password only": {BasicAuth: []policy.BasicUser{{User: "ops", Password: "s3cret"}}},
	} {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t)
			f.store.set(domain, spec)
			if err := f.guard.Admit(httptest.NewRecorder(), req{}.build(), domain, v4); !errors.Is(err, ErrStoreUnavailable) {
				t.Fatalf("Admit = %v, want ErrStoreUnavailable", err)
			}
		})
	}
}

// TestConcurrentFirstRequestsLoadOnce checks that requests arriving together for a domain not yet
// cached wait for one read of the store.
func TestConcurrentFirstRequestsLoadOnce(t *testing.T) {
	f := newFixture(t)
	f.store.set(domain, policy.Spec{IPAllow: []string{"203.0.113.0/24"}})
	f.store.gate = make(chan struct{})
	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() { errs <- f.guard.Admit(httptest.NewRecorder(), req{}.build(), domain, v4) })
	}
	for f.store.calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond) // let the others reach the wait
	close(f.store.gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("Admit: %v", err)
		}
	}
	if got := f.store.calls.Load(); got != 1 {
		t.Errorf("%d store reads, want 1", got)
	}
}

// TestWaiterLeavesWithItsContext checks that a request waiting for another's load gives up when its
// own context ends, and the load goes on for the others.
func TestWaiterLeavesWithItsContext(t *testing.T) {
	f := newFixture(t)
	f.store.gate = make(chan struct{})
	first := make(chan error, 1)
	go func() { first <- f.guard.Admit(httptest.NewRecorder(), req{}.build(), domain, v4) }()
	for f.store.calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r := req{}.build().WithContext(ctx)
	if err := f.guard.Admit(httptest.NewRecorder(), r, domain, v4); !errors.Is(err, ErrStoreUnavailable) || !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled waiter: %v", err)
	}
	close(f.store.gate)
	if err := <-first; err != nil {
		t.Errorf("the loading request: %v", err)
	}
}

func TestIdleEntriesAreDropped(t *testing.T) {
	f := newFixture(t)
	admit := func(d string) {
		if err := f.guard.Admit(httptest.NewRecorder(), req{}.build(), d, v4); err != nil {
			t.Fatal(err)
		}
	}
	count := func() (n int) {
		f.guard.entries.Range(func(any, any) bool { n++; return true })
		return n
	}
	for i := range 100 {
		admit(fmt.Sprintf("d%d.example.com", i))
	}
	f.guard.Invalidate("d0.example.com")
	if got := count(); got != 100 {
		t.Fatalf("%d entries, want 100", got)
	}
	// Within 10 × TTL, an idle entry stays (a reload is cheaper than a miss later).
	f.clock.Advance(5 * 30 * time.Second)
	admit("busy.example.com")
	if got := count(); got != 101 {
		t.Fatalf("%d entries after 5 TTL, want 101", got)
	}
	// An entry in use is reloaded at every TTL, so idleness counts from its expiry.
	f.clock.Advance(6*30*time.Second + time.Second)
	admit("busy2.example.com")
	if got := count(); got != 2 {
		t.Errorf("%d entries after 10 TTL idle past their expiry, want 2 (the ones just asked)", got)
	}
}

// TestConcurrentAdmitAndInvalidate runs Admit, Invalidate, policy changes and TTL expiries together
// (run with -race): every outcome must be one the policies allow, and nothing may deadlock.
func TestConcurrentAdmitAndInvalidate(t *testing.T) {
	f := newFixture(t)
	specs := []policy.Spec{
		{},
		{IPDeny: []string{"203.0.113.0/24"}},
		{RateLimit: &policy.RateLimit{RPS: 1000, Burst: 1000}},
		{BasicAuth: []policy.BasicUser{{User: "ops", PasswordHash: hash(t, "s3cret")}}},
		{OIDC: &policy.OIDC{Issuer: "https://id.example.com", ClientID: "hopgate"}},
	}
	domains := []string{"a.example.com", "b.example.com", "c.example.com"}
	for _, d := range domains {
		f.store.set(d, specs[0])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	var wg sync.WaitGroup
	var admitted atomic.Int64
	for i := range 16 {
		wg.Go(func() {
			for n := 0; ctx.Err() == nil; n++ {
				d := domains[(i+n)%len(domains)]
				r := req{user: "ops", pass: "s3cret", session: "alice"}.build()
				err := f.guard.Admit(httptest.NewRecorder(), r, d, v4)
				switch o := outcomeOf(t, err); {
				case o.pass, o == denied("ip", 403), o == denied("rate", 429):
				default:
					t.Errorf("%s: unexpected %v", d, o)
					return
				}
				admitted.Add(1)
			}
		})
	}
	wg.Go(func() {
		for n := 0; ctx.Err() == nil; n++ {
			d := domains[n%len(domains)]
			f.store.set(d, specs[n%len(specs)])
			f.guard.Invalidate(d)
			if n%7 == 0 {
				f.clock.Advance(time.Minute)
			}
			time.Sleep(100 * time.Microsecond)
		}
	})
	wg.Wait()
	t.Logf("%d admissions", admitted.Load())
}

// benchGuard is a Guard whose domain's policy is already cached.
func benchGuard(b *testing.B, spec policy.Spec) *Guard {
	b.Helper()
	store := &fakeStore{}
	store.set(domain, spec)
	g := New(Options{Store: store})
	if err := g.Admit(httptest.NewRecorder(), req{user: "ops", pass: "s3cret"}.build(), domain, v4); err != nil {
		b.Fatal(err)
	}
	return g
}

// BenchmarkAdmitNoPolicy is what every request of a domain without a policy pays.
func BenchmarkAdmitNoPolicy(b *testing.B) {
	g := benchGuard(b, policy.Spec{})
	r, w := req{}.build(), httptest.NewRecorder()
	b.ReportAllocs()
	for b.Loop() {
		if err := g.Admit(w, r, domain, v4); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAdmitNoPolicyParallel(b *testing.B) {
	g := benchGuard(b, policy.Spec{})
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		r, w := req{}.build(), httptest.NewRecorder()
		for pb.Next() {
			if err := g.Admit(w, r, domain, v4); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkAdmitIPAndBasic is a domain with an IP allow list and basic auth, the credentials cached
// after the first request as a browser's are.
func BenchmarkAdmitIPAndBasic(b *testing.B) {
	h, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.DefaultCost)
	if err != nil {
		b.Fatal(err)
	}
	g := benchGuard(b, policy.Spec{
		IPAllow:   []string{"198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"},
		IPDeny:    []string{"203.0.113.7"},
		BasicAuth: []policy.BasicUser{{User: "ops", PasswordHash: string(h)}},
	})
	r, w := req{user: "ops", pass: "s3cret"}.build(), httptest.NewRecorder()
	auth := r.Header["Authorization"]
	b.ReportAllocs()
	for b.Loop() {
		r.Header["Authorization"] = auth // Admit removed it
		if err := g.Admit(w, r, domain, v4); err != nil {
			b.Fatal(err)
		}
	}
}

// TestPrime: a policy handed over at the tunnel's login is used without reading the store, and kept
// when the store is down at the first visit.
func TestPrime(t *testing.T) {
	f := newFixture(t)
	f.store.fail(errors.New("connection refused"))
	f.guard.Prime(domain, policy.Spec{IPAllow: []string{"203.0.113.0/24"}})
	if err := f.guard.Admit(httptest.NewRecorder(), req{}.build(), domain, v4); err != nil {
		t.Fatalf("allowed visitor: %v", err)
	}
	var d *Denial
	if err := f.guard.Admit(httptest.NewRecorder(), req{}.build(), domain, netip.MustParseAddr("198.51.100.1")); !errors.As(err, &d) {
		t.Fatalf("visitor outside the primed allow list: %v, want a denial", err)
	}
	f.guard.Prime("open.test", policy.Spec{})
	f.clock.Advance(time.Hour)
	if err := f.guard.Admit(httptest.NewRecorder(), req{}.build(), "open.test", v4); err != nil {
		t.Fatalf("a domain primed without a policy, store down past the TTL: %v, want it to keep serving", err)
	}
	if f.store.calls.Load() == 0 {
		t.Error("no reload was tried after the TTL: a change made elsewhere would never be seen")
	}
}

// TestAdmitAddr: a raw connection (TCP port, TLS passthrough) meets the same IP rules and rate
// budget as a request, and a policy that asks for credentials refuses it, since a byte stream
// carries none the gateway could check.
func TestAdmitAddr(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	if err := f.guard.AdmitAddr(ctx, domain, v4); err != nil {
		t.Fatalf("no policy: %v", err)
	}
	f.store.set(domain, policy.Spec{IPAllow: []string{"203.0.113.0/24", "2001:db8::/32"}, IPDeny: []string{"203.0.113.5/32"},
		RateLimit: &policy.RateLimit{RPS: 0.25, Burst: 2}})
	f.guard.Invalidate(domain)
	for _, tc := range []struct {
		addr netip.Addr
		want outcome
	}{
		{v4, denied(ReasonIP, http.StatusForbidden)},       // denied wins over allowed
		{v4Mapped, denied(ReasonIP, http.StatusForbidden)}, // by its IPv4 form
		{v4Other, denied(ReasonIP, http.StatusForbidden)},  // outside the allow list
		{v6, pass},
		{v6, pass},
		{v6, denied(ReasonRate, http.StatusTooManyRequests)}, // the third connection in the burst of 2
	} {
		if got := outcomeOf(t, f.guard.AdmitAddr(ctx, domain, tc.addr)); got != tc.want {
			t.Errorf("AdmitAddr(%s) = %s, want %s", tc.addr, got, tc.want)
		}
	}
	for name, spec := range map[string]policy.Spec{
		"basic auth": {BasicAuth: []policy.BasicUser{{User: "ops", PasswordHash: hash(t, "pw")}}},
		"sso":        {OIDC: &policy.OIDC{Issuer: "https://id.example.com", ClientID: "c", ClientSecret: "s", AllowedDomains: []string{"example.com"}}},
	} {
		f.store.set(domain, spec)
		f.guard.Invalidate(domain)
		if got := outcomeOf(t, f.guard.AdmitAddr(ctx, domain, v6Other)); got != denied(ReasonAuth, http.StatusUnauthorized) {
			t.Errorf("%s: AdmitAddr = %s, want a refusal", name, got)
		}
	}
	f.store.fail(errors.New("store down"))
	f.guard.Invalidate(domain)
	if got := outcomeOf(t, f.guard.AdmitAddr(ctx, domain, v6Other)); got != storeDown {
		t.Errorf("store down: AdmitAddr = %s, want unavailable", got)
	}
}
