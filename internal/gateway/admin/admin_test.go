package admin_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hopgate/hopgate/internal/gateway/admin"
	"github.com/hopgate/hopgate/internal/gateway/apikey"
	"github.com/hopgate/hopgate/internal/gateway/registry"
	"github.com/hopgate/hopgate/internal/testutil/pgtest"
)

const adminKey = "test-admin-key-0123456789"

// env is one admin API over HTTPS in front of a real store.
type env struct {
	t      *testing.T
	srv    *httptest.Server
	store  *registry.Store
	raw    *sql.DB // the same database, for looking at rows directly
	agents *fakeAgents
	logs   *syncBuffer
	stop   func() // takes the database down (Postgres only)
}

type backend struct {
	name  string
	setup func(t *testing.T) (registry.Options, *sql.DB, func())
}

var backends = []backend{
	{"sqlite", func(t *testing.T) (registry.Options, *sql.DB, func()) {
		dir := t.TempDir()
		raw, err := sql.Open("sqlite", filepath.Join(dir, registry.DBFile)+"?_pragma=busy_timeout(10000)")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { raw.Close() })
		return registry.Options{DataDir: dir}, raw, nil
	}},
	{"postgres", func(t *testing.T) (registry.Options, *sql.DB, func()) {
		dsn := pgtest.DSN(t)
		raw, err := sql.Open("postgres", dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { raw.Close() })
		proxied, stop := pgtest.Outage(t, dsn)
		return registry.Options{DSN: proxied, MaxOpenConns: 10}, raw, stop
	}},
}

func newEnv(t *testing.T, b backend, key string, opts ...admin.Option) *env {
	t.Helper()
	o, raw, stop := b.setup(t)
	store, err := registry.Open(context.Background(), o)
	if err != nil {
		t.Fatalf("registry.Open: %v", err)
	}
	t.Cleanup(func() { store.Close() })
	e := &env{t: t, store: store, raw: raw, agents: newFakeAgents(), logs: &syncBuffer{}, stop: stop}
	logger := slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	e.srv = httptest.NewTLSServer(admin.New(store, e.agents, key, logger, opts...))
	t.Cleanup(e.srv.Close)
	t.Cleanup(func() {
		if strings.Contains(e.logs.String(), adminKey) || strings.Contains(e.logs.String(), apikey.Prefix) {
			t.Errorf("logs contain a key:\n%s", e.logs.String())
		}
	})
	return e
}

// forEach runs f on every backend in parallel.
func forEach(t *testing.T, f func(t *testing.T, b backend)) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			f(t, b)
		})
	}
}

type response struct {
	code   int
	header http.Header
	body   map[string]any
	raw    string
}

