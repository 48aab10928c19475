// Package e2e runs the real hopgate-server and hopgate-client binaries over real TLS on loopback.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "hopgate-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := func() int {
		defer os.RemoveAll(dir)
		cmd := exec.Command("go", "build", "-o", dir+"/", "../../cmd/hopgate-server", "../../cmd/hopgate-client")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "build binaries:", err)
			return 1
		}
		return m.Run()
	}()
	os.Exit(code)
}

// logBuffer collects a process's output for assertions and failure reports. The process writes to a
// file directly (no pipe): a test process slowed by -race can never fill a pipe and so block the
// server's logger, which would make tests measure their own slowness.
type logBuffer struct {
	path string
}

func (l *logBuffer) String() string {
	b, _ := os.ReadFile(l.path)
	return string(b)
}

// waitFor polls cond until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s", d, what)
}

// process is a running binary.
type process struct {
	cmd    *exec.Cmd
	logs   *logBuffer
	done   chan struct{}
	exitMu sync.Mutex
	exit   int
}

func startProcess(t testing.TB, name string, args, env []string) *process {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, name), args...)
	cmd.Env = append(cleanEnv(), env...)
	out, err := os.CreateTemp(t.TempDir(), name+"-*.log")
	if err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: cmd, logs: &logBuffer{path: out.Name()}, done: make(chan struct{}), exit: -1}
	cmd.Stdout, cmd.Stderr = out, out
	err = cmd.Start()
	out.Close() // the child has its own descriptor
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		_ = cmd.Wait()
		p.exitMu.Lock()
		p.exit = cmd.ProcessState.ExitCode()
		p.exitMu.Unlock()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.signal(syscall.SIGKILL)
		<-p.done
		if t.Failed() {
			t.Logf("--- %s output ---\n%s", name, p.logs.String())
		}
	})
	return p
}

// cleanEnv drops HOP_* settings of the machine so that tests see only their own.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "HOP_") {
			env = append(env, kv)
		}
	}
	return env
}

func (p *process) signal(sig os.Signal) {
	select {
	case <-p.done:
	default:
		_ = p.cmd.Process.Signal(sig)
	}
}

// wait returns the exit code, failing the test if the process does not exit within d.
func (p *process) wait(t testing.TB, d time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(d):
		t.Fatalf("process did not exit within %s", d)
	}
	p.exitMu.Lock()
	defer p.exitMu.Unlock()
	return p.exit
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// gateway is a running hopgate-server.
type gateway struct {
	*process
	t        testing.TB
	addr     string // 127.0.0.1:port of the HTTPS listener
	adminKey string
	dataDir  string
	caFile   string
	env      []string
}

type gatewayOptions struct {
	DSN     string
	DataDir string
	// Addr reuses a port (restart tests); empty picks a free one.
	Addr string
	Env  []string
}

var listenRe = regexp.MustCompile(`"https":"([0-9.:]+)"`)

// startGateway runs hopgate-server in debug mode with an admin key and waits until it serves.
func startGateway(t testing.TB, o gatewayOptions) *gateway {
	t.Helper()
	if o.DataDir == "" {
		o.DataDir = t.TempDir()
	}
	addr := o.Addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	g := &gateway{t: t, adminKey: "test-admin-key-0123456789", dataDir: o.DataDir,
		caFile: filepath.Join(o.DataDir, "selfsigned", "cert.pem")}
	g.env = append([]string{
		"HOP_SERVER_DEBUG=true",
		"HOP_SERVER_DOMAIN=localhost",
		"HOP_ADMIN_API_KEY=" + g.adminKey,
		"HOP_SERVER_HTTPS_LISTEN=" + addr,
		"HOP_SERVER_HTTP_LISTEN=127.0.0.1:0",
		"HOP_SERVER_METRICS_LISTEN=",
		"HOP_DATA_DIR=" + o.DataDir,
		"HOP_DB_DSN=" + o.DSN,
		"HOP_LOG_FORMAT=json",
		"HOP_SERVER_SHUTDOWN_TIMEOUT=5s",
	}, o.Env...)
	g.process = startProcess(t, "hopgate-server", nil, g.env)
	waitFor(t, 20*time.Second, "hopgate-server to listen", func() bool {
		if g.exited() {
			t.Fatalf("hopgate-server exited early:\n%s", g.logs.String())
		}
		m := listenRe.FindStringSubmatch(g.logs.String())
		if m == nil {
			return false
		}
		g.addr = m[1]
		return true
	})
	return g
}

