package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/hopgate/hopgate/internal/agent/local"
	"github.com/hopgate/hopgate/internal/gateway/access"
	"github.com/hopgate/hopgate/internal/gateway/errorpage"
	"github.com/hopgate/hopgate/internal/gateway/metrics"
	"github.com/hopgate/hopgate/internal/tunnel"
	"github.com/hopgate/hopgate/internal/tunnel/tunneltest"
	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

// The tests run the tenant path with real parts but the network of the tunnel: a visitor over a real
// socket (httptest), this Handler, an in-memory tunnel, the agent's own local proxy, and a real HTTP
// target.

// testAgent is one agent of the fake hub.
type testAgent struct {
	id   string
	sess *tunnel.Session
}

func (a *testAgent) ID() string { return a.id }
func (a *testAgent) OpenStream(ctx context.Context, head *tunnelv1.RequestHead) (*tunnel.Stream, error) {
	return a.sess.OpenStream(ctx, head)
}

// testAgents hands out its agents in order and records picks, repicks and releases.
type testAgents struct {
	mu       sync.Mutex
	list     []*testAgent
	next     int
	held     map[string]int
	repicked []string
}

func (h *testAgents) take() Agent {
	if h.next >= len(h.list) {
		return nil
	}
	a := h.list[h.next]
	h.next++
	h.held[a.id]++
	return a
}

func (h *testAgents) Pick(string) Agent {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.take()
}

func (h *testAgents) Repick(_ string, failed Agent) Agent {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.held[failed.ID()]--
	h.repicked = append(h.repicked, failed.ID())
	return h.take()
}

func (h *testAgents) Release(a Agent) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.held[a.ID()]--
}

// inFlight is the number of picks not released, over all agents.
func (h *testAgents) inFlight() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, v := range h.held {
		n += v
	}
	return n
}

type testDomains struct {
	known bool
	err   error
}

func (d testDomains) Registered(context.Context, string) (bool, error) { return d.known, d.err }

type fixture struct {
	agents  *testAgents
	metrics *metrics.Metrics
	logs    *bytes.Buffer
	logMu   *sync.Mutex
	url     string
}

type fixtureOptions struct {
	// accepts are the agents' stream handlers, in pick order: nil refuses every stream, as a draining
	// agent does.
	accepts       []func(*tunnel.Stream)
	domains       testDomains
	overloaded    bool
	headerTimeout time.Duration
	access        Access
	// wrap, if set, gives the proxy another view of the agents (target health: health_test.go).
	wrap func(*testAgents) Agents
}

// lockedWriter keeps the access log readable while handlers write it.
type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// leakCheck fails the test if goroutines outlive it; registered first, it runs after every other cleanup.
func leakCheck(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
}

func newFixture(t *testing.T, o fixtureOptions) *fixture {
	t.Helper()
	pages, err := errorpage.New("", "")
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{agents: &testAgents{held: map[string]int{}}, metrics: metrics.New(), logs: &bytes.Buffer{}, logMu: &sync.Mutex{}}
	for i, accept := range o.accepts {
		p := tunneltest.NewPair(t, accept)
		f.agents.list = append(f.agents.list, &testAgent{id: string(rune('a' + i)), sess: p.Server})
	}
	var agents Agents = f.agents
	if o.wrap != nil {
		agents = o.wrap(f.agents)
	}
	h := New(Options{
		Agents:        agents,
		Domains:       o.domains,
		HeaderTimeout: o.headerTimeout,
		Overloaded:    func() bool { return o.overloaded },
		Access:        o.access,
		Errors:        pages,
		Metrics:       f.metrics,
		Logger:        slog.New(slog.NewJSONHandler(lockedWriter{f.logMu, f.logs}, nil)),
	})
	visitor := httptest.NewServer(h)
	t.Cleanup(visitor.Close)
	t.Cleanup(visitor.CloseClientConnections)
	f.url = visitor.URL
	return f
}

// targetAgent serves streams through the agent's real local proxy to an HTTP target running h.
func targetAgent(t *testing.T, h http.HandlerFunc) func(*tunnel.Stream) {
	t.Helper()
	target := httptest.NewServer(h)
	t.Cleanup(target.Close)
	u, _ := url.Parse(target.URL)
	lp := local.New(u, local.Options{})
	t.Cleanup(lp.Close)
	return lp.ServeStream
}

func (f *fixture) do(t *testing.T, method, host string, body io.Reader) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, f.url+"/path?q=1", body)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	req.Header.Set("Accept", "application/json")
	c := &http.Client{Timeout: 10 * time.Second}
	defer c.CloseIdleConnections()
	res, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, host, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res, string(b)
}

func (f *fixture) log() string {
	f.logMu.Lock()
	defer f.logMu.Unlock()
	return f.logs.String()
}

