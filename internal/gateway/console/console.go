// Package console serves the gateway's web console under /console/ on its own name: sign-in with
// the admin key, domains, live agents, certificates, an overview of the traffic, the request
// inspector and the audit log. Every change goes through the admin API's handler in-process, so
// that the API stays the one implementation of every rule; the console only renders and forms.
package console

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/json"
	"errors"
	"html/template"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/hopgate/hopgate/internal/gateway/access"
	"github.com/hopgate/hopgate/internal/gateway/admin"
	"github.com/hopgate/hopgate/internal/gateway/authlimit"
	"github.com/hopgate/hopgate/internal/gateway/inspect"
	"github.com/hopgate/hopgate/internal/gateway/registry"
)

// Prefix is where the console lives on the gateway's own name.
const Prefix = "/console/"

// DefaultSessionTTL is how long a sign-in lasts.
const DefaultSessionTTL = 12 * time.Hour

// maxForm bounds a console form: the largest is a replay's edited body.
const maxForm = 256 << 10

// Sessions keeps sign-in sessions (*registry.Store implements it, so a session opened on one
// gateway is good on the others of the database).
type Sessions interface {
	CreateConsoleSession(ctx context.Context, idHash string, cs registry.ConsoleSession) error
	ConsoleSession(ctx context.Context, idHash string) (registry.ConsoleSession, error)
	DeleteConsoleSession(ctx context.Context, idHash string) error
}

// Options wire the console.
type Options struct {
	// Admin is the admin API's handler, called in-process with AdminKey for every read and change.
	Admin    http.Handler
	AdminKey string
	Sessions Sessions
	// Audit records sign-ins and sign-outs (the admin API records the changes themselves).
	Audit admin.Auditor
	// Limiter counts failed sign-ins with the failed key checks of the admin API and the tunnels.
	Limiter *authlimit.Limiter
	// Overview samples the process's counters for the overview's charts; nil shows no charts.
	Overview *Sampler
	// Inspector is the request inspector; nil: the inspector page says it is not available.
	Inspector *inspect.Inspector
	// Tenants serves replayed requests (the tenant handler, inspector included).
	Tenants http.Handler
	// SSO, when set, offers "Sign in with SSO" beside the admin key: the OpenID provider configured
	// for the gateway itself (HOP_SERVER_CONSOLE_OIDC_*), whose callback is CallbackPath.
	SSO        access.SSO
	SessionTTL time.Duration
	Logger     *slog.Logger
}

//go:embed templates/*.html
var templateFS embed.FS

//go:embed assets
var assetFS embed.FS

// Console is the console's handler.
type Console struct {
	o       Options
	keyHash [sha256.Size]byte
	pages   map[string]*template.Template
	assets  http.Handler
}

// New returns the console. It panics if its embedded templates do not parse, which a test catches.
func New(o Options) *Console {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.SessionTTL <= 0 {
		o.SessionTTL = DefaultSessionTTL
	}
	c := &Console{o: o, keyHash: sha256.Sum256([]byte(o.AdminKey)), pages: parsePages()}
	sub, _ := fs.Sub(assetFS, "assets")
	c.assets = http.StripPrefix(Prefix+"assets/", http.FileServer(http.FS(sub)))
	c.o.Logger = o.Logger.With("component", "console")
	return c
}