// tlsConfig trusts the gateway's development CA.
func (g *gateway) tlsConfig() *tls.Config {
	pem, err := os.ReadFile(g.caFile)
	if err != nil {
		g.t.Fatalf("read CA: %v", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return &tls.Config{RootCAs: pool}
}

// httpClient sends every request to the gateway whatever the URL's host, so that Host and SNI are
// the tenant's name as a browser would send them. h2 selects HTTP/2.
func (g *gateway) httpClient(h2 bool) *http.Client {
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{
		TLSClientConfig: g.tlsConfig(),
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, network, g.addr)
		},
		ForceAttemptHTTP2:   h2,
		MaxIdleConnsPerHost: 100,
		DisableCompression:  true,
	}
	if !h2 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	g.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}
}

// url is the public URL of path on domain through this gateway.
func (g *gateway) url(domain, path string) string {
	_, port, _ := net.SplitHostPort(g.addr)
	return "https://" + net.JoinHostPort(domain, port) + path
}

// admin calls the admin API and decodes the JSON answer.
func (g *gateway) admin(method, path string, body any) (int, map[string]any) {
	g.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, g.url("localhost", path), rd)
	req.Header.Set("Authorization", "Bearer "+g.adminKey)
	res, err := g.httpClient(true).Do(req)
	if err != nil {
		g.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(res.Body).Decode(&out)
	return res.StatusCode, out
}

// register registers domain and returns its client API key.
func (g *gateway) register(domain string) string {
	g.t.Helper()
	code, out := g.admin(http.MethodPost, "/api/v1/admin/domains/register", map[string]string{"domain": domain, "memo": "e2e"})
	if code != http.StatusCreated {
		g.t.Fatalf("register %s: %d %v", domain, code, out)
	}
	return out["client_api_key"].(string)
}

// agents returns the live agent count the admin API reports for domain.
func (g *gateway) agents(domain string) int {
	g.t.Helper()
	code, out := g.admin(http.MethodGet, "/api/v1/admin/domains/status?domain="+domain, nil)
	if code != http.StatusOK {
		return -1
	}
	n, _ := out["agents"].(float64)
	return int(n)
}

// startAgent runs hopgate-client for domain towards target and waits until the tunnel is up.
func (g *gateway) startAgent(domain, key, target string, extra ...string) *process {
	g.t.Helper()
	before := g.agents(domain)
	p := g.startAgentNoWait(domain, key, target, extra...)
	waitFor(g.t, 20*time.Second, "agent tunnel up", func() bool {
		if p.exited() {
			g.t.Fatalf("hopgate-client exited early:\n%s", p.logs.String())
		}
		return strings.Contains(p.logs.String(), "tunnel up") && g.agents(domain) > before
	})
	return p
}

func (g *gateway) startAgentNoWait(domain, key, target string, extra ...string) *process {
	args := append([]string{
		"--server-addr", g.addr,
		"--domain", domain,
		"--local-target", target,
		"--ca-file", g.caFile,
		"--log-format", "json",
	}, extra...)
	return startProcess(g.t, "hopgate-client", args, []string{"HOP_CLIENT_API_KEY=" + key})
}

// lines returns the log lines of p that contain s.
func lines(p *process, s string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(p.logs.String()))
	for sc.Scan() {
		if strings.Contains(sc.Text(), s) {
			out = append(out, sc.Text())
		}
	}
	return out
}