// do sends one request with the admin key (auth "" means the right one, "-" means none) and checks
// what every response must have.
func (e *env) do(method, path, auth string, body io.Reader) response {
	e.t.Helper()
	req, err := http.NewRequest(method, e.srv.URL+path, body)
	if err != nil {
		e.t.Fatal(err)
	}
	switch auth {
	case "":
		req.Header.Set("Authorization", "Bearer "+adminKey)
	case "-":
	default:
		req.Header.Set("Authorization", auth)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	if ct := res.Header.Get("Content-Type"); ct != "application/json" {
		e.t.Errorf("%s %s: Content-Type %q", method, path, ct)
	}
	if cc := res.Header.Get("Cache-Control"); cc != "no-store" {
		e.t.Errorf("%s %s: Cache-Control %q", method, path, cc)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		e.t.Fatalf("%s %s: body %q is not a JSON object: %v", method, path, raw, err)
	}
	if res.StatusCode >= 400 {
		if m["success"] != false || m["error"] == nil || m["error"] == "" {
			e.t.Errorf("%s %s: error body %s lacks success:false and error", method, path, raw)
		}
	} else if m["success"] != true {
		e.t.Errorf("%s %s: body %s lacks success:true", method, path, raw)
	}
	return response{res.StatusCode, res.Header, m, string(raw)}
}

func jsonBody(s string) io.Reader { return strings.NewReader(s) }

func TestErrors(t *testing.T) {
	t.Parallel()
	forEach(t, func(t *testing.T, b backend) {
		e := newEnv(t, b, adminKey)
		if _, _, err := e.store.Register(context.Background(), "taken.example.com", "seed"); err != nil {
			t.Fatal(err)
		}
		e.agents.set("taken.example.com", 2)
		big := `{"domain":"big.example.com","memo":"` + strings.Repeat("x", admin.MaxBodyBytes) + `"}`

		tests := []struct {
			name, method, path, auth string
			body                     string
			want                     int
			allow                    string
			errContains              string
		}{
			{name: "no auth header", method: "GET", path: "/api/v1/admin/domains", auth: "-", want: 401},
			{name: "wrong key", method: "GET", path: "/api/v1/admin/domains", auth: "Bearer nope", want: 401},
			{name: "key prefix", method: "GET", path: "/api/v1/admin/domains", auth: "Bearer " + adminKey[:10], want: 401},
			{name: "basic scheme", method: "GET", path: "/api/v1/admin/domains", auth: "Basic " + adminKey, want: 401},
			{name: "bare key", method: "GET", path: "/api/v1/admin/domains", auth: adminKey, want: 401},
			{name: "no auth unknown path", method: "GET", path: "/api/v1/admin/secret", auth: "-", want: 401},
			{name: "scheme case-insensitive", method: "GET", path: "/api/v1/admin/domains", auth: "bearer " + adminKey, want: 200},
			{name: "unknown path", method: "GET", path: "/api/v1/admin/nope", want: 404},
			{name: "trailing slash", method: "GET", path: "/api/v1/admin/domains/", want: 404},
			{name: "outside prefix", method: "GET", path: "/api/v1/other", want: 404},
			{name: "GET register", method: "GET", path: "/api/v1/admin/domains/register", want: 405, allow: "POST"},
			{name: "POST list", method: "POST", path: "/api/v1/admin/domains", body: `{}`, want: 405, allow: "GET"},
			{name: "DELETE status", method: "DELETE", path: "/api/v1/admin/domains/status?domain=taken.example.com", want: 405, allow: "GET"},
			{name: "PUT rotate", method: "PUT", path: "/api/v1/admin/domains/rotate-key", body: `{}`, want: 405, allow: "POST"},
			{name: "malformed json", method: "POST", path: "/api/v1/admin/domains/register", body: `{"domain":`, want: 400},
			{name: "not an object", method: "POST", path: "/api/v1/admin/domains/register", body: `["a.example.com"]`, want: 400},
			{name: "unknown field", method: "POST", path: "/api/v1/admin/domains/register", body: `{"domain":"a.example.com","owner":"me"}`, want: 400, errContains: "owner"},
			{name: "trailing data", method: "POST", path: "/api/v1/admin/domains/register", body: `{"domain":"a.example.com"}{"domain":"b.example.com"}`, want: 400},
			{name: "trailing garbage", method: "POST", path: "/api/v1/admin/domains/register", body: `{"domain":"a.example.com"} x`, want: 400},
			{name: "empty body", method: "POST", path: "/api/v1/admin/domains/register", want: 400},
			{name: "missing domain", method: "POST", path: "/api/v1/admin/domains/register", body: `{"memo":"m"}`, want: 400, errContains: "domain is required"},
			{name: "single label", method: "POST", path: "/api/v1/admin/domains/register", body: `{"domain":"localhost"}`, want: 400},
			{name: "ip address", method: "POST", path: "/api/v1/admin/domains/register", body: `{"domain":"192.0.2.7"}`, want: 400},
			{name: "bad characters", method: "POST", path: "/api/v1/admin/domains/register", body: `{"domain":"a_b.example.com"}`, want: 400},
			{name: "wrong type", method: "POST", path: "/api/v1/admin/domains/register", body: `{"domain":42}`, want: 400},
			{name: "memo too long", method: "POST", path: "/api/v1/admin/domains/register", body: `{"domain":"m.example.com","memo":"` + strings.Repeat("m", registry.MaxMemo+1) + `"}`, want: 400, errContains: "memo"},
			{name: "exists", method: "POST", path: "/api/v1/admin/domains/register", body: `{"domain":"TAKEN.example.com."}`, want: 409},
			{name: "body too large", method: "POST", path: "/api/v1/admin/domains/register", body: big, want: 413},
			{name: "unregister unknown", method: "POST", path: "/api/v1/admin/domains/unregister", body: `{"domain":"unknown.example.com"}`, want: 404},
			{name: "unregister wrong key", method: "POST", path: "/api/v1/admin/domains/unregister", body: `{"domain":"taken.example.com","client_api_key":"hopgate_wrong"}`, want: 403},
			{name: "unregister invalid", method: "POST", path: "/api/v1/admin/domains/unregister", body: `{"domain":"-bad-.example.com"}`, want: 400},
			{name: "rotate unknown", method: "POST", path: "/api/v1/admin/domains/rotate-key", body: `{"domain":"unknown.example.com"}`, want: 404},
			{name: "rotate unknown field", method: "POST", path: "/api/v1/admin/domains/rotate-key", body: `{"domain":"taken.example.com","client_api_key":"x"}`, want: 400},
			{name: "rotate too large", method: "POST", path: "/api/v1/admin/domains/rotate-key", body: big, want: 413},
			{name: "status without domain", method: "GET", path: "/api/v1/admin/domains/status", want: 400, errContains: "domain is required"},
			{name: "status invalid", method: "GET", path: "/api/v1/admin/domains/status?domain=no_such", want: 400},
			{name: "exists without domain", method: "GET", path: "/api/v1/admin/domains/exists?domain=", want: 400},
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
					t.Fatalf("status %d, want %d; body %v", res.code, tc.want, res.body)
				}
				if tc.allow != "" && res.header.Get("Allow") != tc.allow {
					t.Errorf("Allow %q, want %q", res.header.Get("Allow"), tc.allow)
				}
				if tc.want == 401 && res.header.Get("WWW-Authenticate") == "" {
					t.Error("401 without WWW-Authenticate")
				}
				if tc.errContains != "" && !strings.Contains(res.body["error"].(string), tc.errContains) {
					t.Errorf("error %q does not mention %q", res.body["error"], tc.errContains)
				}
			})
		}

		// Nothing above changed the store or closed tunnels.
		list, err := e.store.List(context.Background())
		if err != nil || len(list) != 1 || list[0].Name != "taken.example.com" {
			t.Fatalf("store after error cases: %+v, %v", list, err)
		}
		if closed := e.agents.closedDomains(); len(closed) != 0 {
			t.Fatalf("CloseDomain called for %v", closed)
		}
	})
}