// csp allows nothing but the console's own files: no inline script or style, no other origin,
// no framing. The charts are inline SVG drawn with presentation attributes, which CSP allows.
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
	"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", csp)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	// Not no-referrer: with it Chromium sends "Origin: null" on the console's own form posts,
	// which sameOrigin must refuse. same-origin still keeps the console's URLs from other sites.
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	if r.TLS == nil {
		// The session cookie is Secure: over plain HTTP there would be no session, only a key sent
		// in clear. The gateway's HTTP listener redirects to HTTPS before this.
		http.Error(w, "the console is served over HTTPS only", http.StatusForbidden)
		return
	}
	p := r.URL.Path
	if strings.HasPrefix(p, Prefix+"assets/") {
		h.Set("Cache-Control", "public, max-age=3600")
		c.assets.ServeHTTP(w, r)
		return
	}
	h.Set("Cache-Control", "no-store")
	if r.Method == http.MethodPost {
		r.Body = http.MaxBytesReader(w, r.Body, maxForm)
		if !sameOrigin(r) {
			c.refuse(w, r, http.StatusForbidden, "cross-origin request refused")
			return
		}
	}
	switch p {
	case Prefix + "sign-in":
		c.signIn(w, r)
		return
	case ssoSignInPath, CallbackPath:
		if c.o.SSO == nil {
			c.refuse(w, r, http.StatusNotFound, "single sign-on is not configured for the console (HOP_SERVER_CONSOLE_OIDC_ISSUER)")
		} else if p == CallbackPath {
			c.ssoCallback(w, r)
		} else {
			c.ssoSignIn(w, r)
		}
		return
	case Prefix + "lang":
		setLanguage(w, r)
		return
	case "/console", Prefix:
		http.Redirect(w, r, Prefix+"overview", http.StatusSeeOther)
		return
	}
	s, ok := c.session(r)
	if !ok {
		if r.Method == http.MethodGet && !strings.HasSuffix(p, "/events") {
			http.Redirect(w, r, Prefix+"sign-in", http.StatusSeeOther)
			return
		}
		c.refuse(w, r, http.StatusUnauthorized, "sign in first")
		return
	}
	if r.Method == http.MethodPost && !s.validCSRF(r) {
		c.refuse(w, r, http.StatusForbidden, "the form is stale or forged (CSRF token missing or wrong): reload the page")
		return
	}
	route, ok := c.routes()[p]
	if !ok {
		c.refuse(w, r, http.StatusNotFound, "no such page")
		return
	}
	serve, ok := route[r.Method]
	if !ok {
		w.Header().Set("Allow", strings.Join(route.methods(), ", "))
		c.refuse(w, r, http.StatusMethodNotAllowed, "method not allowed")
		return
	}
	serve(w, r, s)
}

type handlerFunc func(w http.ResponseWriter, r *http.Request, s *session)

type route map[string]handlerFunc

func (rt route) methods() []string {
	var m []string
	for _, k := range []string{http.MethodGet, http.MethodPost} {
		if rt[k] != nil {
			m = append(m, k)
		}
	}
	return m
}

func (c *Console) routes() map[string]route {
	return map[string]route{
		Prefix + "sign-out":           {http.MethodPost: c.signOut},
		Prefix + "overview":           {http.MethodGet: c.overview},
		Prefix + "domains":            {http.MethodGet: c.domains},
		Prefix + "domains/register":   {http.MethodPost: c.register},
		Prefix + "domains/rotate":     {http.MethodPost: c.rotate},
		Prefix + "domains/unregister": {http.MethodPost: c.unregister},
		Prefix + "domains/memo":       {http.MethodPost: c.memo},
		Prefix + "agents":             {http.MethodGet: c.agents},
		Prefix + "agents/disconnect":  {http.MethodPost: c.disconnect},
		Prefix + "certificates":       {http.MethodGet: c.certificates},
		Prefix + "inspect":            {http.MethodGet: c.inspect},
		Prefix + "inspect/toggle":     {http.MethodPost: c.inspectToggle},
		Prefix + "inspect/entry":      {http.MethodGet: c.inspectEntry},
		Prefix + "inspect/replay":     {http.MethodPost: c.inspectReplay},
		Prefix + "inspect/events":     {http.MethodGet: c.inspectEvents},
		Prefix + "audit":              {http.MethodGet: c.audit},
	}
}

// setLanguage remembers the visitor's choice of language and goes back to the page it came from.
func setLanguage(w http.ResponseWriter, r *http.Request) {
	to := r.URL.Query().Get("to")
	if texts[to] != nil {
		http.SetCookie(w, &http.Cookie{Name: langCookie, Value: to, Path: Prefix, MaxAge: 365 * 24 * 3600,
			Secure: true, HttpOnly: true, SameSite: http.SameSiteLaxMode})
	}
	http.Redirect(w, r, backTo(r.URL.Query().Get("back")), http.StatusSeeOther)
}

