package e2e

import (
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hopgate/hopgate/internal/testutil/hoptest"
	"github.com/hopgate/hopgate/internal/testutil/pgtest"
)

// gwSQLiteDSN is the embedded database of a gateway's data directory, opened beside the server.
func gwSQLiteDSN(dataDir string) string {
	return filepath.Join(dataDir, "hopgate.db") + "?_pragma=busy_timeout(5000)"
}

// gwStore is one of the two domain stores the gateway runs on.
type gwStore struct {
	name string
	// dsn is HOP_DB_DSN for a fresh store ("" = SQLite in the data directory).
	dsn func(t *testing.T) string
	// rows reads table domains of the store behind g.
	rows func(t *testing.T, g *gateway, dsn string) [][]string
	// exec runs a statement on that store.
	exec func(t *testing.T, dataDir, dsn, stmt string)
}

var gwStores = []gwStore{
	{
		name: "sqlite",
		dsn:  func(*testing.T) string { return "" },
		rows: func(t *testing.T, g *gateway, _ string) [][]string {
			return gwRows(t, "sqlite", gwSQLiteDSN(g.dataDir))
		},
		exec: func(t *testing.T, dataDir, _, stmt string) { gwExec(t, "sqlite", gwSQLiteDSN(dataDir), stmt) },
	},
	{
		name: "postgres",
		dsn:  func(t *testing.T) string { return pgtest.DSN(t) },
		rows: func(t *testing.T, _ *gateway, dsn string) [][]string { return gwRows(t, "postgres", dsn) },
		exec: func(t *testing.T, _, dsn, stmt string) { gwExec(t, "postgres", dsn, stmt) },
	},
}

// gwCheckNoPlainKey fails if any column of any stored row holds key or its secret part.
func gwCheckNoPlainKey(t *testing.T, rows [][]string, keys ...string) {
	t.Helper()
	if len(rows) == 0 {
		t.Fatal("table domains is empty")
	}
	for _, key := range keys {
		secret := strings.TrimPrefix(key, "hopgate_")
		for _, row := range rows {
			for i, col := range row {
				if strings.Contains(col, key) || strings.Contains(col, secret) {
					t.Fatalf("column %d of a stored domain row holds the plaintext client API key: %v", i, row)
				}
			}
		}
	}
}

// TestGatewayAdminAPI runs the six admin calls of the contract and every status code they answer
// with, against the real server on each store.
func TestGatewayAdminAPI(t *testing.T) {
	t.Parallel()
	for _, st := range gwStores {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			dsn := st.dsn(t)
			g := startGateway(t, gatewayOptions{DSN: dsn})
			c := g.httpClient(true)
			target := gwNewTarget(t, nil)
			const domain = "app.example.test"
			start := time.Now()

			// register, with a spelling that is not canonical: the answer carries the canonical name.
			code, out := gwAdmin(t, g, c, http.MethodPost, "/api/v1/admin/domains/register",
				map[string]string{"domain": "App.Example.TEST.", "memo": "first app"})
			if code != http.StatusCreated {
				t.Fatalf("register: %d %v", code, out)
			}
			key, _ := out["client_api_key"].(string)
			if out["success"] != true || out["domain"] != domain || out["memo"] != "first app" ||
				!strings.HasPrefix(key, "hopgate_") || len(key) < len("hopgate_")+40 {
				t.Fatalf("register answer: %v", out)
			}
			for _, f := range []string{"success", "domain", "client_api_key", "memo", "created_at"} {
				if _, ok := out[f]; !ok {
					t.Errorf("register answer lacks %q: %v", f, out)
				}
			}
			created, err := time.Parse(time.RFC3339, out["created_at"].(string))
			if err != nil || created.Before(start.Add(-time.Minute)) || created.After(time.Now().Add(time.Minute)) {
				t.Fatalf("created_at %v (%v): not an RFC 3339 time of now", out["created_at"], err)
			}
			code, out = gwAdmin(t, g, c, http.MethodPost, "/api/v1/admin/domains/register",
				map[string]string{"domain": "Bücher.example.test"})
			if code != http.StatusCreated || out["domain"] != "xn--bcher-kva.example.test" {
				t.Fatalf("register IDN: %d %v", code, out)
			}
			idnKey := out["client_api_key"].(string)
			gwCheckNoPlainKey(t, st.rows(t, g, dsn), key, idnKey)

			// exists
			for q, want := range map[string]bool{domain: true, "APP.example.test.": true, "app.example.test:8443": true, "unknown.example.test": false} {
				code, out = gwAdmin(t, g, c, http.MethodGet, "/api/v1/admin/domains/exists?domain="+q, nil)
				if code != http.StatusOK || out["success"] != true || out["exists"] != want {
					t.Fatalf("exists %s: %d %v, want exists=%v", q, code, out, want)
				}
			}

			// status: 0 agents, then 1 with an agent, then 0 after it is killed.
			code, out = gwAdmin(t, g, c, http.MethodGet, "/api/v1/admin/domains/status?domain="+domain, nil)
			if code != http.StatusOK || out["success"] != true || out["exists"] != true || out["domain"] != domain ||
				out["memo"] != "first app" || out["agents"] != float64(0) || out["created_at"] == nil || out["updated_at"] == nil {
				t.Fatalf("status: %d %v", code, out)
			}
			agent := g.startAgent(domain, key, target.URL)
			if n := gwAgents(t, g, c, domain); n != 1 {
				t.Fatalf("status with one agent: agents=%d", n)
			}
			if r := gwDo(t, c, http.MethodGet, g.url(domain, "/"), nil, nil); r.code != http.StatusOK || string(r.body) != "ok" {
				t.Fatalf("proxied request: %d %q", r.code, r.body)
			}

			// list
			code, out = gwAdmin(t, g, c, http.MethodGet, "/api/v1/admin/domains", nil)
			if code != http.StatusOK || out["success"] != true {
				t.Fatalf("list: %d %v", code, out)
			}
			listed, _ := out["domains"].([]any)
			seen := map[string]map[string]any{}
			for _, d := range listed {
				m := d.(map[string]any)
				seen[m["domain"].(string)] = m
			}
			if len(seen) != 2 || seen[domain]["agents"] != float64(1) || seen[domain]["memo"] != "first app" ||
				seen[domain]["created_at"] == nil || seen[domain]["updated_at"] == nil ||
				seen["xn--bcher-kva.example.test"]["agents"] != float64(0) {
				t.Fatalf("list: %v", out)
			}

			agent.signal(syscall.SIGKILL)
			agent.wait(t, 5*time.Second)
			waitFor(t, 10*time.Second, "agents 0 after the agent was killed", func() bool { return gwAgents(t, g, c, domain) == 0 })

			// rotate-key: the agent on the old key is cut off and, refused on reconnect, exits 3.
			agent = g.startAgent(domain, key, target.URL)
			code, out = gwAdmin(t, g, c, http.MethodPost, "/api/v1/admin/domains/rotate-key", map[string]string{"domain": domain})
			newKey, _ := out["client_api_key"].(string)
			if code != http.StatusOK || out["success"] != true || !strings.HasPrefix(newKey, "hopgate_") || newKey == key {
				t.Fatalf("rotate-key: %d %v", code, out)
			}
			if exit := agent.wait(t, 15*time.Second); exit != 3 {
				t.Fatalf("agent on the rotated key exited %d, want 3", exit)
			}
			if n := gwAgents(t, g, c, domain); n != 0 {
				t.Fatalf("agents=%d after rotate-key", n)
			}
			gwCheckNoPlainKey(t, st.rows(t, g, dsn), newKey)
			if exit := g.startAgentNoWait(domain, key, target.URL).wait(t, 15*time.Second); exit != 3 {
				t.Fatalf("agent with the old key exited %d, want 3", exit)
			}
			agent = g.startAgent(domain, newKey, target.URL)
			if r := gwDo(t, c, http.MethodGet, g.url(domain, "/"), nil, nil); r.code != http.StatusOK {
				t.Fatalf("proxied request on the new key: %d %q", r.code, r.body)
			}

			// unregister: a wrong client_api_key is refused; the right one removes the domain and
			// closes its tunnel.
			code, out = gwAdmin(t, g, c, http.MethodPost, "/api/v1/admin/domains/unregister",
				map[string]string{"domain": domain, "client_api_key": key})
			if code == http.StatusOK || out["success"] != false {
				t.Fatalf("unregister with the old key: %d %v", code, out)
			}
			code, out = gwAdmin(t, g, c, http.MethodPost, "/api/v1/admin/domains/unregister",
				map[string]string{"domain": domain, "client_api_key": newKey})
			if code != http.StatusOK || out["success"] != true {
				t.Fatalf("unregister: %d %v", code, out)
			}
			if exit := agent.wait(t, 15*time.Second); exit != 3 {
				t.Fatalf("agent of the unregistered domain exited %d, want 3", exit)
			}
			code, out = gwAdmin(t, g, c, http.MethodGet, "/api/v1/admin/domains/exists?domain="+domain, nil)
			if code != http.StatusOK || out["exists"] != false {
				t.Fatalf("exists after unregister: %d %v", code, out)
			}
			code, out = gwAdmin(t, g, c, http.MethodGet, "/api/v1/admin/domains/status?domain="+domain, nil)
			if code != http.StatusOK || out["exists"] != false {
				t.Fatalf("status after unregister: %d %v", code, out)
			}
			if r := gwDo(t, c, http.MethodGet, g.url(domain, "/"), nil, nil); r.code != http.StatusNotFound {
				t.Fatalf("request to the unregistered domain: %d %q", r.code, r.body)
			}
			code, out = gwAdmin(t, g, c, http.MethodPost, "/api/v1/admin/domains/unregister", map[string]string{"domain": domain})
			if code != http.StatusNotFound || out["success"] != false || out["error"] == "" {
				t.Fatalf("unregister twice: %d %v", code, out)
			}

			gwAdminCodes(t, g, c)
		})
	}
}

