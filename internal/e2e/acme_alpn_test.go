package e2e

import (
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hopgate/hopgate/internal/testutil/pebbletest"
)

// TestACMETLSALPNOnly: with Pebble's HTTP-01 port pointing at a closed port, the real binary still
// gets its certificate, validated by TLS-ALPN-01 on its HTTPS listener, and Pebble never makes an
// HTTP-01 validation request.
func TestACMETLSALPNOnly(t *testing.T) {
	t.Parallel()
	const gwName = "alpn.acme.test"
	bin := buildPebble(t)
	// Pebble's HTTP-01 port is a trap that drops every connection and counts it, so HTTP-01 can
	// never succeed and any attempt at it shows.
	trap, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var trapped atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := trap.Accept()
			if err != nil {
				return
			}
			trapped.Add(1)
			_ = c.Close()
		}
	}()
	t.Cleanup(func() { _ = trap.Close(); <-done })
	_, tp, _ := net.SplitHostPort(trap.Addr().String())
	var trapPort int
	fmt.Sscan(tp, &trapPort)
	httpsPort, httpPort := pebbletest.FreePort(t), pebbletest.FreePort(t)
	p := bin.Start(t, pebbletest.Config{HTTPPort: trapPort, TLSPort: httpsPort})
	httpsAddr := fmt.Sprintf("127.0.0.1:%d", httpsPort)
	g := startGateway(t, gatewayOptions{Addr: httpsAddr, Env: pebbleEnv(bin, p, gwName, fmt.Sprintf("127.0.0.1:%d", httpPort),
		"HOP_ACME_EMAIL=ops@acme.test")})

	waitFor(t, 50*time.Second, "a certificate for "+gwName+" verified by Pebble's root", func() bool {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", httpsAddr,
			&tls.Config{ServerName: gwName, RootCAs: p.Root})
		if err != nil {
			return false
		}
		_ = conn.Close()
		return true
	})
	logs := p.Logs()
	if strings.Contains(logs, "Attempting to validate w/ HTTP") || trapped.Load() != 0 {
		t.Errorf("Pebble attempted HTTP-01 (%d connections to its HTTP-01 port)", trapped.Load())
	}
	// No DNS provider is set, so with HTTP-01 never tried the one challenge Pebble validated is
	// TLS-ALPN-01 on the HTTPS listener.
	if n := strings.Count(logs, "set VALID by completed challenge"); n != 1 {
		t.Errorf("Pebble validated %d challenges, want 1", n)
	}
	if strings.Contains(g.logs.String(), "challenge failed; trying the other one") {
		t.Error("the gateway fell back between challenges")
	}
	if n := p.Orders(); n != 1 {
		t.Errorf("Pebble got %d orders, want 1", n)
	}
}
