package admin_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/hopgate/hopgate/internal/config"
	"github.com/hopgate/hopgate/internal/gateway/admin"
)

// Secrets the tests send; none may come back in an answer or reach the logs.
const (
	opsPassword  = "ops-password-4f1c"
	devPassword  = "dev-password-9a2e"
	clientSecret = "client-secret-77b0"
)

// provider is an OpenID provider's discovery endpoint over real TLS, with a private certificate the
// admin API trusts through HOP_SERVER_OIDC_CA_ROOTS. Its first path segment picks its behaviour.
type provider struct {
	srv   *httptest.Server
	roots string
	hits  atomic.Int32
}

func newProvider(t *testing.T) *provider {
	t.Helper()
	p := &provider{}
	p.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.hits.Add(1)
		tenant, rest, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
		if rest != ".well-known/openid-configuration" {
			http.NotFound(w, r)
			return
		}
		doc := func(issuer string) {
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(map[string]string{
				"issuer": issuer, "authorization_endpoint": issuer + "/authorize", "jwks_uri": issuer + "/keys",
			})
		}
		switch tenant {
		case "good":
			doc(p.srv.URL + "/good")
		case "slash":
			doc(p.srv.URL + "/slash/")
		case "wrong":
			doc("https://elsewhere.example.com")
		case "fail":
			http.Error(w, "boom", http.StatusInternalServerError)
		case "html":
			w.Header().Set("Content-Type", "text/html")
			io.WriteString(w, "<html>sign in</html>")
		case "big":
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"issuer":"`+p.srv.URL+`/big","padding":"`+strings.Repeat("x", admin.MaxDiscoveryBytes)+`"}`)
		case "slow":
			<-r.Context().Done()
		default:
			http.NotFound(w, r)
		}
	}))
	p.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the untrusted-certificate case fails handshakes
	p.srv.StartTLS()
	t.Cleanup(p.srv.Close)
	p.roots = filepath.Join(t.TempDir(), "oidc-roots.pem")
	if err := os.WriteFile(p.roots, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func (p *provider) issuer(tenant string) string { return p.srv.URL + "/" + tenant }

// hooks records the admin API's callbacks.
type hooks struct {
	mu      sync.Mutex
	changed []string
	rotated int
}

func (h *hooks) options() []admin.Option {
	return []admin.Option{
		admin.OnPolicyChange(func(d string) { h.mu.Lock(); h.changed = append(h.changed, d); h.mu.Unlock() }),
		admin.OnSessionKeyRotated(func() { h.mu.Lock(); h.rotated++; h.mu.Unlock() }),
	}
}

func (h *hooks) changes() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.changed)
}

func (h *hooks) rotations() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.rotated
}

// newPolicyEnv is an admin API whose OIDC client is built from the server setting, as the gateway's.
func newPolicyEnv(t *testing.T, b backend, p *provider) (*env, *hooks) {
	t.Helper()
	cfg := &config.Server{OIDCCARoots: p.roots}
	client, err := cfg.OIDCHTTPClient()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(client.CloseIdleConnections)
	h := &hooks{}
	e := newEnv(t, b, adminKey, append(h.options(), admin.WithOIDCClient(client))...)
	t.Cleanup(func() { assertNoSecret(t, "the logs", e.logs.String()) })
	return e, h
}

// assertNoSecret fails if s holds a password, the client secret or a bcrypt hash.
func assertNoSecret(t *testing.T, where, s string) {
	t.Helper()
	for _, secret := range []string{opsPassword, devPassword, clientSecret, "$2a$", "$2b$", "password_hash"} {
		if strings.Contains(s, secret) {
			t.Errorf("%s hold a secret (%q):\n%s", where, secret, s)
		}
	}
}

const policyPath = "/api/v1/admin/domains/policy?domain="

func TestPolicyAPI(t *testing.T) {
	t.Parallel()
	p := newProvider(t)
	forEach(t, func(t *testing.T, b backend) {
		e, h := newPolicyEnv(t, b, p)
		ctx := context.Background()
		if _, _, err := e.store.Register(ctx, "shop.example.com", ""); err != nil {
			t.Fatal(err)
		}
		do := func(method, path, body string) response {
			t.Helper()
			var rd io.Reader
			if body != "" {
				rd = jsonBody(body)
			}
			res := e.do(method, path, "", rd)
			assertNoSecret(t, method+" "+path+" answer", res.raw)
			return res
		}

		// No policy yet: an empty object, not null.
		res := do("GET", policyPath+"Shop.Example.com.", "")
		if res.code != 200 || res.body["domain"] != "shop.example.com" || !strings.Contains(res.raw, `"policy":{}`) {
			t.Fatalf("GET without a policy: %d %s", res.code, res.raw)
		}

		full := `{"ip_allow":["203.0.113.0/24","2001:db8::/32"],"ip_deny":["203.0.113.7"],
			"basic_auth":[{"user":"ops","password":"` + opsPassword + `"}],
			"rate_limit":{"rps":20,"burst":40},
			"oidc":{"issuer":"` + p.issuer("good") + `","client_id":"hopgate","client_secret":"` + clientSecret + `",
			        "allowed_domains":["example.com"]}}`
		res = do("PUT", policyPath+"shop.example.com", full)
		if res.code != 200 {
			t.Fatalf("PUT: %d %s", res.code, res.raw)
		}
		var shown struct {
			Domain string `json:"domain"`
			Policy struct {
				IPAllow   []string            `json:"ip_allow"`
				IPDeny    []string            `json:"ip_deny"`
				BasicAuth []map[string]string `json:"basic_auth"`
				RateLimit map[string]float64  `json:"rate_limit"`
				OIDC      map[string]any      `json:"oidc"`
			} `json:"policy"`
		}
		if err := json.Unmarshal([]byte(res.raw), &shown); err != nil {
			t.Fatal(err)
		}
		pol := shown.Policy
		if shown.Domain != "shop.example.com" || len(pol.IPAllow) != 2 || len(pol.IPDeny) != 1 ||
			len(pol.BasicAuth) != 1 || len(pol.BasicAuth[0]) != 1 || pol.BasicAuth[0]["user"] != "ops" ||
			pol.RateLimit["rps"] != 20 || pol.RateLimit["burst"] != 40 ||
			pol.OIDC["issuer"] != p.issuer("good") || pol.OIDC["client_id"] != "hopgate" || pol.OIDC["client_secret_set"] != true {
			t.Fatalf("PUT answered %s", res.raw)
		}
		if got := do("GET", policyPath+"shop.example.com", ""); got.code != 200 || got.raw != res.raw {
			t.Fatalf("GET after PUT: %d %s; want what PUT answered, %s", got.code, got.raw, res.raw)
		}
		stored, err := e.store.Policy(ctx, "shop.example.com")
		if err != nil || bcrypt.CompareHashAndPassword([]byte(stored.BasicAuth[0].PasswordHash), []byte(opsPassword)) != nil ||
			stored.OIDC.ClientSecret != clientSecret {
			t.Fatalf("stored %+v, %v", stored, err)
		}
		if got := h.changes(); !slices.Equal(got, []string{"shop.example.com"}) {
			t.Fatalf("OnPolicyChange calls %v after one PUT", got)
		}

		// What GET shows, sent back as it is, changes nothing.
		var doc struct {
			Policy json.RawMessage `json:"policy"`
		}
		if err := json.Unmarshal([]byte(res.raw), &doc); err != nil {
			t.Fatal(err)
		}
		if again := do("PUT", policyPath+"shop.example.com", string(doc.Policy)); again.code != 200 || again.raw != res.raw {
			t.Fatalf("PUT of what GET shows: %d %s; want %s", again.code, again.raw, res.raw)
		}
		if p, err := e.store.Policy(ctx, "shop.example.com"); err != nil || p.BasicAuth[0].PasswordHash != stored.BasicAuth[0].PasswordHash || p.OIDC.ClientSecret != clientSecret {
			t.Fatalf("after the round trip %+v, %v", p, err)
		}

		// The document as GET shows it, with a user added, keeps the secrets it cannot show.
		res = do("PUT", policyPath+"shop.example.com", `{"basic_auth":[{"user":"ops"},{"user":"dev","password":"`+devPassword+`"}],
			"oidc":{"issuer":"`+p.issuer("good")+`","client_id":"hopgate","allowed_domains":["example.com"]}}`)
		if res.code != 200 || !strings.Contains(res.raw, `"client_secret_set":true`) || !strings.Contains(res.raw, `{"user":"dev"}`) {
			t.Fatalf("PUT without secrets: %d %s", res.code, res.raw)
		}
		merged, err := e.store.Policy(ctx, "shop.example.com")
		if err != nil || merged.BasicAuth[0].PasswordHash != stored.BasicAuth[0].PasswordHash || merged.OIDC.ClientSecret != clientSecret ||
			bcrypt.CompareHashAndPassword([]byte(merged.BasicAuth[1].PasswordHash), []byte(devPassword)) != nil {
			t.Fatalf("after the merge %+v, %v", merged, err)
		}

		// A new client id does not inherit the secret.
		res = do("PUT", policyPath+"shop.example.com", `{"oidc":{"issuer":"`+p.issuer("good")+`","client_id":"other"}}`)
		if res.code != 200 || !strings.Contains(res.raw, `"client_secret_set":false`) {
			t.Fatalf("PUT with another client: %d %s", res.code, res.raw)
		}
		// A trailing slash is fine when the provider's issuer has it too.
		if res = do("PUT", policyPath+"shop.example.com", `{"oidc":{"issuer":"`+p.issuer("slash")+`/","client_id":"c"}}`); res.code != 200 {
			t.Fatalf("PUT with an issuer ending in a slash: %d %s", res.code, res.raw)
		}

		// {} removes the policy.
		res = do("PUT", policyPath+"shop.example.com", ` {} `)
		if res.code != 200 || !strings.Contains(res.raw, `"policy":{}`) {
			t.Fatalf("PUT {}: %d %s", res.code, res.raw)
		}
		if p, err := e.store.Policy(ctx, "shop.example.com"); err != nil || !p.IsZero() {
			t.Fatalf("after PUT {}: %+v, %v", p, err)
		}

		// Unregistering drops the policy with the domain, and says so.
		if _, err := e.store.SetPolicy(ctx, "shop.example.com", stored); err != nil {
			t.Fatal(err)
		}
		if res = do("POST", "/api/v1/admin/domains/unregister", `{"domain":"shop.example.com"}`); res.code != 200 {
			t.Fatalf("unregister: %d %s", res.code, res.raw)
		}
		if res = do("GET", policyPath+"shop.example.com", ""); res.code != 404 {
			t.Fatalf("GET after unregister: %d %s", res.code, res.raw)
		}
		want := slices.Repeat([]string{"shop.example.com"}, 7)
		if got := h.changes(); !slices.Equal(got, want) {
			t.Fatalf("OnPolicyChange calls %v, want %v (6 PUTs and the unregistration)", got, want)
		}
	})
}

func TestPolicyErrors(t *testing.T) {
	t.Parallel()
	p := newProvider(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nobody := "https://" + ln.Addr().String()
	ln.Close()
	oidc := func(issuer string) string {
		return `{"oidc":{"issuer":"` + issuer + `","client_id":"c","client_secret":"` + clientSecret + `"}}`
	}

	forEach(t, func(t *testing.T, b backend) {
		e, h := newPolicyEnv(t, b, p)
		if _, _, err := e.store.Register(context.Background(), "shop.example.com", ""); err != nil {
			t.Fatal(err)
		}
		tests := []struct {
			name, method, path, auth, body string
			want                           int
			field, errContains, allow      string
		}{
			{name: "GET no auth", method: "GET", path: policyPath + "shop.example.com", auth: "-", want: 401},
			{name: "PUT wrong key", method: "PUT", path: policyPath + "shop.example.com", auth: "Bearer nope", body: `{}`, want: 401},
			{name: "rotate no auth", method: "POST", path: "/api/v1/admin/sessions/rotate-key", auth: "-", want: 401},
			{name: "POST policy", method: "POST", path: policyPath + "shop.example.com", body: `{}`, want: 405, allow: "GET, PUT"},
			{name: "DELETE policy", method: "DELETE", path: policyPath + "shop.example.com", want: 405, allow: "GET, PUT"},
			{name: "GET rotate", method: "GET", path: "/api/v1/admin/sessions/rotate-key", want: 405, allow: "POST"},
			{name: "GET without domain", method: "GET", path: policyPath, want: 400, errContains: "domain is required"},
			{name: "GET invalid domain", method: "GET", path: policyPath + "no_such", want: 400},
			{name: "GET unknown", method: "GET", path: policyPath + "unknown.example.com", want: 404},
			{name: "PUT unknown", method: "PUT", path: policyPath + "unknown.example.com", body: `{"ip_deny":["192.0.2.1"]}`, want: 404},
			{name: "PUT unknown with oidc", method: "PUT", path: policyPath + "unknown.example.com", body: oidc(p.issuer("good")), want: 404},
			{name: "PUT without domain", method: "PUT", path: policyPath, body: `{}`, want: 400},
			{name: "empty body", method: "PUT", path: policyPath + "shop.example.com", want: 400, errContains: "{} removes it"},
			{name: "not an object", method: "PUT", path: policyPath + "shop.example.com", body: `["192.0.2.1"]`, want: 400},
			{name: "malformed", method: "PUT", path: policyPath + "shop.example.com", body: `{"ip_deny":`, want: 400},
			{name: "unknown field", method: "PUT", path: policyPath + "shop.example.com", body: `{"ip_block":[]}`, want: 400, errContains: "ip_block"},
			{name: "null", method: "PUT", path: policyPath + "shop.example.com", body: `null`, want: 400, field: "policy"},
			{name: "wrong type", method: "PUT", path: policyPath + "shop.example.com", body: `{"rate_limit":{"rps":"fast","burst":1}}`, want: 400, errContains: "rate_limit.rps"},
			{name: "client_secret_set not a bool", method: "PUT", path: policyPath + "shop.example.com", body: `{"oidc":{"issuer":"https://id.example.com","client_id":"c","client_secret_set":"yes"}}`, want: 400, errContains: "client_secret_set"},
			{name: "trailing data", method: "PUT", path: policyPath + "shop.example.com", body: `{} {}`, want: 400},
			{name: "bad cidr", method: "PUT", path: policyPath + "shop.example.com", body: `{"ip_allow":["192.0.2.0/24","2001:db8::/129"]}`, want: 400, field: "ip_allow[1]"},
			{name: "unknown user without password", method: "PUT", path: policyPath + "shop.example.com", body: `{"basic_auth":[{"user":"ops"}]}`, want: 400, field: "basic_auth[0].password"},
			{name: "empty password", method: "PUT", path: policyPath + "shop.example.com", body: `{"basic_auth":[{"user":"ops","password":""}]}`, want: 400, field: "basic_auth[0].password"},
			{name: "password too long", method: "PUT", path: policyPath + "shop.example.com", body: `{"basic_auth":[{"user":"ops","password":"` + strings.Repeat("p", 73) + `"}]}`, want: 400, field: "basic_auth[0].password"},
			{name: "zero rate", method: "PUT", path: policyPath + "shop.example.com", body: `{"rate_limit":{"rps":0,"burst":1}}`, want: 400, field: "rate_limit.rps"},
			{name: "no client id", method: "PUT", path: policyPath + "shop.example.com", body: `{"oidc":{"issuer":"` + p.issuer("good") + `"}}`, want: 400, field: "oidc.client_id"},
			{name: "policy too large", method: "PUT", path: policyPath + "shop.example.com", body: `{"ip_deny":["` + strings.Repeat("1", 70<<10) + `"]}`, want: 413},
			{name: "issuer names another", method: "PUT", path: policyPath + "shop.example.com", body: oidc(p.issuer("wrong")), want: 400, field: "oidc.issuer", errContains: "names the issuer"},
			{name: "issuer slash differs", method: "PUT", path: policyPath + "shop.example.com", body: oidc(p.issuer("good") + "/"), want: 400, field: "oidc.issuer", errContains: "names the issuer"},
			{name: "issuer answers 500", method: "PUT", path: policyPath + "shop.example.com", body: oidc(p.issuer("fail")), want: 400, field: "oidc.issuer", errContains: "500"},
			{name: "issuer unknown path", method: "PUT", path: policyPath + "shop.example.com", body: oidc(p.issuer("none")), want: 400, field: "oidc.issuer", errContains: "404"},
			{name: "issuer answers html", method: "PUT", path: policyPath + "shop.example.com", body: oidc(p.issuer("html")), want: 400, field: "oidc.issuer", errContains: "JSON"},
			{name: "discovery too large", method: "PUT", path: policyPath + "shop.example.com", body: oidc(p.issuer("big")), want: 400, field: "oidc.issuer", errContains: "larger than"},
			{name: "no provider", method: "PUT", path: policyPath + "shop.example.com", body: oidc(nobody), want: 400, field: "oidc.issuer", errContains: "cannot fetch"},
			{name: "rotate with unknown field", method: "POST", path: "/api/v1/admin/sessions/rotate-key", body: `{"all":true}`, want: 400},
			{name: "rotate with garbage", method: "POST", path: "/api/v1/admin/sessions/rotate-key", body: `{} x`, want: 400},
			{name: "rotate too large", method: "POST", path: "/api/v1/admin/sessions/rotate-key", body: strings.Repeat(" ", admin.MaxBodyBytes+1), want: 413},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				e := *e
				e.t = t
				var body io.Reader
				if tc.body != "" {
					body = jsonBody(tc.body)
				}
				res := e.do(tc.method, tc.path, tc.auth, body)
				if res.code != tc.want {
					t.Fatalf("status %d, want %d: %s", res.code, tc.want, res.raw)
				}
				assertNoSecret(t, "the answer", res.raw)
				msg, _ := res.body["error"].(string)
				if tc.field != "" && (res.body["field"] != tc.field || !strings.Contains(msg, tc.field+": ")) {
					t.Errorf("answer %s does not name the field %s", res.raw, tc.field)
				}
				if tc.errContains != "" && !strings.Contains(msg, tc.errContains) {
					t.Errorf("error %q does not mention %q", msg, tc.errContains)
				}
				if tc.allow != "" && res.header.Get("Allow") != tc.allow {
					t.Errorf("Allow %q, want %q", res.header.Get("Allow"), tc.allow)
				}
			})
		}
		if pol, err := e.store.Policy(context.Background(), "shop.example.com"); err != nil || !pol.IsZero() {
			t.Fatalf("a refused PUT changed the policy: %+v, %v", pol, err)
		}
		if got := h.changes(); len(got) != 0 || h.rotations() != 0 {
			t.Fatalf("hooks called by refused calls: changes %v, rotations %d", got, h.rotations())
		}
	})
}

// TestPolicyDiscoveryLimits: a provider that does not answer holds the PUT for DiscoveryTimeout at
// most, and one whose certificate the gateway does not trust is refused.
func TestPolicyDiscoveryLimits(t *testing.T) {
	t.Parallel()
	p := newProvider(t)
	doc := `{"oidc":{"issuer":"` + p.issuer("slow") + `","client_id":"c"}}`
	e, _ := newPolicyEnv(t, backends[0], p)
	if _, _, err := e.store.Register(context.Background(), "slow.example.com", ""); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	res := e.do("PUT", policyPath+"slow.example.com", "", jsonBody(doc))
	took := time.Since(start)
	if res.code != 400 || res.body["field"] != "oidc.issuer" || took < admin.DiscoveryTimeout || took > admin.DiscoveryTimeout+3*time.Second {
		t.Fatalf("PUT with a silent provider: %d %s after %v; want 400 naming oidc.issuer after %v", res.code, res.raw, took, admin.DiscoveryTimeout)
	}

	// Without the roots setting the provider's private certificate is not trusted.
	plain := newEnv(t, backends[0], adminKey)
	if _, _, err := plain.store.Register(context.Background(), "plain.example.com", ""); err != nil {
		t.Fatal(err)
	}
	res = plain.do("PUT", policyPath+"plain.example.com", "", jsonBody(`{"oidc":{"issuer":"`+p.issuer("good")+`","client_id":"c"}}`))
	if res.code != 400 || res.body["field"] != "oidc.issuer" || !strings.Contains(res.raw, "certificate") {
		t.Fatalf("PUT with an untrusted provider: %d %s", res.code, res.raw)
	}
}

func TestSessionKeyRotate(t *testing.T) {
	t.Parallel()
	p := newProvider(t)
	forEach(t, func(t *testing.T, b backend) {
		e, h := newPolicyEnv(t, b, p)
		ctx := context.Background()
		before, err := e.store.SessionKey(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for i, body := range []string{"", "{}"} {
			var rd io.Reader
			if body != "" {
				rd = jsonBody(body)
			}
			res := e.do("POST", "/api/v1/admin/sessions/rotate-key", "", rd)
			if res.code != 200 || res.body["rotated"] != true {
				t.Fatalf("rotate with body %q: %d %s", body, res.code, res.raw)
			}
			after, err := e.store.SessionKey(ctx)
			if err != nil || bytes.Equal(after, before) || len(after) != len(before) {
				t.Fatalf("key after rotation %d: %x (before %x), %v", i, after, before, err)
			}
			for _, enc := range []string{hex.EncodeToString(after), base64.StdEncoding.EncodeToString(after), base64.RawURLEncoding.EncodeToString(after)} {
				if strings.Contains(res.raw, enc) || strings.Contains(e.logs.String(), enc) {
					t.Fatal("the answer or the logs hold the key")
				}
			}
			before = after
		}
		if h.rotations() != 2 || len(h.changes()) != 0 {
			t.Fatalf("hooks: %d rotations, changes %v; want 2 and none", h.rotations(), h.changes())
		}
		if !strings.Contains(e.logs.String(), "rotated") {
			t.Errorf("rotation not logged:\n%s", e.logs.String())
		}
	})
}
