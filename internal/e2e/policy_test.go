package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hopgate/hopgate/internal/testutil/oidctest"
	"github.com/hopgate/hopgate/internal/testutil/poll"
	"google.golang.org/grpc/codes"
)

// Access policy through the real binaries, on both stores: IP rules on the visitor's real address,
// basic auth, rate limits, and changes that take effect without a restart.

// policyTarget is a target that records the headers of every request it gets.
type policyTarget struct {
	mu   sync.Mutex
	seen []http.Header
	url  string
}

func newPolicyTarget(t *testing.T) *policyTarget {
	p := &policyTarget{}
	s := tnTarget(t, func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		p.seen = append(p.seen, r.Header.Clone())
		p.mu.Unlock()
		_, _ = io.WriteString(w, "private page")
	})
	p.url = s.URL
	return p
}

func (p *policyTarget) last() http.Header {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.seen) == 0 {
		return nil
	}
	return p.seen[len(p.seen)-1]
}

func (p *policyTarget) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.seen)
}

// setPolicy PUTs a policy document for domain and fails unless the gateway takes it.
func setPolicy(t *testing.T, g *gateway, domain, doc string) {
	t.Helper()
	code, body, err := g.hop.Admin(context.Background(), http.MethodPut, "/api/v1/admin/domains/policy?domain="+domain, rawJSON(doc))
	if err != nil || code != http.StatusOK {
		t.Fatalf("PUT policy %s: %d %v: %s", doc, code, err, body)
	}
}

// rawJSON is a request body the admin client sends as it is.
type rawJSON string

func (r rawJSON) MarshalJSON() ([]byte, error) { return []byte(r), nil }

// clientFrom is an HTTPS client of g whose connections leave from local (a loopback address), so a
// test can be a trusted proxy (127.0.0.2) or an ordinary visitor (127.0.0.1).
func clientFrom(t *testing.T, g *gateway, local string) *http.Client {
	dialer := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	tr := &http.Transport{
		TLSClientConfig: g.tlsConfig(),
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, network, g.addr)
		},
		TLSNextProto:      map[string]func(string, *tls.Conn) http.RoundTripper{},
		DisableKeepAlives: true,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// visit sends GET / for domain with the given headers and returns the status, headers and body.
func visitWith(t *testing.T, c *http.Client, g *gateway, domain string, header map[string]string) (int, http.Header, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, g.url(domain, "/"), nil)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, res.Header, string(b)
}

func TestPolicyIPRules(t *testing.T) {
	t.Parallel()
	for _, st := range gwStores {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			const domain = "ip.policy.test"
			target := newPolicyTarget(t)
			g := startGateway(t, gatewayOptions{DSN: st.dsn(t), Env: []string{
				"HOP_SERVER_TRUSTED_PROXIES=127.0.0.2/32", "HOP_SERVER_METRICS_LISTEN=127.0.0.1:0"}})
			g.startAgent(domain, g.register(domain), target.url)
			setPolicy(t, g, domain, `{"ip_allow": ["198.51.100.0/24", "2001:db8::/32"], "ip_deny": ["2001:db8::bad"]}`)

			visitor, proxy := clientFrom(t, g, "127.0.0.1"), clientFrom(t, g, "127.0.0.2")
			for _, c := range []struct {
				name   string
				client *http.Client
				xff    string
				want   int
			}{
				{"a visitor outside the allow list", visitor, "", http.StatusForbidden},
				{"the same visitor claiming an allowed address", visitor, "198.51.100.7", http.StatusForbidden},
				{"an allowed IPv4 visitor behind the trusted proxy", proxy, "198.51.100.7", http.StatusOK},
				{"an allowed IPv6 visitor behind the trusted proxy", proxy, "2001:db8::1", http.StatusOK},
				{"a denied IPv6 visitor inside the allowed range: deny wins", proxy, "2001:db8::bad", http.StatusForbidden},
				{"a visitor who forged the left of the chain", proxy, "198.51.100.7, 203.0.113.9", http.StatusForbidden},
				{"a chain through two trusted hops", proxy, "198.51.100.9, 127.0.0.2", http.StatusOK},
			} {
				h := map[string]string{}
				if c.xff != "" {
					h["X-Forwarded-For"] = c.xff
				}
				before := target.count()
				code, _, body := visitWith(t, c.client, g, domain, h)
				if code != c.want {
					t.Errorf("%s: %d, want %d: %s", c.name, code, c.want, body)
				}
				if c.want != http.StatusOK && target.count() != before {
					t.Errorf("%s: a refused request reached the target", c.name)
				}
			}

			req, _ := http.NewRequest(http.MethodGet, g.url(domain, "/"), nil)
			req.Header.Set("Accept", "application/json")
			res, err := visitor.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != http.StatusForbidden || !strings.Contains(res.Header.Get("Content-Type"), "json") || !strings.Contains(string(b), `"request_id"`) {
				t.Errorf("JSON refusal: %d %q %s", res.StatusCode, res.Header.Get("Content-Type"), b)
			}
			if n := tnMetric(t, tnMetricsAddr(t, g), `hopgate_access_denied_total{reason="ip"}`); n < 5 {
				t.Errorf(`hopgate_access_denied_total{reason="ip"} = %v, want at least 5`, n)
			}
		})
	}
}

