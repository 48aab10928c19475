package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// pageRequestID is the request id an HTML error page shows.
var pageRequestID = regexp.MustCompile(`<code>([0-9a-f]{24})</code>`)

// accessLine is the gateway's access-log line for request id, or nil.
func (g *gateway) accessLine(id string) map[string]any {
	for _, l := range strings.Split(g.logs.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == "request" && m["request_id"] == id {
			return m
		}
	}
	return nil
}

// TestAgentPages: the gateway's own pages for what a config-file agent reports. (a) A path no rule
// of the agent matches gets the gateway's 404 page (HTML for a browser, with its request id and the
// no-service wording in English and Korean; JSON for an API caller), logged as no_route; a matching
// path still reaches its target. (b) With the only target stopped and health checks on, the page is
// the target-down one: the agent is connected, its service is not answering.
func TestAgentPages(t *testing.T) {
	const interval = 300 * time.Millisecond
	g := startGateway(t, gatewayOptions{})
	key := g.register("pages.example.test")
	tgt := startHealthTarget(t, "pages")
	file := filepath.Join(t.TempDir(), "hopgate.yaml")
	writeConfig(t, file, fmt.Sprintf(`server_addr: %s
ca_file: %s
services:
  - hostname: pages.example.test
    api_key: %s
    path: /app
    target: http://%s
    health: {path: /healthz, interval: %s}
`, g.addr, g.caFile, key, tgt.addr, interval))
	g.startConfigAgent(t, file, nil, "pages.example.test")
	c := g.httpClient(false)

	if code, body := getText(t, c, g.url("pages.example.test", "/app/x")); code != 200 || body != "pages" {
		t.Fatalf("a routed path = %d %q, want 200 from the target", code, body)
	}

	// (a) No rule for /elsewhere.
	res, body := fetchPage(t, c, g.url("pages.example.test", "/elsewhere"), "text/html,application/xhtml+xml,*/*;q=0.8")
	if res.StatusCode != 404 || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("no rule, HTML = %d %s %q", res.StatusCode, res.Header.Get("Content-Type"), body)
	}
	for _, want := range []string{"HopGate", "No matching service", "agent has no service for this hostname and path", "일치하는 서비스 없음"} {
		if !strings.Contains(body, want) {
			t.Errorf("the 404 page lacks %q:\n%s", want, body)
		}
	}
	if strings.Contains(body, "HopGate agent has no service") || res.Header.Get("X-Hopgate-No-Route") != "" {
		t.Errorf("the visitor got the agent's own 404 or its marker: %v\n%s", res.Header, body)
	}
	m := pageRequestID.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("the 404 page shows no request id:\n%s", body)
	}
	var line map[string]any
	waitFor(t, 5*time.Second, "the access-log line of the 404", func() bool { line = g.accessLine(m[1]); return line != nil })
	if line["error"] != "no_route" || line["status"] != float64(404) || line["agent"] == "" {
		t.Errorf("access log for %s = %v, want status 404, error no_route and the agent", m[1], line)
	}

	res, body = fetchPage(t, c, g.url("pages.example.test", "/elsewhere"), "application/json", "X-Request-Id", "agentpages-json-1")
	var j map[string]any
	if err := json.Unmarshal([]byte(body), &j); err != nil || res.StatusCode != 404 {
		t.Fatalf("no rule, JSON = %d %q (%v)", res.StatusCode, body, err)
	}
	if j["success"] != false || j["status"] != float64(404) || j["request_id"] != "agentpages-json-1" ||
		!strings.Contains(fmt.Sprint(j["error"]), "no service for this hostname and path") {
		t.Errorf("no rule, JSON = %v", j)
	}

	// (b) The only target stops: health checks mark it down and the gateway answers for it.
	tgt.stop()
	waitFor(t, 10*time.Second, "503 once the target is reported down", func() bool {
		res, _ := fetchPage(t, c, g.url("pages.example.test", "/app/x"), "application/json")
		return res.StatusCode == 503
	})
	res, body = fetchPage(t, c, g.url("pages.example.test", "/app/x"), "text/html", "X-Request-Id", "agentpages-down-1")
	if res.StatusCode != 503 || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("target down, HTML = %d %s", res.StatusCode, res.Header.Get("Content-Type"))
	}
	for _, want := range []string{"Service not answering", "the agent is connected to the gateway, but its local service is down",
		"서비스 응답 없음", "agentpages-down-1"} {
		if !strings.Contains(body, want) {
			t.Errorf("the target-down page lacks %q:\n%s", want, body)
		}
	}
	if strings.Contains(body, "not connected to the gateway") {
		t.Errorf("the target-down page says the agent is not connected:\n%s", body)
	}
	waitFor(t, 5*time.Second, "the access-log line of the 503", func() bool { line = g.accessLine("agentpages-down-1"); return line != nil })
	if line["error"] != "target_down" {
		t.Errorf("access log = %v, want error target_down", line)
	}
}

// fetchPage GETs url with Accept (and more header pairs) and returns the response and its body.
func fetchPage(t *testing.T, c *http.Client, url, accept string, header ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", accept)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	res, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("GET %s: body: %v", url, err)
	}
	return res, string(b)
}
