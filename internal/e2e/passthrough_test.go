package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hopgate/hopgate/internal/gateway/devcert"
	"github.com/hopgate/hopgate/internal/testutil/hoptest"
	"github.com/hopgate/hopgate/internal/testutil/pebbletest"
)

// TLS passthrough (issue 17): on the gateway's HTTPS port, a ClientHello whose SNI is a
// tls-passthrough domain goes raw to the agent and its target, which holds its own certificate; the
// gateway never terminates it.

const secureName = "secure.example.test"

// ptTarget is an HTTPS server with its own self-signed certificate for name, answering with the
// server name it saw in the handshake; the agent reaches it as tcp://addr.
type ptTarget struct {
	addr string
	ca   *devcert.CA
	leaf *x509.Certificate
}

func ptNewTarget(t testing.TB, name string) *ptTarget {
	t.Helper()
	ca, err := devcert.NewCA("passthrough target "+name, []string{name}, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(ca.Cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "target terminated TLS for %s, %s %s", r.TLS.ServerName, r.Proto, r.URL.Path)
	}))
	srv.EnableHTTP2 = true
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Cert}}
	srv.StartTLS()
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
	})
	return &ptTarget{addr: srv.Listener.Addr().String(), ca: ca, leaf: leaf}
}

// ptClient sends every request to httpsAddr, verifying the server against roots under the URL's
// host name (the SNI).
func ptClient(t testing.TB, httpsAddr string, roots *x509.CertPool, h2 bool) *http.Client {
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, httpsAddr)
		},
		ForceAttemptHTTP2: h2,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Timeout: 15 * time.Second, Transport: tr}
}

// ptGet is one GET; it returns the answer, the certificate the server showed and the protocol.
func ptGet(t testing.TB, c *http.Client, url string) (int, string, *x509.Certificate, string) {
	t.Helper()
	res, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("GET %s: read body: %v", url, err)
	}
	return res.StatusCode, string(b), res.TLS.PeerCertificates[0], res.Proto
}

// ptRequestID is the request ID in an error page, which differs from one request to the next.
var ptRequestID = regexp.MustCompile(`<code>[^<]*</code>|"request_id":"[^"]*"`)

func ptWithoutRequestID(body string) string { return ptRequestID.ReplaceAllString(body, "") }

