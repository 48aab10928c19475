package gateway

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/hopgate/hopgate/internal/agent"
	"github.com/hopgate/hopgate/internal/config"

	"github.com/hopgate/hopgate/internal/testutil/poll"
)

// The gateway and an agent run in this process, assembled as the binaries assemble them (gateway.New,
// agent.New), over real TLS on loopback with the embedded store.

const adminKey = "gateway-test-admin-key-0123456789"

func loadServer(t *testing.T, env map[string]string) *config.Server {
	t.Helper()
	base := map[string]string{
		"HOP_SERVER_DEBUG":            "true",
		"HOP_SERVER_DOMAIN":           "localhost",
		"HOP_SERVER_HTTPS_LISTEN":     "127.0.0.1:0",
		"HOP_SERVER_HTTP_LISTEN":      "127.0.0.1:0",
		"HOP_SERVER_METRICS_LISTEN":   "127.0.0.1:0",
		"HOP_SERVER_SHUTDOWN_TIMEOUT": "5s",
		"HOP_DATA_DIR":                t.TempDir(),
		"HOP_ADMIN_API_KEY":           adminKey,
	}
	for k, v := range env {
		base[k] = v
	}
	cfg, err := config.LoadServer(nil, func(k string) (string, bool) { v, ok := base[k]; return v, ok }, "")
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	return cfg
}

// syncBuffer is a log sink the test can read while the gateway writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// client sends every request to addr, whatever the URL's host, trusting the development CA.
func client(t *testing.T, addr, caFile string) *http.Client {
	t.Helper()
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	d := &net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		},
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 20 * time.Second}
}

func adminCall(t *testing.T, c *http.Client, method, path string, body any) map[string]any {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, "https://localhost/api/v1/admin/"+path, rd)
	req.Header.Set("Authorization", "Bearer "+adminKey)
	res, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(res.Body).Decode(&out)
	return out
}

// TestServeAndShutdown runs the whole gateway: an agent's tunnel, a proxied request, metrics, and a
// shutdown that lets a request in flight finish, ends every part and leaves no goroutine behind.
func TestServeAndShutdown(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	cfg := loadServer(t, map[string]string{"HOP_SERVER_ID": "gw-unit"})
	logs := &syncBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, nil))
	g, err := New(context.Background(), cfg, log)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer g.Close()
	if g.HTTPSAddr() != nil {
		t.Fatalf("New listens already on %v", g.HTTPSAddr())
	}
	if err := g.Listen(); err != nil {
		t.Fatalf("Listen: %v", err)
	}
	served := make(chan error, 1)
	go func() { served <- g.Serve() }()
	addr := g.HTTPSAddr().String()
	caFile := filepath.Join(cfg.DataDir, "selfsigned", "cert.pem")
	c := client(t, addr, caFile)

	reg := adminCall(t, c, http.MethodPost, "domains/register", map[string]string{"domain": "app.test"})
	key, _ := reg["client_api_key"].(string)
	if key == "" {
		t.Fatalf("register: %v", reg)
	}

	release := make(chan struct{})
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-release
		}
		_, _ = io.WriteString(w, "from the target")
	}))
	defer target.Close()
	ccfg, err := config.LoadClient([]string{
		"--server-addr", addr, "--domain", "app.test", "--api-key", key,
		"--local-target", target.URL, "--ca-file", caFile, "--agent-id", "test-agent",
	}, func(string) (string, bool) { return "", false }, "")
	if err != nil {
		t.Fatalf("client config: %v", err)
	}
	a, err := agent.New(ccfg, log)
	if err != nil {
		t.Fatalf("agent.New: %v", err)
	}
	defer a.Close()
	agentCtx, stopAgent := context.WithCancel(context.Background())
	defer stopAgent()
	agentDone := make(chan error, 1)
	go func() { agentDone <- a.Run(agentCtx) }()
	poll.Until(t, 10*time.Second, "the agent's tunnel", func() bool {
		st := adminCall(t, c, http.MethodGet, "domains/status?domain=app.test", nil)
		n, _ := st["agents"].(float64)
		return n == 1
	})

	res, err := c.Get("https://app.test/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || string(body) != "from the target" {
		t.Fatalf("GET through the tunnel: %d %q", res.StatusCode, body)
	}

	mres, err := http.Get("http://" + g.MetricsAddr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	mbody, _ := io.ReadAll(mres.Body)
	mres.Body.Close()
	for _, want := range []string{`hopgate_http_requests_total{code="200",gateway_id="gw-unit",method="GET"} 1`,
		`hopgate_tunnels_active{gateway_id="gw-unit"} 1`, `go_goroutines{gateway_id="gw-unit"}`} {
		if !strings.Contains(string(mbody), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	// The gateway's lines, the access log among them, name it; the agent's (same buffer) do not.
	var accessLines int
	for line := range strings.Lines(logs.String()) {
		if strings.Contains(line, `"msg":"request"`) {
			accessLines++
			if !strings.Contains(line, `"gateway_id":"gw-unit"`) {
				t.Errorf("access-log line without gateway_id: %s", line)
			}
		}
	}
	if accessLines == 0 {
		t.Error("no access-log line")
	}

	// A request in flight when the shutdown begins is served to the end.
	slow := make(chan string, 1)
	go func() {
		res, err := c.Get("https://app.test/slow")
		if err != nil {
			slow <- err.Error()
			return
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		slow <- string(b)
	}()
	poll.Until(t, 5*time.Second, "the slow request at the target", func() bool {
		return strings.Contains(logs.String(), `"msg":"tunnel up"`) && g.tunnels != nil && inFlight(g) == 1
	})
	shutdownDone := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shutdownDone <- g.Shutdown(ctx)
	}()
	poll.Until(t, 5*time.Second, "the listener to close", func() bool {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.Close()
		}
		return err != nil
	})
	close(release)
	if got := <-slow; got != "from the target" {
		t.Errorf("the request in flight during shutdown got %q", got)
	}
	select {
	case err := <-shutdownDone:
		if err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Shutdown did not return")
	}
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after Shutdown")
	}
	if err := g.Shutdown(context.Background()); err != nil {
		t.Errorf("a second Shutdown: %v", err)
	}
	stopAgent()
	if err := <-agentDone; err != nil && !errors.Is(err, context.Canceled) {
		t.Errorf("agent Run: %v", err)
	}
	c.CloseIdleConnections()
}