// gwAdminCodes hits every error status of the admin API, plus the one-winner rule of concurrent
// registration, as parallel subtests on a running gateway.
func gwAdminCodes(t *testing.T, g *gateway, c *http.Client) {
	g.register("taken.example.test")
	big := `{"domain":"big.example.test","memo":"` + strings.Repeat("a", 2<<20) + `"}`
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte("admin:"+g.adminKey))
	cases := []struct {
		name, method, path string
		auth               string // Authorization; "-" for none, "" for the right key, "h1" for it over HTTP/1.1
		body               io.Reader
		want               int
	}{
		{"no bearer", "GET", "/api/v1/admin/domains", "-", nil, 401},
		{"bad bearer", "GET", "/api/v1/admin/domains", "Bearer wrong-key", nil, 401},
		{"key prefix", "POST", "/api/v1/admin/domains/register", "Bearer " + g.adminKey[:len(g.adminKey)-1], strings.NewReader(`{"domain":"p.example.test"}`), 401},
		{"basic scheme", "GET", "/api/v1/admin/domains", basic, nil, 401},
		{"bad bearer unknown path", "GET", "/api/v1/admin/nothing", "Bearer wrong-key", nil, 401},
		{"invalid domain", "POST", "/api/v1/admin/domains/register", "", strings.NewReader(`{"domain":"bad_name!.example.test"}`), 400},
		{"single label", "POST", "/api/v1/admin/domains/register", "", strings.NewReader(`{"domain":"intranet"}`), 400},
		{"ip address", "POST", "/api/v1/admin/domains/register", "", strings.NewReader(`{"domain":"10.0.0.1"}`), 400},
		{"name too long", "POST", "/api/v1/admin/domains/register", "", strings.NewReader(`{"domain":"` + strings.Repeat("a.", 127) + `test"}`), 400},
		{"empty domain", "POST", "/api/v1/admin/domains/rotate-key", "", strings.NewReader(`{"domain":""}`), 400},
		{"unknown field", "POST", "/api/v1/admin/domains/register", "", strings.NewReader(`{"domain":"u.example.test","memo":"m","owner":"x"}`), 400},
		{"malformed json", "POST", "/api/v1/admin/domains/register", "", strings.NewReader(`{"domain":`), 400},
		{"two objects", "POST", "/api/v1/admin/domains/register", "", strings.NewReader(`{"domain":"t.example.test"}{}`), 400},
		{"empty body", "POST", "/api/v1/admin/domains/register", "", nil, 400},
		{"invalid domain query", "GET", "/api/v1/admin/domains/status?domain=bad_name!.example.test", "", nil, 400},
		{"missing domain query", "GET", "/api/v1/admin/domains/exists", "", nil, 400},
		{"unknown domain rotate", "POST", "/api/v1/admin/domains/rotate-key", "", strings.NewReader(`{"domain":"nobody.example.test"}`), 404},
		{"unknown domain unregister", "POST", "/api/v1/admin/domains/unregister", "", strings.NewReader(`{"domain":"nobody.example.test"}`), 404},
		{"unknown path", "GET", "/api/v1/admin/nothing", "", nil, 404},
		{"duplicate", "POST", "/api/v1/admin/domains/register", "", strings.NewReader(`{"domain":"Taken.Example.Test."}`), 409},
		{"GET register", "GET", "/api/v1/admin/domains/register", "", nil, 405},
		{"POST list", "POST", "/api/v1/admin/domains", "", strings.NewReader(`{}`), 405},
		{"DELETE status", "DELETE", "/api/v1/admin/domains/status?domain=taken.example.test", "", nil, 405},
		{"PUT rotate-key", "PUT", "/api/v1/admin/domains/rotate-key", "", strings.NewReader(`{"domain":"taken.example.test"}`), 405},
		{"memo too long", "POST", "/api/v1/admin/domains/register", "", strings.NewReader(`{"domain":"memo.example.test","memo":"` + strings.Repeat("m", 300) + `"}`), 400},
		{"2 MiB body", "POST", "/api/v1/admin/domains/register", "", strings.NewReader(big), 413},
		{"2 MiB body, no length", "POST", "/api/v1/admin/domains/register", "", gwHideLength{strings.NewReader(big)}, 413},
		{"2 MiB body, HTTP/1.1", "POST", "/api/v1/admin/domains/register", "h1", strings.NewReader(big), 413},
		{"2 MiB body, HTTP/1.1 chunked", "POST", "/api/v1/admin/domains/register", "h1", gwHideLength{strings.NewReader(big)}, 413},
	}
	h1 := g.httpClient(false)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			hdr, client := gwBearer(g), c
			switch tc.auth {
			case "-":
				hdr = nil
			case "":
			case "h1":
				client = h1
			default:
				hdr = http.Header{"Authorization": {tc.auth}}
			}
			r := gwDo(t, client, tc.method, g.url("localhost", tc.path), hdr, tc.body)
			out := r.gwJSON(t)
			if r.code != tc.want || out["success"] != false || out["error"] == "" || out["error"] == nil {
				t.Fatalf("%s %s: %d %v, want %d with an error", tc.method, tc.path, r.code, out, tc.want)
			}
			if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("Content-Type %q", ct)
			}
			switch tc.want {
			case 401:
				if r.header.Get("WWW-Authenticate") == "" {
					t.Error("401 without WWW-Authenticate")
				}
			case 405:
				if r.header.Get("Allow") == "" {
					t.Error("405 without Allow")
				}
			}
		})
	}
	t.Run("concurrent register", func(t *testing.T) {
		t.Parallel()
		const n = 8
		var wg sync.WaitGroup
		codes := make([]int, n)
		errs := make([]error, n)
		for i := range n {
			wg.Go(func() {
				codes[i], _, errs[i] = gwAdminE(g, c, http.MethodPost, "/api/v1/admin/domains/register",
					map[string]string{"domain": "race.example.test"})
			})
		}
		wg.Wait()
		created, conflicts := 0, 0
		for i := range n {
			if errs[i] != nil {
				t.Fatal(errs[i])
			}
			switch codes[i] {
			case http.StatusCreated:
				created++
			case http.StatusConflict:
				conflicts++
			}
		}
		if created != 1 || conflicts != n-1 {
			t.Fatalf("concurrent registrations answered %v, want one 201 and %d 409", codes, n-1)
		}
	})
}

