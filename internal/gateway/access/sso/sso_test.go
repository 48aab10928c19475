package sso

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hopgate/hopgate/internal/gateway/access"
	"github.com/hopgate/hopgate/internal/gateway/devcert"
	"github.com/hopgate/hopgate/internal/gateway/policy"
	"github.com/hopgate/hopgate/internal/testutil/fakeclock"
	"github.com/hopgate/hopgate/internal/testutil/oidctest"
)

// The provider's accounts. IDs differ from usernames, so that Identity.User is seen to be the
// preferred_username, not the subject.
var (
	alice = oidctest.User{ID: "u-alice", Username: "alice", Password: "pw-alice", Email: "Alice@Example.test", EmailVerified: true}
	bob   = oidctest.User{ID: "u-bob", Username: "bob", Password: "pw-bob", Email: "bob@other.test", EmailVerified: true}
	carol = oidctest.User{ID: "u-carol", Username: "carol", Password: "pw-carol", Email: "carol@other.test", EmailVerified: true, Groups: []string{"staff", "ops"}}
	dave  = oidctest.User{ID: "u-dave", Username: "dave", Password: "pw-dave", Email: "dave@example.test", EmailVerified: false}
	erin  = oidctest.User{ID: "u-erin", Username: "erin", Password: "pw-erin", Email: "erin@other.test", EmailVerified: true, Claims: map[string]any{"role": "admin"}}
)

// harness is a provider, and a gateway stand-in serving any *.example.test over TLS that does what
// the access package does with an SSO: reserved paths, then Identify, then Challenge.
type harness struct {
	t      *testing.T
	idp    *oidctest.Provider
	clock  *fakeclock.Clock
	logs   *lockedBuffer
	port   int
	client *http.Client // a browser: cookie jar, trusts both servers, does not follow redirects

	gwTransport *http.Transport // the gateway's, to the provider

	mu     sync.Mutex
	key    []byte
	keyErr error
	ssos   map[string]access.SSO
	build  access.SSOBuilder
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	h := &harness{
		t:     t,
		idp:   oidctest.Start(t, alice, bob, carol, dave, erin),
		clock: fakeclock.New(time.Now()),
		logs:  &lockedBuffer{},
		key:   testKey(t),
		ssos:  map[string]access.SSO{},
	}
	ca, err := devcert.NewCA("gateway", []string{"*.example.test"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	gw := httptest.NewUnstartedServer(http.HandlerFunc(h.serve))
	gw.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Cert}}
	gw.StartTLS()
	t.Cleanup(gw.Close)
	h.port = gw.Listener.Addr().(*net.TCPAddr).Port

	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca.CertPEM)
	roots.AppendCertsFromPEM(h.idp.CAPEM)
	jar, _ := cookiejar.New(nil)
	var d net.Dialer
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots},
		// Every *.example.test is the gateway stand-in.
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if host, _, _ := net.SplitHostPort(addr); strings.HasSuffix(host, ".example.test") {
				addr = gw.Listener.Addr().String()
			}
			return d.DialContext(ctx, network, addr)
		},
	}
	t.Cleanup(tr.CloseIdleConnections)
	h.client = &http.Client{
		Jar: jar, Transport: tr, Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}

	// The gateway's own client trusts the provider as HOP_SERVER_OIDC_CA_ROOTS would make it.
	h.gwTransport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: h.idp.Pool}}
	t.Cleanup(h.gwTransport.CloseIdleConnections)
	h.build = h.builder(time.Hour)
	return h
}

