package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestOverloadShedsUnderMemoryLimit: with GOMEMLIMIT set, visitors that open downloads and never read
// them pile up stream buffers in the gateway. Past the high-water mark new requests get 503 with
// Retry-After instead of more memory; the gateway stays up and serves again once they leave.
func TestOverloadShedsUnderMemoryLimit(t *testing.T) {
	t.Parallel()
	const (
		domain   = "heavy.example.test"
		limitMiB = 48
		maxConns = 600
	)
	chunk := make([]byte, 32<<10)
	target := tnTarget(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/download" {
			return
		}
		// Up to 16 MiB, as fast as the tunnel takes it; a visitor that does not read holds it up.
		for range 512 {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	})
	g := startGateway(t, gatewayOptions{Env: []string{
		fmt.Sprintf("GOMEMLIMIT=%dMiB", limitMiB),
		"HOP_SERVER_HTTP_PROXY=true",
		"HOP_SERVER_MAX_STREAMS_PER_TUNNEL=0",
		"HOP_SERVER_METRICS_LISTEN=127.0.0.1:0",
	}})
	metrics := tnMetricsAddr(t, g)
	g.startAgent(domain, g.register(domain), target.URL)
	addr := g.httpAddr(t)
	pid := g.pid()
	peak := abPeakRSS(t, pid)

	// A visitor with a tiny receive buffer: what the gateway sends it stays in the gateway.
	dialer := abDialer(4096)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	var shed *http.Response
	for len(held) < maxConns && shed == nil && ctx.Err() == nil {
		c, err := dialer.DialContext(ctx, "tcp", addr)
		if err != nil {
			t.Fatalf("after %d held downloads: %v", len(held), err)
		}
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := io.WriteString(c, "GET /download HTTP/1.1\r\nHost: "+domain+"\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		res, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("download %d: %v", len(held)+1, err)
		}
		switch res.StatusCode {
		case http.StatusOK:
			held = append(held, c) // its body stays unread
		case http.StatusServiceUnavailable:
			shed = res
			c.Close()
		default:
			t.Fatalf("download %d: %d", len(held)+1, res.StatusCode)
		}
	}
	peakMiB := peak() >> 20
	t.Logf("%d downloads held before the first 503; gateway RSS peak %d MiB with GOMEMLIMIT=%dMiB", len(held), peakMiB, limitMiB)
	if shed == nil {
		t.Fatalf("%d unread downloads and no 503: the gateway kept taking memory", len(held))
	}
	if ra := shed.Header.Get("Retry-After"); ra == "" {
		t.Errorf("503 without Retry-After")
	}
	if peakMiB > 3*limitMiB {
		t.Errorf("gateway RSS reached %d MiB, limit %d MiB", peakMiB, limitMiB)
	}
	abAlive(t, g)
	if v := tnMetric(t, metrics, "hopgate_overloaded"); v != 1 {
		t.Errorf("hopgate_overloaded = %v while shedding, want 1", v)
	}

	for _, c := range held {
		c.Close()
	}
	held = nil
	c := g.httpClient(true)
	waitFor(t, 20*time.Second, "the gateway to serve again after the load left", func() bool {
		code, _ := tnGet(t, c, g.url(domain, "/small"))
		return code == http.StatusOK
	})
	waitFor(t, 5*time.Second, "hopgate_overloaded back to 0", func() bool { return tnMetric(t, metrics, "hopgate_overloaded") == 0 })
	if logs := g.logs.String(); !strings.Contains(logs, "shedding new requests") || !strings.Contains(logs, "serving again") {
		t.Errorf("the gateway did not log entering and leaving overload")
	}
}
