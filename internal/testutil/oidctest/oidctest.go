// Package oidctest runs a real OpenID provider in the test process, for tests of single sign-on:
// zitadel/oidc's op package over TLS on 127.0.0.1, with users, one confidential client and a
// username-and-password login page kept in memory.
package oidctest

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"html/template"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/zitadel/oidc/v3/pkg/op"
	"golang.org/x/text/language"

	"github.com/hopgate/hopgate/internal/gateway/devcert"
)

// User is an account of the provider.
type User struct {
	// ID is the subject ("sub"); Username when empty.
	ID       string
	Username string // the "preferred_username" claim and the login name
	Password string
	Email    string
	// EmailVerified is the "email_verified" claim.
	EmailVerified bool
	// Groups is the "groups" claim, left out when empty.
	Groups []string
	// Claims are put into the ID token as they are: a groups claim of another name, say.
	Claims map[string]any
}

// The provider knows one relying party: a confidential web client (ClientID, Provider.ClientSecret)
// that may use any https://HOST[:PORT]/.hopgate/callback as its redirect URI.
const (
	ClientID     = "hopgate"
	RedirectGlob = "https://*/.hopgate/callback"
)

// Provider is a running provider. Its address goes away with the test.
type Provider struct {
	// Issuer is the provider's URL, https://127.0.0.1:PORT (the policy's "issuer").
	Issuer string
	// CAPEM is the certificate the provider serves, which is its own root: the file for
	// HOP_SERVER_OIDC_CA_ROOTS.
	CAPEM []byte
	// Pool trusts CAPEM.
	Pool *x509.CertPool
	// ClientSecret is ClientID's secret, random per provider.
	ClientSecret string
}

// loginPath is the provider's login page; the op package sends the browser there with the
// authorization request's id.
const loginPath = "/login"

// Start runs a provider with users until the test ends.
func Start(t testing.TB, users ...User) *Provider {
	t.Helper()
	ca, err := devcert.NewCA("oidctest provider", []string{"localhost"}, 24*time.Hour)
	if err != nil {
		t.Fatalf("oidctest: certificate: %v", err)
	}
	srv := httptest.NewUnstartedServer(nil)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Cert}}
	issuer := "https://" + srv.Listener.Addr().String()

	st, err := newStorage(users)
	if err != nil {
		t.Fatalf("oidctest: %v", err)
	}
	var cryptoKey [32]byte
	_, _ = rand.Read(cryptoKey[:])
	provider, err := op.NewProvider(&op.Config{
		CryptoKey:                cryptoKey,
		CodeMethodS256:           true,
		AuthMethodPost:           true,
		SupportedUILocales:       []language.Tag{language.English},
		DefaultLogoutRedirectURI: loginPath,
	}, st, op.StaticIssuer(issuer))
	if err != nil {
		t.Fatalf("oidctest: provider: %v", err)
	}
	mux := http.NewServeMux()
	// The login page needs the issuer in its context to build the URL it returns the browser to.
	mux.Handle(loginPath, op.NewIssuerInterceptor(provider.IssuerFromRequest).Handler(&loginPage{store: st, done: op.AuthCallbackURL(provider)}))
	mux.Handle("/", provider)
	srv.Config.Handler = mux
	srv.StartTLS()
	t.Cleanup(srv.Close)

	return &Provider{Issuer: issuer, CAPEM: ca.CertPEM, Pool: ca.Pool, ClientSecret: st.client.secret}
}

// Login signs user in at the provider, as a browser would: resp is the relying party's redirect to
// the provider's authorization endpoint; Login follows the provider's redirects with client (its
// jar and transport, which must trust Pool), fills in the login form, and requests the callback
// the provider sends the browser back to. It returns the relying party's answer to that callback,
// unfollowed, and closes resp's body.
func (p *Provider) Login(client *http.Client, resp *http.Response, username, password string) (*http.Response, error) {
	defer drain(resp)
	next, err := resp.Location()
	if err != nil {
		return nil, fmt.Errorf("oidctest: expected a redirect to the provider, got %s", resp.Status)
	}
	c := *client
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	for range 10 {
		if !p.serves(next) {
			// Back to the relying party, with the code (or an error) and the state.
			return c.Get(next.String())
		}
		if next.Path == loginPath {
			next, err = p.submitLogin(&c, next, username, password)
			if err != nil {
				return nil, err
			}
			continue
		}
		r, err := c.Get(next.String())
		if err != nil {
			return nil, err
		}
		next, err = redirectOf(r)
		if err != nil {
			return nil, fmt.Errorf("oidctest: %s: %w", r.Request.URL.Path, err)
		}
	}
	return nil, errors.New("oidctest: too many redirects at the provider")
}

// submitLogin opens the login page at u and posts its form.
func (p *Provider) submitLogin(c *http.Client, u *url.URL, username, password string) (*url.URL, error) {
	page, err := c.Get(u.String())
	if err != nil {
		return nil, err
	}
	body, _ := io.ReadAll(io.LimitReader(page.Body, 64<<10))
	page.Body.Close()
	if page.StatusCode != http.StatusOK || !strings.Contains(string(body), `name="password"`) {
		return nil, fmt.Errorf("oidctest: login page answered %s", page.Status)
	}
	r, err := c.PostForm(p.Issuer+loginPath, url.Values{
		"id": {u.Query().Get("authRequestID")}, "username": {username}, "password": {password},
	})
	if err != nil {
		return nil, err
	}
	next, err := redirectOf(r)
	if err != nil {
		return nil, fmt.Errorf("oidctest: login of %q refused: %w", username, err)
	}
	return next, nil
}

func (p *Provider) serves(u *url.URL) bool {
	return u.Scheme+"://"+u.Host == p.Issuer
}

// redirectOf returns where a redirect points, and an error naming the status otherwise.
func redirectOf(r *http.Response) (*url.URL, error) {
	defer drain(r)
	if r.StatusCode < 300 || r.StatusCode > 399 {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 512))
		return nil, fmt.Errorf("%s: %s", r.Status, strings.TrimSpace(string(body)))
	}
	return r.Location()
}

func drain(r *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(r.Body, 1<<20))
	r.Body.Close()
}

// loginPage is the provider's user interface: a form for a username and a password.
type loginPage struct {
	store *storage
	done  func(ctx context.Context, authRequestID string) string // where the browser goes on
}

var loginForm = template.Must(template.New("login").Parse(`<!doctype html>
<html><head><title>Sign in</title></head><body>
<form method="POST" action="/login">
<input type="hidden" name="id" value="{{.ID}}">
<label>Username <input name="username" autocomplete="username"></label>
<label>Password <input name="password" type="password" autocomplete="current-password"></label>
<p>{{.Error}}</p>
<button type="submit">Sign in</button>
</form></body></html>
`))

func (l *loginPage) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet:
		l.render(w, http.StatusOK, r.URL.Query().Get("authRequestID"), "")
	case http.MethodPost:
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		if err := r.ParseForm(); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		id := r.PostFormValue("id")
		if err := l.store.checkPassword(id, r.PostFormValue("username"), r.PostFormValue("password")); err != nil {
			l.render(w, http.StatusUnauthorized, id, err.Error())
			return
		}
		http.Redirect(w, r, l.done(r.Context(), id), http.StatusFound)
	default:
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	}
}

func (l *loginPage) render(w http.ResponseWriter, status int, id, errMsg string) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_ = loginForm.Execute(w, struct{ ID, Error string }{id, errMsg})
}
