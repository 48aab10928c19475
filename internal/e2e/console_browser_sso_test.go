package e2e

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/hopgate/hopgate/internal/testutil/hoptest"
	"github.com/hopgate/hopgate/internal/testutil/oidctest"
)

// TestBrowserConsoleSingleSignOn signs in to the console through a real OpenID provider in a real
// Chromium. It holds what no Go client can: the provider is another site (127.0.0.1 beside
// localhost), so the way back is a cross-site redirect chain, from which Chromium withholds the
// console's SameSite=Strict cookie; the console must still be signed in on the first page after it.
func TestBrowserConsoleSingleSignOn(t *testing.T) {
	chrome := chromium(t)
	idp := oidctest.Start(t, oidctest.User{ID: "u-ops", Username: "ops", Password: "ops-pw", Email: "ops@example.com", EmailVerified: true})
	roots := filepath.Join(t.TempDir(), "idp-ca.pem")
	if err := os.WriteFile(roots, idp.CAPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	// A fixed port, not :0: the callback URL the provider sends the browser to carries the port
	// the gateway was told to listen on.
	g := startGateway(t, gatewayOptions{Addr: hoptest.FreeAddr(t), Env: []string{
		"HOP_SERVER_OIDC_CA_ROOTS=" + roots,
		"HOP_SERVER_CONSOLE_OIDC_ISSUER=" + idp.Issuer,
		"HOP_SERVER_CONSOLE_OIDC_CLIENT_ID=" + oidctest.ClientID,
		"HOP_SERVER_CONSOLE_OIDC_CLIENT_SECRET=" + idp.ClientSecret,
		"HOP_SERVER_CONSOLE_OIDC_ALLOWED_EMAILS=ops@example.com",
	}})
	_, port, _ := strings.Cut(g.addr, ":")
	origin := "https://localhost:" + port

	pins := spkiPins(t, g)
	blk, _ := pem.Decode(idp.CAPEM)
	idpCert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	pins = append(pins, spkiPin(idpCert))
	ctx := startBrowser(t, chrome, pins, 90*time.Second)
	var mu sync.Mutex
	var problems []string
	if err := chromedp.Listen(ctx, func(ev any) {
		if ev, ok := ev.(*runtime.EventExceptionThrown); ok {
			mu.Lock()
			problems = append(problems, fmt.Sprintf("exception: %s", ev.ExceptionDetails.Text))
			mu.Unlock()
		}
	}); err != nil {
		t.Fatal(err)
	}
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, p := range problems {
			t.Errorf("browser: %s", p)
		}
	}()

	b := &tab{t: t, ctx: ctx, origin: origin}
	b.navigate("/console/sign-in")
	b.submit("a#sso")
	if loc := b.location(); !strings.HasPrefix(loc, idp.Issuer+"/login") {
		t.Fatalf("the single sign-on button went to %s, want the provider's login", loc)
	}
	b.do(chromedp.SendKeys(chromedp.CSS(`input[name="username"]`), "ops"),
		chromedp.SendKeys(chromedp.CSS(`input[name="password"]`), "ops-pw"))
	b.submit(`button[type="submit"]`)
	// The page after the provider moves on to the overview by itself, signed in.
	b.poll(`location.pathname === "/console/overview" && document.querySelector('form[action="/console/sign-out"]') !== null`,
		"the overview, signed in, after the provider")
	if !b.cookieNames()["__Host-hopgate_console"] {
		t.Fatal("no console session cookie after single sign-on")
	}
	b.submit(`form[action="/console/sign-out"] button[type="submit"]`)
	if loc := b.location(); !strings.HasSuffix(loc, "/console/sign-in") {
		t.Fatalf("after sign-out at %s", loc)
	}
}
