package edge_test

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"

	"github.com/hopgate/hopgate/internal/gateway/edge"
	"github.com/hopgate/hopgate/internal/tunnel"
)

// visitor is the address a balancer's PROXY header names as the connection's source.
var visitor = &net.TCPAddr{IP: net.IPv4(203, 0, 113, 7), Port: 4242}

// TestProxyProtocol checks both listeners behind a balancer: a trusted peer's PROXY header (v1 or v2)
// is required and its source is the RemoteAddr the tenant handler, the tunnel service and the
// passthrough agent see; an untrusted peer's connection that starts with a header is refused, one
// without is served as it came.
func TestProxyProtocol(t *testing.T) {
	leakCheck(t)
	p := newFakePassthrough(t, true, passName)
	withLB := func(cidr string) func(*edge.Options) {
		return func(o *edge.Options) {
			o.HTTPAddr = "127.0.0.1:0"
			o.PlainTenants = true
			o.Passthrough = p
			o.ProxyProtocolFrom = []netip.Prefix{netip.MustParsePrefix(cidr)}
		}
	}
	trusted := start(t, withLB("127.0.0.1/32"))
	untrusted := start(t, withLB("192.0.2.0/24"))
	tests := []struct {
		name     string
		f        *fixture
		listener string // "https" (an HTTP/1.1 request), "h2", "tunnel", "passthrough" or "plain"
		header   int    // PROXY protocol version sent first, 0 for none
		// wantVisitor: the peer is seen as visitor; otherwise as the socket's own address. Ignored
		// when refused.
		wantVisitor bool
		refused     bool
	}{
		{name: "trusted, HTTPS, v1", f: trusted, listener: "https", header: 1, wantVisitor: true},
		{name: "trusted, HTTPS, v2", f: trusted, listener: "https", header: 2, wantVisitor: true},
		{name: "trusted, HTTPS h2, v2", f: trusted, listener: "h2", header: 2, wantVisitor: true},
		{name: "trusted, tunnel protocol, v1", f: trusted, listener: "tunnel", header: 1, wantVisitor: true},
		{name: "trusted, passthrough, v2", f: trusted, listener: "passthrough", header: 2, wantVisitor: true},
		{name: "trusted, HTTPS, no header is refused", f: trusted, listener: "https", refused: true},
		{name: "trusted, plain, v1", f: trusted, listener: "plain", header: 1, wantVisitor: true},
		{name: "trusted, plain, v2", f: trusted, listener: "plain", header: 2, wantVisitor: true},
		{name: "trusted, plain, no header is refused", f: trusted, listener: "plain", refused: true},
		{name: "untrusted, HTTPS, v1 is refused", f: untrusted, listener: "https", header: 1, refused: true},
		{name: "untrusted, HTTPS, v2 is refused", f: untrusted, listener: "https", header: 2, refused: true},
		{name: "untrusted, passthrough, v2 is refused", f: untrusted, listener: "passthrough", header: 2, refused: true},
		{name: "untrusted, HTTPS, no header", f: untrusted, listener: "https"},
		{name: "untrusted, passthrough, no header", f: untrusted, listener: "passthrough"},
		{name: "untrusted, plain, v1 is refused", f: untrusted, listener: "plain", header: 1, refused: true},
		{name: "untrusted, plain, v2 is refused", f: untrusted, listener: "plain", header: 2, refused: true},
		{name: "untrusted, plain, no header", f: untrusted, listener: "plain"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			addr := tc.f.srv.HTTPSAddr()
			if tc.listener == "plain" {
				addr = tc.f.srv.HTTPAddr()
			}
			c := dialTCP(t, addr)
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			if tc.header != 0 {
				h := proxyproto.HeaderProxyFromAddrs(byte(tc.header), visitor, c.RemoteAddr())
				if _, err := h.WriteTo(c); err != nil {
					t.Fatal(err)
				}
			}
			want := c.LocalAddr().String()
			if tc.wantVisitor {
				want = visitor.String()
			}
			if tc.refused {
				checkRefused(t, tc.f, p, c, tc.listener)
				return
			}
			switch tc.listener {
			case "plain":
				resp, h := plainRequest(t, tc.f, c)
				if resp.StatusCode != http.StatusOK || h.remote != want {
					t.Errorf("plain request: %d, tenant saw RemoteAddr %q; want 200 from %s", resp.StatusCode, h.remote, want)
				}
			case "https", "h2":
				alpn := map[string]string{"https": "http/1.1", "h2": "h2"}[tc.listener]
				tc2 := tlsClient(t, tc.f, c, tenantName, alpn)
				if h := checkHTTP(t, tc.f, tc2, map[string]string{"https": "h1", "h2": "h2"}[tc.listener], alpn); h.remote != want {
					t.Errorf("tenant saw RemoteAddr %q, want %s", h.remote, want)
				}
			case "tunnel":
				tc2 := tlsClient(t, tc.f, c, tenantName, tunnel.ALPN)
				checkTunnelConn(t, tc.f, tc2)
			case "passthrough":
				ff := &firstFlight{Conn: c}
				tc2 := tls.Client(ff, &tls.Config{RootCAs: p.roots, ServerName: passName})
				if err := tc2.Handshake(); err != nil {
					t.Fatal(err)
				}
				checkPassthrough(t, tc.f, p, tc2, ff.bytes(), want)
			}
		})
	}
}

// tlsClient runs a TLS handshake for sni offering alpn on c, which is already connected.
func tlsClient(t *testing.T, f *fixture, c net.Conn, sni, alpn string) *tls.Conn {
	t.Helper()
	tc := tls.Client(c, &tls.Config{RootCAs: f.ca.Pool, ServerName: sni, NextProtos: []string{alpn}})
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS handshake: %v", err)
	}
	return tc
}

// plainRequest sends one HTTP/1.1 request for a tenant on c and returns the response and what the
// tenant handler saw.
func plainRequest(t *testing.T, f *fixture, c net.Conn) (*http.Response, hit) {
	t.Helper()
	if _, err := io.WriteString(c, "GET /pp HTTP/1.1\r\nHost: "+tenantName+"\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("plain request: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	hits := f.rec.take()
	if len(hits) != 1 {
		t.Fatalf("hits = %+v, want one", hits)
	}
	return resp, hits[0]
}

// checkRefused expects the server to close c without serving anything on it.
func checkRefused(t *testing.T, f *fixture, p *fakePassthrough, c net.Conn, listener string) {
	t.Helper()
	if listener == "plain" {
		if _, err := io.WriteString(c, "GET /pp HTTP/1.1\r\nHost: "+tenantName+"\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err == nil {
			resp.Body.Close()
			t.Errorf("got a response (%d), want the connection closed", resp.StatusCode)
		}
	} else {
		sni, roots := tenantName, f.ca.Pool
		if listener == "passthrough" {
			sni, roots = passName, p.roots
		}
		if err := tls.Client(c, &tls.Config{RootCAs: roots, ServerName: sni}).Handshake(); err == nil {
			t.Error("TLS handshake succeeded, want the connection closed")
		}
	}
	if hits := f.rec.take(); len(hits) != 0 {
		t.Errorf("handlers saw %+v", hits)
	}
	select {
	case call := <-p.served:
		t.Errorf("ServePassthrough called for SNI %q", call.sni)
	default:
	}
}
