package proxy

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"sync"
	"testing"

	"github.com/hopgate/hopgate/internal/agent/local"
	"github.com/hopgate/hopgate/internal/gateway/errorpage"
	"github.com/hopgate/hopgate/internal/tunnel"
	"github.com/hopgate/hopgate/internal/tunnel/tunneltest"
)

// byDomain is a hub that knows its agents by domain, as tunnelsvc.Hub does.
type byDomain struct {
	mu     sync.Mutex
	agents map[string]*testAgent
	picks  []string
}

func (h *byDomain) Pick(domain string) Agent {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.picks = append(h.picks, domain)
	if a := h.agents[domain]; a != nil {
		return a
	}
	return nil
}

func (h *byDomain) Repick(string, Agent) Agent { return nil }
func (h *byDomain) Release(Agent)              {}

// registeredSet is a registry of exactly these names.
type registeredSet map[string]bool

func (s registeredSet) Registered(_ context.Context, name string) (bool, error) { return s[name], nil }

// TestWildcardRouting: a name one label under a registered wildcard reaches the wildcard's agents
// with its own Host, under the wildcard's policy; an exact registration wins over the wildcard, with
// or without an agent; names two labels under it, and the wildcard's base name, are 404.
func TestWildcardRouting(t *testing.T) {
	leakCheck(t)
	pages, err := errorpage.New("", "")
	if err != nil {
		t.Fatal(err)
	}
	agentFor := func(id string) *testAgent {
		serve := targetAgent(t, func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, id+" "+r.Host)
		})
		return &testAgent{id: id, sess: tunneltest.NewPair(t, serve).Server}
	}
	hub := &byDomain{agents: map[string]*testAgent{
		"*.apps.example.com":     agentFor("wild"),
		"exact.apps.example.com": agentFor("exact"),
	}}
	var mu sync.Mutex
	var admitted []string
	h := New(Options{
		Agents: hub,
		Domains: registeredSet{
			"*.apps.example.com": true, "exact.apps.example.com": true, "down.apps.example.com": true,
			"*.idle.example.com": true,
		},
		Access: accessFunc(func(_ http.ResponseWriter, _ *http.Request, domain string, _ netip.Addr) error {
			mu.Lock()
			defer mu.Unlock()
			admitted = append(admitted, domain)
			return nil
		}),
		Errors: pages,
		Logger: slog.New(slog.DiscardHandler),
	})
	visitor := httptest.NewServer(h)
	t.Cleanup(visitor.Close)
	t.Cleanup(visitor.CloseClientConnections)
	f := &fixture{url: visitor.URL}

	tests := []struct {
		host, body string
		status     int
		admit      string // the domain whose policy applies; "" = Access is not asked
	}{
		{"x.apps.example.com", "wild x.apps.example.com", http.StatusOK, "*.apps.example.com"},
		{"Other.Apps.Example.com.", "wild Other.Apps.Example.com.", http.StatusOK, "*.apps.example.com"},
		{"exact.apps.example.com", "exact exact.apps.example.com", http.StatusOK, "exact.apps.example.com"},
		// Registered on its own with no agent: its registration wins, the wildcard's agents are not its.
		{"down.apps.example.com", "", http.StatusServiceUnavailable, ""},
		{"a.b.apps.example.com", "", http.StatusNotFound, ""},
		{"apps.example.com", "", http.StatusNotFound, ""},
		{"y.idle.example.com", "", http.StatusServiceUnavailable, ""},
		{"example.com", "", http.StatusNotFound, ""},
	}
	for _, tc := range tests {
		t.Run(tc.host, func(t *testing.T) {
			mu.Lock()
			admitted = nil
			mu.Unlock()
			res, body := f.do(t, http.MethodGet, tc.host, nil)
			if res.StatusCode != tc.status || tc.body != "" && body != tc.body {
				t.Fatalf("%s: %d %q, want %d %q", tc.host, res.StatusCode, body, tc.status, tc.body)
			}
			mu.Lock()
			defer mu.Unlock()
			if tc.admit == "" && len(admitted) != 0 || tc.admit != "" && (len(admitted) != 1 || admitted[0] != tc.admit) {
				t.Fatalf("%s: Access asked for %q, want %q", tc.host, admitted, tc.admit)
			}
		})
	}
	// The exact name's own agent is asked first, and the wildcard never for it.
	hub.mu.Lock()
	defer hub.mu.Unlock()
	for i, d := range hub.picks {
		if d == "*.apps.example.com" && i > 0 && hub.picks[i-1] == "exact.apps.example.com" {
			t.Fatalf("picks %q: the wildcard was tried for a name with its own agent", hub.picks)
		}
	}
}

// BenchmarkExactName is the whole tenant path of a name with its own agent and no policy (handler,
// in-memory tunnel, the agent's local proxy, a loopback target): its allocations per request must not
// grow with the wildcard fallback, which only runs when the exact name has no agent.
func BenchmarkExactName(b *testing.B) {
	pages, err := errorpage.New("", "")
	if err != nil {
		b.Fatal(err)
	}
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}))
	b.Cleanup(target.Close)
	serve := benchAgent(b, target.URL)
	hub := &byDomain{agents: map[string]*testAgent{"app.example.com": {id: "a", sess: tunneltest.NewPair(b, serve).Server}}}
	h := New(Options{Agents: hub, Domains: registeredSet{}, Errors: pages, Logger: slog.New(slog.DiscardHandler)})
	b.ReportAllocs()
	for b.Loop() {
		hub.mu.Lock()
		hub.picks = hub.picks[:0]
		hub.mu.Unlock()
		req := httptest.NewRequest(http.MethodGet, "http://app.example.com/", nil)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			b.Fatalf("status %d", rec.Code)
		}
	}
}

func benchAgent(b *testing.B, targetURL string) func(*tunnel.Stream) {
	b.Helper()
	u, err := url.Parse(targetURL)
	if err != nil {
		b.Fatal(err)
	}
	lp := local.New(u, local.Options{})
	b.Cleanup(lp.Close)
	return lp.ServeStream
}
