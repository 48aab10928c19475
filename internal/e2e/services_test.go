package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// namedTarget is a local target that answers with its name and counts what reached it, so that a
// test asserts routing where the request lands.
type namedTarget struct {
	name string
	hits atomic.Int64
	url  string
	last atomic.Value // the last request's Host and path
}

func startNamedTarget(t *testing.T, name string) *namedTarget {
	t.Helper()
	nt := &namedTarget{name: name}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		nt.hits.Add(1)
		nt.last.Store(r.Host + " " + r.URL.Path)
		fmt.Fprintf(w, "%s %s", name, r.URL.Path)
	}))
	t.Cleanup(srv.Close)
	nt.url = srv.URL
	return nt
}

// writeConfig writes an agent config file atomically (as an editor's save replaces the file).
func writeConfig(t *testing.T, path, text string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// startConfigAgent runs hopgate-client --config file towards g and waits until each of domains
// counts it.
func (g *gateway) startConfigAgent(t *testing.T, file string, env []string, domains ...string) *process {
	t.Helper()
	p := startProcess(t, "hopgate-client", []string{"--config", file, "--log-format", "json"}, env)
	waitFor(t, 20*time.Second, "agent counted under every domain", func() bool {
		if p.exited() {
			t.Fatalf("hopgate-client exited early:\n%s", p.logs.String())
		}
		for _, d := range domains {
			if g.agents(d) != 1 {
				return false
			}
		}
		return true
	})
	return p
}

func getText(t *testing.T, c *http.Client, url string, header ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	res, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

// TestAgentConfigServices: one agent with a config file serves three services on two domains and a
// path rule; each request lands on its target, a request no rule matches gets the agent's 404, the
// gateway counts the agent under both domains, and the agent holds ONE connection to the gateway.
func TestAgentConfigServices(t *testing.T) {
	g := startGateway(t, gatewayOptions{})
	appKey, otherKey := g.register("app.example.test"), g.register("other.example.test")
	web, api, other := startNamedTarget(t, "web"), startNamedTarget(t, "api"), startNamedTarget(t, "other")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "other.key"), []byte(otherKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "hopgate.yaml")
	writeConfig(t, file, fmt.Sprintf(`server_addr: %s
ca_file: %s
services:
  - hostname: app.example.test
    api_key: ${APP_KEY}
    target: %s
  - hostname: App.Example.Test
    path: /api/
    target: %s
  - hostname: other.example.test
    path: /only
    api_key_file: other.key
    target: %s
`, g.addr, g.caFile, web.url, api.url, other.url))
	p := g.startConfigAgent(t, file, []string{"APP_KEY=" + appKey}, "app.example.test", "other.example.test")

	c := g.httpClient(false)
	for _, tc := range []struct{ url, want string }{
		{g.url("app.example.test", "/"), "web /"},
		{g.url("app.example.test", "/apix"), "web /apix"}, // segment boundary: /api does not match /apix
		{g.url("app.example.test", "/api"), "api /api"},
		{g.url("app.example.test", "/api/v1/x?q=1"), "api /api/v1/x"},
		{g.url("other.example.test", "/only/deeper"), "other /only/deeper"},
	} {
		if code, body := getText(t, c, tc.url); code != 200 || body != tc.want {
			t.Errorf("GET %s = %d %q, want 200 %q", tc.url, code, body, tc.want)
		}
	}
	if web.hits.Load() != 2 || api.hits.Load() != 2 || other.hits.Load() != 1 {
		t.Errorf("hits web=%d api=%d other=%d, want 2 2 1", web.hits.Load(), api.hits.Load(), other.hits.Load())
	}
	if last, _ := other.last.Load().(string); !strings.HasPrefix(last, "other.example.test") {
		t.Errorf("other target saw Host/path %q, want the visitor's Host", last)
	}
	code, body := getText(t, c, g.url("other.example.test", "/elsewhere"))
	if code != 404 || !strings.Contains(body, "no service for this hostname and path") {
		t.Errorf("unmatched path = %d %q, want the agent's 404", code, body)
	}
	code, body = getText(t, c, g.url("other.example.test", "/elsewhere"), "Accept", "application/json")
	if code != 404 || !strings.Contains(body, `"success":false`) {
		t.Errorf("unmatched path as JSON = %d %q, want the agent's JSON 404", code, body)
	}
	if n := tcpConnsTo(t, p.pid(), g.addr); n != 1 {
		t.Errorf("agent holds %d TCP connections to the gateway, want 1 (both domains on one)", n)
	}
	if strings.Contains(p.logs.String(), appKey) || strings.Contains(p.logs.String(), otherKey) {
		t.Error("the agent logged an API key")
	}
}

// TestAgentConfigReload: while a 100 MiB download runs through one service, a SIGHUP reload adds a
// hostname, removes another, and removes a path rule of the hostname that stays; the download
// completes byte-exact, the new hostname answers, the removed path gets the agent's 404 (no rule of
// the kept hostname matches it any more), and the removed hostname gets the agent's 404 while its
// tunnel drains and then the gateway's 503 (registered, no agent). The config path is a symlink
// whose target is rewritten in another directory, where the file watch cannot see it: only the
// SIGHUP can apply that reload. A bad config saved over the path (which the watch sees) is refused
// with a log line naming its line; the old one stays.
func TestAgentConfigReload(t *testing.T) {
	g := startGateway(t, gatewayOptions{})
	bulkKey, oldKey, newKey := g.register("bulk.example.test"), g.register("old.example.test"), g.register("new.example.test")
	const size = 100 << 20
	bulk := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(size))
		bw := bufio.NewWriterSize(w, 64<<10)
		for i := 0; i < size; i++ {
			_ = bw.WriteByte(pattern(i))
		}
		_ = bw.Flush()
	}))
	t.Cleanup(bulk.Close)
	oldT, newT, apiT := startNamedTarget(t, "old"), startNamedTarget(t, "new"), startNamedTarget(t, "api")
	dir, realDir := t.TempDir(), t.TempDir()
	file, real := filepath.Join(dir, "hopgate.yaml"), filepath.Join(realDir, "agent.yaml")
	head := fmt.Sprintf("server_addr: %s\nca_file: %s\nshutdown_timeout: 10s\nservices:\n", g.addr, g.caFile)
	svc := func(host, key, target string) string {
		return fmt.Sprintf("  - hostname: %s\n    api_key: %s\n    target: %s\n", host, key, target)
	}
	// bulk.example.test has path rules only: /big (the download) and /api/.
	bulkSvc := fmt.Sprintf("  - hostname: bulk.example.test\n    path: /big\n    api_key: %s\n    target: %s\n", bulkKey, bulk.URL)
	apiSvc := fmt.Sprintf("  - hostname: bulk.example.test\n    path: /api/\n    target: %s\n", apiT.url)
	writeConfig(t, real, head+bulkSvc+apiSvc+svc("old.example.test", oldKey, oldT.url))
	if err := os.Symlink(real, file); err != nil {
		t.Fatal(err)
	}
	p := g.startConfigAgent(t, file, nil, "bulk.example.test", "old.example.test")

	c := g.httpClient(false)
	if code, body := getText(t, c, g.url("bulk.example.test", "/api/x")); code != 200 || body != "api /api/x" {
		t.Fatalf("path rule before the reload = %d %q", code, body)
	}
	res, err := c.Get(g.url("bulk.example.test", "/big"))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	first := make([]byte, 1<<20)
	if _, err := io.ReadFull(res.Body, first); err != nil {
		t.Fatal(err)
	}

	writeConfig(t, real, head+bulkSvc+svc("new.example.test", newKey, newT.url))
	// Well past the watch's debounce: nothing may have reloaded yet.
	time.Sleep(time.Second)
	if n := g.agents("new.example.test"); n != 0 || len(lines(p, "configuration reloaded")) > 0 {
		t.Fatalf("reloaded without SIGHUP (new hostname agents = %d): the test no longer isolates SIGHUP", n)
	}
	p.signal(syscall.SIGHUP)
	waitFor(t, 20*time.Second, "new hostname served", func() bool { return g.agents("new.example.test") == 1 })
	if code, body := getText(t, c, g.url("new.example.test", "/hi")); code != 200 || body != "new /hi" {
		t.Errorf("new service = %d %q", code, body)
	}
	code, body := getText(t, c, g.url("bulk.example.test", "/api/x"))
	if code != 404 || !strings.Contains(body, "no service for this hostname and path") {
		t.Errorf("removed path rule = %d %q, want the agent's 404", code, body)
	}
	if apiT.hits.Load() != 1 {
		t.Errorf("the removed path rule's target got %d requests, want 1 (before the reload)", apiT.hits.Load())
	}
	waitFor(t, 20*time.Second, "removed hostname's tunnel closed", func() bool {
		code, _ := getText(t, c, g.url("old.example.test", "/"))
		if code != 404 && code != 503 {
			t.Fatalf("removed hostname answered %d, want 404 (agent, draining) or 503 (no agent)", code)
		}
		return code == 503 && g.agents("old.example.test") == 0
	})
	if oldT.hits.Load() != 0 {
		t.Errorf("the removed service's target got %d requests", oldT.hits.Load())
	}

	// Saved over the watched path (replacing the symlink). Line 4 holds the unknown key.
	writeConfig(t, file, fmt.Sprintf("server_addr: %s\nca_file: %s\nservices:\n  - hostnme: x.example.test\n", g.addr, g.caFile))
	waitFor(t, 10*time.Second, "bad config refused", func() bool {
		return len(lines(p, "config reload refused")) > 0
	})
	if l := lines(p, "config reload refused")[0]; !strings.Contains(l, "hopgate.yaml:4: hostnme: unknown key") {
		t.Errorf("refusal does not name the line and key: %s", l)
	}
	if code, body := getText(t, c, g.url("new.example.test", "/still")); code != 200 || body != "new /still" {
		t.Errorf("after a bad reload the new service = %d %q, want it still served", code, body)
	}

	rest, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("download broke across the reloads: %v", err)
	}
	all := append(first, rest...)
	if len(all) != size {
		t.Fatalf("download: %d bytes, want %d", len(all), size)
	}
	for i, b := range all {
		if b != pattern(i) {
			t.Fatalf("download differs at byte %d", i)
		}
	}
	if p.exited() {
		t.Fatalf("agent exited:\n%s", p.logs.String())
	}
}

