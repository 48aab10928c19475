package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestOpsMetricsAndAccessLog scrapes the server's metrics after known traffic and checks the values,
// that random Host headers create no new series, and that every proxied request has one access-log
// line with its request id and never a key, Authorization or Cookie value.
func TestOpsMetricsAndAccessLog(t *testing.T) {
	t.Parallel()
	const domain = "ops.example.test"
	var mu sync.Mutex
	var gotIDs []string
	target := tnTarget(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		gotIDs = append(gotIDs, r.Header.Get("X-Request-Id"))
		mu.Unlock()
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, "0123456789")
	})
	g := startGateway(t, gatewayOptions{Env: []string{"HOP_SERVER_METRICS_LISTEN=127.0.0.1:0"}})
	metrics := tnMetricsAddr(t, g)
	key := g.register(domain)
	g.startAgent(domain, key, target.URL)
	c := g.httpClient(false)

	const gets = 7
	for i := range gets {
		req, _ := http.NewRequest(http.MethodGet, g.url(domain, fmt.Sprintf("/page/%d?token=secret-query", i)), nil)
		req.Header.Set("Authorization", "Bearer visitor-secret-token")
		req.Header.Set("Cookie", "session=visitor-secret-cookie")
		if i == 0 {
			req.Header.Set("X-Request-Id", "visitor-chosen-id-1")
		}
		res, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			t.Fatalf("GET %d: %d", i, res.StatusCode)
		}
	}
	res, err := c.Post(g.url(domain, "/upload"), "text/plain", strings.NewReader(strings.Repeat("x", 1000)))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	// 50 random unknown hosts: 404 each, and no series named after any of them.
	for i := range 50 {
		code, _ := tnGet(t, c, g.url(fmt.Sprintf("random-%d.nowhere.test", i), "/"))
		if code != http.StatusNotFound {
			t.Fatalf("unknown host: %d", code)
		}
	}

	checks := []struct {
		series string
		want   float64
	}{
		{`hopgate_http_requests_total{code="200",method="GET"}`, gets},
		{`hopgate_http_requests_total{code="200",method="POST"}`, 1},
		{`hopgate_http_requests_total{code="404",method="GET"}`, 50},
		{`hopgate_proxy_errors_total{reason="unknown_domain"}`, 50},
		{`hopgate_tunnels_active`, 1},
		{`hopgate_tunnel_connects_total{result="ok"}`, 1},
		{`hopgate_tunnel_bytes_total{direction="in"}`, 1000},
	}
	for _, c := range checks {
		if got := tnMetric(t, metrics, c.series); got != c.want {
			t.Errorf("%s = %v, want %v", c.series, got, c.want)
		}
	}
	if out := tnMetric(t, metrics, `hopgate_tunnel_bytes_total{direction="out"}`); out < gets*10 {
		t.Errorf("bytes out %v, want at least %d", out, gets*10)
	}
	scrape := opsScrape(t, metrics)
	for _, leak := range []string{"nowhere.test", domain, key, "127.0.0.1:"} {
		for _, line := range strings.Split(scrape, "\n") {
			if strings.HasPrefix(line, "hopgate_") && strings.Contains(line, leak) {
				t.Errorf("a series label carries %q: %s", leak, line)
			}
		}
	}

	// The access log: one line per proxied request with the id the target saw.
	mu.Lock()
	defer mu.Unlock()
	if gotIDs[0] != "visitor-chosen-id-1" {
		t.Errorf("target saw X-Request-Id %q, want the visitor's", gotIDs[0])
	}
	var lines []map[string]any
	waitFor(t, 5*time.Second, "access log lines", func() bool {
		lines = lines[:0]
		for _, l := range strings.Split(g.logs.String(), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == "request" && m["domain"] == domain {
				lines = append(lines, m)
			}
		}
		return len(lines) == gets+1
	})
	for i, id := range gotIDs {
		if id == "" {
			t.Fatalf("request %d reached the target without X-Request-Id", i)
		}
		found := false
		for _, l := range lines {
			if l["request_id"] == id {
				found = true
				if l["status"] != float64(200) || l["agent"] == "" || l["client"] == "" || l["method"] == "" {
					t.Errorf("access log line lacks fields: %v", l)
				}
			}
		}
		if !found {
			t.Errorf("no access log line for request id %s", id)
		}
	}
	logs := g.logs.String()
	for _, secret := range []string{key, "visitor-secret-token", "visitor-secret-cookie", "secret-query", g.adminKey} {
		if strings.Contains(logs, secret) {
			t.Errorf("server log contains %q", secret)
		}
	}
}

// opsScrape reads a gateway's /metrics with the gateway_id label taken off every series, so that
// tests name series as a lone gateway's (TestClusterThreeGateways checks the label itself).
func opsScrape(t testing.TB, addr string) string {
	t.Helper()
	return withoutGatewayID(opsScrapeRaw(t, addr))
}

// opsScrapeRaw reads a gateway's /metrics as served.
func opsScrapeRaw(t testing.TB, addr string) string {
	t.Helper()
	res, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return string(b)
}

var gatewayIDLabel = regexp.MustCompile(`gateway_id="[^"]*",?`)

// withoutGatewayID removes the gateway_id label from a metrics exposition.
func withoutGatewayID(text string) string {
	text = gatewayIDLabel.ReplaceAllString(text, "")
	return strings.NewReplacer(",}", "}", "{}", "").Replace(text)
}