// builder is what the gateway makes at start.
func (h *harness) builder(ttl time.Duration) access.SSOBuilder {
	return New(Options{
		Key:        h.sessionKey,
		HTTPClient: &http.Client{Transport: h.gwTransport, Timeout: 5 * time.Second},
		Port:       h.port,
		SessionTTL: ttl,
		Now:        h.clock.Now,
		Logger:     slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
}

// protect gives host its policy; the OIDC part points at the harness's provider.
func (h *harness) protect(host string, cfg policy.OIDC) access.SSO {
	h.t.Helper()
	cfg.Issuer, cfg.ClientID, cfg.ClientSecret = h.idp.Issuer, oidctest.ClientID, h.idp.ClientSecret
	s, err := h.build(host, cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ssos[host] = s
	return s
}

func (h *harness) sessionKey(context.Context) ([]byte, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.key, h.keyErr
}

func (h *harness) setKey(key []byte, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.key, h.keyErr = key, err
}

func (h *harness) serve(w http.ResponseWriter, r *http.Request) {
	host, _, _ := net.SplitHostPort(r.Host)
	h.mu.Lock()
	s := h.ssos[host]
	h.mu.Unlock()
	if s == nil {
		http.NotFound(w, r)
		return
	}
	var err error
	if strings.HasPrefix(r.URL.Path, access.ReservedPrefix) {
		err = s.Reserved(w, r)
	} else if id, ok := s.Identify(r); ok {
		fmt.Fprintf(w, "user=%s email=%s", id.User, id.Email)
		return
	} else {
		err = s.Challenge(w, r)
	}
	var d *access.Denial
	switch {
	case errors.Is(err, access.ErrHandled):
	case errors.As(err, &d):
		if d.Reason != access.ReasonSSO {
			h.t.Errorf("denial reason %q", d.Reason)
		}
		for k, v := range d.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(d.Status)
		io.WriteString(w, d.Message)
	default:
		h.t.Errorf("%s %s: unexpected result %v", r.Method, r.URL, err)
		w.WriteHeader(http.StatusInternalServerError)
	}
}

func (h *harness) url(host, pathQuery string) string {
	return "https://" + host + ":" + strconv.Itoa(h.port) + pathQuery
}

// do sends a request as the browser and reads the body.
func (h *harness) do(method, u string, header http.Header) (*http.Response, string) {
	h.t.Helper()
	req, err := http.NewRequest(method, u, nil)
	if err != nil {
		h.t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := h.client.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

var browser = http.Header{"Accept": {"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}}

// signIn opens page on host and goes through the provider's login as user; it returns the
// gateway's answer to the callback.
func (h *harness) signIn(host, page string, user oidctest.User) *http.Response {
	h.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, h.url(host, page), nil)
	req.Header = browser.Clone()
	resp, err := h.client.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	if resp.StatusCode != http.StatusFound {
		h.t.Fatalf("GET %s: %s, want a redirect to the provider", page, resp.Status)
	}
	cb, err := h.idp.Login(h.client, resp, user.Username, user.Password)
	if err != nil {
		h.t.Fatal(err)
	}
	defer cb.Body.Close()
	b, _ := io.ReadAll(cb.Body)
	cb.Body = io.NopCloser(bytes.NewReader(b))
	return cb
}

// resetBrowser forgets every cookie.
func (h *harness) resetBrowser() {
	h.client.Jar, _ = cookiejar.New(nil)
}

func (h *harness) sessionCookie(host string) *http.Cookie {
	u, _ := url.Parse(h.url(host, "/"))
	for _, c := range h.client.Jar.Cookies(u) {
		if c.Name == sessionCookie {
			return c
		}
	}
	return nil
}

// setSessionCookie replaces the browser's session cookie for host.
func (h *harness) setSessionCookie(host, value string) {
	u, _ := url.Parse(h.url(host, "/"))
	h.client.Jar.SetCookies(u, []*http.Cookie{{Name: sessionCookie, Value: value, Path: "/", Secure: true}})
}

func TestSignIn(t *testing.T) {
	h := newHarness(t)
	tests := []struct {
		name      string
		cfg       policy.OIDC
		user      oidctest.User
		wantOK    bool
		wantEmail string
	}{
		{name: "any account", user: bob, wantOK: true, wantEmail: bob.Email},
		{name: "allowed e-mail, any case", cfg: policy.OIDC{AllowedEmails: []string{"alice@example.TEST"}}, user: alice, wantOK: true, wantEmail: alice.Email},
		{name: "e-mail not in the list", cfg: policy.OIDC{AllowedEmails: []string{"alice@example.test"}}, user: bob},
		{name: "allowed domain", cfg: policy.OIDC{AllowedDomains: []string{"example.test"}}, user: alice, wantOK: true, wantEmail: alice.Email},
		{name: "domain not in the list", cfg: policy.OIDC{AllowedDomains: []string{"example.test"}}, user: bob},
		{name: "unverified e-mail in an allowed domain", cfg: policy.OIDC{AllowedDomains: []string{"example.test"}}, user: dave},
		{name: "unverified e-mail, any account: no e-mail passed on", user: dave, wantOK: true, wantEmail: ""},
		{name: "allowed group", cfg: policy.OIDC{AllowedGroups: []string{"ops"}}, user: carol, wantOK: true, wantEmail: carol.Email},
		{name: "no allowed group", cfg: policy.OIDC{AllowedGroups: []string{"ops"}}, user: alice},
		{name: "group or domain, by group", cfg: policy.OIDC{AllowedGroups: []string{"ops"}, AllowedDomains: []string{"example.test"}}, user: carol, wantOK: true, wantEmail: carol.Email},
		{name: "groups claim of another name, a single string", cfg: policy.OIDC{GroupsClaim: "role", AllowedGroups: []string{"admin"}}, user: erin, wantOK: true, wantEmail: erin.Email},
		{name: "groups claim of another name, no match", cfg: policy.OIDC{GroupsClaim: "role", AllowedGroups: []string{"ops"}}, user: carol},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			host := fmt.Sprintf("c%d.example.test", i)
			h.protect(host, tc.cfg)
			cb := h.signIn(host, "/some/page?x=1&y=%2F", tc.user)
			body, _ := io.ReadAll(cb.Body)
			if !tc.wantOK {
				if cb.StatusCode != http.StatusForbidden {
					t.Fatalf("callback: %s %q, want 403", cb.Status, body)
				}
				if h.sessionCookie(host) != nil {
					t.Fatal("a refused account got a session cookie")
				}
				return
			}
			if cb.StatusCode != http.StatusFound || cb.Header.Get("Location") != "/some/page?x=1&y=%2F" {
				t.Fatalf("callback: %s to %q (%q), want 302 to the page first asked for", cb.Status, cb.Header.Get("Location"), body)
			}
			if cb.Header.Get("Cache-Control") != "no-store" {
				t.Errorf("callback Cache-Control %q", cb.Header.Get("Cache-Control"))
			}
			assertCookieAttrs(t, cb, sessionCookie, "Max-Age=3600")
			resp, got := h.do(http.MethodGet, h.url(host, "/some/page"), browser)
			want := fmt.Sprintf("user=%s email=%s", tc.user.Username, tc.wantEmail)
			if resp.StatusCode != http.StatusOK || got != want {
				t.Fatalf("signed in: %s %q, want 200 %q", resp.Status, got, want)
			}
		})
	}
}

// assertCookieAttrs checks that resp sets cookie name with the attributes of a __Host- cookie.
func assertCookieAttrs(t *testing.T, resp *http.Response, name string, more ...string) {
	t.Helper()
	for _, sc := range resp.Header.Values("Set-Cookie") {
		if !strings.HasPrefix(sc, name+"=") || strings.HasPrefix(sc, name+"=;") {
			continue
		}
		for _, attr := range append([]string{"Path=/", "HttpOnly", "Secure", "SameSite=Lax"}, more...) {
			if !strings.Contains(sc, "; "+attr) {
				t.Errorf("Set-Cookie %.40s… lacks %s", sc, attr)
			}
		}
		if strings.Contains(sc, "Domain=") {
			t.Errorf("Set-Cookie %.40s… has a Domain", sc)
		}
		return
	}
	t.Errorf("no Set-Cookie for %s in %q", name, resp.Header.Values("Set-Cookie"))
}

func TestChallengeRedirect(t *testing.T) {
	h := newHarness(t)
	const host = "a.example.test"
	h.protect(host, policy.OIDC{AllowedGroups: []string{"ops"}})
	resp, _ := h.do(http.MethodGet, h.url(host, "/"), browser)
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("%s, want 302", resp.Status)
	}
	if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control %q", cc)
	}
	assertCookieAttrs(t, resp, flowCookie, "Max-Age=600")
	loc, err := resp.Location()
	if err != nil {
		t.Fatal(err)
	}
	q := loc.Query()
	for k, want := range map[string]string{
		"response_type":         "code",
		"client_id":             oidctest.ClientID,
		"redirect_uri":          h.url(host, "/.hopgate/callback"),
		"code_challenge_method": "S256",
		"scope":                 "openid email profile groups",
	} {
		if q.Get(k) != want {
			t.Errorf("authorization request %s=%q, want %q", k, q.Get(k), want)
		}
	}
	for _, k := range []string{"state", "nonce", "code_challenge"} {
		if len(q.Get(k)) < 40 {
			t.Errorf("authorization request %s=%q: too short", k, q.Get(k))
		}
	}
	if q.Get("state") == q.Get("nonce") {
		t.Error("state and nonce are the same")
	}
	if !strings.HasPrefix(loc.String(), h.idp.Issuer+"/") {
		t.Errorf("redirect to %s, not to the provider", loc)
	}
}

func TestChallengeRefusesNonBrowsers(t *testing.T) {
	h := newHarness(t)
	s := h.protect("a.example.test", policy.OIDC{})
	tests := []struct {
		name     string
		method   string
		header   http.Header
		redirect bool
	}{
		{"browser navigation", http.MethodGet, browser, true},
		{"HEAD navigation", http.MethodHead, browser, true},
		{"no Accept", http.MethodGet, nil, true},
		{"API call", http.MethodGet, http.Header{"Accept": {"application/json"}}, false},
		{"curl", http.MethodGet, http.Header{"Accept": {"*/*"}}, false},
		{"image", http.MethodGet, http.Header{"Accept": {"image/avif,image/webp,*/*"}}, false},
		{"form post", http.MethodPost, browser, false},
		{"WebSocket upgrade", http.MethodGet, http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}}, false},
		{"gRPC", http.MethodPost, http.Header{"Content-Type": {"application/grpc"}}, false},
		{"gRPC-style GET", http.MethodGet, http.Header{"Content-Type": {"application/grpc+proto"}}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(tc.method, "https://a.example.test/x", nil)
			r.Header = tc.header.Clone()
			if r.Header == nil {
				r.Header = http.Header{}
			}
			w := httptest.NewRecorder()
			err := s.Challenge(w, r)
			if tc.redirect {
				if !errors.Is(err, access.ErrHandled) || w.Code != http.StatusFound {
					t.Fatalf("got %v, %d; want a redirect", err, w.Code)
				}
				return
			}
			var d *access.Denial
			if !errors.As(err, &d) || d.Status != http.StatusUnauthorized || d.Reason != access.ReasonSSO {
				t.Fatalf("got %v, want a 401 sso denial", err)
			}
			if len(w.Header()) != 0 || w.Body.Len() != 0 {
				t.Errorf("a denial wrote to the response: %v %q", w.Header(), w.Body)
			}
		})
	}
}