func TestLifecycle(t *testing.T) {
	t.Parallel()
	forEach(t, func(t *testing.T, b backend) {
		e := newEnv(t, b, adminKey)
		ctx := context.Background()

		res := e.do("GET", "/api/v1/admin/domains", "", nil)
		if res.code != 200 || res.body["domains"] == nil || len(res.body["domains"].([]any)) != 0 {
			t.Fatalf("empty list: %d %v (want an empty array, not null)", res.code, res.body)
		}

		res = e.do("POST", "/api/v1/admin/domains/register", "", jsonBody(`{"domain":"App.Example.com","memo":"staging app"}`))
		if res.code != 201 {
			t.Fatalf("register: %d %v", res.code, res.body)
		}
		key, _ := res.body["client_api_key"].(string)
		if res.body["domain"] != "app.example.com" || res.body["memo"] != "staging app" || !apikey.WellFormed(key) {
			t.Fatalf("register body %v", res.body)
		}
		created, err := time.Parse(time.RFC3339, res.body["created_at"].(string))
		if err != nil || time.Since(created) > time.Minute {
			t.Fatalf("created_at %v: %v", res.body["created_at"], err)
		}
		if _, err := e.store.Authenticate(ctx, "app.example.com", key); err != nil {
			t.Fatalf("returned key does not authenticate: %v", err)
		}
		e.assertNoPlaintext(key)

		e.agents.set("app.example.com", 3)
		res = e.do("GET", "/api/v1/admin/domains/status?domain=APP.example.com", "", nil)
		if res.code != 200 || res.body["exists"] != true || res.body["domain"] != "app.example.com" ||
			res.body["memo"] != "staging app" || res.body["agents"] != 3.0 ||
			res.body["created_at"] == nil || res.body["updated_at"] == nil {
			t.Fatalf("status: %d %v", res.code, res.body)
		}
		res = e.do("GET", "/api/v1/admin/domains/status?domain=other.example.com", "", nil)
		if res.code != 200 || res.body["exists"] != false {
			t.Fatalf("status of unknown: %d %v", res.code, res.body)
		}
		for domain, want := range map[string]bool{"app.example.com": true, "app.example.com.": true, "other.example.com": false} {
			res = e.do("GET", "/api/v1/admin/domains/exists?domain="+domain, "", nil)
			if res.code != 200 || res.body["exists"] != want {
				t.Fatalf("exists %s: %d %v", domain, res.code, res.body)
			}
		}

		if res = e.do("POST", "/api/v1/admin/domains/register", "", jsonBody(`{"domain":"b.example.com"}`)); res.code != 201 || res.body["memo"] != "" {
			t.Fatalf("register without memo: %d %v", res.code, res.body)
		}
		res = e.do("GET", "/api/v1/admin/domains", "", nil)
		ds, _ := res.body["domains"].([]any)
		if res.code != 200 || len(ds) != 2 {
			t.Fatalf("list: %d %v", res.code, res.body)
		}
		first := ds[0].(map[string]any)
		if first["domain"] != "app.example.com" || first["memo"] != "staging app" || first["agents"] != 3.0 ||
			first["created_at"] == nil || first["updated_at"] == nil {
			t.Fatalf("list entry %v", first)
		}

		res = e.do("POST", "/api/v1/admin/domains/rotate-key", "", jsonBody(`{"domain":"app.example.com"}`))
		newKey, _ := res.body["client_api_key"].(string)
		if res.code != 200 || !apikey.WellFormed(newKey) || newKey == key {
			t.Fatalf("rotate-key: %d %v", res.code, res.body)
		}
		if got := e.agents.closedDomains(); !slices.Equal(got, []string{"app.example.com"}) {
			t.Fatalf("after rotate-key CloseDomain calls %v", got)
		}
		if _, err := e.store.Authenticate(ctx, "app.example.com", key); err == nil {
			t.Fatal("old key still authenticates after rotation")
		}
		e.assertNoPlaintext(newKey)

		res = e.do("POST", "/api/v1/admin/domains/unregister", "", jsonBody(`{"domain":"app.example.com","client_api_key":"`+key+`"}`))
		if res.code != 403 {
			t.Fatalf("unregister with the old key: %d %v", res.code, res.body)
		}
		res = e.do("POST", "/api/v1/admin/domains/unregister", "", jsonBody(`{"domain":"app.example.com","client_api_key":"`+newKey+`"}`))
		if res.code != 200 {
			t.Fatalf("unregister: %d %v", res.code, res.body)
		}
		res = e.do("POST", "/api/v1/admin/domains/unregister", "", jsonBody(`{"domain":"b.example.com"}`))
		if res.code != 200 {
			t.Fatalf("unregister without key: %d %v", res.code, res.body)
		}
		if got := e.agents.closedDomains(); !slices.Equal(got, []string{"app.example.com", "app.example.com", "b.example.com"}) {
			t.Fatalf("CloseDomain calls %v", got)
		}
		if res = e.do("GET", "/api/v1/admin/domains/exists?domain=app.example.com", "", nil); res.body["exists"] != false {
			t.Fatalf("exists after unregister: %v", res.body)
		}
	})
}

