package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestLimitsStreamsPerTunnel: requests beyond HOP_SERVER_MAX_STREAMS_PER_TUNNEL get 503 at once
// instead of queueing, and the tunnel serves again when the others finish.
func TestLimitsStreamsPerTunnel(t *testing.T) {
	t.Parallel()
	const domain = "cap.example.test"
	release := make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	entered := make(chan struct{}, 16)
	target := tnTarget(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			entered <- struct{}{}
			<-release
		}
		w.WriteHeader(http.StatusOK)
	})
	g := startGateway(t, gatewayOptions{Env: []string{"HOP_SERVER_MAX_STREAMS_PER_TUNNEL=3"}})
	key := g.register(domain)
	g.startAgent(domain, key, target.URL)
	c := g.httpClient(true)

	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := c.Get(g.url(domain, "/hold"))
			if err != nil {
				t.Error(err)
				return
			}
			res.Body.Close()
		}()
	}
	for range 3 {
		select {
		case <-entered:
		case <-time.After(10 * time.Second):
			t.Fatal("held requests did not reach the target")
		}
	}
	start := time.Now()
	code, _ := tnGet(t, c, g.url(domain, "/extra"))
	if code != http.StatusServiceUnavailable {
		t.Fatalf("request over the cap: %d, want 503", code)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("request over the cap waited %s; it must be refused at once", d)
	}
	once.Do(func() { close(release) })
	wg.Wait()
	if code, _ := tnGet(t, c, g.url(domain, "/after")); code != http.StatusOK {
		t.Fatalf("after the held requests finished: %d", code)
	}
}