// TestGatewayAdminDisabled: with HOP_ADMIN_API_KEY empty, nothing under /api/v1/admin/ exists.
func TestGatewayAdminDisabled(t *testing.T) {
	t.Parallel()
	// exec uses the last value of a repeated variable: this one overrides the harness's key.
	g := startGateway(t, gatewayOptions{Env: []string{"HOP_ADMIN_API_KEY="}})
	c := g.httpClient(true)
	if len(lines(g.process, "admin API disabled")) == 0 {
		t.Error("the server did not log that the admin API is disabled")
	}
	calls := []struct{ method, path, body string }{
		{"POST", "/api/v1/admin/domains/register", `{"domain":"a.example.test"}`},
		{"POST", "/api/v1/admin/domains/unregister", `{"domain":"a.example.test"}`},
		{"GET", "/api/v1/admin/domains", ""},
		{"GET", "/api/v1/admin/domains/status?domain=a.example.test", ""},
		{"GET", "/api/v1/admin/domains/exists?domain=a.example.test", ""},
		{"POST", "/api/v1/admin/domains/rotate-key", `{"domain":"a.example.test"}`},
		{"GET", "/api/v1/admin/", ""},
		{"GET", "/api/v1/admin", ""},
		{"DELETE", "/api/v1/admin/anything", ""},
	}
	for _, call := range calls {
		for _, hdr := range []http.Header{gwBearer(g), nil, {"Authorization": {"Bearer "}}} {
			var body io.Reader
			if call.body != "" {
				body = strings.NewReader(call.body)
			}
			r := gwDo(t, c, call.method, g.url("localhost", call.path), hdr, body)
			if r.code != http.StatusNotFound {
				t.Errorf("%s %s (auth %q): %d %q, want 404", call.method, call.path, hdr.Get("Authorization"), r.code, r.body)
			}
		}
	}
	if r := gwDo(t, c, http.MethodGet, g.url("localhost", "/healthz"), nil, nil); r.code != http.StatusOK {
		t.Fatalf("/healthz: %d", r.code)
	}
}