func TestSession(t *testing.T) {
	h := newHarness(t)
	const a, b = "a.example.test", "b.example.test"
	h.protect(a, policy.OIDC{})
	h.protect(b, policy.OIDC{})
	signedIn := func(host string) bool {
		t.Helper()
		resp, body := h.do(http.MethodGet, h.url(host, "/"), browser)
		switch resp.StatusCode {
		case http.StatusOK:
			return true
		case http.StatusFound:
			return false
		}
		t.Fatalf("GET %s: %s %q", host, resp.Status, body)
		return false
	}
	signInA := func() *http.Cookie {
		t.Helper()
		h.resetBrowser()
		if cb := h.signIn(a, "/", alice); cb.StatusCode != http.StatusFound {
			t.Fatalf("callback: %s", cb.Status)
		}
		if !signedIn(a) {
			t.Fatal("not signed in after the callback")
		}
		return h.sessionCookie(a)
	}

	t.Run("expired", func(t *testing.T) {
		signInA()
		h.clock.Advance(time.Hour - time.Second)
		if !signedIn(a) {
			t.Fatal("signed out before the session TTL")
		}
		h.clock.Advance(time.Second)
		if signedIn(a) {
			t.Fatal("still signed in after the session TTL")
		}
	})

	t.Run("tampered", func(t *testing.T) {
		c := signInA()
		raw := []byte(c.Value)
		// Not the last character: its low bits may be padding, which decoding ignores.
		for _, i := range []int{0, len(raw) / 2, len(raw) - 2} {
			bad := bytes.Clone(raw)
			if bad[i] = 'A'; raw[i] == 'A' {
				bad[i] = 'B'
			}
			h.setSessionCookie(a, string(bad))
			if signedIn(a) {
				t.Fatalf("signed in with character %d changed", i)
			}
		}
		h.setSessionCookie(a, c.Value)
		if !signedIn(a) {
			t.Fatal("the untouched cookie no longer works")
		}
	})

	t.Run("another domain's cookie", func(t *testing.T) {
		c := signInA()
		h.setSessionCookie(b, c.Value)
		if signedIn(b) {
			t.Fatal("a cookie of domain a was accepted on domain b")
		}
	})

	t.Run("flow cookie as a session", func(t *testing.T) {
		h.resetBrowser()
		resp, _ := h.do(http.MethodGet, h.url(a, "/"), browser)
		found := false
		for _, c := range resp.Cookies() {
			if c.Name == flowCookie {
				h.setSessionCookie(a, c.Value)
				found = true
			}
		}
		if !found {
			t.Fatalf("%s without a flow cookie", resp.Status)
		}
		if signedIn(a) {
			t.Fatal("a flow cookie was accepted as a session")
		}
	})

	t.Run("logout", func(t *testing.T) {
		signInA()
		resp, body := h.do(http.MethodGet, h.url(a, "/.hopgate/logout"), browser)
		if resp.StatusCode != http.StatusOK || !strings.Contains(body, "signed out") {
			t.Fatalf("logout: %s %q", resp.Status, body)
		}
		if resp.Header.Get("Cache-Control") != "no-store" {
			t.Errorf("logout Cache-Control %q", resp.Header.Get("Cache-Control"))
		}
		cleared := false
		for _, sc := range resp.Header.Values("Set-Cookie") {
			cleared = cleared || strings.HasPrefix(sc, sessionCookie+"=;") && strings.Contains(sc, "Max-Age=0")
		}
		if !cleared {
			t.Fatalf("logout did not clear the session cookie: %q", resp.Header.Values("Set-Cookie"))
		}
		if h.sessionCookie(a) != nil || signedIn(a) {
			t.Fatal("still signed in after logout")
		}
	})

	t.Run("key rotation", func(t *testing.T) {
		signInA()
		h.setKey(testKey(t), nil)
		// The old key is kept for up to keyTTL: a rotation is seen within that.
		h.clock.Advance(keyTTL)
		if signedIn(a) {
			t.Fatal("still signed in after the session key was rotated")
		}
		signInA()
	})

	t.Run("restart", func(t *testing.T) {
		signInA()
		// A new builder with the same key and policy, as after a gateway restart.
		h.build = h.builder(time.Hour)
		h.protect(a, policy.OIDC{})
		if !signedIn(a) {
			t.Fatal("a restart ended the session")
		}
	})

	t.Run("policy change", func(t *testing.T) {
		signInA()
		h.protect(a, policy.OIDC{AllowedEmails: []string{"someone@else.test"}})
		if signedIn(a) {
			t.Fatal("still signed in after the allowed set changed")
		}
		h.protect(a, policy.OIDC{})
	})

	t.Run("shorter session TTL", func(t *testing.T) {
		signInA()
		h.build = h.builder(time.Minute)
		h.protect(a, policy.OIDC{})
		h.clock.Advance(time.Minute)
		if signedIn(a) {
			t.Fatal("a session outlived a shortened TTL")
		}
		h.build = h.builder(time.Hour)
		h.protect(a, policy.OIDC{})
	})

	t.Run("store outage keeps the last key", func(t *testing.T) {
		signInA()
		h.setKey(nil, errors.New("database is down"))
		h.clock.Advance(keyTTL)
		if !signedIn(a) {
			t.Fatal("signed out by a store outage")
		}
		key := testKey(t)
		h.setKey(key, nil)
		h.clock.Advance(keyRetry)
		if signedIn(a) {
			t.Fatal("the rotation that came with the store's recovery was not seen")
		}
	})
}

