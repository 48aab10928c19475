// Package sso signs the visitors of a protected domain in with an OpenID provider (authorization code
// flow with PKCE, state and nonce) and keeps them signed in with an encrypted cookie of that domain.
package sso

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"golang.org/x/oauth2"

	"github.com/hopgate/hopgate/internal/gateway/access"
	"github.com/hopgate/hopgate/internal/gateway/policy"
)

// Options are shared by every domain a builder makes.
type Options struct {
	// Key returns the gateway-wide session key (at least 32 bytes, kept in the registry so that
	// sessions survive a restart). It is asked again after a minute, so a rotation ends sessions
	// within that time.
	Key func(ctx context.Context) ([]byte, error)
	// KeyGeneration, if set, returns a number that changes whenever the key is rotated through this
	// gateway; the cached key is then read again at once instead of after a minute.
	KeyGeneration func() uint64
	// HTTPClient talks to the providers (discovery, code exchange, key sets). It should have a
	// timeout and trust the extra roots of HOP_SERVER_OIDC_CA_ROOTS; nil is a client with a
	// 10-second timeout and the system roots. Response bodies are cut off at 1 MiB either way.
	HTTPClient *http.Client
	// Port is the public HTTPS port visitors use, for the callback URL; 0 and 443 leave it out.
	Port int
	// SessionTTL is how long a sign-in lasts; 12 hours when zero.
	SessionTTL time.Duration
	// Now is the clock of what the gateway itself dates: cookie expiry and the key and discovery
	// caches; time.Now when nil. ID tokens carry the provider's timestamps and are checked against
	// the real time.
	Now func() time.Time
	// Logger gets the causes the visitor is not shown; slog.Default() when nil.
	Logger *slog.Logger
}

const (
	flowCookie    = "__Host-hopgate_flow"
	sessionCookie = "__Host-hopgate_session"
	// flowTTL is how long a visitor may take at the provider's sign-in page.
	flowTTL = 10 * time.Minute

	callbackPath = "/.hopgate/callback"
	logoutPath   = "/.hopgate/logout"

	// maxReturnPath keeps the flow cookie well under the 4 KiB browsers store; a longer address
	// returns the visitor to "/" instead.
	maxReturnPath = 2048
	// maxClaim bounds each identity field stored in the session cookie.
	maxClaim = 512

	defaultSessionTTL  = 12 * time.Hour
	defaultGroupsClaim = "groups"
)

// New returns the builder the access package calls for each domain with an OIDC policy. Building
// does no network work: discovery runs on the first request that needs the provider and is kept.
func New(o Options) access.SSOBuilder {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.SessionTTL <= 0 {
		o.SessionTTL = defaultSessionTTL
	}
	keys := &keyring{fetch: o.Key, generation: o.KeyGeneration, now: o.Now, log: o.Logger}
	client := boundedClient(o.HTTPClient)
	return func(domain string, cfg policy.OIDC) (access.SSO, error) {
		domain = strings.TrimSuffix(strings.ToLower(domain), ".")
		switch {
		case o.Key == nil:
			return nil, errors.New("sso: no session key source")
		case domain == "":
			return nil, errors.New("sso: empty domain")
		case cfg.Issuer == "" || cfg.ClientID == "":
			return nil, fmt.Errorf("sso for %s: issuer and client id are required", domain)
		}
		scopes := []string{"openid", "email", "profile"}
		if len(cfg.AllowedGroups) > 0 {
			// Several providers (Dex, Okta, Authelia) put groups into the ID token only when
			// this scope is asked for.
			scopes = append(scopes, "groups")
		}
		s := &domainSSO{
			opts:   o,
			keys:   keys,
			domain: domain,
			log:    o.Logger.With("domain", domain),
			allow:  newAllowList(cfg),
			policy: policyID(cfg),
			disc: &discovery{
				issuer: cfg.Issuer, clientID: cfg.ClientID, clientSecret: cfg.ClientSecret,
				scopes: scopes, client: client, now: o.Now,
			},
			client: client,
		}
		return s, nil
	}
}

// domainSSO is single sign-on for one domain and one policy.
type domainSSO struct {
	opts   Options
	keys   *keyring
	domain string // lower case; "*.example.com" for a wildcard name
	log    *slog.Logger
	allow  allowList
	policy string // policyID of the policy, which sessions are bound to
	disc   *discovery
	client *http.Client
}

// session is what the session cookie holds.
type session struct {
	Subject  string `json:"sub"`
	User     string `json:"usr"`
	Email    string `json:"eml,omitempty"`
	Policy   string `json:"pol"`
	IssuedAt int64  `json:"iat"`
	Expires  int64  `json:"exp"`
}