// TestOutcomes: every way a request can fail becomes one status, one metric reason and the same
// reason in the access log, and a request that succeeds counts none.
func TestOutcomes(t *testing.T) {
	ok := func(t *testing.T) func(*tunnel.Stream) {
		return targetAgent(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "hello") })
	}
	tests := []struct {
		name       string
		opts       func(t *testing.T) fixtureOptions
		host       string
		wantStatus int
		wantReason string
		wantBody   string
		retryAfter string
	}{
		{"served", func(t *testing.T) fixtureOptions { return fixtureOptions{accepts: []func(*tunnel.Stream){ok(t)}} },
			"app.test", http.StatusOK, "", "hello", ""},
		{"no host", func(t *testing.T) fixtureOptions { return fixtureOptions{} },
			"", http.StatusNotFound, "unknown_domain", "", ""},
		{"unknown domain", func(t *testing.T) fixtureOptions { return fixtureOptions{} },
			"nope.test", http.StatusNotFound, "unknown_domain", "", ""},
		{"registered, no agent", func(t *testing.T) fixtureOptions { return fixtureOptions{domains: testDomains{known: true}} },
			"app.test", http.StatusServiceUnavailable, "no_agent", "no agent connected", ""},
		{"store down", func(t *testing.T) fixtureOptions {
			return fixtureOptions{domains: testDomains{err: errors.New("connection refused")}}
		}, "app.test", http.StatusServiceUnavailable, "store_unavailable", "", ""},
		{"overloaded", func(t *testing.T) fixtureOptions {
			return fixtureOptions{overloaded: true, accepts: []func(*tunnel.Stream){ok(t)}}
		}, "app.test", http.StatusServiceUnavailable, "overload", "overloaded", "5"},
		{"no headers in time", func(t *testing.T) fixtureOptions {
			hang := targetAgent(t, func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
			return fixtureOptions{headerTimeout: 200 * time.Millisecond, accepts: []func(*tunnel.Stream){hang}}
		}, "app.test", http.StatusGatewayTimeout, "timeout", "", ""},
		{"target unreachable", func(t *testing.T) fixtureOptions {
			u, _ := url.Parse("http://127.0.0.1:1")
			lp := local.New(u, local.Options{})
			t.Cleanup(lp.Close)
			return fixtureOptions{accepts: []func(*tunnel.Stream){lp.ServeStream}}
		}, "app.test", http.StatusBadGateway, "upstream", "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			leakCheck(t)
			f := newFixture(t, tc.opts(t))
			res, body := f.do(t, http.MethodGet, tc.host, nil)
			if res.StatusCode != tc.wantStatus {
				t.Fatalf("status %d, want %d (body %q)", res.StatusCode, tc.wantStatus, body)
			}
			if !strings.Contains(body, tc.wantBody) {
				t.Errorf("body %q does not say %q", body, tc.wantBody)
			}
			if got := res.Header.Get("Retry-After"); got != tc.retryAfter {
				t.Errorf("Retry-After %q, want %q", got, tc.retryAfter)
			}
			if got := testutil.CollectAndCount(f.metrics.ProxyErrors); tc.wantReason == "" && got != 0 {
				t.Errorf("a served request counted %d proxy errors", got)
			}
			if tc.wantReason != "" {
				if got := testutil.ToFloat64(f.metrics.ProxyErrors.WithLabelValues(tc.wantReason)); got != 1 {
					t.Errorf("hopgate_proxy_errors_total{reason=%q} = %v, want 1", tc.wantReason, got)
				}
				if !strings.Contains(f.log(), `"error":"`+tc.wantReason+`"`) {
					t.Errorf("the access log does not name %q:\n%s", tc.wantReason, f.log())
				}
			}
			if got := testutil.ToFloat64(f.metrics.Requests.WithLabelValues(strconv.Itoa(tc.wantStatus), "GET")); got != 1 {
				t.Errorf("hopgate_http_requests_total{code=%d} = %v, want 1", tc.wantStatus, got)
			}
			if strings.Contains(f.log(), "q=1") {
				t.Errorf("the access log carries the query:\n%s", f.log())
			}
			if n := f.agents.inFlight(); n != 0 {
				t.Errorf("%d picks were never released", n)
			}
		})
	}
}

