package proxy

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/hopgate/hopgate/internal/agent/ingress"
	"github.com/hopgate/hopgate/internal/tunnel"
	"github.com/hopgate/hopgate/internal/tunnel/httpwire"
)

// get sends GET /path to host with Accept and returns the answer.
func (f *fixture) get(t *testing.T, host, accept string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, f.url+"/path", nil)
	req.Host = host
	req.Header.Set("Accept", accept)
	req.Header.Set("X-Request-Id", "req-7")
	c := &http.Client{Timeout: 10 * time.Second}
	defer c.CloseIdleConnections()
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res, string(b)
}

// TestNoRoute: the agent's own 404 for a request none of its services matches (the ingress table's
// answer) becomes the gateway's 404 page in each form, with the request id, reason no_route in the
// access log and the metric, and without the marker or the agent's own body.
func TestNoRoute(t *testing.T) {
	leakCheck(t)
	none := ingress.New(nil).Serve
	f := newFixture(t, fixtureOptions{accepts: []func(*tunnel.Stream){none, none, none}})

	res, body := f.get(t, "app.test", "text/html")
	if res.StatusCode != http.StatusNotFound || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("HTML: %d %s %q", res.StatusCode, res.Header.Get("Content-Type"), body)
	}
	for _, want := range []string{"No matching service", "agent has no service for this hostname and path", "일치하는 서비스 없음", "req-7"} {
		if !strings.Contains(body, want) {
			t.Errorf("the page lacks %q:\n%s", want, body)
		}
	}
	if strings.Contains(body, "This gateway does not serve") {
		t.Error("the page says the gateway does not serve the domain")
	}

	res, body = f.get(t, "app.test", "application/json")
	var j map[string]any
	if err := json.Unmarshal([]byte(body), &j); err != nil {
		t.Fatalf("JSON %q: %v", body, err)
	}
	if res.StatusCode != 404 || j["status"] != float64(404) || j["request_id"] != "req-7" || j["success"] != false ||
		!strings.Contains(j["error"].(string), "no service for this hostname and path") {
		t.Errorf("JSON = %d %v", res.StatusCode, j)
	}

	res, body = f.get(t, "app.test", "*/*")
	if res.StatusCode != 404 || !strings.HasPrefix(body, "404 No matching service: ") || strings.Contains(body, "HopGate agent") {
		t.Errorf("text = %d %q, want the gateway's, not the agent's", res.StatusCode, body)
	}
	if res.Header.Get(httpwire.NoRouteHeader) != "" || res.Header.Get("Cache-Control") != "no-store" {
		t.Errorf("headers %v: the marker passed, or the page is not the gateway's", res.Header)
	}

	if got := testutil.ToFloat64(f.metrics.ProxyErrors.WithLabelValues("no_route")); got != 3 {
		t.Errorf(`hopgate_proxy_errors_total{reason="no_route"} = %v, want 3`, got)
	}
	if !strings.Contains(f.log(), `"error":"no_route"`) || !strings.Contains(f.log(), `"agent":"a"`) {
		t.Errorf("the access log does not name no_route and the agent:\n%s", f.log())
	}
	if n := f.agents.inFlight(); n != 0 {
		t.Errorf("%d picks were never released", n)
	}
}

// TestNoRouteMarker: only a 404 with the marker is turned into the gateway's page; the marker never
// reaches the visitor; a 404 without it (an older agent, or a target's own 404) passes through.
func TestNoRouteMarker(t *testing.T) {
	leakCheck(t)
	target := func(status int, marked bool, body string) func(*tunnel.Stream) {
		return targetAgent(t, func(w http.ResponseWriter, r *http.Request) {
			if marked {
				w.Header().Set(httpwire.NoRouteHeader, "1")
			}
			w.WriteHeader(status)
			_, _ = io.WriteString(w, body)
		})
	}
	for _, tc := range []struct {
		name     string
		agent    func(*tunnel.Stream)
		status   int
		wantBody string
		reason   bool
	}{
		{"target's own 404 passes", target(404, false, "target's 404"), 404, "target's 404", false},
		{"target forging the marker gets the page", target(404, true, "forged"), 404, "no service for this hostname and path", true},
		{"marker on a 200 is dropped", target(200, true, "fine"), 200, "fine", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, fixtureOptions{accepts: []func(*tunnel.Stream){tc.agent}})
			res, body := f.get(t, "app.test", "*/*")
			if res.StatusCode != tc.status || !strings.Contains(body, tc.wantBody) {
				t.Errorf("%d %q, want %d %q", res.StatusCode, body, tc.status, tc.wantBody)
			}
			if res.Header.Get(httpwire.NoRouteHeader) != "" {
				t.Errorf("the marker reached the visitor")
			}
			if got := testutil.ToFloat64(f.metrics.ProxyErrors.WithLabelValues("no_route")); (got == 1) != tc.reason {
				t.Errorf(`hopgate_proxy_errors_total{reason="no_route"} = %v`, got)
			}
		})
	}
}

// TestTargetDownPage: with every target down, the page says the agent is connected and its service
// is not answering, in both languages, and not that the agent is not connected; JSON and text say
// the same sentence.
func TestTargetDownPage(t *testing.T) {
	leakCheck(t)
	ok := targetAgent(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "hello") })
	h := &healthAgents{down: true}
	f := newFixture(t, fixtureOptions{accepts: []func(*tunnel.Stream){ok}, wrap: func(a *testAgents) Agents { h.testAgents = a; return h }})

	const says = "the agent is connected to the gateway, but its local service is down"
	res, body := f.get(t, "app.test", "text/html")
	if res.StatusCode != 503 || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("HTML: %d %s", res.StatusCode, res.Header.Get("Content-Type"))
	}
	for _, want := range []string{"Service not answering", says, "서비스 응답 없음", "로컬 서비스가 중단", "req-7"} {
		if !strings.Contains(body, want) {
			t.Errorf("the page lacks %q:\n%s", want, body)
		}
	}
	for _, wrong := range []string{"not connected to the gateway", "게이트웨이에 연결되어 있지 않습니다"} {
		if strings.Contains(body, wrong) {
			t.Errorf("the page says %q", wrong)
		}
	}
	res, body = f.get(t, "app.test", "application/json")
	if res.StatusCode != 503 || !strings.Contains(body, says) || !strings.Contains(body, "service behind this domain's agent is not answering") {
		t.Errorf("JSON = %d %q", res.StatusCode, body)
	}
	res, body = f.get(t, "app.test", "*/*")
	if res.StatusCode != 503 || !strings.HasPrefix(body, "503 Service not answering: ") || !strings.Contains(body, says) {
		t.Errorf("text = %d %q", res.StatusCode, body)
	}
}
