package e2e

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/hopgate/hopgate/internal/testutil/oidctest"
)

// TestConsoleSingleSignOn: with HOP_SERVER_CONSOLE_OIDC_* set, an operator signs in to the console
// through a real OpenID provider instead of typing the admin key; the session is named after the
// account in the audit log; an account outside the allowed set is refused and audited; signing out
// ends the gateway's single sign-on cookie too, so the next sign-in goes back to the provider.
func TestConsoleSingleSignOn(t *testing.T) {
	t.Parallel()
	idp := oidctest.Start(t,
		oidctest.User{ID: "u-alice", Username: "alice", Password: "alice-pw", Email: "alice@example.com", EmailVerified: true},
		oidctest.User{ID: "u-bob", Username: "bob", Password: "bob-pw", Email: "bob@elsewhere.test", EmailVerified: true})
	roots := filepath.Join(t.TempDir(), "idp-ca.pem")
	if err := os.WriteFile(roots, idp.CAPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	g := startGateway(t, gatewayOptions{Env: []string{
		"HOP_SERVER_OIDC_CA_ROOTS=" + roots,
		"HOP_SERVER_CONSOLE_OIDC_ISSUER=" + idp.Issuer,
		"HOP_SERVER_CONSOLE_OIDC_CLIENT_ID=" + oidctest.ClientID,
		"HOP_SERVER_CONSOLE_OIDC_CLIENT_SECRET=" + idp.ClientSecret,
		"HOP_SERVER_CONSOLE_OIDC_ALLOWED_DOMAINS=example.com",
	}})
	const own = "localhost" // the gateway's name in debug mode
	get := func(c *http.Client, path string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, g.url(own, path), nil)
		req.Header.Set("Accept", "text/html")
		res, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		return res, string(b)
	}
	// viaProvider starts the console's sign-in and logs in at the provider; it returns the gateway's
	// answer to the provider's redirect back.
	viaProvider := func(c *http.Client, user, password string) *http.Response {
		t.Helper()
		return ssoLogin(t, c, idp, g.url(own, "/console/sign-in/sso"), user, password)
	}
	consoleCookie := func(c *http.Client) bool {
		u, _ := url.Parse(g.url(own, "/"))
		for _, ck := range c.Jar.Cookies(u) {
			if ck.Name == "__Host-hopgate_console" {
				return true
			}
		}
		return false
	}

	alice := ssoBrowser(t, g, idp)
	if res, body := get(alice, "/console/sign-in"); res.StatusCode != http.StatusOK || !strings.Contains(body, `href="/console/sign-in/sso"`) {
		t.Fatalf("the sign-in page offers no single sign-on: %d\n%.800s", res.StatusCode, body)
	}
	back := viaProvider(alice, "alice", "alice-pw")
	back.Body.Close()
	if back.StatusCode != http.StatusFound || back.Header.Get("Location") != "/console/sign-in/sso" {
		t.Fatalf("callback: %d to %q", back.StatusCode, back.Header.Get("Location"))
	}
	res, body := get(alice, "/console/sign-in/sso")
	if res.StatusCode != http.StatusOK || !strings.Contains(body, `http-equiv="refresh" content="0;url=/console/overview"`) ||
		!strings.Contains(body, "alice@example.com") || !consoleCookie(alice) {
		t.Fatalf("after the provider: %d, console cookie %t\n%.1200s", res.StatusCode, consoleCookie(alice), body)
	}
	res, body = get(alice, "/console/overview")
	if res.StatusCode != http.StatusOK || !strings.Contains(body, `action="/console/sign-out"`) {
		t.Fatalf("overview after single sign-on: %d\n%.600s", res.StatusCode, body)
	}

	// An account the allow list does not name gets no session, and the refusal is audited.
	bob := ssoBrowser(t, g, idp)
	back = viaProvider(bob, "bob", "bob-pw")
	b, _ := io.ReadAll(back.Body)
	back.Body.Close()
	if back.StatusCode != http.StatusForbidden || consoleCookie(bob) {
		t.Fatalf("bob: %d, console cookie %t\n%.600s", back.StatusCode, consoleCookie(bob), b)
	}
	if res, _ := get(bob, "/console/overview"); res.StatusCode != http.StatusSeeOther {
		t.Fatalf("bob's overview: %d, want the redirect to sign-in", res.StatusCode)
	}

	code, audit := g.admin(http.MethodGet, "/api/v1/admin/audit", nil)
	if code != http.StatusOK {
		t.Fatalf("audit: %d", code)
	}
	var rows []string
	for _, e := range audit["entries"].([]any) {
		m := e.(map[string]any)
		rows = append(rows, fmt.Sprintf("%v|%v|%v", m["actor"], m["action"], m["result"]))
	}
	joined := strings.Join(rows, "\n")
	if !regexp.MustCompile(`console session [0-9a-f]{8} \(sso alice@example\.com\)\|console/sign-in\|200 OK`).MatchString(joined) ||
		!strings.Contains(joined, "console|console/sign-in|403 Forbidden") {
		t.Fatalf("audit rows:\n%s", joined)
	}

	// Signing out ends both sessions: the next single sign-on goes to the provider again.
	_, body = get(alice, "/console/overview")
	m := regexp.MustCompile(`name="csrf" value="([0-9a-f]+)"`).FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no CSRF token on the overview:\n%.600s", body)
	}
	req, _ := http.NewRequest(http.MethodPost, g.url(own, "/console/sign-out"), strings.NewReader(url.Values{"csrf": {m[1]}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", strings.TrimSuffix(g.url(own, "/"), "/"))
	res, err := alice.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusSeeOther || consoleCookie(alice) {
		t.Fatalf("sign-out: %d, console cookie %t", res.StatusCode, consoleCookie(alice))
	}
	req, _ = http.NewRequest(http.MethodGet, g.url(own, "/console/sign-in/sso"), nil)
	req.Header.Set("Accept", "text/html")
	if res, err = alice.Do(req); err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusFound || !strings.HasPrefix(res.Header.Get("Location"), idp.Issuer) {
		t.Fatalf("after sign-out, sign-in/sso: %d to %q, want the provider again", res.StatusCode, res.Header.Get("Location"))
	}
}
