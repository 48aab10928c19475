// Package e2e runs the real hopgate-server and hopgate-client binaries over real TLS on loopback.
package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/hopgate/hopgate/internal/testutil/hoptest"
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
		cmd := exec.Command("go", "build", "-o", dir+"/", "../../cmd/hopgate-server", "../../cmd/hopgate-client", "../../cmd/hopgate-demo-target")
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

// process is a running binary, killed when the test ends; its output is shown if the test failed.
type process struct {
	hp   *hoptest.Process
	logs *hoptest.Log
}

// logFile is a new log file for a process called name in the test's temporary directory.
func logFile(t testing.TB, name string) string {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), name+"-*.log")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	return f.Name()
}

func startProcess(t testing.TB, name string, args, env []string) *process {
	t.Helper()
	hp, err := hoptest.Start(hoptest.Command{Path: filepath.Join(binDir, name), Args: args, Env: env, Log: logFile(t, name)})
	if err != nil {
		t.Fatal(err)
	}
	return watch(t, hp)
}

// watch ties hp to t: killed at cleanup, its output logged if t failed.
func watch(t testing.TB, hp *hoptest.Process) *process {
	t.Cleanup(func() {
		hp.Kill()
		if t.Failed() {
			t.Logf("--- %s output ---\n%s", hp.Name, hp.Log.String())
		}
	})
	return &process{hp: hp, logs: hp.Log}
}

func (p *process) signal(sig os.Signal) { p.hp.Signal(sig) }

func (p *process) exited() bool { return p.hp.Exited() }

func (p *process) pid() int { return p.hp.Pid() }

// wait returns the exit code, failing the test if the process does not exit within d.
func (p *process) wait(t testing.TB, d time.Duration) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	code, err := p.hp.Wait(ctx)
	if err != nil {
		t.Fatalf("process did not exit within %s", d)
	}
	return code
}

// run runs a binary to its end and returns its exit code and output (stdout and stderr).
func run(t testing.TB, name string, args, env []string, within time.Duration) (int, string) {
	t.Helper()
	p := startProcess(t, name, args, env)
	code := p.wait(t, within)
	return code, p.logs.String()
}

// lines returns the log lines of p that contain s.
func lines(p *process, s string) []string { return p.logs.Lines(s) }

// gateway is a running hopgate-server.
type gateway struct {
	*process
	t        testing.TB
	hop      *hoptest.Gateway
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

const testAdminKey = "test-admin-key-0123456789"

// startGateway runs hopgate-server in debug mode with an admin key and waits until it serves.
func startGateway(t testing.TB, o gatewayOptions) *gateway {
	t.Helper()
	g, err := tryStartGateway(t, o)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// tryStartGateway is startGateway returning why the server did not come up (*hoptest.ExitedError if
// it exited).
func tryStartGateway(t testing.TB, o gatewayOptions) (*gateway, error) {
	t.Helper()
	if o.DataDir == "" {
		o.DataDir = t.TempDir()
	}
	hg, err := hoptest.StartGateway(t.Context(), hoptest.GatewayOptions{
		BinDir:          binDir,
		Log:             logFile(t, "hopgate-server"),
		DataDir:         o.DataDir,
		AdminKey:        testAdminKey,
		HTTPSAddr:       o.Addr,
		DSN:             o.DSN,
		ShutdownTimeout: 5 * time.Second,
		Env:             o.Env,
	})
	if err != nil {
		return nil, err
	}
	p := watch(t, hg.Process)
	t.Cleanup(hg.CloseIdleConnections)
	return &gateway{process: p, t: t, hop: hg, addr: hg.HTTPSAddr, adminKey: hg.AdminKey, dataDir: hg.DataDir,
		caFile: hg.CAFile, env: hg.Env}, nil
}

// forTest is g as seen from another test (a subtest): failures and cleanups belong to t.
func (g *gateway) forTest(t testing.TB) *gateway {
	c := *g
	c.t = t
	return &c
}

// httpAddr is the bound plain-HTTP address the gateway logged at start.
func (g *gateway) httpAddr(t testing.TB) string {
	t.Helper()
	if g.hop.HTTPAddr == "" {
		t.Fatalf("no http address in the listening line:\n%s", g.logs.String())
	}
	return g.hop.HTTPAddr
}

// tlsConfig trusts the gateway's development CA.
func (g *gateway) tlsConfig() *tls.Config {
	if g.hop.CAPool == nil {
		g.t.Fatalf("no development CA in %s", g.caFile)
	}
	return g.hop.TLSConfig("")
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

// admin calls the admin API and decodes the JSON answer (nil if it is not JSON).
func (g *gateway) admin(method, path string, body any) (int, map[string]any) {
	g.t.Helper()
	code, b, err := g.hop.Admin(context.Background(), method, path, body)
	if err != nil {
		g.t.Fatal(err)
	}
	var out map[string]any
	_ = json.Unmarshal(b, &out)
	return code, out
}

// register registers domain and returns its client API key.
func (g *gateway) register(domain string) string {
	g.t.Helper()
	key, err := g.hop.Register(context.Background(), domain)
	if err != nil {
		g.t.Fatalf("register %s: %v", domain, err)
	}
	return key
}

// agents returns the live agent count the admin API reports for domain, -1 if it refuses to.
func (g *gateway) agents(domain string) int {
	g.t.Helper()
	n, err := g.hop.Agents(context.Background(), domain)
	var se *hoptest.StatusError
	if errors.As(err, &se) {
		return -1
	}
	if err != nil {
		g.t.Fatal(err)
	}
	return n
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
		return len(lines(p, "tunnel up")) > 0 && g.agents(domain) > before
	})
	return p
}

func (g *gateway) startAgentNoWait(domain, key, target string, extra ...string) *process {
	g.t.Helper()
	hp, err := g.hop.StartAgent(hoptest.AgentOptions{BinDir: binDir, Log: logFile(g.t, "hopgate-client"),
		Domain: domain, Key: key, Target: target, Args: extra})
	if err != nil {
		g.t.Fatal(err)
	}
	return watch(g.t, hp)
}