// TestGatewayRouter checks where the one HTTPS port sends each request, and the HTTP listener.
func TestGatewayRouter(t *testing.T) {
	t.Parallel()
	g := startGateway(t, gatewayOptions{})
	h1, h2 := g.httpClient(false), g.httpClient(true)
	var tunnelPathHits atomic.Int64
	target := gwNewTarget(t, func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/hopgate.tunnel.v1.") {
			tunnelPathHits.Add(1)
		}
		_, _ = io.WriteString(w, "from target "+r.URL.Path)
	})
	g.register("idle.example.test")
	g.startAgent("live.example.test", g.register("live.example.test"), target.URL)
	httpAddr := g.httpAddr(t)
	_, httpsPort, _ := net.SplitHostPort(g.addr)

	gateway := []struct {
		name, path string
		want       int
	}{
		{"healthz", "/healthz", 200},
		{"readyz", "/readyz", 200},
		{"root", "/", 404},
		{"unknown path", "/index.html", 404},
		{"near admin", "/api/v1/adminx", 404},
		{"metrics not here", "/metrics", 404},
	}
	for _, tc := range gateway {
		t.Run("gateway host/"+tc.name, func(t *testing.T) {
			t.Parallel()
			for _, c := range []*http.Client{h1, h2} {
				r := gwDo(t, c, http.MethodGet, g.url("localhost", tc.path), nil, nil)
				if r.code != tc.want {
					t.Fatalf("GET %s on the gateway host: %d %q, want %d", tc.path, r.code, r.body, tc.want)
				}
			}
		})
	}

	t.Run("tenant/with agent", func(t *testing.T) {
		t.Parallel()
		r := gwDo(t, h2, http.MethodGet, g.url("live.example.test", "/x"), nil, nil)
		if r.code != 200 || string(r.body) != "from target /x" {
			t.Fatalf("%d %q", r.code, r.body)
		}
	})

	// The gateway's own paths belong to the gateway host only: on a tenant's host they are the
	// tenant's, so an admin key sent there goes to the tenant, never to the admin API.
	tenantPaths := []struct {
		host string
		want int
		body string
	}{
		{"live.example.test", 200, "from target "},
		{"LIVE.Example.TEST.", 200, "from target "},
		{"idle.example.test", 503, ""},
		{"nobody.example.test", 404, ""},
	}
	for _, tp := range tenantPaths {
		t.Run("tenant paths/"+tp.host, func(t *testing.T) {
			t.Parallel()
			for _, path := range []string{"/api/v1/admin/domains", "/healthz", "/readyz"} {
				r := gwDo(t, h2, http.MethodGet, g.url(tp.host, path), gwBearer(g), nil)
				if r.code != tp.want || (tp.body != "" && string(r.body) != tp.body+path) {
					t.Fatalf("GET %s on %s: %d %q, want %d %q", path, tp.host, r.code, r.body, tp.want, tp.body+path)
				}
			}
		})
	}

	// Error bodies: JSON for API clients, HTML for browsers, text otherwise.
	negotiation := []struct {
		accept, ctype, contains string
	}{
		{"application/json", "application/json", `"success":false`},
		{"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", "text/html", "<html"},
		{"", "text/plain", ""},
		{"*/*", "text/plain", ""},
	}
	hosts := []struct {
		name, host string
		want       int
	}{
		{"unknown", "nobody.example.test", 404},
		{"no agent", "idle.example.test", 503},
		{"not a DNS name", "bad_name.example.test", 404},
	}
	for _, h := range hosts {
		for _, n := range negotiation {
			t.Run("tenant/"+h.name+"/"+n.ctype, func(t *testing.T) {
				t.Parallel()
				hdr := http.Header{}
				if n.accept != "" {
					hdr.Set("Accept", n.accept)
				}
				r := gwDo(t, h1, http.MethodGet, g.url(h.host, "/some/page"), hdr, nil)
				if r.code != h.want || !strings.HasPrefix(r.header.Get("Content-Type"), n.ctype) || !bytes.Contains(r.body, []byte(n.contains)) {
					t.Fatalf("Accept %q: %d %s %q, want %d %s", n.accept, r.code, r.header.Get("Content-Type"), r.body, h.want, n.ctype)
				}
				if n.ctype == "application/json" {
					if out := r.gwJSON(t); out["error"] == nil || out["error"] == "" {
						t.Fatalf("JSON error without a message: %v", out)
					}
				}
				if r.header.Get("Cache-Control") != "no-store" {
					t.Errorf("error answer may be cached: Cache-Control %q", r.header.Get("Cache-Control"))
				}
			})
		}
	}

	// The tunnel service's path is never proxied, whatever the host.
	tunnelPath := "/hopgate.tunnel.v1.TunnelService/OpenTunnel"
	reserved := []struct {
		name   string
		c      *http.Client
		method string
		hdr    http.Header
	}{
		{"GET h1", h1, http.MethodGet, nil},
		{"GET h2", h2, http.MethodGet, nil},
		{"POST grpc content type over h1", h1, http.MethodPost, http.Header{"Content-Type": {"application/grpc"}}},
		{"POST json h2", h2, http.MethodPost, http.Header{"Content-Type": {"application/json"}}},
	}
	for _, tc := range reserved {
		t.Run("tunnel path/"+tc.name, func(t *testing.T) {
			t.Parallel()
			for _, host := range []string{"live.example.test", "localhost"} {
				r := gwDo(t, tc.c, tc.method, g.url(host, tunnelPath), tc.hdr, strings.NewReader("{}"))
				if r.code != http.StatusNotFound {
					t.Errorf("%s %s on %s: %d %q, want 404", tc.method, tunnelPath, host, r.code, r.body)
				}
			}
			if n := tunnelPathHits.Load(); n != 0 {
				t.Fatalf("the tunnel path reached the target %d times", n)
			}
		})
	}

	t.Run("http listener redirects", func(t *testing.T) {
		t.Parallel()
		c := gwNoRedirect()
		for _, tc := range []struct{ method, host, path string }{
			{"GET", "live.example.test", "/a/b?c=d"},
			{"POST", "localhost", "/api/v1/admin/domains"},
			{"GET", "nobody.example.test", "/"},
		} {
			req, _ := http.NewRequest(tc.method, "http://"+httpAddr+tc.path, nil)
			req.Host = tc.host
			res, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			want := "https://" + net.JoinHostPort(tc.host, httpsPort) + tc.path
			if res.StatusCode != http.StatusPermanentRedirect || res.Header.Get("Location") != want {
				t.Fatalf("%s http://%s%s: %d Location %q, want 308 %q", tc.method, tc.host, tc.path, res.StatusCode, res.Header.Get("Location"), want)
			}
		}
	})
}