// TestRefusedMovesToAnotherAgent: a request without a body that a draining agent refused is sent to
// the next agent, and the refusing agent is released; a request with a body is never sent twice.
func TestRefusedMovesToAnotherAgent(t *testing.T) {
	var hits sync.Map
	served := func(t *testing.T) func(*tunnel.Stream) {
		return targetAgent(t, func(w http.ResponseWriter, r *http.Request) {
			n, _ := hits.LoadOrStore(r.Method, new(int))
			*n.(*int)++
			_, _ = io.WriteString(w, "second agent")
		})
	}
	t.Run("GET", func(t *testing.T) {
		leakCheck(t)
		f := newFixture(t, fixtureOptions{accepts: []func(*tunnel.Stream){nil, served(t)}})
		res, body := f.do(t, http.MethodGet, "app.test", nil)
		if res.StatusCode != http.StatusOK || body != "second agent" {
			t.Fatalf("status %d %q, want 200 from the second agent", res.StatusCode, body)
		}
		if len(f.agents.repicked) != 1 || f.agents.repicked[0] != "a" {
			t.Errorf("repicked %v, want [a]", f.agents.repicked)
		}
		if n := f.agents.inFlight(); n != 0 {
			t.Errorf("%d picks were never released", n)
		}
		if !strings.Contains(f.log(), `"agent":"b"`) {
			t.Errorf("the access log does not name the agent that served:\n%s", f.log())
		}
	})
	t.Run("POST", func(t *testing.T) {
		leakCheck(t)
		f := newFixture(t, fixtureOptions{accepts: []func(*tunnel.Stream){nil, served(t)}})
		res, _ := f.do(t, http.MethodPost, "app.test", strings.NewReader("payload"))
		if res.StatusCode != http.StatusBadGateway {
			t.Fatalf("status %d, want 502: a request with a body is not retried", res.StatusCode)
		}
		if len(f.agents.repicked) != 0 {
			t.Errorf("a POST was moved to another agent: %v", f.agents.repicked)
		}
		if _, ok := hits.Load(http.MethodPost); ok {
			t.Errorf("the POST reached a target")
		}
	})
}

// TestStreamsBothWays: the body of a request and of its response stream through, and the access log
// counts both.
func TestStreamsBothWays(t *testing.T) {
	leakCheck(t)
	echo := func(t *testing.T) func(*tunnel.Stream) {
		return targetAgent(t, func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("X-Forwarded-Host") != "app.test" || r.Header.Get("X-Request-Id") == "" {
				http.Error(w, "forwarding headers missing", http.StatusTeapot)
				return
			}
			// HTTP/1 targets read the whole body before they answer (net/http may stop reading once
			// the response has begun).
			b, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			_, _ = w.Write(b)
		})
	}
	f := newFixture(t, fixtureOptions{accepts: []func(*tunnel.Stream){echo(t)}})
	payload := strings.Repeat("0123456789abcdef", 64<<10) // 1 MiB
	res, body := f.do(t, http.MethodPost, "app.test", strings.NewReader(payload))
	if res.StatusCode != http.StatusOK || body != payload {
		t.Fatalf("status %d, %d bytes back of %d", res.StatusCode, len(body), len(payload))
	}
	if !strings.Contains(f.log(), `"bytes_in":1048576`) || !strings.Contains(f.log(), `"bytes_out":1048576`) {
		t.Errorf("access log byte counts:\n%s", f.log())
	}
}

// TestVisitorAddress: the address a policy sees is the peer's, unless the peer is a trusted proxy;
// then the rightmost address of X-Forwarded-For that is not itself trusted.
func TestVisitorAddress(t *testing.T) {
	h := New(Options{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}})
	for _, c := range []struct {
		remote string
		xff    []string
		realIP string
		want   string
	}{
		{"192.0.2.1:5000", nil, "", "192.0.2.1"},
		{"192.0.2.1:5000", []string{"198.51.100.7"}, "", "192.0.2.1"}, // untrusted peer: its header is ignored
		{"[::ffff:192.0.2.1]:5000", nil, "", "192.0.2.1"},             // mapped addresses unmapped
		{"10.1.1.1:5000", []string{"198.51.100.7"}, "", "198.51.100.7"},
		{"10.1.1.1:5000", []string{"198.51.100.7, 203.0.113.9"}, "", "203.0.113.9"}, // forged left part
		{"10.1.1.1:5000", []string{"198.51.100.7", "10.2.2.2"}, "", "198.51.100.7"}, // two trusted hops
		{"10.1.1.1:5000", []string{"2001:db8::1, fd00::5"}, "", "2001:db8::1"},
		{"10.1.1.1:5000", []string{"garbage, 10.2.2.2"}, "", "10.2.2.2"}, // stops at the last vouched-for hop
		{"10.1.1.1:5000", []string{"10.3.3.3"}, "", "10.3.3.3"},          // all trusted: the farthest
		{"10.1.1.1:5000", nil, "198.51.100.8", "198.51.100.8"},
		{"10.1.1.1:5000", nil, "", "10.1.1.1"},
		{"not-an-address", nil, "", "invalid IP"},
	} {
		r := httptest.NewRequest(http.MethodGet, "https://x.test/", nil)
		r.RemoteAddr = c.remote
		for _, v := range c.xff {
			r.Header.Add("X-Forwarded-For", v)
		}
		if c.realIP != "" {
			r.Header.Set("X-Real-Ip", c.realIP)
		}
		if got := h.visitor(r).String(); got != c.want {
			t.Errorf("remote %s, X-Forwarded-For %q, X-Real-Ip %q: %s, want %s", c.remote, c.xff, c.realIP, got, c.want)
		}
	}
}

