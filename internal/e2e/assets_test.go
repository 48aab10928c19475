package e2e

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestAssetsOnlyOnGatewayName: /__hopgate_assets__/ belongs to the gateway's own name (as
// errors/README.md says); on a tenant's name the same path is the tenant's and goes through its tunnel.
func TestAssetsOnlyOnGatewayName(t *testing.T) {
	t.Parallel()
	const domain = "assets.example.test"
	paths := make(chan string, 4)
	target := tnTarget(t, func(w http.ResponseWriter, r *http.Request) {
		paths <- r.URL.Path
		_, _ = io.WriteString(w, "the tenant's own page")
	})
	g := startGateway(t, gatewayOptions{})
	g.startAgent(domain, g.register(domain), target.URL)
	c := g.httpClient(false)

	get := func(host string) (*http.Response, string) {
		t.Helper()
		res, err := c.Get(g.url(host, "/__hopgate_assets__/style.css"))
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res, string(b)
	}
	if res, body := get("localhost"); res.StatusCode != http.StatusOK ||
		!strings.HasPrefix(res.Header.Get("Content-Type"), "text/css") || body == "" {
		t.Fatalf("gateway name: %d %q, %d bytes; want the stylesheet", res.StatusCode, res.Header.Get("Content-Type"), len(body))
	}
	if res, body := get(domain); res.StatusCode != http.StatusOK || body != "the tenant's own page" {
		t.Fatalf("tenant name: %d %q; want the tenant's answer", res.StatusCode, body)
	}
	if p := <-paths; p != "/__hopgate_assets__/style.css" {
		t.Fatalf("the target saw %q", p)
	}
}