// TestLimitsAuthFailures: after HOP_SERVER_AUTH_FAILURES_PER_MINUTE failed key checks from one
// address, the admin API answers 429 (even to the right key) and tunnel logins are refused with
// ResourceExhausted, which the agent retries instead of exiting.
func TestLimitsAuthFailures(t *testing.T) {
	t.Parallel()
	const domain = "guess.example.test"
	g := startGateway(t, gatewayOptions{Env: []string{"HOP_SERVER_AUTH_FAILURES_PER_MINUTE=3"}})
	key := g.register(domain)
	c := g.httpClient(true)
	status := func(bearer string) int {
		req, _ := http.NewRequest(http.MethodGet, g.url("localhost", "/api/v1/admin/domains"), nil)
		req.Header.Set("Authorization", "Bearer "+bearer)
		res, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res.StatusCode
	}
	for i := range 3 {
		if got := status("wrong"); got != http.StatusUnauthorized {
			t.Fatalf("failure %d: %d, want 401", i, got)
		}
	}
	if got := status("wrong"); got != http.StatusTooManyRequests {
		t.Fatalf("after the budget: %d, want 429", got)
	}
	if got := status(g.adminKey); got != http.StatusTooManyRequests {
		t.Fatalf("right key from a blocked address: %d, want 429", got)
	}

	// The same address is now refused on the tunnel too: the agent must keep retrying, not exit 3.
	agent := g.startAgentNoWait(domain, key, "127.0.0.1:9")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for ctx.Err() == nil && len(lines(agent, "too many failed attempts")) == 0 {
		if agent.exited() {
			t.Fatalf("agent exited while rate limited:\n%s", agent.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if ctx.Err() != nil {
		t.Fatalf("agent never saw the rate limit:\n%s", agent.logs.String())
	}
	time.Sleep(300 * time.Millisecond)
	if agent.exited() {
		t.Fatal("agent exited while rate limited")
	}
}

// TestLimitsAgentsPerDomain: a domain holds at most HOP_SERVER_MAX_AGENTS_PER_DOMAIN tunnels; the
// agent over the cap keeps retrying and gets in when a place frees up.
func TestLimitsAgentsPerDomain(t *testing.T) {
	t.Parallel()
	const domain = "crowd.example.test"
	target := tnTarget(t, func(w http.ResponseWriter, r *http.Request) {})
	g := startGateway(t, gatewayOptions{Env: []string{"HOP_SERVER_MAX_AGENTS_PER_DOMAIN=1"}})
	key := g.register(domain)
	first := g.startAgent(domain, key, target.URL, "--agent-id", "first")
	second := g.startAgentNoWait(domain, key, target.URL, "--agent-id", "second")
	waitFor(t, 10*time.Second, "second agent refused for the cap", func() bool {
		return len(lines(second, "already has 1 agents")) > 0
	})
	if n := g.agents(domain); n != 1 || second.exited() {
		t.Fatalf("agents %d (want 1), second exited: %v", n, second.exited())
	}
	first.signal(syscall.SIGKILL)
	waitFor(t, 15*time.Second, "second agent in after the first left", func() bool {
		return len(lines(second, "tunnel up")) > 0
	})
}

// TestLimitsConnections: HOP_SERVER_MAX_CONNECTIONS caps open connections over both listeners; one
// past the cap is closed at accept (before any TLS), and a slot frees when a connection closes.
func TestLimitsConnections(t *testing.T) {
	t.Parallel()
	const limit = 4
	g := startGateway(t, gatewayOptions{Env: []string{fmt.Sprintf("HOP_SERVER_MAX_CONNECTIONS=%d", limit),
		"HOP_SERVER_METRICS_LISTEN=127.0.0.1:0"}})
	plainAddr := g.httpAddr(t)
	metrics := tnMetricsAddr(t, g)
	// handshake opens a TLS connection and proves it is served.
	handshake := func() (*tls.Conn, error) {
		conf := g.tlsConfig()
		conf.ServerName = "localhost"
		return tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", g.addr, conf)
	}
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	// Half the slots on each listener; nothing else connects to this gateway.
	for i := range limit {
		if i%2 == 0 {
			c, err := handshake()
			if err != nil {
				t.Fatalf("connection %d of %d refused: %v", i+1, limit, err)
			}
			held = append(held, c)
			continue
		}
		c, err := net.DialTimeout("tcp", plainAddr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		res, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("plain connection %d of %d not served: %v", i+1, limit, err)
		}
		res.Body.Close()
		held = append(held, c)
	}
	if c, err := handshake(); err == nil {
		c.Close()
		t.Fatalf("connection %d was served with HOP_SERVER_MAX_CONNECTIONS=%d", limit+1, limit)
	}
	if open := tnMetric(t, metrics, "hopgate_connections_open"); open != limit {
		t.Errorf("hopgate_connections_open = %v with %d held, want %d", open, limit, limit)
	}
	if n := tnMetric(t, metrics, `hopgate_connections_dropped_total{reason="over_limit"}`); n < 1 {
		t.Errorf("the refused connection was not counted: %v", n)
	}
	held[0].Close()
	held = held[1:]
	waitFor(t, 5*time.Second, "a freed slot", func() bool {
		c, err := handshake()
		if err != nil {
			return false
		}
		held = append(held, c)
		return true
	})
}

// TestPprofOnMetricsListener: HOP_SERVER_PPROF serves Go's profiles on the metrics listener, and only
// there; without it the path is not served.
func TestPprofOnMetricsListener(t *testing.T) {
	t.Parallel()
	for _, on := range []bool{true, false} {
		g := startGateway(t, gatewayOptions{Env: []string{"HOP_SERVER_METRICS_LISTEN=127.0.0.1:0", fmt.Sprintf("HOP_SERVER_PPROF=%v", on)}})
		metrics := tnMetricsAddr(t, g)
		c := &http.Client{Timeout: 5 * time.Second}
		res, err := c.Get("http://" + metrics + "/debug/pprof/goroutine?debug=1")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		served := res.StatusCode == http.StatusOK && strings.Contains(string(body), "goroutine profile")
		if served != on {
			t.Errorf("HOP_SERVER_PPROF=%v: /debug/pprof/goroutine answered %d", on, res.StatusCode)
		}
		// Never on the public port.
		res, err = g.httpClient(false).Get(g.url("localhost", "/debug/pprof/goroutine?debug=1"))
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				t.Errorf("HOP_SERVER_PPROF=%v: profiles served on the public port", on)
			}
		}
	}
}