func TestCallbackRefusals(t *testing.T) {
	h := newHarness(t)
	const host = "a.example.test"
	h.protect(host, policy.OIDC{})
	callback := func(query string) (*http.Response, string) {
		t.Helper()
		return h.do(http.MethodGet, h.url(host, "/.hopgate/callback?"+query), browser)
	}
	startFlow := func() url.Values {
		t.Helper()
		resp, _ := h.do(http.MethodGet, h.url(host, "/"), browser)
		loc, err := resp.Location()
		if err != nil {
			t.Fatal(err)
		}
		return loc.Query()
	}
	expect := func(resp *http.Response, body string, status int, clearsFlow bool) {
		t.Helper()
		if resp.StatusCode != status {
			t.Fatalf("%s %q, want %d", resp.Status, body, status)
		}
		if clearsFlow {
			found := false
			for _, sc := range resp.Header.Values("Set-Cookie") {
				found = found || strings.HasPrefix(sc, flowCookie+"=;")
			}
			if !found {
				t.Error("the refused callback did not clear the flow cookie")
			}
		}
		if h.sessionCookie(host) != nil {
			t.Fatal("a refused callback set a session cookie")
		}
	}

	t.Run("no flow cookie", func(t *testing.T) {
		resp, body := callback("state=abc&code=def")
		expect(resp, body, http.StatusBadRequest, true)
	})
	t.Run("state mismatch", func(t *testing.T) {
		startFlow()
		resp, body := callback("state=not-the-state&code=def")
		expect(resp, body, http.StatusBadRequest, true)
	})
	t.Run("provider error", func(t *testing.T) {
		q := startFlow()
		resp, body := callback("state=" + url.QueryEscape(q.Get("state")) + "&error=access_denied&error_description=%3Cscript%3E")
		expect(resp, body, http.StatusUnauthorized, true)
		if !strings.Contains(body, "access_denied") || strings.Contains(body, "script") {
			t.Errorf("message %q", body)
		}
	})
	t.Run("no code", func(t *testing.T) {
		q := startFlow()
		resp, body := callback("state=" + url.QueryEscape(q.Get("state")))
		expect(resp, body, http.StatusBadRequest, true)
	})
	t.Run("expired flow", func(t *testing.T) {
		q := startFlow()
		h.clock.Advance(flowTTL)
		resp, body := callback("state=" + url.QueryEscape(q.Get("state")) + "&code=def")
		expect(resp, body, http.StatusBadRequest, true)
	})
	t.Run("replayed callback", func(t *testing.T) {
		// Keep the flow cookie the callback clears, as an attacker replaying it would.
		resp, _ := h.do(http.MethodGet, h.url(host, "/"), browser)
		var flowValue string
		for _, c := range resp.Cookies() {
			if c.Name == flowCookie {
				flowValue = c.Value
			}
		}
		cb, err := h.idp.Login(h.client, resp, alice.Username, alice.Password)
		if err != nil {
			t.Fatal(err)
		}
		cb.Body.Close()
		if cb.StatusCode != http.StatusFound {
			t.Fatalf("first callback: %s", cb.Status)
		}
		h.resetBrowser()
		u, _ := url.Parse(h.url(host, "/"))
		h.client.Jar.SetCookies(u, []*http.Cookie{{Name: flowCookie, Value: flowValue, Path: "/", Secure: true}})
		again, body := h.do(http.MethodGet, cb.Request.URL.String(), browser)
		expect(again, body, http.StatusBadRequest, true)
	})
	t.Run("wrong password", func(t *testing.T) {
		resp, _ := h.do(http.MethodGet, h.url(host, "/"), browser)
		if _, err := h.idp.Login(h.client, resp, alice.Username, "wrong"); err == nil {
			t.Fatal("the provider accepted a wrong password")
		}
	})
	t.Run("unknown reserved path", func(t *testing.T) {
		resp, body := h.do(http.MethodGet, h.url(host, "/.hopgate/other"), browser)
		if resp.StatusCode != http.StatusNotFound {
			t.Fatalf("%s %q, want 404", resp.Status, body)
		}
	})
}