// TestTLSPassthrough: a visitor verifying the target's own certificate (not the gateway's) reaches
// it through the gateway's HTTPS port, over HTTP/1.1 and HTTP/2 (ALPN is the target's too); the
// gateway's certificate is not what it shows for the name; an HTTP-mode domain and the admin API on
// the same port are unaffected; an unknown SNI gets the answer an unknown host got before; the
// metrics count passthrough connections apart.
func TestTLSPassthrough(t *testing.T) {
	t.Parallel()
	target := ptNewTarget(t, secureName)
	web := tnTarget(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "web "+r.Host) })
	g := startGateway(t, gatewayOptions{Env: []string{"HOP_SERVER_METRICS_LISTEN=127.0.0.1:0"}})
	metrics := tnMetricsAddr(t, g)
	gwClient := g.httpClient(false)
	const unknownURLHost = "unknown.example.test"
	unknownCode, unknownBody := tnGet(t, gwClient, g.url(unknownURLHost, "/"))
	unknownBody = ptWithoutRequestID(unknownBody)

	g.startAgent("web.example.test", g.register("web.example.test"), web.URL)
	reg := rtRegister(t, g, secureName, hoptest.ModePassthrough, 0, "")
	rtCheckMode(t, "domains/status", rtStatus(t, g, secureName), hoptest.ModePassthrough, 0, "")
	rtCheckMode(t, "the domain list", rtListed(t, g, secureName), hoptest.ModePassthrough, 0, "")
	g.startAgent(secureName, reg.Key, "tcp://"+target.addr)

	for _, h2 := range []bool{false, true} {
		c := ptClient(t, g.addr, target.ca.Pool, h2)
		code, body, cert, proto := ptGet(t, c, g.url(secureName, "/hello"))
		wantProto := map[bool]string{false: "HTTP/1.1", true: "HTTP/2.0"}[h2]
		if code != http.StatusOK || body != "target terminated TLS for "+secureName+", "+wantProto+" /hello" || proto != wantProto {
			t.Errorf("passthrough (h2 %v): %d %q over %s", h2, code, body, proto)
		}
		if !bytes.Equal(cert.Raw, target.leaf.Raw) {
			t.Errorf("passthrough (h2 %v): the visitor saw %v, not the target's certificate", h2, cert.DNSNames)
		}
		c.CloseIdleConnections()
	}

	// The gateway holds no certificate for the name: trusting only the gateway's CA, the handshake
	// fails, because the certificate is the target's.
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", g.addr, &tls.Config{RootCAs: g.hop.CAPool, ServerName: secureName})
	if err == nil {
		conn.Close()
		t.Error("a handshake for the passthrough name verified against the gateway's CA: the gateway terminated it")
	}

	// The same port still serves the rest as before.
	if code, body := tnGet(t, gwClient, g.url("web.example.test", "/x")); code != http.StatusOK || !strings.HasPrefix(body, "web web.example.test") {
		t.Errorf("HTTP-mode domain beside passthrough: %d %q", code, body)
	}
	if n := g.agents(secureName); n != 1 {
		t.Errorf("admin API beside passthrough: %d agents for %s", n, secureName)
	}
	code, body := tnGet(t, gwClient, g.url(unknownURLHost, "/"))
	if code != unknownCode || ptWithoutRequestID(body) != unknownBody {
		t.Errorf("unknown SNI with a passthrough domain registered: %d %q; before: %d %q", code, body, unknownCode, unknownBody)
	}
	if unknownCode != http.StatusNotFound {
		t.Errorf("unknown host: %d, want 404", unknownCode)
	}

	// A handful more visitors, then the metrics: passthrough connections counted under their mode.
	c := ptClient(t, g.addr, target.ca.Pool, false)
	for i := range 5 {
		c.CloseIdleConnections() // a new TLS connection each time
		if code, _, _, _ := ptGet(t, c, g.url(secureName, fmt.Sprintf("/%d", i))); code != http.StatusOK {
			t.Fatalf("passthrough visit %d: %d", i, code)
		}
	}
	c.CloseIdleConnections()
	waitFor(t, 10*time.Second, "passthrough connections counted and closed", func() bool {
		s := rtScrape(t, metrics, "hopgate_tcp_")
		open, exported := s[`hopgate_tcp_connections_open{mode="tls_passthrough"}`]
		return exported && open == 0 && rtSum(s, "hopgate_tcp_connections_total", `mode="tls_passthrough"`) >= 7
	})
	s := rtScrape(t, metrics, "hopgate_tcp_")
	if n := rtSum(s, "hopgate_tcp_bytes_total", `mode="tls_passthrough"`); n <= 0 {
		t.Errorf("hopgate_tcp_bytes_total{mode=\"tls_passthrough\"} = %v", n)
	}
	if n := rtSum(s, "hopgate_tcp_connections_total", `mode="tcp"`); n != 0 {
		t.Errorf("passthrough connections counted as mode tcp: %v", n)
	}
	if strings.Contains(opsScrape(t, metrics), secureName) {
		t.Error("the passthrough name shows up in the metrics (unbounded labels)")
	}
}