// inFlight is the number of requests the hub counts on its agents.
func inFlight(g *Gateway) int64 {
	var n int64
	for _, a := range g.hub.All() {
		n += a.InFlight()
	}
	return n
}

// TestServeFailsOnBusyPort: a port that cannot be bound fails Serve with the listener named, and
// nothing keeps running.
func TestServeFailsOnBusyPort(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	g, err := New(context.Background(), loadServer(t, map[string]string{"HOP_SERVER_HTTPS_LISTEN": busy.Addr().String()}), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer g.Close()
	if err := g.Serve(); err == nil || !strings.Contains(err.Error(), "listen HTTPS") {
		t.Fatalf("Serve on a busy port = %v, want a listen HTTPS error", err)
	}
}

// TestNewFailsOnBadStore: New fails (naming the store) when the store cannot be opened, and releases
// what it had built.
func TestNewFailsOnBadStore(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	dir := t.TempDir()
	file := filepath.Join(dir, "not-a-dir")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := New(context.Background(), loadServer(t, map[string]string{"HOP_DATA_DIR": file}), slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "open domain store") {
		t.Fatalf("New with a data dir that is a file = %v", err)
	}
}

// TestDrainDelay: once Shutdown starts, /readyz answers 503 "draining" for HOP_SERVER_DRAIN_DELAY
// while the gateway still accepts new connections and serves them; then the listeners close.
func TestDrainDelay(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	cfg := loadServer(t, map[string]string{"HOP_SERVER_DRAIN_DELAY": "1500ms"})
	g, err := New(context.Background(), cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer g.Close()
	if err := g.Listen(); err != nil {
		t.Fatalf("Listen: %v", err)
	}
	served := make(chan error, 1)
	go func() { served <- g.Serve() }()
	addr := g.HTTPSAddr().String()
	caFile := filepath.Join(cfg.DataDir, "selfsigned", "cert.pem")
	get := func(path string) (int, string, error) {
		// A new client each time: a new connection, which a closed listener would refuse.
		c := client(t, addr, caFile)
		defer c.CloseIdleConnections()
		res, err := c.Get("https://localhost" + path)
		if err != nil {
			return 0, "", err
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b), nil
	}
	if code, body, err := get("/readyz"); err != nil || code != http.StatusOK {
		t.Fatalf("/readyz before the shutdown: %d %q %v", code, body, err)
	}
	started := time.Now()
	stopped := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		stopped <- g.Shutdown(ctx)
	}()
	poll.Until(t, time.Second, "/readyz 503 draining", func() bool {
		code, body, err := get("/readyz")
		return err == nil && code == http.StatusServiceUnavailable && strings.Contains(body, `"draining"`)
	})
	// Still serving new connections inside the delay.
	if code, _, err := get("/healthz"); err != nil || code != http.StatusOK {
		t.Fatalf("/healthz during the drain delay: %d %v", code, err)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if took := time.Since(started); took < 1500*time.Millisecond {
		t.Fatalf("Shutdown returned after %v, before the 1.5 s drain delay", took)
	}
	if _, _, err := get("/healthz"); err == nil {
		t.Fatal("a new connection was served after the shutdown")
	}
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
}
