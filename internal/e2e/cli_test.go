package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hopgate/hopgate/internal/testutil/hoptest"
)

// TestCLVersion: --version prints the version set by the build and exits 0, on both binaries.
func TestCLVersion(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"hopgate-server", "hopgate-client"} {
		code, out := run(t, name, []string{"--version"}, nil, 10*time.Second)
		if code != 0 || strings.TrimSpace(out) != name+" dev" {
			t.Errorf("%s --version: exit %d, printed %q; want 0 and %q", name, code, out, name+" dev")
		}
	}

	// The version comes from the build, as the Makefile and Dockerfiles set it.
	dir := t.TempDir()
	const v = "v9.8.7-e2e"
	build := exec.Command("go", "build", "-ldflags", "-X github.com/hopgate/hopgate/internal/version.Version="+v,
		"-o", dir+"/", "../../cmd/hopgate-server", "../../cmd/hopgate-client")
	build.Env = hoptest.Env("CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build with a version: %v\n%s", err, out)
	}
	for _, name := range []string{"hopgate-server", "hopgate-client"} {
		out, err := exec.Command(filepath.Join(dir, name), "--version").Output()
		if err != nil || strings.TrimSpace(string(out)) != name+" "+v {
			t.Errorf("%s built with %s: --version printed %q (err %v)", name, v, out, err)
		}
	}
}

// TestCLCheck runs `hopgate-client --check` against a real gateway and target, each time with one
// thing wrong, and reads what it tells the operator.
func TestCLCheck(t *testing.T) {
	t.Parallel()
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no index here", http.StatusNotFound) // any status means reachable
	}))
	t.Cleanup(target.Close)
	g := startGateway(t, gatewayOptions{})
	const domain = "check.cli.test"
	key := g.register(domain)
	closed := clClosedAddr(t)

	tests := []struct {
		name     string
		args     []string
		key      string
		code     int
		want     []string
		wantNone []string
	}{
		{name: "all good", key: key, code: 0,
			args: []string{"--server-addr", g.addr, "--ca-file", g.caFile, "--local-target", target.URL},
			want: []string{
				"✓ server " + g.addr + ": resolves to 127.0.0.1, TLS 1.3, certificate trusted",
				", tunnel ALPN hopgate-tunnel/1",
				"✓ tunnel for " + domain + ": the gateway accepts the domain and key; public URL https://" + domain,
				"✓ local target " + target.URL + ": answers GET / with 404 Not Found",
				"All checks passed.",
			}},
		{name: "wrong key", key: "hopgate_wrong", code: 3,
			args: []string{"--server-addr", g.addr, "--ca-file", g.caFile, "--local-target", target.URL},
			want: []string{"✓ server", "✗ tunnel for " + domain + ": the gateway refused: ", "check --domain and --api-key", "✓ local target"},
		},
		{name: "untrusted certificate", key: key, code: 1,
			args: []string{"--server-addr", g.addr, "--local-target", target.URL},
			want: []string{"✗ server " + g.addr + ": certificate not trusted", "use --ca-file", "– tunnel for " + domain + ": not tried", "✓ local target"},
		},
		{name: "debug skips verification", key: key, code: 0,
			args: []string{"--server-addr", g.addr, "--debug", "--local-target", target.URL},
			want: []string{"certificate NOT verified", "✓ tunnel", "All checks passed."},
		},
		{name: "target down", key: key, code: 1,
			args:     []string{"--server-addr", g.addr, "--ca-file", g.caFile, "--local-target", closed},
			want:     []string{"✓ server", "✓ tunnel", "✗ local target http://" + closed + ": connection refused: nothing listens there"},
			wantNone: []string{"All checks passed."},
		},
		{name: "server down", key: key, code: 1,
			args: []string{"--server-addr", closed, "--ca-file", g.caFile, "--local-target", target.URL},
			want: []string{"✗ server " + closed + ": connection refused", "– tunnel", "✓ local target"},
		},
		{name: "unknown server name", key: key, code: 1,
			args: []string{"--server-addr", "nohost.invalid:443", "--ca-file", g.caFile, "--local-target", target.URL},
			want: []string{"✗ server nohost.invalid:443: cannot resolve nohost.invalid"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			args := append([]string{"--check", "--domain", domain}, tc.args...)
			start := time.Now()
			code, out := run(t, "hopgate-client", args, []string{"HOP_CLIENT_API_KEY=" + tc.key}, 45*time.Second)
			t.Logf("%s in %s:\n%s", tc.name, time.Since(start).Round(time.Millisecond), out)
			if code != tc.code {
				t.Errorf("exit %d, want %d", code, tc.code)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q", w)
				}
			}
			for _, w := range tc.wantNone {
				if strings.Contains(out, w) {
					t.Errorf("output has %q", w)
				}
			}
			if strings.Contains(out, key) {
				t.Error("output shows the API key")
			}
		})
	}
	t.Cleanup(func() {
		// The checks' tunnels were closed, not left behind.
		if !t.Failed() {
			waitFor(t, 5*time.Second, "no agent left connected after the checks", func() bool { return g.agents(domain) == 0 })
		}
	})
}