// TestGatewayReadyzPostgresOutage: /readyz follows the database; /healthz and the process do not.
func TestGatewayReadyzPostgresOutage(t *testing.T) {
	t.Parallel()
	relayDSN, cut := pgtest.Outage(t, pgtest.DSN(t))
	g := startGateway(t, gatewayOptions{DSN: relayDSN})
	c := g.httpClient(true)
	g.register("idle.example.test")
	if r := gwDo(t, c, http.MethodGet, g.url("localhost", "/readyz"), nil, nil); r.code != http.StatusOK {
		t.Fatalf("/readyz before the outage: %d %q", r.code, r.body)
	}

	cut()
	outage := time.Now()
	waitFor(t, 5*time.Second, "/readyz 503 after the database went away", func() bool {
		return gwDo(t, c, http.MethodGet, g.url("localhost", "/readyz"), nil, nil).code == http.StatusServiceUnavailable
	})
	t.Logf("/readyz answered 503 %s after the outage began", time.Since(outage).Round(time.Millisecond))

	if r := gwDo(t, c, http.MethodGet, g.url("localhost", "/healthz"), nil, nil); r.code != http.StatusOK {
		t.Fatalf("/healthz during the outage: %d", r.code)
	}
	if code, out := gwAdmin(t, g, c, http.MethodGet, "/api/v1/admin/domains", nil); code != http.StatusServiceUnavailable || out["success"] != false {
		t.Fatalf("admin list during the outage: %d %v, want 503", code, out)
	}
	if code, out := gwAdmin(t, g, c, http.MethodPost, "/api/v1/admin/domains/register",
		map[string]string{"domain": "new.example.test"}); code != http.StatusServiceUnavailable {
		t.Fatalf("admin register during the outage: %d %v, want 503", code, out)
	}
	if r := gwDo(t, c, http.MethodGet, g.url("idle.example.test", "/"), nil, nil); r.code != http.StatusServiceUnavailable {
		t.Fatalf("tenant during the outage: %d %q, want 503", r.code, r.body)
	}
	if g.exited() {
		t.Fatal("the server exited during the database outage")
	}
}

// TestGatewayRestart: keys survive a restart on SQLite, and the file never holds one in plain text.
func TestGatewayRestart(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	target := gwNewTarget(t, nil)
	g := startGateway(t, gatewayOptions{DataDir: dataDir})
	key := g.register("keep.example.test")
	addr := g.addr
	g.signal(syscall.SIGTERM)
	if code := g.wait(t, 10*time.Second); code != 0 {
		t.Fatalf("server exited %d after SIGTERM, want 0", code)
	}

	g = startGateway(t, gatewayOptions{DataDir: dataDir, Addr: addr})
	if g.addr != addr {
		t.Fatalf("restarted on %s, want %s", g.addr, addr)
	}
	g.startAgent("keep.example.test", key, target.URL)
	c := g.httpClient(false)
	if r := gwDo(t, c, http.MethodGet, g.url("keep.example.test", "/"), nil, nil); r.code != http.StatusOK || string(r.body) != "ok" {
		t.Fatalf("proxied request after restart: %d %q", r.code, r.body)
	}

	rows := gwRows(t, "sqlite", gwSQLiteDSN(dataDir))
	if len(rows) != 1 {
		t.Fatalf("domains holds %d rows, want 1: %v", len(rows), rows)
	}
	gwCheckNoPlainKey(t, rows, key)
	// Nor anywhere else in the database files (free pages, write-ahead log).
	for _, f := range []string{"hopgate.db", "hopgate.db-wal"} {
		b, err := gwReadFileIfExists(filepath.Join(dataDir, f))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b, []byte(strings.TrimPrefix(key, "hopgate_"))) {
			t.Fatalf("%s contains the plaintext key", f)
		}
	}

	// SIGINT stops it as gracefully as SIGTERM.
	g.signal(syscall.SIGINT)
	if code := g.wait(t, 10*time.Second); code != 0 {
		t.Fatalf("server exited %d after SIGINT, want 0", code)
	}
}

// TestGatewayGracefulStop: SIGTERM stops accepting, lets requests in flight through a tunnel
// finish, then the server exits 0. (It once failed most runs: the agent closed its session as soon as
// the last frames were queued, not written, and visitors got a 502 or a truncated body.)
func TestGatewayGracefulStop(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		sizes []int // one request in flight per entry, answered with that many bytes
	}{
		{"one small response", []int{4}},
	}
	// Losing the end of a response is a race: a few gateways at once make a loss likely in one run.
	for round := range 3 {
		cases = append(cases, struct {
			name  string
			sizes []int
		}{fmt.Sprintf("eight responses up to 1 MiB, round %d", round+1),
			[]int{4, 4, 100 << 10, 100 << 10, 1 << 20, 1 << 20, 1 << 20, 1 << 20}})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			gwGracefulStop(t, tc.sizes)
		})
	}
}