// TestTLSPassthroughNoCertificate runs the gateway outside debug mode against Pebble: it orders its
// own certificate, and none for a passthrough domain, while that domain is served with the target's
// certificate.
func TestTLSPassthroughNoCertificate(t *testing.T) {
	t.Parallel()
	const gwName, secure, web = "gw.pass.test", "secure.pass.test", "web.pass.test"
	bin := buildPebble(t)
	httpsPort, httpPort := pebbletest.FreePort(t), pebbletest.FreePort(t)
	p := bin.Start(t, pebbletest.Config{HTTPPort: httpPort, TLSPort: httpsPort})
	httpsAddr := fmt.Sprintf("127.0.0.1:%d", httpsPort)
	g := startGateway(t, gatewayOptions{Addr: httpsAddr, Env: pebbleEnv(bin, p, gwName, fmt.Sprintf("127.0.0.1:%d", httpPort),
		"HOP_SERVER_METRICS_LISTEN=127.0.0.1:0", "HOP_ACME_EMAIL=ops@pass.test")})
	metrics := tnMetricsAddr(t, g)
	pebble := ptClient(t, httpsAddr, p.Root, false)
	admin := func(method, path string, body any) (int, map[string]any) {
		t.Helper()
		r, err := gwDoE(pebble, method, fmt.Sprintf("https://%s:%d%s", gwName, httpsPort, path), gwBearer(g), gwBody(body))
		if err != nil {
			return 0, nil
		}
		return r.code, r.gwJSON(t)
	}
	waitFor(t, 60*time.Second, "the gateway's own certificate", func() bool {
		code, _ := admin(http.MethodGet, "/api/v1/admin/domains", nil)
		return code == http.StatusOK
	})
	code, reg := admin(http.MethodPost, "/api/v1/admin/domains/register", map[string]any{"domain": secure, "mode": hoptest.ModePassthrough})
	key, _ := reg["client_api_key"].(string)
	if code != http.StatusCreated || reg["mode"] != hoptest.ModePassthrough || key == "" {
		t.Fatalf("register %s: %d %v", secure, code, reg)
	}
	code, webReg := admin(http.MethodPost, "/api/v1/admin/domains/register", map[string]any{"domain": web})
	webKey, _ := webReg["client_api_key"].(string)
	if code != http.StatusCreated {
		t.Fatalf("register %s: %d %v", web, code, webReg)
	}

	target := ptNewTarget(t, secure)
	webTarget := tnTarget(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "web") })
	root := filepath.Join(t.TempDir(), "pebble-root.pem")
	if err := os.WriteFile(root, p.RootPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, a := range []struct{ domain, key, target string }{{secure, key, "tcp://" + target.addr}, {web, webKey, webTarget.URL}} {
		startProcess(t, "hopgate-client", []string{"--server-addr", httpsAddr, "--server-name", gwName, "--ca-file", root,
			"--domain", a.domain, "--local-target", a.target, "--log-format", "json"}, []string{"HOP_CLIENT_API_KEY=" + a.key})
	}
	visitor := ptClient(t, httpsAddr, target.ca.Pool, false)
	var body string
	waitFor(t, 20*time.Second, "the passthrough domain served by its target", func() bool {
		r, err := gwDoE(visitor, http.MethodGet, fmt.Sprintf("https://%s:%d/", secure, httpsPort), nil, nil)
		body = string(r.body)
		return err == nil && r.code == http.StatusOK
	})
	if !strings.HasPrefix(body, "target terminated TLS for "+secure) {
		t.Fatalf("passthrough answer %q", body)
	}
	// The HTTP-mode domain gets its certificate meanwhile: by then an order for the passthrough name
	// would have been made too.
	waitFor(t, 60*time.Second, "the HTTP-mode domain served with its Pebble certificate", func() bool {
		r, err := gwDoE(pebble, http.MethodGet, fmt.Sprintf("https://%s:%d/", web, httpsPort), nil, nil)
		return err == nil && r.code == http.StatusOK && string(r.body) == "web"
	})

	if n := tnMetric(t, metrics, `hopgate_certificate_orders_total{result="ok"}`); n != 2 {
		t.Errorf("%v certificate orders, want 2 (the gateway's and %s's, none for %s)", n, web, secure)
	}
	for line := range strings.Lines(opsScrape(t, metrics)) {
		if strings.HasPrefix(line, "hopgate_certificate") && strings.Contains(line, secure) {
			t.Errorf("a certificate series for the passthrough name: %s", strings.TrimSpace(line))
		}
	}
	_, st := admin(http.MethodGet, "/api/v1/admin/domains/status?domain="+secure, nil)
	if c, _ := st["certificate"].(map[string]any); c != nil && (c["state"] == "valid" || c["not_after"] != nil) {
		t.Errorf("status of the passthrough domain shows a certificate: %v", c)
	}
	if _, err := os.Stat(filepath.Join(g.dataDir, "acme", "certificates", secure+".crt")); err == nil {
		t.Errorf("a certificate for %s is stored", secure)
	}
}