// backTo is the page to go back to after the language switch: a page of the console with its
// query (the inspected domain), never another site (an open redirect).
func backTo(back string) string {
	u, err := url.Parse(back)
	if err != nil || u.Scheme != "" || u.Host != "" || u.User != nil || u.Fragment != "" ||
		!strings.HasPrefix(u.Path, Prefix) || strings.Contains(back, "\\") || path.Clean(u.Path) != u.Path {
		return Prefix + "overview"
	}
	if u.RawQuery == "" {
		return u.Path
	}
	return u.Path + "?" + u.Query().Encode()
}

// sameOrigin refuses a form posted from another site. SameSite=Strict already keeps the cookie
// off such a request and the CSRF token is checked too; this is the third lock, and the only one
// on the sign-in form before there is a session.
func sameOrigin(r *http.Request) bool {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" {
		return false
	}
	origin := r.Header.Get("Origin")
	if origin == "" || origin == "null" {
		// Browsers send Origin on every POST; a missing one is a script, which the token checks.
		return origin == ""
	}
	u, err := url.Parse(origin)
	return err == nil && u.Scheme == "https" && strings.EqualFold(u.Host, r.Host)
}

// apiAnswer is the admin API's answer to an in-process call.
type apiAnswer struct {
	code int
	body []byte
}

// ok reports a 2xx answer.
func (a apiAnswer) ok() bool { return a.code >= 200 && a.code < 300 }

// message is the API's error text, for the page.
func (a apiAnswer) message() string {
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(a.body, &e) == nil && e.Error != "" {
		return e.Error
	}
	return http.StatusText(a.code)
}

func (a apiAnswer) decode(v any) error {
	if !a.ok() {
		return errors.New(a.message())
	}
	return json.Unmarshal(a.body, v)
}

// api calls the admin API in-process as the signed-in operator: the same handler, the same
// validation, the same audit entry as a call with curl.
func (c *Console) api(r *http.Request, s *session, method, path string, query url.Values, body any) apiAnswer {
	var rd io.Reader = http.NoBody
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return apiAnswer{code: http.StatusInternalServerError}
		}
		rd = bytes.NewReader(b)
	}
	target := admin.Prefix + path
	if len(query) > 0 {
		target += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(admin.AsActor(r.Context(), s.actor), method, target, rd)
	if err != nil {
		return apiAnswer{code: http.StatusBadRequest, body: []byte(`{"error":"bad request"}`)}
	}
	req.RemoteAddr = r.RemoteAddr
	req.Host = r.Host
	req.Header.Set("Authorization", "Bearer "+c.o.AdminKey)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	rec := &memWriter{header: make(http.Header)}
	c.o.Admin.ServeHTTP(rec, req)
	if rec.code == 0 {
		rec.code = http.StatusOK
	}
	return apiAnswer{code: rec.code, body: rec.buf.Bytes()}
}

// memWriter keeps an in-process answer of the admin API, which is small JSON.
type memWriter struct {
	header http.Header
	code   int
	buf    bytes.Buffer
}

func (m *memWriter) Header() http.Header { return m.header }
func (m *memWriter) WriteHeader(code int) {
	if m.code == 0 {
		m.code = code
	}
}
func (m *memWriter) Write(b []byte) (int, error) {
	if m.code == 0 {
		m.code = http.StatusOK
	}
	return m.buf.Write(b)
}

// checkKey compares SHA-256 digests in constant time, as the admin API does.
func (c *Console) checkKey(key string) bool {
	got := sha256.Sum256([]byte(strings.TrimSpace(key)))
	return c.o.AdminKey != "" && subtle.ConstantTimeCompare(got[:], c.keyHash[:]) == 1
}