func gwGracefulStop(t *testing.T, sizes []int) {
	arrived := make(chan struct{}, len(sizes))
	release := make(chan struct{})
	target := gwNewTarget(t, func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		arrived <- struct{}{}
		// Answer after at least one second, and not before the test has checked that the
		// listener is closed.
		select {
		case <-release:
		case <-time.After(10 * time.Second):
		}
		time.Sleep(time.Second - time.Since(start))
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		_, _ = w.Write(bytes.Repeat([]byte("d"), n))
	})
	g := startGateway(t, gatewayOptions{})
	g.startAgent("slow.example.test", g.register("slow.example.test"), target.URL)
	c := g.httpClient(false)

	type result struct {
		r   gwResponse
		err error
	}
	results := make([]chan result, len(sizes))
	for i, n := range sizes {
		results[i] = make(chan result, 1)
		go func() {
			r, err := gwDoE(c, http.MethodGet, g.url("slow.example.test", "/slow?n="+strconv.Itoa(n)), nil, nil)
			results[i] <- result{r, err}
		}()
	}
	for range sizes {
		select {
		case <-arrived:
		case <-time.After(10 * time.Second):
			t.Fatal("the requests did not reach the target")
		}
	}
	g.signal(syscall.SIGTERM)
	waitFor(t, 5*time.Second, "the HTTPS listener to close", func() bool {
		conn, err := net.DialTimeout("tcp", g.addr, time.Second)
		if err != nil {
			return true
		}
		conn.Close()
		return false
	})
	if g.exited() {
		t.Fatal("the server exited with requests in flight")
	}
	close(release)

	for i, n := range sizes {
		select {
		case res := <-results[i]:
			if res.err != nil || res.r.code != http.StatusOK || len(res.r.body) != n {
				body := res.r.body
				if len(body) > 100 {
					body = body[:100]
				}
				t.Errorf("request %d in flight during shutdown: err %v, status %d, %d of %d bytes %q",
					i, res.err, res.r.code, len(res.r.body), n, body)
			}
		case <-time.After(15 * time.Second):
			t.Fatalf("request %d in flight did not complete", i)
		}
	}
	if code := g.wait(t, 10*time.Second); code != 0 {
		t.Fatalf("server exited %d after SIGTERM, want 0", code)
	}
}

// TestGatewayShutdownTimeout: a request that outlasts HOP_SERVER_SHUTDOWN_TIMEOUT does not hold
// the server up: it exits 0 soon after the timeout.
func TestGatewayShutdownTimeout(t *testing.T) {
	t.Parallel()
	arrived := make(chan struct{}, 1)
	target := gwNewTarget(t, func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		select {
		case <-r.Context().Done():
		case <-time.After(30 * time.Second):
		}
	})
	g := startGateway(t, gatewayOptions{Env: []string{"HOP_SERVER_SHUTDOWN_TIMEOUT=1s"}})
	g.startAgent("stuck.example.test", g.register("stuck.example.test"), target.URL)
	c := g.httpClient(false)
	go func() { _, _ = gwDoE(c, http.MethodGet, g.url("stuck.example.test", "/"), nil, nil) }()
	select {
	case <-arrived:
	case <-time.After(10 * time.Second):
		t.Fatal("the request did not reach the target")
	}
	start := time.Now()
	g.signal(syscall.SIGTERM)
	if code := g.wait(t, 6*time.Second); code != 0 {
		t.Fatalf("server exited %d, want 0", code)
	}
	t.Logf("server exited %s after SIGTERM with a 1s shutdown timeout", time.Since(start).Round(time.Millisecond))
}

// TestGatewaySlowClients: a connection that never completes its request headers is closed by the
// server's header timeout (10 s) on both listeners, so idle sockets cannot pile up.
func TestGatewaySlowClients(t *testing.T) {
	t.Parallel()
	g := startGateway(t, gatewayOptions{})
	httpAddr := g.httpAddr(t)
	conf := g.tlsConfig()
	conf.ServerName = "localhost"
	conf.NextProtos = []string{"http/1.1"}
	dials := []struct {
		name string
		dial func() (net.Conn, error)
		send string
	}{
		{"no TLS handshake", func() (net.Conn, error) { return net.Dial("tcp", g.addr) }, ""},
		{"partial headers over TLS", func() (net.Conn, error) { return tls.Dial("tcp", g.addr, conf) }, "GET /healthz HTTP/1.1\r\nHost: localhost\r\n"},
		{"partial headers over plain HTTP", func() (net.Conn, error) { return net.Dial("tcp", httpAddr) }, "GET / HTTP/1.1\r\nHost: localhost\r\n"},
	}
	for _, d := range dials {
		t.Run(d.name, func(t *testing.T) {
			t.Parallel()
			conn, err := d.dial()
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if _, err := io.WriteString(conn, d.send); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			_ = conn.SetReadDeadline(start.Add(20 * time.Second))
			_, err = io.Copy(io.Discard, conn)
			held := time.Since(start)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("the server kept a connection without request headers open for %s", held.Round(time.Millisecond))
			}
			if held < 5*time.Second {
				t.Fatalf("the server closed the connection after %s, before any reasonable header timeout (%v)", held, err)
			}
			t.Logf("closed after %s", held.Round(time.Millisecond))
		})
	}
}