// policyID names the parts of a policy that decide who may visit. A session made under another
// policy is no session: a visitor signed in before the allowed set was narrowed must not stay in
// for the rest of the session TTL. Signing in again is usually silent, as the provider remembers
// the visitor. The client secret is left out: rotating it changes nobody's right to visit.
func policyID(cfg policy.OIDC) string {
	orEmpty := func(l []string) []string {
		if l == nil {
			return []string{}
		}
		return l
	}
	b, _ := json.Marshal([]any{cfg.Issuer, cfg.ClientID, orEmpty(cfg.AllowedEmails), orEmpty(cfg.AllowedDomains),
		orEmpty(cfg.AllowedGroups), cfg.GroupsClaim})
	sum := sha256.Sum256(b)
	return base64.RawURLEncoding.EncodeToString(sum[:12])
}

// flow is what the flow cookie holds between the redirect to the provider and the callback.
type flow struct {
	State    string `json:"st"`
	Verifier string `json:"pv"`
	Nonce    string `json:"n"`
	Return   string `json:"r"`
	Expires  int64  `json:"exp"`
}

const (
	kindSession = "session"
	kindFlow    = "flow"
)

// Identify returns the identity of a valid session cookie. A cookie that is tampered with, expired,
// made for another domain or under a rotated key is no session.
func (s *domainSSO) Identify(r *http.Request) (access.Identity, bool) {
	cookies := r.CookiesNamed(sessionCookie)
	if len(cookies) == 0 {
		return access.Identity{}, false
	}
	host, ok := s.host(r)
	if !ok {
		return access.Identity{}, false
	}
	c, err := s.codec(r.Context(), host, kindSession)
	if err != nil {
		// Challenge, which follows, reports the cause.
		return access.Identity{}, false
	}
	now := s.opts.Now().Unix()
	ttl := int64(s.opts.SessionTTL / time.Second)
	// Every copy is tried: a stale cookie sent first must not hide a good one.
	for _, ck := range cookies {
		plain, err := c.open(ck.Value)
		if err != nil {
			continue
		}
		var sess session
		// The issue time counts too, so that shortening SessionTTL shortens the sessions
		// already made.
		if json.Unmarshal(plain, &sess) != nil || sess.Expires <= now || sess.IssuedAt+ttl <= now ||
			sess.Policy != s.policy || sess.User == "" {
			continue
		}
		return access.Identity{User: sess.User, Email: sess.Email}, true
	}
	return access.Identity{}, false
}

// Challenge sends a browser to the provider; anything else is told to sign in (401).
func (s *domainSSO) Challenge(w http.ResponseWriter, r *http.Request) error {
	if !isNavigation(r) {
		return deny(http.StatusUnauthorized, "This address needs single sign-on: open it in a browser to sign in.", nil)
	}
	host, ok := s.host(r)
	if !ok {
		return deny(http.StatusBadRequest, "This host name is not covered by the domain's sign-in.", nil)
	}
	rem, err := s.disc.get(r.Context())
	if err != nil {
		// 502, as for any upstream the gateway cannot reach; Identify needs no provider, so
		// visitors already signed in are not affected.
		return s.fail(r.Context(), http.StatusBadGateway, msgUnreachable, err, nil)
	}
	c, err := s.codec(r.Context(), host, kindFlow)
	if err != nil {
		// 503, as for the store the key is kept in.
		return s.fail(r.Context(), http.StatusServiceUnavailable, "Sign-in is unavailable for the moment.", err, nil)
	}
	f := flow{
		State:    randomString(),
		Verifier: oauth2.GenerateVerifier(),
		Nonce:    randomString(),
		Return:   returnPath(r),
		Expires:  s.opts.Now().Add(flowTTL).Unix(),
	}
	plain, err := json.Marshal(f)
	if err != nil {
		return fmt.Errorf("encode the sign-in flow: %w", err)
	}
	http.SetCookie(w, newCookie(flowCookie, c.seal(plain), flowTTL))
	cfg := rem.oauth
	cfg.RedirectURL = s.callbackURL(host)
	w.Header().Set("Cache-Control", "no-store")
	http.Redirect(w, r, authCodeURL(&cfg, f), http.StatusFound)
	return access.ErrHandled
}

// Reserved answers the gateway's own paths under /.hopgate/ on a protected domain.
func (s *domainSSO) Reserved(w http.ResponseWriter, r *http.Request) error {
	switch r.URL.Path {
	case callbackPath:
		return s.callback(w, r)
	case logoutPath:
		return s.logout(w, r)
	}
	return deny(http.StatusNotFound, "There is nothing at this address.", nil)
}

