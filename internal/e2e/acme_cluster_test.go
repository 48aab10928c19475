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
	"testing"
	"time"

	"github.com/hopgate/hopgate/internal/testutil/pebbletest"
	"github.com/hopgate/hopgate/internal/testutil/pgtest"
)

// TestACMECluster runs three hopgate-servers on one Postgres schema against Pebble, only the first
// of them at the ports Pebble validates at, as when a CA's requests all reach one gateway. The
// gateway's own name and a domain registered through another gateway are each ordered once for the
// cluster, and all three serve the certificates.
func TestACMECluster(t *testing.T) {
	t.Parallel()
	const gwName, tenant = "gw.acmecluster.test", "app.acmecluster.test"
	bin := buildPebble(t)
	httpsPort, httpPort := pebbletest.FreePort(t), pebbletest.FreePort(t)
	p := bin.Start(t, pebbletest.Config{HTTPPort: httpPort, TLSPort: httpsPort})
	dsn := pgtest.DSN(t)

	var gws []*gateway
	for i, id := range []string{"acme-a", "acme-b", "acme-c"} {
		addr, httpListen := "", "127.0.0.1:0"
		if i == 0 {
			addr, httpListen = fmt.Sprintf("127.0.0.1:%d", httpsPort), fmt.Sprintf("127.0.0.1:%d", httpPort)
		}
		gws = append(gws, startGateway(t, gatewayOptions{DSN: dsn, Addr: addr, Env: pebbleEnv(bin, p, gwName, httpListen,
			"HOP_SERVER_ID="+id, "HOP_ACME_EMAIL=ops@acmecluster.test")}))
	}

	handshake := func(g *gateway, name string) (*x509.Certificate, error) {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", g.addr,
			&tls.Config{ServerName: name, RootCAs: p.Root})
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0], nil
	}
	// waitCerts waits until every gateway serves name a certificate Pebble's root verifies, and
	// returns them; it fails the test, after telling which gateways do not, if one is missing.
	waitCerts := func(name string, within time.Duration) []*x509.Certificate {
		t.Helper()
		deadline := time.Now().Add(within)
		certs := make([]*x509.Certificate, len(gws))
		for i, g := range gws {
			for {
				c, err := handshake(g, name)
				if err == nil {
					certs[i] = c
					break
				}
				if time.Now().After(deadline) {
					t.Errorf("gateway %d (%s) serves no valid certificate for %s: %v", i, g.addr, name, err)
					break
				}
				time.Sleep(200 * time.Millisecond)
			}
		}
		if t.Failed() {
			t.FailNow()
		}
		return certs
	}
	sameCert := func(name string, certs []*x509.Certificate) {
		t.Helper()
		for i, c := range certs[1:] {
			if c.SerialNumber.Cmp(certs[0].SerialNumber) != 0 {
				t.Errorf("%s: gateway %d serves serial %v, gateway 0 serves %v", name, i+1, c.SerialNumber, certs[0].SerialNumber)
			}
		}
	}
	gwCerts := waitCerts(gwName, 60*time.Second)
	sameCert(gwName, gwCerts)
	if n := p.Orders(); n != 1 {
		t.Errorf("Pebble got %d orders for the gateway name, want 1 for the cluster", n)
	}

	// Registered through the second gateway, which Pebble never reaches.
	admin := gws[1]
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: p.Root},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, admin.addr)
		},
	}}
	t.Cleanup(client.CloseIdleConnections)
	_, port, _ := net.SplitHostPort(admin.addr)
	body, _ := json.Marshal(map[string]string{"domain": tenant})
	req, _ := http.NewRequest(http.MethodPost, "https://"+net.JoinHostPort(gwName, port)+"/api/v1/admin/domains/register", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+admin.adminKey)
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode >= 300 {
		t.Fatalf("register %s: %s", tenant, res.Status)
	}
	tenantCerts := waitCerts(tenant, 60*time.Second)
	sameCert(tenant, tenantCerts)
	if err := tenantCerts[0].VerifyHostname(tenant); err != nil {
		t.Fatalf("tenant served %v", tenantCerts[0].DNSNames)
	}
	// Another look after the gateways had time to act on the registration: still one order each.
	time.Sleep(time.Second)
	if n := p.Orders(); n != 2 {
		t.Errorf("Pebble got %d orders, want 2: the gateway name and the domain, once each for the cluster", n)
	}
}