// TestGatewayDataDirSpecialCharacters: '#' and '?' are legal in a directory name. The server must
// either work in such a HOP_DATA_DIR, or refuse it as a bad setting: exit 2, naming the variable.
func TestGatewayDataDirSpecialCharacters(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "data#1?x")
	g, err := tryStartGateway(t, gatewayOptions{DataDir: dir})
	var exited *hoptest.ExitedError
	if errors.As(err, &exited) {
		if exited.Code != 2 || !strings.Contains(exited.Log, "HOP_DATA_DIR") {
			t.Fatalf("HOP_DATA_DIR=%q: exit %d, want the server to run, or exit 2 naming HOP_DATA_DIR:\n%s", dir, exited.Code, exited.Log)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	g.register("dir.example.test")
}

// TestGatewayOwnDomainNotRegistrable: HOP_SERVER_DOMAIN is never proxied, so registering it as a
// tenant would hand out a key for a name no request can ever reach: the admin API must refuse it.
func TestGatewayOwnDomainNotRegistrable(t *testing.T) {
	t.Parallel()
	g := startGateway(t, gatewayOptions{Env: []string{"HOP_SERVER_DOMAIN=gw.example.test"}})
	c := g.httpClient(true)
	for _, name := range []string{"gw.example.test", "GW.Example.Test."} {
		r := gwDo(t, c, http.MethodPost, g.url("gw.example.test", "/api/v1/admin/domains/register"), gwBearer(g),
			gwBody(map[string]string{"domain": name}))
		if out := r.gwJSON(t); (r.code != http.StatusBadRequest && r.code != http.StatusConflict) || out["success"] != false {
			t.Errorf("register %q, the gateway's own name: %d %s, want 400 or 409", name, r.code, r.body)
		}
	}
	// A name under it is an ordinary tenant.
	r := gwDo(t, c, http.MethodPost, g.url("gw.example.test", "/api/v1/admin/domains/register"), gwBearer(g),
		gwBody(map[string]string{"domain": "app.gw.example.test"}))
	if r.code != http.StatusCreated {
		t.Fatalf("register app.gw.example.test: %d %s", r.code, r.body)
	}
}

// serverVars are the settings of PRODUCT.md's table.
var serverVars = []string{
	"HOP_SERVER_HTTP_LISTEN", "HOP_SERVER_HTTPS_LISTEN", "HOP_SERVER_HTTP_PROXY", "HOP_SERVER_DOMAIN",
	"HOP_SERVER_PROXY_DOMAINS", "HOP_SERVER_DEBUG", "HOP_SERVER_PROXY_TIMEOUT_SECONDS",
	"HOP_SERVER_SHUTDOWN_TIMEOUT", "HOP_SERVER_METRICS_LISTEN", "HOP_ADMIN_API_KEY", "HOP_DB_DSN",
	"HOP_DATA_DIR", "HOP_DB_MAX_OPEN_CONNS", "HOP_DB_MAX_IDLE_CONNS", "HOP_DB_CONN_MAX_LIFETIME",
	"HOP_ACME_EMAIL", "HOP_ACME_CA_DIR", "HOP_ACME_USE_STAGING", "HOP_ACME_CA_ROOTS", "HOP_ACME_CACHE_DIR",
	"HOP_ACME_EXPECT_IPS", "HOP_ERROR_PAGES_DIR", "HOP_ERROR_ASSETS_DIR", "HOP_LOG_LEVEL", "HOP_LOG_FORMAT",
}

// TestGatewayBadConfig: configuration errors exit 2 and name the variable; --help exits 0.
func TestGatewayBadConfig(t *testing.T) {
	t.Parallel()
	base := func(t *testing.T) []string {
		return []string{
			"HOP_SERVER_HTTPS_LISTEN=127.0.0.1:0", "HOP_SERVER_HTTP_LISTEN=127.0.0.1:0",
			"HOP_SERVER_METRICS_LISTEN=", "HOP_DATA_DIR=" + t.TempDir(),
		}
	}
	cases := []struct {
		name, bin string
		args, env []string
		debug     bool
		want      int
		contains  []string
		absent    []string
	}{
		{name: "shutdown timeout not a duration", bin: "hopgate-server", debug: true,
			env: []string{"HOP_SERVER_SHUTDOWN_TIMEOUT=abc"}, want: 2, contains: []string{"HOP_SERVER_SHUTDOWN_TIMEOUT", "abc"}},
		{name: "bad flag value", bin: "hopgate-server", debug: true,
			args: []string{"--shutdown-timeout", "abc"}, want: 2, contains: []string{"HOP_SERVER_SHUTDOWN_TIMEOUT"}},
		{name: "domain required outside debug", bin: "hopgate-server",
			want: 2, contains: []string{"HOP_SERVER_DOMAIN"}},
		{name: "bad boolean", bin: "hopgate-server", env: []string{"HOP_SERVER_DEBUG=maybe", "HOP_SERVER_DOMAIN=gw.example.test"},
			want: 2, contains: []string{"HOP_SERVER_DEBUG"}},
		{name: "bad log level", bin: "hopgate-server", debug: true, env: []string{"HOP_LOG_LEVEL=loud"},
			want: 2, contains: []string{"HOP_LOG_LEVEL"}},
		{name: "unknown flag", bin: "hopgate-server", debug: true, args: []string{"--no-such-flag"}, want: 2},
		{name: "server help", bin: "hopgate-server", args: []string{"--help"}, want: 0,
			env:      []string{"HOP_ADMIN_API_KEY=admin-key-do-not-print", "HOP_DB_DSN=postgres://hop:pw-do-not-print@db/hop"},
			contains: append([]string{"30s", ":443", "127.0.0.1:9180", "./data"}, serverVars...),
			absent:   []string{"admin-key-do-not-print", "pw-do-not-print"}},
		{name: "client without domain", bin: "hopgate-client",
			args: []string{"--server-addr", "127.0.0.1:1", "--local-target", "127.0.0.1:2"},
			env:  []string{"HOP_CLIENT_API_KEY=hopgate_secret-client-key"}, want: 2,
			contains: []string{"HOP_CLIENT_DOMAIN"}, absent: []string{"secret-client-key"}},
		{name: "client help", bin: "hopgate-client", args: []string{"--help"}, want: 0,
			contains: []string{"--server-addr", "--domain", "--api-key", "--local-target", "--debug", "--ca-file",
				"HOP_CLIENT_SERVER_ADDR", "HOP_CLIENT_DOMAIN", "HOP_CLIENT_API_KEY", "HOP_CLIENT_LOCAL_TARGET",
				"HOP_CLIENT_DEBUG", "HOP_CLIENT_CA_FILE"}},
		// A database that cannot be reached stops the server; neither its password nor the admin
		// key may appear in what it prints.
		{name: "secrets in a failed start", bin: "hopgate-server", debug: true,
			env: []string{"HOP_DB_DSN=postgres://hop:pw-do-not-print@127.0.0.1:1/hop?sslmode=disable",
				"HOP_ADMIN_API_KEY=admin-key-do-not-print", "HOP_LOG_LEVEL=debug"},
			want: 1, absent: []string{"pw-do-not-print", "admin-key-do-not-print"}},
		{name: "secret in a DSN query", bin: "hopgate-server", debug: true,
			env:  []string{"HOP_DB_DSN=postgres://hop@127.0.0.1:1/hop?sslmode=disable&password=pw-do-not-print", "HOP_LOG_LEVEL=debug"},
			want: 1, absent: []string{"pw-do-not-print"}},
		{name: "DSN of another database", bin: "hopgate-server", debug: true,
			env:  []string{"HOP_DB_DSN=mysql://hop:pw-do-not-print@127.0.0.1/hop"},
			want: 2, contains: []string{"HOP_DB_DSN"}, absent: []string{"pw-do-not-print"}},
		{name: "DSN that does not parse", bin: "hopgate-server", debug: true,
			env:  []string{"HOP_DB_DSN=postgres://hop:pw-do-not-print@[::1/hop"},
			want: 2, contains: []string{"HOP_DB_DSN"}, absent: []string{"pw-do-not-print"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := base(t)
			if tc.debug {
				env = append(env, "HOP_SERVER_DEBUG=true")
			}
			code, out := run(t, tc.bin, tc.args, append(env, tc.env...), 20*time.Second)
			if code != tc.want {
				t.Fatalf("exit %d, want %d:\n%s", code, tc.want, out)
			}
			for _, s := range tc.contains {
				if !strings.Contains(out, s) {
					t.Errorf("output does not mention %q:\n%s", s, out)
				}
			}
			for _, s := range tc.absent {
				if strings.Contains(out, s) {
					t.Errorf("output shows the secret %q:\n%s", s, out)
				}
			}
		})
	}
}

// TestGatewaySecretsNotLogged: neither the admin key nor client API keys reach the logs, even at
// debug level.
func TestGatewaySecretsNotLogged(t *testing.T) {
	t.Parallel()
	for _, st := range gwStores {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			dsn := st.dsn(t)
			if u, err := url.Parse(dsn); err == nil && dsn != "" {
				if _, set := u.User.Password(); !set {
					// The test server authenticates without a password (pgtest connected without
					// one), so one that is given is ignored: only the server's logs can show it.
					u.User = url.UserPassword(u.User.Username(), "pw-do-not-print")
					dsn = u.String()
				}
			}
			gwSecretsNotLogged(t, dsn)
		})
	}
}

