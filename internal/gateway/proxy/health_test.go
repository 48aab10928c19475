package proxy

import (
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/hopgate/hopgate/internal/tunnel"
)

// healthAgents is testAgents with target health: every agent's target is down when down is set.
type healthAgents struct {
	*testAgents
	down bool

	mu    sync.Mutex
	paths []string
}

func (h *healthAgents) PickPath(domain, path string) (Agent, bool) {
	h.mu.Lock()
	h.paths = append(h.paths, path)
	h.mu.Unlock()
	if h.down {
		return nil, true
	}
	return h.Pick(domain), false
}

func (h *healthAgents) RepickPath(domain, _ string, failed Agent) (Agent, bool) {
	if h.down {
		h.Release(failed)
		return nil, true
	}
	return h.Repick(domain, failed), false
}

func TestTargetHealthPick(t *testing.T) {
	ok := func(t *testing.T) func(*tunnel.Stream) {
		return targetAgent(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "hello") })
	}
	tests := []struct {
		name       string
		health     *healthAgents // nil: an Agents without PickPath (Pick is used)
		wantStatus int
	}{
		{"agents without health", nil, http.StatusOK},
		{"healthy", &healthAgents{}, http.StatusOK},
		{"every target down", &healthAgents{down: true}, http.StatusServiceUnavailable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			leakCheck(t)
			o := fixtureOptions{accepts: []func(*tunnel.Stream){ok(t)}}
			if tc.health != nil {
				o.wrap = func(a *testAgents) Agents { tc.health.testAgents = a; return tc.health }
			}
			f := newFixture(t, o)
			res, body := f.do(t, http.MethodGet, "app.test", nil)
			if res.StatusCode != tc.wantStatus {
				t.Fatalf("status %d, want %d (%q)", res.StatusCode, tc.wantStatus, body)
			}
			if tc.health != nil {
				tc.health.mu.Lock()
				if len(tc.health.paths) != 1 || tc.health.paths[0] != "/path" {
					t.Errorf("PickPath paths %q, want the request's path without its query", tc.health.paths)
				}
				tc.health.mu.Unlock()
			}
			if tc.wantStatus != http.StatusServiceUnavailable {
				return
			}
			if !strings.Contains(body, "service behind this domain's agent is not answering") {
				t.Errorf("body %q does not say the target is down", body)
			}
			if got := testutil.ToFloat64(f.metrics.ProxyErrors.WithLabelValues("target_down")); got != 1 {
				t.Errorf(`hopgate_proxy_errors_total{reason="target_down"} = %v, want 1`, got)
			}
			if !strings.Contains(f.log(), `"error":"target_down"`) {
				t.Errorf("the access log does not name target_down:\n%s", f.log())
			}
		})
	}
}
