package console

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/hopgate/hopgate/internal/gateway/admin"
	"github.com/hopgate/hopgate/internal/gateway/authlimit"
	"github.com/hopgate/hopgate/internal/gateway/inspect"
	"github.com/hopgate/hopgate/internal/gateway/registry"
)

const testAdminKey = "console-test-admin-key-0123456789"

// env is a console over TLS on the real admin API, a real SQLite store and a real inspector in
// front of a stand-in tenant handler (echoing what it got, as an agent's target would).
type env struct {
	t       *testing.T
	store   *registry.Store
	srv     *httptest.Server
	client  *http.Client
	insp    *inspect.Inspector
	tenants http.Handler
}

func newEnv(t *testing.T) *env {
	t.Helper()
	store, err := registry.Open(context.Background(), registry.Options{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	e := &env{t: t, store: store}
	e.insp = inspect.New(inspect.Options{RedactHeaders: []string{"X-HopGate-Api-Key"}})
	e.tenants = e.insp.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Set-Cookie", "sid=tenant-cookie-secret-42; Path=/")
		_, _ = io.WriteString(w, "echo "+r.Method+" "+r.URL.RequestURI()+" auth="+r.Header.Get("Authorization")+" body="+string(body))
	}))
	logger := slog.New(slog.DiscardHandler)
	api := admin.New(store, nil, testAdminKey, logger, admin.WithAudit(store), admin.WithInspector(e.insp, e.tenants))
	c := New(Options{Admin: api, AdminKey: testAdminKey, Sessions: store, Audit: store, Limiter: authlimit.New(5),
		Inspector: e.insp, Tenants: e.tenants, Logger: logger})
	e.srv = httptest.NewTLSServer(c)
	t.Cleanup(e.srv.Close)
	e.client = e.newClient()
	return e
}

// newClient is a browser stand-in: a cookie jar, no redirects followed (the tests look at them).
func (e *env) newClient() *http.Client {
	jar, _ := cookiejar.New(nil)
	c := e.srv.Client()
	return &http.Client{Transport: c.Transport, Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}
}

type page struct {
	code   int
	header http.Header
	body   string
}

func (e *env) get(c *http.Client, path string) page {
	e.t.Helper()
	res, err := c.Get(e.srv.URL + path)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return page{res.StatusCode, res.Header, string(b)}
}

func (e *env) post(c *http.Client, path string, form url.Values, hdr ...string) page {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, e.srv.URL+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", e.srv.URL)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := c.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return page{res.StatusCode, res.Header, string(b)}
}

var csrfField = regexp.MustCompile(`name="csrf" value="([0-9a-f]+)"`)

func csrfOf(t *testing.T, p page) string {
	t.Helper()
	m := csrfField.FindStringSubmatch(p.body)
	if m == nil {
		t.Fatalf("no CSRF token on the page (%d): %.300s", p.code, p.body)
	}
	return m[1]
}

// signIn signs c in and returns the session's CSRF token.
func (e *env) signIn(c *http.Client) string {
	e.t.Helper()
	form := e.get(c, "/console/sign-in")
	p := e.post(c, "/console/sign-in", url.Values{"csrf": {csrfOf(e.t, form)}, "key": {testAdminKey}})
	if p.code != http.StatusSeeOther || p.header.Get("Location") != "/console/overview" {
		e.t.Fatalf("sign-in: %d %s", p.code, p.header.Get("Location"))
	}
	return csrfOf(e.t, e.get(c, "/console/overview"))
}

var pages = []string{"overview", "domains", "agents", "certificates", "inspect", "audit"}