func TestPolicyBasicAuth(t *testing.T) {
	t.Parallel()
	for _, st := range gwStores {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			const domain = "basic.policy.test"
			target := newPolicyTarget(t)
			g := startGateway(t, gatewayOptions{DSN: st.dsn(t)})
			g.startAgent(domain, g.register(domain), target.url)
			setPolicy(t, g, domain, `{"basic_auth": [{"user": "ops", "password": "correct horse"}]}`)
			c := g.httpClient(false)

			get := func(user, pass string, extra map[string]string) (int, http.Header) {
				req, _ := http.NewRequest(http.MethodGet, g.url(domain, "/"), nil)
				if user != "" {
					req.SetBasicAuth(user, pass)
				}
				for k, v := range extra {
					req.Header.Set(k, v)
				}
				res, err := c.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, res.Body)
				res.Body.Close()
				return res.StatusCode, res.Header
			}
			for _, cr := range [][2]string{{"", ""}, {"ops", "wrong"}, {"nobody", "correct horse"}} {
				code, h := get(cr[0], cr[1], nil)
				if code != http.StatusUnauthorized || !strings.HasPrefix(h.Get("WWW-Authenticate"), `Basic realm="`+domain+`"`) {
					t.Errorf("credentials %q: %d, WWW-Authenticate %q; want 401 with a Basic challenge", cr, code, h.Get("WWW-Authenticate"))
				}
			}
			// An upgrade and an event stream are checked before they start, like any request.
			for _, h := range []map[string]string{
				{"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="},
				{"Accept": "text/event-stream"},
			} {
				if code, _ := get("", "", h); code != http.StatusUnauthorized {
					t.Errorf("%v without credentials: %d, want 401", h, code)
				}
			}
			if target.count() != 0 {
				t.Fatalf("refused requests reached the target")
			}
			code, _ := get("ops", "correct horse", map[string]string{"X-HopGate-Email": "forged@example.com", "X-HopGate-User": "admin"})
			if code != http.StatusOK {
				t.Fatalf("right credentials: %d", code)
			}
			seen := target.last()
			if seen.Get("Authorization") != "" {
				t.Errorf("the target saw Authorization %q", seen.Get("Authorization"))
			}
			if seen.Get("X-HopGate-User") != "ops" || len(seen.Values("X-HopGate-User")) != 1 || seen.Get("X-HopGate-Email") != "" {
				t.Errorf("the target saw X-HopGate-User %q, X-HopGate-Email %q; want ops and nothing forged",
					seen.Values("X-HopGate-User"), seen.Get("X-HopGate-Email"))
			}

			// The policy as the API shows it holds no password and no hash.
			_, shown, err := g.hop.Admin(context.Background(), http.MethodGet, "/api/v1/admin/domains/policy?domain="+domain, nil)
			if err != nil || strings.Contains(string(shown), "correct horse") || strings.Contains(string(shown), "$2") {
				t.Errorf("GET policy shows a secret: %v %s", err, shown)
			}
		})
	}
}

func TestPolicyRateLimit(t *testing.T) {
	t.Parallel()
	for _, st := range gwStores {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			const domain = "rate.policy.test"
			target := newPolicyTarget(t)
			g := startGateway(t, gatewayOptions{DSN: st.dsn(t)})
			g.startAgent(domain, g.register(domain), target.url)
			setPolicy(t, g, domain, `{"rate_limit": {"rps": 0.5, "burst": 3}}`)
			c := g.httpClient(false)
			var codes []int
			var retryAfter string
			for range 5 {
				code, h, _ := visitWith(t, c, g, domain, nil)
				codes = append(codes, code)
				if code == http.StatusTooManyRequests {
					retryAfter = h.Get("Retry-After")
				}
			}
			want := []int{200, 200, 200, 429, 429}
			for i := range want {
				if codes[i] != want[i] {
					t.Fatalf("statuses %v, want %v", codes, want)
				}
			}
			if retryAfter == "" || retryAfter == "0" {
				t.Errorf("429 without a Retry-After: %q", retryAfter)
			}
			if target.count() != 3 {
				t.Errorf("the target got %d requests, want 3", target.count())
			}
		})
	}
}