// pattern is the byte at offset i of the test download: not periodic in any block size the
// tunnel uses, so a lost or repeated chunk shows.
func pattern(i int) byte { return byte(i ^ i>>8 ^ i>>17) }

// TestAgentConfigRejected: a config file with an unknown key, or beside a single-service flag,
// stops the agent at start with exit 2 and a message naming the file and line.
func TestAgentConfigRejected(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "agent.yaml")
	writeConfig(t, file, "server_addr: gw.example.test\nservices:\n  - hostname: a.example.test\n    api_key: k\n    target: 127.0.0.1:1\n    tls_skip_verfy: true\n")
	code, out := run(t, "hopgate-client", []string{"--config", file}, nil, 10*time.Second)
	if code != 2 || !strings.Contains(out, "agent.yaml:6: tls_skip_verfy: unknown key") {
		t.Errorf("unknown key: exit %d, output:\n%s", code, out)
	}
	writeConfig(t, file, "server_addr: gw.example.test\nservices:\n  - hostname: a.example.test\n    api_key: ${NOT_SET_ANYWHERE}\n    target: 127.0.0.1:1\n")
	code, out = run(t, "hopgate-client", []string{"--config", file}, nil, 10*time.Second)
	if code != 2 || !strings.Contains(out, "agent.yaml:4: services[0].api_key: environment variable NOT_SET_ANYWHERE is not set") {
		t.Errorf("unset variable: exit %d, output:\n%s", code, out)
	}
	writeConfig(t, file, "server_addr: gw.example.test\nservices:\n  - hostname: a.example.test\n    api_key: k\n    target: 127.0.0.1:1\n")
	code, out = run(t, "hopgate-client", []string{"--config", file, "--domain", "b.example.test"}, nil, 10*time.Second)
	if code != 2 || !strings.Contains(out, "HOP_CLIENT_DOMAIN (--domain): not allowed with HOP_CLIENT_CONFIG") {
		t.Errorf("--domain beside --config: exit %d, output:\n%s", code, out)
	}
}