func TestSignInRequired(t *testing.T) {
	e := newEnv(t)
	for _, p := range append(pages, "inspect/entry?domain=a.example.com&id=1") {
		if got := e.get(e.client, "/console/"+p); got.code != http.StatusSeeOther || got.header.Get("Location") != "/console/sign-in" {
			t.Errorf("GET %s without a session: %d to %q, want 303 to the sign-in", p, got.code, got.header.Get("Location"))
		}
	}
	if got := e.get(e.client, "/console/inspect/events?domain=a.example.com"); got.code != http.StatusUnauthorized {
		t.Errorf("events without a session: %d, want 401", got.code)
	}
	for _, p := range []string{"domains/register", "domains/rotate", "domains/unregister", "domains/memo", "agents/disconnect", "inspect/toggle", "inspect/replay", "sign-out"} {
		if got := e.post(e.client, "/console/"+p, url.Values{"domain": {"a.example.com"}}); got.code != http.StatusUnauthorized {
			t.Errorf("POST %s without a session: %d, want 401", p, got.code)
		}
	}
	// A forged cookie of the right shape is no session either.
	u, _ := url.Parse(e.srv.URL)
	e.client.Jar.SetCookies(u, []*http.Cookie{{Name: sessionCookie, Value: strings.Repeat("ab", 32)}})
	if got := e.get(e.client, "/console/domains"); got.code != http.StatusSeeOther {
		t.Errorf("forged session cookie: %d, want 303", got.code)
	}
	if ds, _ := e.store.List(context.Background()); len(ds) != 0 {
		t.Errorf("refused calls changed the store: %v", ds)
	}
}

func TestSecurityHeaders(t *testing.T) {
	e := newEnv(t)
	check := func(what string, p page) {
		t.Helper()
		csp := p.header.Get("Content-Security-Policy")
		for _, want := range []string{"default-src 'none'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'", "form-action 'self'"} {
			if !strings.Contains(csp, want) {
				t.Errorf("%s: CSP %q lacks %q", what, csp, want)
			}
		}
		if strings.Contains(csp, "unsafe") || strings.Contains(csp, "http") {
			t.Errorf("%s: CSP %q allows inline code or another origin", what, csp)
		}
		// no-referrer would make Chromium send "Origin: null" on the console's own forms (refused).
		if p.header.Get("X-Content-Type-Options") != "nosniff" || p.header.Get("X-Frame-Options") != "DENY" || p.header.Get("Referrer-Policy") != "same-origin" {
			t.Errorf("%s: headers %v", what, p.header)
		}
	}
	check("sign-in", e.get(e.client, "/console/sign-in"))
	e.signIn(e.client)
	for _, p := range pages {
		got := e.get(e.client, "/console/"+p)
		check(p, got)
		if got.header.Get("Cache-Control") != "no-store" {
			t.Errorf("%s: Cache-Control %q, want no-store", p, got.header.Get("Cache-Control"))
		}
		// Everything the page loads is the console's own: no script, style or image elsewhere.
		for _, m := range regexp.MustCompile(`(?:src|href)="([^"]*)"`).FindAllStringSubmatch(got.body, -1) {
			if strings.Contains(m[1], "//") {
				t.Errorf("%s loads %q from another origin", p, m[1])
			}
		}
		if strings.Contains(got.body, "<script>") || strings.Contains(got.body, " style=") || strings.Contains(got.body, " onclick=") {
			t.Errorf("%s has inline script or style, which the CSP would block", p)
		}
	}
	for _, a := range []string{"/console/assets/console.js", "/console/assets/console.css"} {
		if got := e.get(e.client, a); got.code != http.StatusOK || len(got.body) < 100 {
			t.Errorf("%s: %d, %d bytes", a, got.code, len(got.body))
		}
	}
	// Plain HTTP never gets a page: the cookie is Secure and the key would travel in clear.
	plain := httptest.NewServer(New(Options{AdminKey: testAdminKey, Sessions: e.store}))
	defer plain.Close()
	res, err := http.Get(plain.URL + "/console/sign-in")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusForbidden {
		t.Errorf("console over plain HTTP: %d, want 403", res.StatusCode)
	}
}

