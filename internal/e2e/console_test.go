package e2e

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestConsoleAPIs runs the admin calls the console is built on against the real binaries: the live
// agents with their details, disconnecting one (it comes back with a new session), the memo, the
// certificates, and the inspector with replay through the real tunnel.
func TestConsoleAPIs(t *testing.T) {
	t.Parallel()
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		_, _ = io.WriteString(w, "target got "+r.Method+" "+r.URL.RequestURI()+" auth="+r.Header.Get("Authorization")+
			" replay="+r.Header.Get("X-HopGate-Replay")+" body="+string(b))
	}))
	t.Cleanup(target.Close)
	g := startGateway(t, gatewayOptions{})
	const domain = "console.example.test"
	key := g.register(domain)
	g.startAgent(domain, key, target.URL)
	c := g.httpClient(false)

	if code, body := g.admin(http.MethodPost, "/api/v1/admin/inspect", map[string]any{"domain": domain, "on": true, "bodies": true}); code != http.StatusOK {
		t.Fatalf("inspect on: %d %v", code, body)
	}
	req, _ := http.NewRequest(http.MethodPost, g.url(domain, "/orders?api_key=query-secret-1234"), strings.NewReader("order=1"))
	req.Header.Set("Authorization", "Bearer e2e-secret-token")
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if !strings.Contains(string(got), "auth=Bearer e2e-secret-token") {
		t.Fatalf("through the tunnel: %d %s", res.StatusCode, got)
	}

	// The agent as GET agents shows it: version, address, counters.
	var agent map[string]any
	waitFor(t, 5*time.Second, "the agent's bytes counted", func() bool {
		_, body := g.admin(http.MethodGet, "/api/v1/admin/agents", nil)
		list, _ := body["agents"].([]any)
		if len(list) != 1 {
			t.Fatalf("agents: %v", body)
		}
		agent = list[0].(map[string]any)
		return agent["bytes_in"].(float64) > 0 && agent["bytes_out"].(float64) > 0
	})
	if agent["domain"] != domain || agent["version"] == "" || !strings.HasPrefix(agent["remote_addr"].(string), "127.0.0.1:") ||
		agent["session"] == "" || agent["connected_at"] == "" || agent["last_ping"] == "" || agent["healthy"] != true {
		t.Errorf("agent = %v", agent)
	}

	// The entries never hold the credentials; replay sends the request again without them.
	_, body := g.admin(http.MethodGet, "/api/v1/admin/inspect/entries?domain="+domain, nil)
	entries, _ := body["entries"].([]any)
	if len(entries) != 1 {
		t.Fatalf("entries: %v", body)
	}
	raw := jsonString(t, body)
	for _, s := range []string{"e2e-secret-token", "query-secret-1234"} {
		if strings.Contains(raw, s) {
			t.Errorf("the entries hold %q", s)
		}
	}
	id := entries[0].(map[string]any)["id"].(string)
	code, body := g.admin(http.MethodPost, "/api/v1/admin/inspect/replay", map[string]any{"domain": domain, "id": id})
	entry, _ := body["entry"].(map[string]any)
	answer, _ := base64.StdEncoding.DecodeString(fmt.Sprint(entry["response_body"]))
	if code != http.StatusOK || !strings.Contains(string(answer), "replay="+id) || !strings.Contains(string(answer), "body=order=1") ||
		!strings.Contains(string(answer), "auth= ") || strings.Contains(jsonString(t, body), "e2e-secret-token") {
		t.Errorf("replay: %d %s, the target answered %q", code, jsonString(t, body), answer)
	}

	// Memo.
	if code, body := g.admin(http.MethodPost, "/api/v1/admin/domains/memo", map[string]any{"domain": domain, "memo": "from the console"}); code != http.StatusOK || body["memo"] != "from the console" {
		t.Errorf("memo: %d %v", code, body)
	}

	// Certificates: the development CA's names in debug mode, never renewed.
	_, body = g.admin(http.MethodGet, "/api/v1/admin/certificates", nil)
	certs, _ := body["certificates"].([]any)
	if body["acme"] != false || len(certs) == 0 || certs[0].(map[string]any)["state"] != "self-signed" || certs[0].(map[string]any)["not_after"] == "" {
		t.Errorf("certificates: %v", body)
	}

	// Disconnect: this tunnel ends, the agent comes back on a new one.
	session := agent["session"].(string)
	if code, body := g.admin(http.MethodPost, "/api/v1/admin/agents/disconnect", map[string]any{"domain": domain, "session": "nope"}); code != http.StatusNotFound {
		t.Errorf("disconnect an unknown session: %d %v", code, body)
	}
	if code, body := g.admin(http.MethodPost, "/api/v1/admin/agents/disconnect", map[string]any{"domain": domain, "session": session}); code != http.StatusOK {
		t.Fatalf("disconnect: %d %v", code, body)
	}
	waitFor(t, 20*time.Second, "the agent back on a new session", func() bool {
		_, body := g.admin(http.MethodGet, "/api/v1/admin/agents", nil)
		list, _ := body["agents"].([]any)
		return len(list) == 1 && list[0].(map[string]any)["session"] != session
	})

	// All of it is in the audit log.
	_, body = g.admin(http.MethodGet, "/api/v1/admin/audit", nil)
	log := jsonString(t, body)
	for _, want := range []string{"agents/disconnect", "domains/memo", "inspect/replay", "inspect"} {
		if !strings.Contains(log, `"`+want+`"`) {
			t.Errorf("audit lacks %s: %s", want, log)
		}
	}
}

func jsonString(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