// accessFunc is an Access made of a function.
type accessFunc func(w http.ResponseWriter, r *http.Request, domain string, visitor netip.Addr) error

func (f accessFunc) Admit(w http.ResponseWriter, r *http.Request, domain string, visitor netip.Addr) error {
	return f(w, r, domain, visitor)
}

// TestAccessDecisions: what Access says becomes the answer: a denial its page, headers, metric and
// log reason, without reaching the agent; a handled request its own answer; a policy store that
// cannot answer a 503 (closed, never open); a pass the target's answer with the identity Access set,
// and never a visitor's own identity headers.
func TestAccessDecisions(t *testing.T) {
	leakCheck(t)
	var seen http.Header
	var mu sync.Mutex
	target := targetAgent(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = r.Header.Clone()
		mu.Unlock()
		_, _ = io.WriteString(w, "ok")
	})
	var decision error
	var gotVisitor netip.Addr
	// One agent per request: the test agents are picked in order.
	f := newFixture(t, fixtureOptions{accepts: []func(*tunnel.Stream){target, target, target, target}, access: accessFunc(
		func(w http.ResponseWriter, r *http.Request, _ string, visitor netip.Addr) error {
			gotVisitor = visitor
			if r.Header.Get(access.HeaderEmail) != "" || r.Header.Get(access.HeaderUser) != "" {
				return errors.New("the visitor's identity headers reached Access")
			}
			if errors.Is(decision, access.ErrHandled) {
				http.Redirect(w, r, "https://id.example/", http.StatusFound)
			}
			if decision == nil {
				r.Header.Set(access.HeaderUser, "ops")
			}
			return decision
		})})

	send := func() (*http.Response, string) {
		req, _ := http.NewRequest(http.MethodGet, f.url+"/", nil)
		req.Host = "app.test"
		req.Header.Set("Accept", "application/json")
		req.Header.Set("X-HopGate-User", "forged")
		req.Header.Set("X-HopGate-Email", "forged@example.com")
		c := &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		defer c.CloseIdleConnections()
		res, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res, string(b)
	}

	decision = &access.Denial{Reason: access.ReasonRate, Status: http.StatusTooManyRequests,
		Header: http.Header{"Retry-After": {"3"}}, Message: "slow down"}
	res, body := send()
	if res.StatusCode != http.StatusTooManyRequests || res.Header.Get("Retry-After") != "3" || !strings.Contains(body, "slow down") {
		t.Errorf("denial: %d, Retry-After %q: %s", res.StatusCode, res.Header.Get("Retry-After"), body)
	}
	if n := testutil.ToFloat64(f.metrics.AccessDenied.WithLabelValues("rate")); n != 1 {
		t.Errorf(`hopgate_access_denied_total{reason="rate"} = %v, want 1`, n)
	}
	if n := testutil.ToFloat64(f.metrics.ProxyErrors.WithLabelValues("store_unavailable")); n != 0 {
		t.Errorf("a denial counted as a proxy error")
	}
	if !gotVisitor.IsLoopback() {
		t.Errorf("Access saw visitor %v, want the loopback peer", gotVisitor)
	}
	if !strings.Contains(f.log(), `"error":"denied_rate"`) || f.agents.inFlight() != 0 {
		t.Errorf("access log %s, agents in flight %d", f.log(), f.agents.inFlight())
	}

	decision = access.ErrHandled
	if res, _ := send(); res.StatusCode != http.StatusFound || res.Header.Get("Location") != "https://id.example/" {
		t.Errorf("handled: %d %q, want Access's own redirect", res.StatusCode, res.Header.Get("Location"))
	}

	decision = fmt.Errorf("load: %w", access.ErrStoreUnavailable)
	if res, _ := send(); res.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("policy store down: %d, want 503", res.StatusCode)
	}

	decision = nil
	if res, body := send(); res.StatusCode != http.StatusOK || body != "ok" {
		t.Fatalf("admitted: %d %s", res.StatusCode, body)
	}
	mu.Lock()
	defer mu.Unlock()
	if seen.Get(access.HeaderUser) != "ops" || len(seen.Values(access.HeaderUser)) != 1 || seen.Get(access.HeaderEmail) != "" {
		t.Errorf("the target saw %q / %q, want only what Access set", seen.Values(access.HeaderUser), seen.Values(access.HeaderEmail))
	}
}