func TestSignIn(t *testing.T) {
	e := newEnv(t)
	form := e.get(e.client, "/console/sign-in")
	token := csrfOf(t, form)
	if p := e.post(e.client, "/console/sign-in", url.Values{"csrf": {token}, "key": {"wrong-key"}}); p.code != http.StatusUnauthorized {
		t.Errorf("wrong key: %d, want 401", p.code)
	}
	if p := e.post(e.client, "/console/sign-in", url.Values{"csrf": {"00"}, "key": {testAdminKey}}); p.code != http.StatusForbidden {
		t.Errorf("forged sign-in token: %d, want 403", p.code)
	}
	if p := e.post(e.client, "/console/sign-in", url.Values{"csrf": {csrfOf(t, e.get(e.client, "/console/sign-in"))}, "key": {testAdminKey}},
		"Origin", "https://evil.example"); p.code != http.StatusForbidden {
		t.Errorf("cross-origin sign-in: %d, want 403", p.code)
	}
	p := e.post(e.client, "/console/sign-in", url.Values{"csrf": {csrfOf(t, e.get(e.client, "/console/sign-in"))}, "key": {testAdminKey}})
	if p.code != http.StatusSeeOther {
		t.Fatalf("right key: %d", p.code)
	}
	var cookie *http.Cookie
	for _, c := range (&http.Response{Header: p.header}).Cookies() {
		if c.Name == sessionCookie && c.Value != "" {
			cookie = c
		}
	}
	if cookie == nil || !cookie.Secure || !cookie.HttpOnly || cookie.SameSite != http.SameSiteStrictMode || cookie.Path != "/" || cookie.Expires.IsZero() {
		t.Fatalf("session cookie %+v, want __Host-, Secure, HttpOnly, SameSite=Strict, Path=/, with an expiry", cookie)
	}
	// Only the hash is stored: the cookie's value is no key to the session table.
	if _, err := e.store.ConsoleSession(context.Background(), cookie.Value); err == nil {
		t.Error("the session id is stored as it is")
	}
	if _, err := e.store.ConsoleSession(context.Background(), hashID(cookie.Value)); err != nil {
		t.Errorf("session not stored under its hash: %v", err)
	}
	if got := e.get(e.client, "/console/domains"); got.code != http.StatusOK {
		t.Errorf("signed in, domains: %d", got.code)
	}
	// Sign-out ends the session in the store, not only in this browser.
	csrf := csrfOf(t, e.get(e.client, "/console/domains"))
	if p := e.post(e.client, "/console/sign-out", url.Values{"csrf": {csrf}}); p.code != http.StatusSeeOther {
		t.Errorf("sign-out: %d", p.code)
	}
	if _, err := e.store.ConsoleSession(context.Background(), hashID(cookie.Value)); err == nil {
		t.Error("session still stored after sign-out")
	}
	replay := e.newClient()
	u, _ := url.Parse(e.srv.URL)
	replay.Jar.SetCookies(u, []*http.Cookie{{Name: sessionCookie, Value: cookie.Value}})
	if got := e.get(replay, "/console/domains"); got.code != http.StatusSeeOther {
		t.Errorf("old cookie after sign-out: %d, want 303 to the sign-in", got.code)
	}
	// Sign-ins and failures are in the audit log, the key nowhere.
	entries, err := e.store.Audit(context.Background(), 100, 0)
	if err != nil {
		t.Fatal(err)
	}
	var actions []string
	for _, a := range entries {
		actions = append(actions, a.Action+" "+a.Result)
		if strings.Contains(a.Actor+a.Target, testAdminKey) {
			t.Errorf("audit entry holds the key: %+v", a)
		}
	}
	got := strings.Join(actions, ", ")
	for _, want := range []string{"console/sign-in 401 Unauthorized", "console/sign-in 200 OK", "console/sign-out 200 OK"} {
		if !strings.Contains(got, want) {
			t.Errorf("audit %q lacks %q", got, want)
		}
	}
}

func TestSignInRateLimited(t *testing.T) {
	e := newEnv(t)
	var last page
	for range 6 {
		last = e.post(e.client, "/console/sign-in", url.Values{"csrf": {csrfOf(t, e.get(e.client, "/console/sign-in"))}, "key": {"nope"}})
	}
	if last.code != http.StatusTooManyRequests || last.header.Get("Retry-After") == "" {
		t.Fatalf("sixth wrong key: %d (Retry-After %q), want 429 after the limiter's 5", last.code, last.header.Get("Retry-After"))
	}
	// Blocked means blocked: the right key does not get in from that address either.
	p := e.post(e.client, "/console/sign-in", url.Values{"csrf": {csrfOf(t, e.get(e.client, "/console/sign-in"))}, "key": {testAdminKey}})
	if p.code != http.StatusTooManyRequests {
		t.Errorf("right key while blocked: %d, want 429", p.code)
	}
}