func gwSecretsNotLogged(t *testing.T, dsn string) {
	target := gwNewTarget(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/broken" {
			// A target that fails makes the gateway log the proxy error at debug level.
			panic(http.ErrAbortHandler)
		}
		_, _ = io.WriteString(w, "ok")
	})
	g := startGateway(t, gatewayOptions{DSN: dsn, Env: []string{"HOP_LOG_LEVEL=debug"}})
	c := g.httpClient(true)
	key := g.register("quiet.example.test")
	agent := g.startAgent("quiet.example.test", key, target.URL, "--log-level", "debug")
	if r := gwDo(t, c, http.MethodGet, g.url("quiet.example.test", "/?token=visible"), nil, nil); r.code != http.StatusOK {
		t.Fatalf("proxied request: %d", r.code)
	}
	if r := gwDo(t, c, http.MethodGet, g.url("quiet.example.test", "/broken"), nil, nil); r.code != http.StatusBadGateway {
		t.Fatalf("request to a failing target: %d %q, want 502", r.code, r.body)
	}
	// A client that does not trust the certificate makes the server log a handshake error.
	if conn, err := tls.Dial("tcp", g.addr, &tls.Config{ServerName: "localhost"}); err == nil {
		conn.Close()
		t.Fatal("TLS handshake succeeded without trusting the development CA")
	}
	// Near misses of the admin key, which a careless log of the bad credential would print.
	for _, auth := range []string{"Bearer " + g.adminKey + "x", "Basic " + g.adminKey} {
		if r := gwDo(t, c, http.MethodGet, g.url("localhost", "/api/v1/admin/domains"), http.Header{"Authorization": {auth}}, nil); r.code != 401 {
			t.Fatalf("bad key: %d", r.code)
		}
	}
	code, out := gwAdmin(t, g, c, http.MethodPost, "/api/v1/admin/domains/unregister",
		map[string]string{"domain": "quiet.example.test", "client_api_key": key + "x"})
	if code == http.StatusOK {
		t.Fatalf("unregister with a wrong key: %d %v", code, out)
	}
	code, out = gwAdmin(t, g, c, http.MethodPost, "/api/v1/admin/domains/rotate-key", map[string]string{"domain": "quiet.example.test"})
	if code != http.StatusOK {
		t.Fatalf("rotate-key: %d %v", code, out)
	}
	newKey := out["client_api_key"].(string)
	agent.wait(t, 15*time.Second)
	if exit := g.startAgentNoWait("quiet.example.test", key, target.URL, "--log-level", "debug").wait(t, 15*time.Second); exit != 3 {
		t.Fatalf("agent on the old key exited %d, want 3", exit)
	}
	g.signal(syscall.SIGTERM)
	g.wait(t, 10*time.Second)

	logs := g.logs.String()
	if !strings.Contains(logs, `"level":"DEBUG"`) {
		t.Fatalf("no debug lines in the server log; is HOP_LOG_LEVEL=debug honoured?\n%s", logs)
	}
	secret := func(k string) string { return strings.TrimPrefix(k, "hopgate_") }
	for name, s := range map[string]string{"admin key": g.adminKey, "client API key": secret(key),
		"rotated client API key": secret(newKey), "database password": "pw-do-not-print"} {
		if strings.Contains(logs, s) {
			t.Errorf("the server log shows the %s", name)
		}
		if strings.Contains(agent.logs.String(), s) {
			t.Errorf("the agent log shows the %s", name)
		}
	}
}

// TestGatewaySchemaTooNew: a database migrated by a newer HopGate stops the server at start.
func TestGatewaySchemaTooNew(t *testing.T) {
	t.Parallel()
	for _, st := range gwStores {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			dsn := st.dsn(t)
			g := startGateway(t, gatewayOptions{DSN: dsn})
			g.register("old.example.test")
			g.signal(syscall.SIGTERM)
			if code := g.wait(t, 10*time.Second); code != 0 {
				t.Fatalf("server exited %d after SIGTERM", code)
			}
			st.exec(t, g.dataDir, dsn, "UPDATE schema_migrations SET version = 999")

			code, out := run(t, "hopgate-server", nil, g.env, 20*time.Second)
			if code == 0 {
				t.Fatalf("the server ran on a schema newer than it knows:\n%s", out)
			}
			if !strings.Contains(out, "999") || !strings.Contains(strings.ToLower(out), "newer") {
				t.Fatalf("exit %d without naming the schema version:\n%s", code, out)
			}
			if strings.Contains(out, "hopgate-server listening") {
				t.Fatalf("the server listened before refusing:\n%s", out)
			}
		})
	}
}