// TestCLCheckBesideRunningAgent: a check while the real agent serves the domain does not disturb it.
func TestCLCheckBesideRunningAgent(t *testing.T) {
	t.Parallel()
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") }))
	t.Cleanup(target.Close)
	g := startGateway(t, gatewayOptions{})
	const domain = "beside.cli.test"
	key := g.register(domain)
	g.startAgent(domain, key, target.URL)

	code, out := run(t, "hopgate-client",
		[]string{"--check", "--server-addr", g.addr, "--domain", domain, "--ca-file", g.caFile, "--local-target", target.URL},
		[]string{"HOP_CLIENT_API_KEY=" + key}, 45*time.Second)
	if code != 0 {
		t.Fatalf("check: exit %d\n%s", code, out)
	}
	waitFor(t, 5*time.Second, "one agent left after the check", func() bool { return g.agents(domain) == 1 })
	for i := range 20 {
		res, err := g.httpClient(false).Get(g.url(domain, "/"))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 || string(body) != "ok" {
			t.Fatalf("request %d after the check: %d %q", i, res.StatusCode, body)
		}
	}
}

// TestCLClientMetrics scrapes the agent's /metrics after traffic and across a gateway restart.
func TestCLClientMetrics(t *testing.T) {
	t.Parallel()
	const respSize = 3000
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = w.Write(bytes.Repeat([]byte("r"), respSize))
	}))
	t.Cleanup(target.Close)
	g := startGateway(t, gatewayOptions{})
	const domain = "metrics.cli.test"
	agent := g.startAgent(domain, g.register(domain), target.URL, "--metrics-listen", "127.0.0.1:0")
	addr := clMetricsAddr(t, agent)

	m := clScrape(t, addr)
	for _, series := range []string{"go_goroutines", "process_resident_memory_bytes", "hopgate_client_reconnects_total",
		`hopgate_client_bytes_total{direction="to_target"}`, `hopgate_client_bytes_total{direction="from_target"}`} {
		if _, ok := m[series]; !ok {
			t.Errorf("no series %s", series)
		}
	}
	if m["hopgate_client_tunnel_up"] != 1 {
		t.Errorf("tunnel_up = %v after start, want 1", m["hopgate_client_tunnel_up"])
	}

	const n, reqSize = 7, 5000
	c := g.httpClient(false)
	for i := range n {
		res, err := c.Post(g.url(domain, fmt.Sprintf("/up/%d", i)), "application/octet-stream", bytes.NewReader(bytes.Repeat([]byte("q"), reqSize)))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 || len(body) != respSize {
			t.Fatalf("request %d: %d, %d bytes", i, res.StatusCode, len(body))
		}
	}
	// The stream's last accounting happens as the handler returns, a moment after the visitor has
	// the whole response.
	waitFor(t, 5*time.Second, "streams to settle", func() bool {
		m = clScrape(t, addr)
		return m["hopgate_client_streams_active"] == 0 && m["hopgate_client_streams_total"] >= n
	})
	checks := []struct {
		series string
		min    float64
	}{
		{"hopgate_client_tunnel_up", 1},
		{"hopgate_client_streams_total", n},
		{`hopgate_client_bytes_total{direction="to_target"}`, n * reqSize},
		{`hopgate_client_bytes_total{direction="from_target"}`, n * respSize},
	}
	for _, c := range checks {
		if m[c.series] < c.min {
			t.Errorf("%s = %v, want ≥ %v", c.series, m[c.series], c.min)
		}
	}
	// Bodies only: no headers or frame overhead in the byte counts.
	if got := m[`hopgate_client_bytes_total{direction="to_target"}`]; got != n*reqSize {
		t.Errorf("to_target = %v, want exactly %d", got, n*reqSize)
	}
	if got := m[`hopgate_client_bytes_total{direction="from_target"}`]; got != n*respSize {
		t.Errorf("from_target = %v, want exactly %d", got, n*respSize)
	}
	if m["hopgate_client_reconnects_total"] != 0 {
		t.Errorf("reconnects_total = %v before any outage", m["hopgate_client_reconnects_total"])
	}

	// Take the gateway away: the tunnel is down and the agent counts its attempts.
	g.signal(syscall.SIGTERM)
	if code := g.wait(t, 15*time.Second); code != 0 {
		t.Fatalf("gateway exit %d", code)
	}
	waitFor(t, 10*time.Second, "tunnel_up 0 and a reconnect attempt", func() bool {
		m = clScrape(t, addr)
		return m["hopgate_client_tunnel_up"] == 0 && m["hopgate_client_reconnects_total"] >= 1
	})
	g2 := startGateway(t, gatewayOptions{Addr: g.addr, DataDir: g.dataDir})
	waitFor(t, 15*time.Second, "tunnel_up 1 after the gateway is back", func() bool {
		return clScrape(t, addr)["hopgate_client_tunnel_up"] == 1
	})
	if g2.agents(domain) != 1 {
		t.Errorf("agents after reconnect: %d", g2.agents(domain))
	}
	if !regexp.MustCompile(`"msg":"tunnel down, reconnecting".*"reason":".+".*"retry_in":[0-9"]`).MatchString(agent.logs.String()) {
		t.Errorf("no reconnect line with reason and delay:\n%s", agent.logs.String())
	}
}