func TestChangesNeedCSRF(t *testing.T) {
	e := newEnv(t)
	csrf := e.signIn(e.client)
	register := url.Values{"domain": {"csrf.example.com"}}
	if p := e.post(e.client, "/console/domains/register", register); p.code != http.StatusForbidden {
		t.Errorf("register without a token: %d, want 403", p.code)
	}
	register.Set("csrf", strings.Repeat("0", 64))
	if p := e.post(e.client, "/console/domains/register", register); p.code != http.StatusForbidden {
		t.Errorf("register with a wrong token: %d, want 403", p.code)
	}
	register.Set("csrf", csrf)
	if p := e.post(e.client, "/console/domains/register", register, "Origin", "https://evil.example"); p.code != http.StatusForbidden {
		t.Errorf("register from another origin: %d, want 403", p.code)
	}
	if p := e.post(e.client, "/console/domains/register", register, "Sec-Fetch-Site", "cross-site"); p.code != http.StatusForbidden {
		t.Errorf("register with Sec-Fetch-Site cross-site: %d, want 403", p.code)
	}
	// Another operator's token is not this one's.
	other := e.newClient()
	otherCSRF := e.signIn(other)
	register.Set("csrf", otherCSRF)
	if p := e.post(e.client, "/console/domains/register", register); p.code != http.StatusForbidden {
		t.Errorf("register with another session's token: %d, want 403", p.code)
	}
	if ds, _ := e.store.List(context.Background()); len(ds) != 0 {
		t.Fatalf("a refused form registered %v", ds)
	}
	register.Set("csrf", csrf)
	if p := e.post(e.client, "/console/domains/register", register); p.code != http.StatusOK {
		t.Errorf("register with the token: %d %.300s", p.code, p.body)
	}
	if ds, _ := e.store.List(context.Background()); len(ds) != 1 {
		t.Errorf("registered: %v", ds)
	}
}

var keyOnPage = regexp.MustCompile(`<code id="new-key">([^<]+)</code>`)

func TestDomainsFlow(t *testing.T) {
	e := newEnv(t)
	csrf := e.signIn(e.client)
	ctx := context.Background()
	p := e.post(e.client, "/console/domains/register", url.Values{"csrf": {csrf}, "domain": {"App.Example.com"}, "memo": {"first"}})
	m := keyOnPage.FindStringSubmatch(p.body)
	if p.code != http.StatusOK || m == nil || !strings.Contains(p.body, `data-copy="new-key"`) {
		t.Fatalf("register: %d, key shown with a copy button: %v", p.code, m)
	}
	key := m[1]
	if _, err := e.store.Authenticate(ctx, "app.example.com", key); err != nil {
		t.Fatalf("the key shown does not authenticate: %v", err)
	}
	// Shown once: no later page has it.
	for _, pg := range pages {
		if strings.Contains(e.get(e.client, "/console/"+pg).body, key) {
			t.Errorf("the key shows again on %s", pg)
		}
	}
	// Search, memo, policy summary.
	if _, _, err := e.store.Register(ctx, "other.example.com", "second"); err != nil {
		t.Fatal(err)
	}
	if p := e.get(e.client, "/console/domains?q=app"); !strings.Contains(p.body, "app.example.com") || strings.Contains(p.body, "other.example.com") {
		t.Errorf("search for app: %.500s", p.body)
	}
	if p := e.post(e.client, "/console/domains/memo", url.Values{"csrf": {csrf}, "domain": {"app.example.com"}, "memo": {"billing app"}}); p.code != http.StatusOK {
		t.Errorf("memo: %d", p.code)
	}
	if d, _ := e.store.Get(ctx, "app.example.com"); d.Memo != "billing app" {
		t.Errorf("memo = %q", d.Memo)
	}
	if p := e.post(e.client, "/console/domains/memo", url.Values{"csrf": {csrf}, "domain": {"app.example.com"}, "memo": {"bad\x00memo"}}); p.code != http.StatusBadRequest {
		t.Errorf("memo with a control character: %d, want the API's 400", p.code)
	}
	// Rotate: a new key, the old one refused.
	p = e.post(e.client, "/console/domains/rotate", url.Values{"csrf": {csrf}, "domain": {"app.example.com"}})
	m = keyOnPage.FindStringSubmatch(p.body)
	if m == nil || m[1] == key {
		t.Fatalf("rotate: %d, new key %v", p.code, m)
	}
	if _, err := e.store.Authenticate(ctx, "app.example.com", key); err == nil {
		t.Error("the old key still authenticates")
	}
	// Unregister, and the API's 404 for a name not registered.
	if p := e.post(e.client, "/console/domains/unregister", url.Values{"csrf": {csrf}, "domain": {"app.example.com"}}); p.code != http.StatusOK {
		t.Errorf("unregister: %d", p.code)
	}
	if p := e.post(e.client, "/console/domains/unregister", url.Values{"csrf": {csrf}, "domain": {"app.example.com"}}); p.code != http.StatusNotFound {
		t.Errorf("unregister again: %d, want 404", p.code)
	}
	// Every change is audited as this console session, through the admin API's own path.
	entries, _ := e.store.Audit(ctx, 100, 0)
	seen := map[string]bool{}
	for _, a := range entries {
		if strings.HasPrefix(a.Actor, "console session ") {
			seen[a.Action+" "+a.Result] = true
		}
	}
	for _, want := range []string{"domains/register 201 Created", "domains/memo 200 OK", "domains/rotate-key 200 OK", "domains/unregister 200 OK", "domains/unregister 404 Not Found"} {
		if !seen[want] {
			t.Errorf("audit lacks %q as a console session: %v", want, seen)
		}
	}
	if p := e.get(e.client, "/console/audit"); !strings.Contains(p.body, "domains/rotate-key") || strings.Contains(p.body, "hopgate_") {
		t.Errorf("audit page: rotate-key shown %v, a key shown %v", strings.Contains(p.body, "domains/rotate-key"), strings.Contains(p.body, "hopgate_"))
	}
}