// TestReturnPath checks that the page a visitor returns to after signing in is always on the domain.
func TestReturnPath(t *testing.T) {
	h := newHarness(t)
	const host = "a.example.test"
	s := h.protect(host, policy.OIDC{})
	long := "/" + strings.Repeat("a", maxReturnPath)
	for _, tc := range []struct{ target, want string }{
		{"/some/page?q=%2F%2Fx", "/some/page?q=%2F%2Fx"},
		{"//evil.test/x", "/"},
		{"///evil.test/x", "/"},
		{"/\\evil.test/x", "/%5Cevil.test/x"},
		{"/.hopgate/logout", "/"},
		{long, "/"},
	} {
		t.Run(tc.target[:min(len(tc.target), 20)], func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "https://"+host+"/", nil)
			r.URL = &url.URL{Path: tc.target}
			if p, q, ok := strings.Cut(tc.target, "?"); ok {
				r.URL = &url.URL{Path: p, RawQuery: q}
			}
			w := httptest.NewRecorder()
			if err := s.Challenge(w, r); !errors.Is(err, access.ErrHandled) {
				t.Fatal(err)
			}
			var f flow
			for _, c := range w.Result().Cookies() {
				if c.Name == flowCookie {
					plain, err := mustCodec(t, h.key, host, kindFlow).open(c.Value)
					if err != nil {
						t.Fatal(err)
					}
					if err := json.Unmarshal(plain, &f); err != nil {
						t.Fatal(err)
					}
				}
			}
			if f.Return != tc.want {
				t.Fatalf("return path %q, want %q", f.Return, tc.want)
			}
			base, _ := url.Parse("https://" + host + "/x")
			if u, err := base.Parse(f.Return); err != nil || u.Host != host {
				t.Fatalf("return path %q leads to %v (%v)", f.Return, u, err)
			}
		})
	}
}

