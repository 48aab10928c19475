package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/hopgate/hopgate/internal/testutil/pebbletest"
)

// TestWildcardThroughTheBinary runs hopgate-server outside debug mode against Pebble, which
// resolves through pebble-challtestsrv; the gateway's DNS-01 records reach challtestsrv through
// lego's exec provider (HOP_ACME_DNS_PROVIDER=exec, a small program calling its management API). A
// registered *.wild.example.test gets a wildcard certificate from Pebble; x.wild.example.test is
// served with it (verified against Pebble's root) and reaches the wildcard's agent with its own
// Host; a.b.wild.example.test is 404.
func TestWildcardThroughTheBinary(t *testing.T) {
	t.Parallel()
	const gwName, wild = "gw.wild.test", "*.wild.example.test"
	bin := buildPebble(t)
	chall := bin.StartChallTestSrv(t)
	httpsPort, httpPort := pebbletest.FreePort(t), pebbletest.FreePort(t)
	p := bin.Start(t, pebbletest.Config{HTTPPort: httpPort, TLSPort: httpsPort, DNSServer: chall.DNSAddr})
	httpsAddr := fmt.Sprintf("127.0.0.1:%d", httpsPort)

	env := pebbleEnv(bin, p, gwName, fmt.Sprintf("127.0.0.1:%d", httpPort),
		append([]string{"HOP_ACME_DNS_PROVIDER=exec", "HOP_ACME_DNS_RESOLVER=" + chall.DNSAddr}, bin.ExecProviderEnv(t, chall)...)...)
	g := startGateway(t, gatewayOptions{Addr: httpsAddr, Env: env})

	// Every request goes to the gateway; the URL's host is the SNI and Host.
	client := func(insecure bool) *http.Client {
		tr := &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: p.Root, InsecureSkipVerify: insecure},
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, httpsAddr)
			},
		}
		t.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Timeout: 10 * time.Second, Transport: tr}
	}
	verified := client(false)
	admin := func(method, path string, body any) (int, map[string]any) {
		var b bytes.Buffer
		if body != nil {
			_ = json.NewEncoder(&b).Encode(body)
		}
		req, _ := http.NewRequest(method, fmt.Sprintf("https://%s:%d%s", gwName, httpsPort, path), &b)
		req.Header.Set("Authorization", "Bearer "+g.adminKey)
		res, err := verified.Do(req)
		if err != nil {
			return 0, nil
		}
		defer res.Body.Close()
		var out map[string]any
		_ = json.NewDecoder(res.Body).Decode(&out)
		return res.StatusCode, out
	}
	// The gateway's own certificate comes first (HTTP-01, Pebble resolving through challtestsrv).
	waitFor(t, 30*time.Second, "the gateway's own certificate", func() bool {
		code, _ := admin(http.MethodGet, "/api/v1/admin/domains", nil)
		return code == http.StatusOK
	})
	code, reg := admin(http.MethodPost, "/api/v1/admin/domains/register", map[string]string{"domain": wild})
	key, _ := reg["client_api_key"].(string)
	if code != http.StatusCreated || reg["domain"] != wild || key == "" {
		t.Fatalf("register %s: %d %v", wild, code, reg)
	}

	target := tnTarget(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "wild "+r.Host)
	})
	// The real agent dials 127.0.0.1 and verifies the gateway's public name (--server-name) against
	// Pebble's root.
	root := filepath.Join(t.TempDir(), "pebble-root.pem")
	if err := os.WriteFile(root, p.RootPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	startProcess(t, "hopgate-client", []string{"--server-addr", httpsAddr, "--server-name", gwName, "--ca-file", root,
		"--domain", wild, "--local-target", target.URL, "--log-format", "json"}, []string{"HOP_CLIENT_API_KEY=" + key})
	waitFor(t, 20*time.Second, "the wildcard's agent", func() bool {
		_, st := admin(http.MethodGet, "/api/v1/admin/domains/status?domain="+url.QueryEscape(wild), nil)
		n, _ := st["agents"].(float64)
		return n == 1
	})

	tenantURL := fmt.Sprintf("https://x.wild.example.test:%d/", httpsPort)
	var body string
	waitFor(t, 30*time.Second, "x.wild.example.test served with the wildcard certificate", func() bool {
		res, err := verified.Get(tenantURL)
		if err != nil {
			return false
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		body = string(b)
		return res.StatusCode == http.StatusOK && res.TLS.PeerCertificates[0].DNSNames[0] == wild
	})
	if want := fmt.Sprintf("wild x.wild.example.test:%d", httpsPort); body != want {
		t.Fatalf("target saw %q, want %q", body, want)
	}
	_, st := admin(http.MethodGet, "/api/v1/admin/domains/status?domain="+url.QueryEscape(wild), nil)
	if c, _ := st["certificate"].(map[string]any); c == nil || c["state"] != "valid" {
		t.Fatalf("certificate status of %s: %v", wild, st["certificate"])
	}

	// Two labels under the wildcard: no certificate of its own (the gateway's is served, so the
	// check is skipped to see the answer) and no domain.
	res, err := client(true).Get(fmt.Sprintf("https://a.b.wild.example.test:%d/", httpsPort))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusNotFound {
		t.Fatalf("a.b.wild.example.test: %d, want 404", res.StatusCode)
	}
	if names := res.TLS.PeerCertificates[0].DNSNames; len(names) != 1 || names[0] != gwName {
		t.Fatalf("a.b.wild.example.test was served %v, want the gateway's own certificate", names)
	}
}

// TestWildcardAgentBinary: hopgate-client serves a wildcard domain: every name one label under it
// reaches the agent with its own Host, an exact registration under it keeps its own agent, and a
// name two labels under is 404. Debug mode (the development CA signs the names), the real binaries.
func TestWildcardAgentBinary(t *testing.T) {
	t.Parallel()
	const wild, exact = "*.apps.wild.test", "own.apps.wild.test"
	g := startGateway(t, gatewayOptions{})
	wildTarget := tnTarget(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "wild "+r.Host) })
	exactTarget := tnTarget(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "exact "+r.Host) })
	g.startAgent(wild, g.register(wild), wildTarget.URL)
	g.startAgent(exact, g.register(exact), exactTarget.URL)
	c := g.httpClient(false)
	_, port, _ := net.SplitHostPort(g.addr)
	for host, want := range map[string]string{
		"x.apps.wild.test":   "200 wild x.apps.wild.test:" + port,
		"Y.apps.wild.test":   "200 wild Y.apps.wild.test:" + port, // the Host as the visitor sent it
		exact:                "200 exact " + exact + ":" + port,
		"a.b.apps.wild.test": "404",
		"apps.wild.test":     "404",
	} {
		code, body := tnGet(t, c, g.url(host, "/"))
		got := strconv.Itoa(code)
		if code == http.StatusOK {
			got += " " + body
		}
		if got != want {
			t.Errorf("%s: %q, want %q", host, got, want)
		}
	}
}