// TestCLTunnelUpLine: the start line tells the public URL, the target and the server.
func TestCLTunnelUpLine(t *testing.T) {
	t.Parallel()
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(target.Close)
	g := startGateway(t, gatewayOptions{})
	const domain = "up.cli.test"
	agent := g.startAgent(domain, g.register(domain), target.URL)
	up := lines(agent, `"tunnel up"`)
	if len(up) != 1 {
		t.Fatalf("%d tunnel up lines", len(up))
	}
	for _, w := range []string{`"url":"https://` + domain, `"target":"` + target.URL, `"server":"` + g.addr + `"`} {
		if !strings.Contains(up[0], w) {
			t.Errorf("tunnel up line lacks %s: %s", w, up[0])
		}
	}
}

// TestCLDomains drives a running gateway with the real `hopgate-server domains` commands.
func TestCLDomains(t *testing.T) {
	t.Parallel()
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") }))
	t.Cleanup(target.Close)
	g := startGateway(t, gatewayOptions{})
	const domain = "admin.cli.test"
	keyRe := regexp.MustCompile(`Client API key: (hopgate_\S+)`)

	code, out := clAdmin(t, g, "add", domain, "--memo", "from the CLI")
	m := keyRe.FindStringSubmatch(out)
	if code != 0 || m == nil || !strings.Contains(out, "shown only once") {
		t.Fatalf("add: exit %d\n%s", code, out)
	}
	key := m[1]
	agent := g.startAgent(domain, key, target.URL)

	code, out = clAdmin(t, g, "add", domain)
	if code != 1 || !strings.Contains(out, "409 Conflict: domain already registered") {
		t.Errorf("second add: exit %d\n%s", code, out)
	}

	code, out = clAdmin(t, g, "list")
	if code != 0 || !regexp.MustCompile(`(?m)^DOMAIN\s+MODE\s+AGENTS\s+CREATED\s+UPDATED\s+MEMO$`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^`+regexp.QuoteMeta(domain)+`\s+http\s+1\s+\S+\s+\S+\s+from the CLI$`).MatchString(out) {
		t.Errorf("list: exit %d\n%s", code, out)
	}

	code, out = clAdmin(t, g, "status", domain, "--json")
	if code != 0 || !strings.Contains(out, `"exists":true`) || !strings.Contains(out, `"agents":1`) {
		t.Errorf("status --json: exit %d\n%s", code, out)
	}

	code, out = clAdmin(t, g, "rotate-key", domain)
	m = regexp.MustCompile(`New client API key for \S+: (hopgate_\S+)`).FindStringSubmatch(out)
	if code != 0 || m == nil || m[1] == key {
		t.Fatalf("rotate-key: exit %d\n%s", code, out)
	}
	// The agent on the old key is cut off and refused when it comes back.
	if c := agent.wait(t, 20*time.Second); c != 3 {
		t.Errorf("agent on the rotated key exited %d, want 3", c)
	}
	g.startAgent(domain, m[1], target.URL)

	code, out = clAdmin(t, g, "remove", domain)
	if code != 0 || !strings.Contains(out, "Unregistered "+domain) {
		t.Errorf("remove: exit %d\n%s", code, out)
	}
	res, err := g.httpClient(false).Get(g.url(domain, "/"))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusNotFound {
		t.Errorf("after remove: %d, want 404", res.StatusCode)
	}

	code, out = clAdmin(t, g, "status", domain)
	if code != 1 || !strings.Contains(out, "is not registered") {
		t.Errorf("status after remove: exit %d\n%s", code, out)
	}

	// A wrong key says so and exits 1; bad usage exits 2.
	_, port, _ := strings.Cut(g.addr, ":")
	code, out = run(t, "hopgate-server", []string{"domains", "list", "--admin-url", "https://localhost:" + port, "--ca-file", g.caFile},
		[]string{"HOP_ADMIN_API_KEY=wrong-key"}, 30*time.Second)
	if code != 1 || !strings.Contains(out, "401 Unauthorized") {
		t.Errorf("wrong admin key: exit %d\n%s", code, out)
	}
	code, out = run(t, "hopgate-server", []string{"domains", "frobnicate"}, nil, 10*time.Second)
	if code != 2 || !strings.Contains(out, `unknown command "frobnicate"`) {
		t.Errorf("unknown command: exit %d\n%s", code, out)
	}
}