func TestEveryPageInBothLanguages(t *testing.T) {
	for key := range texts["en"] {
		if texts["ko"][key] == "" {
			t.Errorf("Korean text for %q missing", key)
		}
	}
	e := newEnv(t)
	e.signIn(e.client)
	for _, lang := range []string{"en", "ko"} {
		if p := e.get(e.client, "/console/lang?to="+lang+"&back=/console/domains"); p.code != http.StatusSeeOther || p.header.Get("Location") != "/console/domains" {
			t.Fatalf("language switch: %d %q", p.code, p.header.Get("Location"))
		}
		for _, pg := range pages {
			p := e.get(e.client, "/console/"+pg)
			if p.code != http.StatusOK || !strings.Contains(p.body, `<html lang="`+lang+`">`) {
				t.Errorf("%s in %s: %d", pg, lang, p.code)
			}
			if lang == "ko" && !strings.Contains(p.body, texts["ko"]["nav_domains"]) {
				t.Errorf("%s in ko has no Korean navigation", pg)
			}
		}
	}
	// The language switch never sends a visitor off the console.
	if p := e.get(e.client, "/console/lang?to=en&back="+url.QueryEscape("/console/inspect?domain=a.example.com")); p.header.Get("Location") != "/console/inspect?domain=a.example.com" {
		t.Errorf("the switch lost the page's query: %q", p.header.Get("Location"))
	}
	for _, back := range []string{"https://evil.example/", "//evil.example", "/console/../x", "/elsewhere", "/console/\\evil.example", "/console/x#y", "https:/console/x"} {
		if p := e.get(e.client, "/console/lang?to=en&back="+url.QueryEscape(back)); p.header.Get("Location") != "/console/overview" {
			t.Errorf("back=%q redirects to %q", back, p.header.Get("Location"))
		}
	}
}