// logout ends the session and answers a page rather than a redirect: sending the visitor back to
// "/" would start a sign-in at once, which the provider's own session would usually complete
// silently, and the visitor would seem never to have signed out.
func (s *domainSSO) logout(w http.ResponseWriter, r *http.Request) error {
	http.SetCookie(w, clearCookie(sessionCookie))
	http.SetCookie(w, clearCookie(flowCookie))
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = io.WriteString(w, logoutPage)
	}
	return access.ErrHandled
}

const logoutPage = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex"><title>Signed out · HopGate</title></head>
<body><main>
<h1>You are signed out</h1><p><a href="/">Sign in again</a></p>
<h2 lang="ko">로그아웃되었습니다</h2><p lang="ko"><a href="/">다시 로그인</a></p>
</main></body></html>
`

// host is the name cookies and the callback URL are made for: the domain itself, or for a wildcard
// domain the visitor's host name, which must be one label under it.
func (s *domainSSO) host(r *http.Request) (string, bool) {
	suffix, wildcard := strings.CutPrefix(s.domain, "*")
	if !wildcard {
		return s.domain, true
	}
	h := r.Host
	if hh, _, err := net.SplitHostPort(h); err == nil {
		h = hh
	}
	h = strings.TrimSuffix(strings.ToLower(h), ".")
	label, ok := strings.CutSuffix(h, suffix)
	if !ok || label == "" || strings.Contains(label, ".") {
		return "", false
	}
	return h, true
}

func (s *domainSSO) callbackURL(host string) string {
	if p := s.opts.Port; p != 0 && p != 443 {
		host = net.JoinHostPort(host, strconv.Itoa(p))
	}
	return "https://" + host + callbackPath
}

// codec derives the cookie codec of one kind for host under the current session key. Deriving and
// opening a cookie take a few microseconds together, small beside proxying a request, so codecs are
// made per request rather than cached per host and key.
func (s *domainSSO) codec(ctx context.Context, host, kind string) (*codec, error) {
	key, err := s.keys.get(ctx)
	if err != nil {
		return nil, err
	}
	return newCodec(key, host, kind)
}

func deny(status int, msg string, h http.Header) *access.Denial {
	return &access.Denial{Reason: access.ReasonSSO, Status: status, Header: h, Message: msg}
}

// isNavigation tells a browser opening a page, which can be sent to the provider and back, from API
// calls, form posts, WebSocket upgrades and gRPC, which cannot follow a sign-in and get a 401.
func isNavigation(r *http.Request) bool {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return false
	}
	if r.Header.Get("Upgrade") != "" || strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
		return false
	}
	accept := r.Header.Values("Accept")
	if len(accept) == 0 {
		return true
	}
	for _, v := range accept {
		for part := range strings.SplitSeq(v, ",") {
			mt, _, _ := strings.Cut(part, ";")
			if strings.EqualFold(strings.TrimSpace(mt), "text/html") {
				return true
			}
		}
	}
	return false
}

// returnPath is where the visitor goes after signing in: the path and query they asked for, never
// another host. A request target like "//evil.example/" would be read by the browser as a host, so
// such paths, overlong ones and the gateway's own return "/" instead.
func returnPath(r *http.Request) string {
	p := r.URL.RequestURI()
	if !strings.HasPrefix(p, "/") || strings.HasPrefix(p, "//") || strings.HasPrefix(p, "/\\") ||
		strings.HasPrefix(p, access.ReservedPrefix) || len(p) > maxReturnPath || strings.ContainsAny(p, "\r\n\x00") {
		return "/"
	}
	return p
}

func newCookie(name, value string, ttl time.Duration) *http.Cookie {
	// The __Host- prefix makes browsers refuse the cookie unless it is Secure, host-only and for
	// "/", so no sibling or parent domain can set or read it.
	return &http.Cookie{
		Name: name, Value: value, Path: "/", MaxAge: int(ttl / time.Second),
		Secure: true, HttpOnly: true, SameSite: http.SameSiteLaxMode,
	}
}

// ClearSession is the cookie that ends a sign-in: for a page of the gateway's that signs out on its
// own (the console) rather than through the logout path.
func ClearSession() *http.Cookie { return clearCookie(sessionCookie) }

func clearCookie(name string) *http.Cookie {
	return &http.Cookie{Name: name, Value: "", Path: "/", MaxAge: -1, Secure: true, HttpOnly: true, SameSite: http.SameSiteLaxMode}
}

// randomString is 256 bits of randomness (base32): a state or a nonce.
func randomString() string {
	return rand.Text() + rand.Text()
}