// assertNoPlaintext looks at the stored rows directly.
func (e *env) assertNoPlaintext(key string) {
	e.t.Helper()
	rows, err := e.raw.Query("SELECT name, key_hash, memo FROM domains")
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	var hashes []string
	for rows.Next() {
		var name, hash, memo string
		if err := rows.Scan(&name, &hash, &memo); err != nil {
			e.t.Fatal(err)
		}
		body := strings.TrimPrefix(key, apikey.Prefix)
		if strings.Contains(name+hash+memo, body) {
			e.t.Fatal("the domains table holds a plaintext client API key")
		}
		hashes = append(hashes, hash)
	}
	if err := rows.Err(); err != nil {
		e.t.Fatal(err)
	}
	if !slices.Contains(hashes, apikey.Hash(key)) {
		e.t.Fatalf("no row holds the hash of the issued key")
	}
}

func TestConcurrentRegister(t *testing.T) {
	t.Parallel()
	forEach(t, func(t *testing.T, b backend) {
		e := newEnv(t, b, adminKey)
		const n = 20
		codes := make(chan int, n)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for range n {
			wg.Go(func() {
				<-start
				req, err := http.NewRequest("POST", e.srv.URL+"/api/v1/admin/domains/register", jsonBody(`{"domain":"race.example.com"}`))
				if err != nil {
					t.Error(err)
					return
				}
				req.Header.Set("Authorization", "Bearer "+adminKey)
				res, err := e.srv.Client().Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				_, _ = io.Copy(io.Discard, res.Body)
				res.Body.Close()
				codes <- res.StatusCode
			})
		}
		close(start)
		wg.Wait()
		close(codes)
		count := map[int]int{}
		for c := range codes {
			count[c]++
		}
		if count[201] != 1 || count[409] != n-1 {
			t.Fatalf("status codes %v, want one 201 and %d × 409", count, n-1)
		}
	})
}