func TestProviderUnreachable(t *testing.T) {
	// A port nothing listens on: take one and close it.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	var dials int
	var mu sync.Mutex
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			mu.Lock()
			dials++
			mu.Unlock()
			return (&net.Dialer{}).DialContext(ctx, network, a)
		},
	}}
	clk := fakeclock.New(time.Now())
	logs := &lockedBuffer{}
	build := New(Options{
		Key:        func(context.Context) ([]byte, error) { return testKey(t), nil },
		HTTPClient: client, Now: clk.Now,
		Logger: slog.New(slog.NewTextHandler(logs, nil)),
	})
	s, err := build("a.example.test", policy.OIDC{Issuer: "https://" + addr, ClientID: "c", ClientSecret: "very-secret"})
	if err != nil {
		t.Fatal(err)
	}
	challenge := func() {
		t.Helper()
		r := httptest.NewRequest(http.MethodGet, "https://a.example.test/", nil)
		err := s.Challenge(httptest.NewRecorder(), r)
		var d *access.Denial
		if !errors.As(err, &d) || d.Status != http.StatusBadGateway {
			t.Fatalf("got %v, want a 502 denial", err)
		}
	}
	challenge()
	challenge()
	mu.Lock()
	if dials != 1 {
		t.Errorf("%d discovery attempts within discoveryRetry, want 1", dials)
	}
	mu.Unlock()
	clk.Advance(discoveryRetry)
	challenge()
	mu.Lock()
	if dials != 2 {
		t.Errorf("%d discovery attempts after discoveryRetry, want 2", dials)
	}
	mu.Unlock()
	if !strings.Contains(logs.String(), "connection refused") {
		t.Errorf("the cause is not logged: %q", logs.String())
	}
	if strings.Contains(logs.String(), "very-secret") {
		t.Error("the client secret was logged")
	}
}