// TestPolicyChangeWithoutRestart: a new policy and its removal take effect within a second.
func TestPolicyChangeWithoutRestart(t *testing.T) {
	t.Parallel()
	for _, st := range gwStores {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			const domain = "change.policy.test"
			target := newPolicyTarget(t)
			g := startGateway(t, gatewayOptions{DSN: st.dsn(t)})
			g.startAgent(domain, g.register(domain), target.url)
			c := g.httpClient(false)
			if code, _, _ := visitWith(t, c, g, domain, nil); code != http.StatusOK {
				t.Fatalf("before any policy: %d", code)
			}
			setPolicy(t, g, domain, `{"ip_deny": ["127.0.0.0/8", "::1"]}`)
			poll.Until(t, time.Second, "the deny rule to apply", func() bool {
				code, _, _ := visitWith(t, c, g, domain, nil)
				return code == http.StatusForbidden
			})
			setPolicy(t, g, domain, `{}`)
			poll.Until(t, time.Second, "the policy's removal to apply", func() bool {
				code, _, _ := visitWith(t, c, g, domain, nil)
				return code == http.StatusOK
			})
		})
	}
}

// TestPolicySingleSignOn: the whole sign-in with a real OpenID provider through the real gateway: a
// browser is sent to the provider and back, gets a session, and the target sees who signed in (and
// never what the visitor claims); an account outside the allowed set, a tampered cookie and an API
// or gRPC call without a session are refused; logout ends the session; a restart keeps it. On each
// store: the session key a restart needs is kept there.
func TestPolicySingleSignOn(t *testing.T) {
	t.Parallel()
	const domain = "sso.policy.test"
	idp := oidctest.Start(t,
		oidctest.User{ID: "u-alice", Username: "alice", Password: "alice-pw", Email: "alice@example.com", EmailVerified: true},
		oidctest.User{ID: "u-bob", Username: "bob", Password: "bob-pw", Email: "bob@elsewhere.test", EmailVerified: true})
	roots := filepath.Join(t.TempDir(), "idp-ca.pem")
	if err := os.WriteFile(roots, idp.CAPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	env := []string{"HOP_SERVER_OIDC_CA_ROOTS=" + roots}
	// One provider serves both stores' gateways: each has its own address, so its own callback URL.
	for _, st := range gwStores {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			dsn, dataDir := st.dsn(t), t.TempDir()
			target := newPolicyTarget(t)
			g := startGateway(t, gatewayOptions{DSN: dsn, DataDir: dataDir, Env: env})
			key := g.register(domain)
			g.startAgent(domain, key, target.url)
			setPolicy(t, g, domain, fmt.Sprintf(`{"oidc": {"issuer": %q, "client_id": %q, "client_secret": %q, "allowed_domains": ["example.com"]}}`,
				idp.Issuer, oidctest.ClientID, idp.ClientSecret))

			browser := ssoBrowser(t, g, idp)
			page := func(c *http.Client, path string, header map[string]string) *http.Response {
				t.Helper()
				req, _ := http.NewRequest(http.MethodGet, g.url(domain, path), nil)
				req.Header.Set("Accept", "text/html")
				for k, v := range header {
					req.Header.Set(k, v)
				}
				res, err := c.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				return res
			}
			signIn := func(c *http.Client, user, password string) *http.Response {
				t.Helper()
				return ssoLogin(t, c, idp, g.url(domain, "/private?x=1"), user, password)
			}

			back := signIn(browser, "alice", "alice-pw")
			back.Body.Close()
			if back.StatusCode != http.StatusFound || back.Header.Get("Location") != "/private?x=1" {
				t.Fatalf("callback: %d to %q, want the page first asked for", back.StatusCode, back.Header.Get("Location"))
			}
			res := page(browser, "/private?x=1", map[string]string{"X-HopGate-Email": "root@example.com", "X-HopGate-User": "root"})
			res.Body.Close()
			if res.StatusCode != http.StatusOK {
				t.Fatalf("signed in: %d", res.StatusCode)
			}
			if seen := target.last(); seen.Get("X-HopGate-Email") != "alice@example.com" || seen.Get("X-HopGate-User") != "alice" ||
				len(seen.Values("X-HopGate-Email")) != 1 || len(seen.Values("X-HopGate-User")) != 1 {
				t.Errorf("the target saw %q / %q, want alice's verified identity only", seen.Values("X-HopGate-User"), seen.Values("X-HopGate-Email"))
			}

			// An account of the provider outside allowed_domains.
			if back := signIn(ssoBrowser(t, g, idp), "bob", "bob-pw"); back.StatusCode != http.StatusForbidden {
				t.Errorf("bob's callback: %d, want 403", back.StatusCode)
			}
			// An API call without a session is refused, not redirected.
			req, _ := http.NewRequest(http.MethodPost, g.url(domain, "/api"), strings.NewReader("{}"))
			req.Header.Set("Accept", "application/json")
			if res, err := ssoBrowser(t, g, idp).Do(req); err != nil || res.StatusCode != http.StatusUnauthorized {
				t.Errorf("API call without a session: %v %v, want 401", res, err)
			}
			// So is a gRPC call: a redirect would reach grpc-go as Unknown, a 401 as Unauthenticated.
			before := target.count()
			pgExpectUnary(t, g, domain, codes.Unauthenticated)
			if target.count() != before {
				t.Errorf("a gRPC call without a session reached the target")
			}
			// A tampered session cookie is no session.
			u, _ := url.Parse(g.url(domain, "/"))
			forged := ssoBrowser(t, g, idp)
			for _, ck := range browser.Jar.Cookies(u) {
				v := []byte(ck.Value)
				v[len(v)/2] ^= 1
				forged.Jar.SetCookies(u, []*http.Cookie{{Name: ck.Name, Value: string(v), Path: "/", Secure: true}})
			}
			if res := page(forged, "/private", nil); res.StatusCode != http.StatusFound {
				t.Errorf("tampered cookie: %d, want a new sign-in (302)", res.StatusCode)
			}

			// Sessions survive a restart: the key is in the store.
			addr := g.addr
			g.signal(syscall.SIGTERM)
			if code := g.wait(t, 15*time.Second); code != 0 {
				t.Fatalf("gateway exit %d", code)
			}
			g = startGateway(t, gatewayOptions{DSN: dsn, DataDir: dataDir, Addr: addr, Env: env})
			g.startAgent(domain, key, target.url)
			if res := page(browser, "/private", nil); res.StatusCode != http.StatusOK {
				t.Errorf("after a restart: %d, want the session to hold", res.StatusCode)
			}

			if res := page(browser, "/.hopgate/logout", nil); res.StatusCode != http.StatusOK {
				t.Errorf("logout: %d", res.StatusCode)
			}
			if res := page(browser, "/private", nil); res.StatusCode != http.StatusFound {
				t.Errorf("after logout: %d, want a new sign-in", res.StatusCode)
			}
		})
	}
}

