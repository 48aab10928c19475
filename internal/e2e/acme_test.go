package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hopgate/hopgate/internal/testutil/pebbletest"
)

var (
	pebbleOnce sync.Once
	pebbleBin  *pebbletest.Binary
	pebbleErr  error
)

func buildPebble(t *testing.T) *pebbletest.Binary {
	t.Helper()
	pebbleOnce.Do(func() {
		dir, err := os.MkdirTemp("", "hopgate-e2e-pebble-")
		if err != nil {
			pebbleErr = err
			return
		}
		pebbleBin, pebbleErr = pebbletest.Build(dir)
	})
	if pebbleErr != nil {
		t.Fatal(pebbleErr)
	}
	return pebbleBin
}

// pebbleEnv is the environment of a gateway outside debug mode named name that gets its
// certificates from p: its HTTP listener (where p sends HTTP-01), p's directory and root.
func pebbleEnv(bin *pebbletest.Binary, p *pebbletest.Pebble, name, httpListen string, extra ...string) []string {
	return append([]string{
		"HOP_SERVER_DEBUG=false",
		"HOP_SERVER_DOMAIN=" + name,
		"HOP_SERVER_HTTP_LISTEN=" + httpListen,
		"HOP_ACME_CA_DIR=" + p.DirURL,
		"HOP_ACME_CA_ROOTS=" + bin.MinicaPath(),
	}, extra...)
}

// TestACMEThroughTheBinary runs hopgate-server outside debug mode against Pebble: it obtains a
// certificate for its own name at start and for a domain when it is registered, serves them by SNI
// (verified against Pebble's root), reports the certificate in domains/status and the expiry metric,
// and answers an unknown SNI with its own certificate without ordering one.
func TestACMEThroughTheBinary(t *testing.T) {
	t.Parallel()
	const gwName, tenant = "gw.acme.test", "app.acme.test"
	bin := buildPebble(t)
	httpsPort, httpPort := pebbletest.FreePort(t), pebbletest.FreePort(t)
	p := bin.Start(t, pebbletest.Config{HTTPPort: httpPort, TLSPort: httpsPort})
	httpsAddr := fmt.Sprintf("127.0.0.1:%d", httpsPort)

	g := startGateway(t, gatewayOptions{Addr: httpsAddr, Env: pebbleEnv(bin, p, gwName, fmt.Sprintf("127.0.0.1:%d", httpPort),
		"HOP_SERVER_METRICS_LISTEN=127.0.0.1:0", "HOP_ACME_EMAIL=ops@acme.test")})
	metrics := tnMetricsAddr(t, g)

	handshake := func(name string) (*x509.Certificate, error) {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", httpsAddr,
			&tls.Config{ServerName: name, RootCAs: p.Root})
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0], nil
	}
	waitCert := func(name string) *x509.Certificate {
		var cert *x509.Certificate
		var last error
		deadline := time.Now().Add(60 * time.Second)
		for time.Now().Before(deadline) {
			if cert, last = handshake(name); last == nil {
				return cert
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Fatalf("no valid certificate for %s: %v", name, last)
		return nil
	}
	gwCert := waitCert(gwName)
	if err := gwCert.VerifyHostname(gwName); err != nil {
		t.Fatal(err)
	}

	// The admin API on the gateway's own name, over the certificate Pebble issued.
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: p.Root},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, httpsAddr)
		},
	}}
	admin := func(method, path string, body any) map[string]any {
		var b bytes.Buffer
		if body != nil {
			_ = json.NewEncoder(&b).Encode(body)
		}
		req, _ := http.NewRequest(method, fmt.Sprintf("https://%s:%d%s", gwName, httpsPort, path), &b)
		req.Header.Set("Authorization", "Bearer "+g.adminKey)
		res, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		var out map[string]any
		_ = json.NewDecoder(res.Body).Decode(&out)
		if res.StatusCode >= 300 {
			t.Fatalf("%s %s: %d %v", method, path, res.StatusCode, out)
		}
		return out
	}
	admin(http.MethodPost, "/api/v1/admin/domains/register", map[string]string{"domain": tenant})
	tenantCert := waitCert(tenant)
	if err := tenantCert.VerifyHostname(tenant); err != nil {
		t.Fatalf("tenant served %v", tenantCert.DNSNames)
	}
	if tenantCert.SerialNumber.Cmp(gwCert.SerialNumber) == 0 {
		t.Fatal("tenant got the gateway's certificate")
	}
	waitFor(t, 10*time.Second, "certificate state valid in domains/status", func() bool {
		st := admin(http.MethodGet, "/api/v1/admin/domains/status?domain="+tenant, nil)
		c, _ := st["certificate"].(map[string]any)
		return c != nil && c["state"] == "valid" && c["not_after"] != ""
	})
	// An unknown SNI gets the gateway's certificate and never causes an order.
	conn, err := tls.Dial("tcp", httpsAddr, &tls.Config{ServerName: "unknown.acme.test", InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	got := conn.ConnectionState().PeerCertificates[0]
	conn.Close()
	if got.VerifyHostname(gwName) != nil {
		t.Fatalf("unknown SNI served %v", got.DNSNames)
	}
	if exp := tnMetric(t, metrics, fmt.Sprintf(`hopgate_certificate_expiry_timestamp_seconds{name=%q}`, tenant)); int64(exp) != tenantCert.NotAfter.Unix() {
		t.Fatalf("expiry metric %v, want %d", exp, tenantCert.NotAfter.Unix())
	}
	scrape := opsScrape(t, metrics)
	if strings.Contains(scrape, "unknown.acme.test") {
		t.Fatal("an unknown SNI shows up in the metrics")
	}
	if n := tnMetric(t, metrics, `hopgate_certificate_orders_total{result="ok"}`); n != 2 {
		t.Fatalf("%v successful orders, want 2 (gateway and tenant)", n)
	}

	// A restart reuses the stored certificates and account: no new order.
	g.signal(os.Interrupt)
	if code := g.wait(t, 15*time.Second); code != 0 {
		t.Fatalf("server exit %d", code)
	}
	g2 := startGateway(t, gatewayOptions{Addr: httpsAddr, DataDir: g.dataDir, Env: g.env[len(g.env)-7:]})
	metrics2 := tnMetricsAddr(t, g2)
	if c := waitCert(tenant); c.SerialNumber.Cmp(tenantCert.SerialNumber) != 0 {
		t.Fatal("restart served a different certificate for the tenant")
	}
	time.Sleep(500 * time.Millisecond)
	for _, line := range strings.Split(opsScrape(t, metrics2), "\n") {
		if strings.HasPrefix(line, "hopgate_certificate_orders_total") {
			t.Fatalf("restart ordered again: %s", line)
		}
	}
	if _, err := os.Stat(filepath.Join(g.dataDir, "acme", "certificates", tenant+".crt")); err != nil {
		t.Fatalf("certificate not stored where documented: %v", err)
	}
}