// TestNothingSecretLogged runs sign-ins, refusals and failures and then looks for every secret in
// the log: the client secret, the codes, states, nonces and cookie values.
func TestNothingSecretLogged(t *testing.T) {
	h := newHarness(t)
	const host = "a.example.test"
	h.protect(host, policy.OIDC{AllowedGroups: []string{"ops"}})
	var secrets []string
	for _, u := range []oidctest.User{carol, alice} {
		h.resetBrowser()
		resp, _ := h.do(http.MethodGet, h.url(host, "/"), browser)
		loc, _ := resp.Location()
		secrets = append(secrets, loc.Query().Get("state"), loc.Query().Get("nonce"))
		for _, c := range resp.Cookies() {
			secrets = append(secrets, c.Value)
		}
		cb, err := h.idp.Login(h.client, resp, u.Username, u.Password)
		if err != nil {
			t.Fatal(err)
		}
		cb.Body.Close()
		secrets = append(secrets, cb.Request.URL.Query().Get("code"))
		for _, c := range cb.Cookies() {
			secrets = append(secrets, c.Value)
		}
		// Replay the code: the token endpoint refuses it.
		again, _ := h.do(http.MethodGet, cb.Request.URL.String(), browser)
		if again.StatusCode != http.StatusBadRequest {
			t.Errorf("replay: %s", again.Status)
		}
	}
	// A wrong client secret: the token endpoint refuses the gateway itself.
	const badHost = "b.example.test"
	s, err := h.build(badHost, policy.OIDC{Issuer: h.idp.Issuer, ClientID: oidctest.ClientID, ClientSecret: "not-the-secret"})
	if err != nil {
		t.Fatal(err)
	}
	h.mu.Lock()
	h.ssos[badHost] = s
	h.mu.Unlock()
	h.resetBrowser()
	resp, _ := h.do(http.MethodGet, h.url(badHost, "/"), browser)
	cb, err := h.idp.Login(h.client, resp, alice.Username, alice.Password)
	if err != nil {
		t.Fatal(err)
	}
	cb.Body.Close()
	if cb.StatusCode != http.StatusBadGateway {
		t.Errorf("wrong client secret: %s, want 502", cb.Status)
	}
	secrets = append(secrets, h.idp.ClientSecret, "not-the-secret", cb.Request.URL.Query().Get("code"))

	logs := h.logs.String()
	if !strings.Contains(logs, "token endpoint answered 401") {
		t.Errorf("the refused exchange is not logged: %q", logs)
	}
	for _, s := range secrets {
		if s != "" && strings.Contains(logs, s) {
			t.Errorf("a secret (%.6s…) is in the log", s)
		}
	}
}