func TestStoreUnavailable(t *testing.T) {
	t.Parallel()
	calls := []struct{ method, path, body string }{
		{"GET", "/api/v1/admin/domains", ""},
		{"GET", "/api/v1/admin/domains/status?domain=a.example.com", ""},
		{"GET", "/api/v1/admin/domains/exists?domain=a.example.com", ""},
		{"POST", "/api/v1/admin/domains/register", `{"domain":"new.example.com"}`},
		{"POST", "/api/v1/admin/domains/unregister", `{"domain":"a.example.com"}`},
		{"POST", "/api/v1/admin/domains/rotate-key", `{"domain":"a.example.com"}`},
		{"GET", "/api/v1/admin/domains/policy?domain=a.example.com", ""},
		{"PUT", "/api/v1/admin/domains/policy?domain=a.example.com", `{"ip_deny":["192.0.2.1"]}`},
		{"PUT", "/api/v1/admin/domains/policy?domain=a.example.com", `{}`},
		{"PUT", "/api/v1/admin/domains/policy?domain=a.example.com", `{"oidc":{"issuer":"https://id.example.com","client_id":"c"}}`},
		{"POST", "/api/v1/admin/sessions/rotate-key", ""},
	}
	check := func(e *env) {
		for _, c := range calls {
			var body io.Reader
			if c.body != "" {
				body = jsonBody(c.body)
			}
			if res := e.do(c.method, c.path, "", body); res.code != 503 {
				e.t.Errorf("%s %s: %d %v, want 503", c.method, c.path, res.code, res.body)
			}
		}
		if closed := e.agents.closedDomains(); len(closed) != 0 {
			e.t.Errorf("CloseDomain called for %v although the store failed", closed)
		}
	}
	forEach(t, func(t *testing.T, b backend) {
		t.Run("store closed", func(t *testing.T) {
			e := newEnv(t, b, adminKey)
			e.store.Close()
			check(e)
		})
		if b.name == "postgres" {
			t.Run("database down", func(t *testing.T) {
				e := newEnv(t, b, adminKey)
				if _, _, err := e.store.Register(context.Background(), "a.example.com", ""); err != nil {
					t.Fatal(err)
				}
				e.stop()
				check(e)
			})
		}
	})
}

func TestDisabled(t *testing.T) {
	t.Parallel()
	e := newEnv(t, backends[0], "")
	for _, path := range []string{"/api/v1/admin/domains", "/api/v1/admin/domains/status?domain=a.example.com", "/api/v1/admin/nope"} {
		for _, auth := range []string{"", "-", "Bearer "} {
			if res := e.do("GET", path, auth, nil); res.code != 404 {
				t.Errorf("GET %s (auth %q) with the API disabled: %d, want 404", path, auth, res.code)
			}
		}
	}
	if res := e.do("POST", "/api/v1/admin/domains/register", "Bearer ", jsonBody(`{"domain":"a.example.com"}`)); res.code != 404 {
		t.Errorf("register with the API disabled: %d, want 404", res.code)
	}
	if list, _ := e.store.List(context.Background()); len(list) != 0 {
		t.Errorf("disabled API changed the store: %v", list)
	}
}

type fakeAgents struct {
	mu     sync.Mutex
	counts map[string]int
	closed []string
}

func newFakeAgents() *fakeAgents { return &fakeAgents{counts: map[string]int{}} }

func (f *fakeAgents) AgentCount(domain string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.counts[domain]
}

func (f *fakeAgents) CloseDomain(domain string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = append(f.closed, domain)
	delete(f.counts, domain)
}

func (f *fakeAgents) set(domain string, n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.counts[domain] = n
}

func (f *fakeAgents) closedDomains() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.closed)
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
