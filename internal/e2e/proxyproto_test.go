package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"

	"github.com/hopgate/hopgate/internal/testutil/hoptest"
)

// The PROXY protocol (issue 17), both ways: the agent writes a header to a domain's target naming the
// visitor, and the gateway reads the header of a trusted load balancer in front of it
// (HOP_SERVER_PROXY_PROTOCOL_FROM) and refuses anyone else's.
//
// The balancer of these tests dials from 127.0.0.2: every listener requires a header from a trusted
// peer, and the agent's tunnel and the admin API come from 127.0.0.1 without one.

const (
	ppBalancer = "127.0.0.2"
	ppVisitor  = "203.0.113.7"
)

// ppCheckSource fails t unless h names src as the visitor.
func ppCheckSource(t testing.TB, what string, h *proxyproto.Header, version byte, src string) {
	t.Helper()
	s, _, ok := h.TCPAddrs()
	if !ok || s.String() != src || h.Version != version {
		t.Errorf("%s: the target's PROXY header is v%d from %v (TCP %v); want v%d from %s", what, h.Version, s, ok, version, src)
	}
}

// TestProxyProtocolToTarget: with proxy_protocol v1 or v2 on a TCP domain, the target reads a PROXY
// header first that names the visitor's address and port as source and the gateway's public port as
// destination; then the visitor's bytes. A mode change turns it on for an existing domain.
func TestProxyProtocolToTarget(t *testing.T) {
	t.Parallel()
	g, _, _ := rtStartGateway(t, 4)
	for _, tc := range []struct {
		pp      string
		version byte
	}{{"v1", 1}, {"v2", 2}} {
		t.Run(tc.pp, func(t *testing.T) {
			target := rtNewTarget(t, true)
			domain := tc.pp + ".pp.test"
			reg := rtRegister(t, g, domain, hoptest.ModeTCP, 0, tc.pp)
			rtCheckMode(t, "domains/status", rtStatus(t, g, domain), hoptest.ModeTCP, reg.TCPPort, tc.pp)
			g.forTest(t).startAgent(domain, reg.Key, "tcp://"+target.addr)
			c := rtDial(t, rtAddr(reg.TCPPort))
			if err := rtExchange(c, "after the header\n"); err != nil {
				t.Fatal(err)
			}
			h := target.header(t)
			ppCheckSource(t, "direct visitor", h, tc.version, c.LocalAddr().String())
			if _, d, ok := h.TCPAddrs(); !ok || d.String() != rtAddr(reg.TCPPort) {
				t.Errorf("destination %v, want the gateway's public address %s", d, rtAddr(reg.TCPPort))
			}
		})
	}

	t.Run("turned on by a mode change", func(t *testing.T) {
		target := rtNewTarget(t, true)
		const domain = "later.pp.test"
		reg := rtRegister(t, g, domain, hoptest.ModeTCP, 0, "")
		g.forTest(t).startAgent(domain, reg.Key, "tcp://"+target.addr)
		code, out := rtAdmin(t, g, http.MethodPost, "/api/v1/admin/domains/mode",
			map[string]any{"domain": domain, "mode": "tcp", "tcp_port": reg.TCPPort, "proxy_protocol": "v2"})
		if code != http.StatusOK {
			t.Fatalf("mode change: %d %v", code, out)
		}
		rtCheckMode(t, "the mode change's answer", out, hoptest.ModeTCP, reg.TCPPort, "v2")
		c := rtDial(t, rtAddr(reg.TCPPort))
		if err := rtExchange(c, "hello\n"); err != nil {
			t.Fatal(err)
		}
		h := target.header(t)
		ppCheckSource(t, "after the mode change", h, 2, c.LocalAddr().String())
	})
}