// tcpConnsTo counts the ESTABLISHED TCP connections that process pid holds to addr (127.0.0.1:port):
// its socket inodes (/proc/pid/fd) matched against the kernel's table (/proc/pid/net/tcp).
func tcpConnsTo(t *testing.T, pid int, addr string) int {
	t.Helper()
	_, portText, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portText)
	inodes := map[string]bool{}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(link, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] = true
		}
	}
	table, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp", pid))
	if err != nil {
		t.Fatal(err)
	}
	remote := fmt.Sprintf("0100007F:%04X", port)
	n := 0
	for _, line := range bytes.Split(table, []byte("\n"))[1:] {
		f := strings.Fields(string(line))
		// sl local rem st tx:rx tr:when retrnsmt uid timeout inode
		if len(f) > 9 && f[2] == remote && f[3] == "01" && inodes[f[9]] {
			n++
		}
	}
	return n
}

// TestAgentConfigRefusal: the gateway refusing one hostname of several is logged and the others
// keep serving; refusing every hostname ends the agent with exit 3.
func TestAgentConfigRefusal(t *testing.T) {
	g := startGateway(t, gatewayOptions{})
	goodKey := g.register("good.example.test")
	g.register("bad.example.test")
	web := startNamedTarget(t, "web")
	dir := t.TempDir()
	file := filepath.Join(dir, "hopgate.yaml")
	head := fmt.Sprintf("server_addr: %s\nca_file: %s\nservices:\n", g.addr, g.caFile)
	writeConfig(t, file, head+fmt.Sprintf(
		"  - {hostname: good.example.test, api_key: %s, target: '%s'}\n  - {hostname: bad.example.test, api_key: wrong-key, target: '%s'}\n",
		goodKey, web.url, web.url))
	p := g.startConfigAgent(t, file, nil, "good.example.test")
	waitFor(t, 10*time.Second, "refusal logged", func() bool { return len(lines(p, "refused this hostname")) > 0 })
	if code, body := getText(t, g.httpClient(false), g.url("good.example.test", "/x")); code != 200 || body != "web /x" {
		t.Errorf("the accepted hostname = %d %q", code, body)
	}
	if p.exited() || g.agents("bad.example.test") != 0 {
		t.Errorf("exited=%v, bad hostname agents=%d", p.exited(), g.agents("bad.example.test"))
	}

	writeConfig(t, file, head+fmt.Sprintf("  - {hostname: bad.example.test, api_key: wrong-key, target: '%s'}\n", web.url))
	code, out := run(t, "hopgate-client", []string{"--config", file}, nil, 20*time.Second)
	if code != 3 || strings.Contains(out, "wrong-key") {
		t.Errorf("every hostname refused: exit %d, want 3; output:\n%s", code, out)
	}
}