// TestInspectorRedacted: a request with credentials, seen through the console and the API, never
// shows them; replay through the console shows the new answer beside the old one.
func TestInspectorRedacted(t *testing.T) {
	e := newEnv(t)
	csrf := e.signIn(e.client)
	ctx := context.Background()
	if _, _, err := e.store.Register(ctx, "seen.example.com", ""); err != nil {
		t.Fatal(err)
	}
	if p := e.post(e.client, "/console/inspect/toggle", url.Values{"csrf": {csrf}, "domain": {"seen.example.com"}, "on": {"1"}, "bodies": {"1"}}); p.code != http.StatusOK {
		t.Fatalf("inspector on: %d %.300s", p.code, p.body)
	} else if !strings.Contains(p.body, `data-path="/console/inspect?domain=seen.example.com"`) {
		// The script refreshes from, and reloads, the page's GET address, not the form's POST one.
		t.Errorf("the toggle's answer does not name its GET page: %.600s", p.body)
	}
	secrets := []string{"bearer-secret-9876", "cookie-secret-5432", "hopgate_apikeysecret1", "query-secret-777", "tenant-cookie-secret-42"}
	req := httptest.NewRequest(http.MethodPost, "https://seen.example.com/login?token=query-secret-777&page=2", strings.NewReader("hello"))
	req.Header.Set("Authorization", "Bearer bearer-secret-9876")
	req.Header.Set("Cookie", "session=cookie-secret-5432")
	req.Header.Set("X-HopGate-Api-Key", "hopgate_apikeysecret1")
	rec := httptest.NewRecorder()
	e.tenants.ServeHTTP(rec, req)
	if !strings.Contains(rec.Body.String(), "auth=Bearer bearer-secret-9876") {
		t.Fatalf("the target did not get the request as sent: %s", rec.Body)
	}
	list := e.insp.Entries("seen.example.com")
	if len(list) != 1 {
		t.Fatalf("%d entries", len(list))
	}
	id := list[0].ID
	views := map[string]string{
		"inspect page": e.get(e.client, "/console/inspect?domain=seen.example.com").body,
		"entry page":   e.get(e.client, "/console/inspect/entry?domain=seen.example.com&id="+id).body,
	}
	apiReq, _ := http.NewRequest(http.MethodGet, "/api/v1/admin/inspect/entries?domain=seen.example.com", nil)
	apiReq.Header.Set("Authorization", "Bearer "+testAdminKey)
	apiRec := httptest.NewRecorder()
	admin.New(e.store, nil, testAdminKey, nil, admin.WithInspector(e.insp, e.tenants)).ServeHTTP(apiRec, apiReq)
	views["admin API"] = apiRec.Body.String()
	for what, body := range views {
		if !strings.Contains(body, "/login") {
			t.Errorf("%s does not show the request: %.300s", what, body)
		}
		for _, s := range secrets {
			if strings.Contains(body, s) {
				t.Errorf("%s shows the secret %q", what, s)
			}
		}
	}
	if !strings.Contains(views["entry page"], "page=2") || !strings.Contains(views["entry page"], inspect.Redacted) {
		t.Errorf("entry page: the other parameter or the redaction marks are missing")
	}
	// Replay with an edited body: the answer is new, the credentials are not sent again.
	p := e.post(e.client, "/console/inspect/replay", url.Values{"csrf": {csrf}, "domain": {"seen.example.com"}, "id": {id}, "body": {"edited"}, "edit_body": {"1"}})
	if p.code != http.StatusOK || !strings.Contains(p.body, "body=edited") || !strings.Contains(p.body, "body=hello") {
		t.Errorf("replay: %d, new answer shown %v, old answer shown %v", p.code, strings.Contains(p.body, "body=edited"), strings.Contains(p.body, "body=hello"))
	}
	if strings.Contains(p.body, "bearer-secret-9876") {
		t.Error("the replay page shows the credential")
	}
	if n := len(e.insp.Entries("seen.example.com")); n != 2 {
		t.Errorf("after the replay %d entries, want 2", n)
	}
	// Off: the ring is gone.
	if p := e.post(e.client, "/console/inspect/toggle", url.Values{"csrf": {csrf}, "domain": {"seen.example.com"}, "on": {"0"}}); p.code != http.StatusOK {
		t.Errorf("inspector off: %d", p.code)
	}
	if n := len(e.insp.Entries("seen.example.com")); n != 0 {
		t.Errorf("off, %d entries kept", n)
	}
	// Only a registered domain can be inspected.
	if p := e.post(e.client, "/console/inspect/toggle", url.Values{"csrf": {csrf}, "domain": {"nobody.example.com"}, "on": {"1"}}); p.code != http.StatusNotFound {
		t.Errorf("inspect an unregistered domain: %d, want 404", p.code)
	}
}

// TestNoSingleSignOnUnlessConfigured: without HOP_SERVER_CONSOLE_OIDC_ISSUER the sign-in page offers
// only the admin key, and the single sign-on paths answer 404 (the flow itself is tested against a
// real provider in e2e TestConsoleSingleSignOn).
func TestNoSingleSignOnUnlessConfigured(t *testing.T) {
	e := newEnv(t)
	if p := e.get(e.client, "/console/sign-in"); p.code != http.StatusOK || strings.Contains(p.body, "/console/sign-in/sso") {
		t.Fatalf("sign-in page: %d, offers single sign-on: %t", p.code, strings.Contains(p.body, "/console/sign-in/sso"))
	}
	for _, path := range []string{"/console/sign-in/sso", "/.hopgate/callback?code=x&state=y"} {
		if p := e.get(e.client, path); p.code != http.StatusNotFound {
			t.Errorf("%s: %d, want 404", path, p.code)
		}
	}
}
