package e2e

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"
)

// TestHardeningMisdirected: a TLS connection opened for one name cannot be used for another (HTTP/2
// connection reuse, or a Host that does not match SNI): 421, and the target is never reached.
func TestHardeningMisdirected(t *testing.T) {
	t.Parallel()
	reached := make(chan string, 4)
	target := tnTarget(t, func(w http.ResponseWriter, r *http.Request) { reached <- r.Host })
	g := startGateway(t, gatewayOptions{})
	for _, d := range []string{"one.example.test", "two.example.test"} {
		g.startAgent(d, g.register(d), target.URL)
	}
	for _, h2 := range []bool{false, true} {
		conf := g.tlsConfig()
		conf.ServerName = "one.example.test"
		tr := &http.Transport{
			TLSClientConfig:   conf,
			ForceAttemptHTTP2: h2,
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, g.addr)
			},
		}
		if !h2 {
			tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
		}
		c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		res, err := c.Get(g.url("two.example.test", "/"))
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusMisdirectedRequest {
			t.Fatalf("h2=%v: Host two on a connection for one: %d, want 421", h2, res.StatusCode)
		}
		tr.CloseIdleConnections()
	}
	select {
	case h := <-reached:
		t.Fatalf("a misdirected request reached the target (Host %s)", h)
	default:
	}
}

// TestHardeningAgentReconnectSameID: an agent that connects again with the same id replaces its old
// tunnel at once (the count never doubles), and requests keep working.
func TestHardeningAgentReconnectSameID(t *testing.T) {
	t.Parallel()
	const domain = "same.example.test"
	target := tnTarget(t, func(w http.ResponseWriter, r *http.Request) {})
	g := startGateway(t, gatewayOptions{})
	key := g.register(domain)
	first := g.startAgent(domain, key, target.URL, "--agent-id", "edge-1")
	// The first process is frozen (its tunnel half-open), then the same agent starts again.
	first.signal(syscall.SIGSTOP)
	t.Cleanup(func() { first.signal(syscall.SIGCONT) })
	second := g.startAgentNoWait(domain, key, target.URL, "--agent-id", "edge-1")
	waitFor(t, 10*time.Second, "second agent up", func() bool { return len(lines(second, "tunnel up")) > 0 })
	if n := g.agents(domain); n != 1 {
		t.Fatalf("agents %d after the same id reconnected, want 1", n)
	}
	if code, _ := tnGet(t, g.httpClient(false), g.url(domain, "/")); code != http.StatusOK {
		t.Fatalf("request after replacement: %d", code)
	}
	if !waitLog(g, "agent reconnected; old tunnel replaced", 5*time.Second) {
		t.Fatalf("old tunnel not closed as replaced:\n%s", g.logs.String())
	}
}

func waitLog(g *gateway, s string, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if len(lines(g.process, s)) > 0 {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

// TestHardeningShutdownWithStreamsInFlight: SIGTERM while an endless event stream and a slow
// download are in flight: the server stops within the grace period (+1 s), exits 0, and the agent is
// told to go away rather than cut off (it logs the reconnect, it does not exit).
func TestHardeningShutdownWithStreamsInFlight(t *testing.T) {
	t.Parallel()
	const domain = "drain.example.test"
	target := tnTarget(t, func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		if r.URL.Path == "/events" {
			w.Header().Set("Content-Type", "text/event-stream")
		}
		for {
			if _, err := w.Write([]byte("data: tick\n\n")); err != nil {
				return
			}
			_ = rc.Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	})
	g := startGateway(t, gatewayOptions{Env: []string{"HOP_SERVER_SHUTDOWN_TIMEOUT=2s"}})
	agent := g.startAgent(domain, g.register(domain), target.URL)
	c := g.httpClient(true)
	for _, path := range []string{"/events", "/download"} {
		res, err := c.Get(g.url(domain, path))
		if err != nil {
			t.Fatal(err)
		}
		go func() { _, _ = io.Copy(io.Discard, res.Body); res.Body.Close() }()
	}
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	g.signal(syscall.SIGTERM)
	if code := g.wait(t, 10*time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("shutdown took %s with a 2 s grace period", d)
	}
	waitFor(t, 5*time.Second, "agent notices the gateway going away", func() bool {
		return len(lines(agent, "tunnel down, reconnecting")) > 0
	})
	if agent.exited() {
		t.Fatal("agent exited when the gateway restarted; it must keep reconnecting")
	}
}