// TestProxyProtocolTrustedBalancer: with HOP_SERVER_PROXY_PROTOCOL_FROM naming the balancer, its
// header is believed on the TCP port (the target's header names the visitor it named) and on the
// HTTPS listener (X-Forwarded-For shows it); a connection from the balancer without a header is
// refused; peers outside the CIDRs (the agent, the admin API) need none.
func TestProxyProtocolTrustedBalancer(t *testing.T) {
	t.Parallel()
	g, _, _ := rtStartGateway(t, 4, "HOP_SERVER_PROXY_PROTOCOL_FROM="+ppBalancer+"/32")
	target := rtNewTarget(t, true)
	reg := rtRegister(t, g, "db.pp.test", hoptest.ModeTCP, 0, "v1")
	g.startAgent("db.pp.test", reg.Key, "tcp://"+target.addr)
	addr := rtAddr(reg.TCPPort)

	t.Run("tcp port", func(t *testing.T) {
		for i, version := range []byte{1, 2} {
			visitor := fmt.Sprintf("%s:%d", ppVisitor, 40000+i)
			c := rtDialFrom(t, ppBalancer, addr)
			rtWriteProxyHeader(t, c, version, visitor, "198.51.100.10:5432")
			if err := rtExchange(c, "through the balancer\n"); err != nil {
				t.Fatalf("balancer header v%d: %v", version, err)
			}
			h := target.header(t)
			ppCheckSource(t, fmt.Sprintf("balancer header v%d", version), h, 1, visitor)
		}
		// A peer outside the CIDRs is served without a header and named as it is.
		c := rtDial(t, addr)
		if err := rtExchange(c, "direct\n"); err != nil {
			t.Fatal(err)
		}
		h := target.header(t)
		ppCheckSource(t, "direct visitor", h, 1, c.LocalAddr().String())
		// The balancer must send one.
		c = rtDialFrom(t, ppBalancer, addr)
		_, _ = io.WriteString(c, "no header from the balancer\n")
		if err := rtClosedByPeer(c, 15*time.Second); err != nil {
			t.Errorf("the balancer without a header: %v", err)
		}
	})

	t.Run("https listener", func(t *testing.T) {
		seen := make(chan string, 4)
		web := tnTarget(t, func(w http.ResponseWriter, r *http.Request) {
			select {
			case seen <- r.Header.Get("X-Forwarded-For"):
			default:
			}
			_ = json.NewEncoder(w).Encode(map[string]string{"xff": r.Header.Get("X-Forwarded-For")})
		})
		gt := g.forTest(t)
		gt.startAgent("web.pp.test", gt.register("web.pp.test"), web.URL)
		for _, version := range []byte{1, 2} {
			tr := &http.Transport{TLSClientConfig: g.tlsConfig(), DialContext: rtProxyDialer(ppBalancer, g.addr, version, ppVisitor+":40100")}
			c := &http.Client{Transport: tr, Timeout: 15 * time.Second}
			code, body := tnGet(t, c, g.url("web.pp.test", "/"))
			tr.CloseIdleConnections()
			if code != http.StatusOK {
				t.Fatalf("through the balancer (v%d): %d %s", version, code, body)
			}
			if xff := <-seen; xff != ppVisitor {
				t.Errorf("through the balancer (v%d): X-Forwarded-For %q, want %q", version, xff, ppVisitor)
			}
		}
		// From the balancer without a header: no TLS session, nothing reaches the target.
		tr := &http.Transport{TLSClientConfig: g.tlsConfig(), DialContext: (&net.Dialer{Timeout: 5 * time.Second,
			LocalAddr: &net.TCPAddr{IP: net.ParseIP(ppBalancer)}}).DialContext}
		t.Cleanup(tr.CloseIdleConnections)
		if res, err := (&http.Client{Transport: tr, Timeout: 15 * time.Second}).Get(g.url("web.pp.test", "/")); err == nil {
			res.Body.Close()
			t.Errorf("the balancer without a header was answered %d", res.StatusCode)
		}
		select {
		case xff := <-seen:
			t.Errorf("a request from the balancer without a header reached the target (X-Forwarded-For %q)", xff)
		default:
		}
	})
}

// TestProxyProtocolUntrustedRefused: with HOP_SERVER_PROXY_PROTOCOL_FROM naming other addresses, a
// PROXY header from 127.0.0.1 is refused: the connection is closed and nothing reaches the target,
// on the TCP port and on the HTTPS listener; the same peer without a header is served.
func TestProxyProtocolUntrustedRefused(t *testing.T) {
	t.Parallel()
	g, _, _ := rtStartGateway(t, 4, "HOP_SERVER_PROXY_PROTOCOL_FROM=192.0.2.0/24")
	target := rtNewTarget(t, false)
	reg := rtRegister(t, g, "db.untrusted.test", hoptest.ModeTCP, 0, "")
	g.startAgent("db.untrusted.test", reg.Key, "tcp://"+target.addr)
	addr := rtAddr(reg.TCPPort)

	t.Run("tcp port", func(t *testing.T) {
		for _, version := range []byte{1, 2} {
			c := rtDial(t, addr)
			rtWriteProxyHeader(t, c, version, ppVisitor+":40000", addr)
			_, _ = io.WriteString(c, "forged\n")
			if err := rtClosedByPeer(c, 15*time.Second); err != nil {
				t.Errorf("a forged header v%d: %v", version, err)
			}
		}
		time.Sleep(200 * time.Millisecond) // anything on its way to the target arrives
		if n := target.bytes.Load(); n != 0 {
			t.Errorf("the target read %d bytes from refused connections", n)
		}
		rtWaitServes(t, addr, 10*time.Second)
	})

	t.Run("https listener", func(t *testing.T) {
		var hits atomic.Int64
		web := tnTarget(t, func(w http.ResponseWriter, r *http.Request) {
			hits.Add(1)
			_, _ = io.WriteString(w, "web")
		})
		gt := g.forTest(t)
		gt.startAgent("web.untrusted.test", gt.register("web.untrusted.test"), web.URL)
		for _, version := range []byte{1, 2} {
			tr := &http.Transport{TLSClientConfig: g.tlsConfig(), DialContext: rtProxyDialer("127.0.0.1", g.addr, version, ppVisitor+":40100")}
			res, err := (&http.Client{Transport: tr, Timeout: 15 * time.Second}).Get(g.url("web.untrusted.test", "/"))
			if err == nil {
				res.Body.Close()
				t.Errorf("a forged header v%d on the HTTPS listener was answered %d", version, res.StatusCode)
			}
			tr.CloseIdleConnections()
		}
		if n := hits.Load(); n != 0 {
			t.Errorf("%d requests with a forged header reached the target", n)
		}
		if code, body := tnGet(t, gt.httpClient(false), g.url("web.untrusted.test", "/")); code != http.StatusOK || body != "web" {
			t.Errorf("the same peer without a header: %d %q", code, body)
		}
	})
}