func TestHost(t *testing.T) {
	tests := []struct {
		domain, reqHost, want string
		ok                    bool
	}{
		{"a.example.test", "a.example.test:8443", "a.example.test", true},
		{"a.example.test", "anything", "a.example.test", true},
		{"*.apps.example.test", "x.apps.example.test:8443", "x.apps.example.test", true},
		{"*.apps.example.test", "X.Apps.Example.Test.", "x.apps.example.test", true},
		{"*.apps.example.test", "y.x.apps.example.test", "", false},
		{"*.apps.example.test", "apps.example.test", "", false},
		{"*.apps.example.test", ".apps.example.test", "", false},
		{"*.apps.example.test", "xapps.example.test", "", false},
	}
	for _, tc := range tests {
		s := &domainSSO{domain: tc.domain}
		got, ok := s.host(&http.Request{Host: tc.reqHost})
		if got != tc.want || ok != tc.ok {
			t.Errorf("%s for %s: %q %v, want %q %v", tc.domain, tc.reqHost, got, ok, tc.want, tc.ok)
		}
	}
}

func TestBodyLimit(t *testing.T) {
	for _, tc := range []struct {
		size    int
		wantErr bool
	}{{maxProviderBody, false}, {maxProviderBody + 1, true}} {
		rt := roundTripFunc(func(*http.Request) (*http.Response, error) {
			return &http.Response{StatusCode: 200, Body: io.NopCloser(bytes.NewReader(make([]byte, tc.size)))}, nil
		})
		c := boundedClient(&http.Client{Transport: rt})
		resp, err := c.Get("https://idp.example.test/")
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		if tc.wantErr != errors.Is(err, errBodyTooLarge) || len(b) > maxProviderBody {
			t.Errorf("body of %d bytes: read %d, %v", tc.size, len(b), err)
		}
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