// ssoBrowser is a browser with its own cookie jar that reaches the gateway under any tenant name and
// the provider at its own address, trusting both, and does not follow redirects (the test does).
// ssoLogin asks for start as a browser without a session, expects to be sent to the provider, and
// signs in there; it returns the gateway's answer to the provider's redirect back.
func ssoLogin(t *testing.T, c *http.Client, idp *oidctest.Provider, start, user, password string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, start, nil)
	req.Header.Set("Accept", "text/html")
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusFound || !strings.HasPrefix(res.Header.Get("Location"), idp.Issuer) {
		t.Fatalf("%s without a session: %d to %q, want a redirect to the provider", start, res.StatusCode, res.Header.Get("Location"))
	}
	back, err := idp.Login(c, res, user, password)
	if err != nil {
		t.Fatal(err)
	}
	return back
}

func ssoBrowser(t *testing.T, g *gateway, idp *oidctest.Provider) *http.Client {
	t.Helper()
	pool := g.tlsConfig().RootCAs.Clone()
	pool.AppendCertsFromPEM(idp.CAPEM)
	provider, _ := url.Parse(idp.Issuer)
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool},
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if addr == provider.Host {
				return dialer.DialContext(ctx, network, addr)
			}
			return dialer.DialContext(ctx, network, g.addr)
		},
		TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{},
	}
	t.Cleanup(tr.CloseIdleConnections)
	jar, _ := cookiejar.New(nil)
	return &http.Client{Transport: tr, Jar: jar, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}
