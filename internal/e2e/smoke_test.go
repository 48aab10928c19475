package e2e

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestSmoke is the shortest path through the product: register, connect an agent, proxy one request.
func TestSmoke(t *testing.T) {
	t.Parallel()
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]string{"host": r.Host, "path": r.URL.RequestURI(), "xff": r.Header.Get("X-Forwarded-For")})
	}))
	t.Cleanup(target.Close)
	g := startGateway(t, gatewayOptions{})
	key := g.register("smoke.example.test")
	g.startAgent("smoke.example.test", key, target.URL)

	res, err := g.httpClient(false).Get(g.url("smoke.example.test", "/a/b?c=d"))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var got map[string]string
	if err := json.NewDecoder(res.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != 200 || got["path"] != "/a/b?c=d" || !strings.HasPrefix(got["host"], "smoke.example.test:") || got["xff"] != "127.0.0.1" {
		t.Fatalf("status %d, target saw %v", res.StatusCode, got)
	}
}
