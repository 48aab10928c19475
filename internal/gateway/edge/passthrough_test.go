package edge_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/hopgate/hopgate/internal/gateway/edge"
	"github.com/hopgate/hopgate/internal/tunnel"
)

// passName is a TLS-passthrough domain: its agent, not the gateway, holds its certificate.
const passName = "pass.test"

// dialPassthrough opens a TLS connection for sni that trusts only the passthrough agent's
// certificate, and returns it with the ClientHello it sent.
func dialPassthrough(t testing.TB, addr net.Addr, p *fakePassthrough, sni string, protos []string) (*tls.Conn, []byte) {
	t.Helper()
	ff := &firstFlight{Conn: dialTCP(t, addr)}
	c := tls.Client(ff, &tls.Config{RootCAs: p.roots, ServerName: sni, NextProtos: protos})
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if err := c.Handshake(); err != nil {
		t.Fatalf("TLS handshake with the passthrough agent (SNI %q): %v", sni, err)
	}
	return c, ff.bytes()
}

// checkPassthrough expects c to have reached the agent with hello as the first bytes the agent read,
// and the agent's own certificate, and to echo.
func checkPassthrough(t *testing.T, f *fixture, p *fakePassthrough, c *tls.Conn, hello []byte, wantRemote string) {
	t.Helper()
	if peer := c.ConnectionState().PeerCertificates; len(peer) == 0 ||
		!bytes.Equal(peer[0].Raw, p.conf.Certificates[0].Certificate[0]) {
		t.Error("the client did not get the agent's certificate")
	}
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		t.Fatal(err)
	}
	if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || line != "ping\n" {
		t.Fatalf("echo through the passthrough connection = %q, %v; want %q", line, err, "ping\n")
	}
	select {
	case call := <-p.served:
		if call.err != nil {
			t.Fatalf("the agent's handshake: %v", call.err)
		}
		if call.sni != passName {
			t.Errorf("ServePassthrough got SNI %q, want %q", call.sni, passName)
		}
		if call.remote != wantRemote {
			t.Errorf("ServePassthrough's connection comes from %s, want %s", call.remote, wantRemote)
		}
		if len(hello) == 0 || !bytes.HasPrefix(call.read, hello) {
			t.Errorf("the agent read %d bytes that do not start with the client's %d-byte ClientHello",
				len(call.read), len(hello))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ServePassthrough was not called")
	}
	if hits := f.rec.take(); len(hits) != 0 {
		t.Errorf("a passthrough connection reached HTTP handlers: %+v", hits)
	}
	select {
	case <-f.tunnels.states:
		t.Error("a passthrough connection reached the tunnel service")
	default:
	}
}

// TestPassthrough checks that a ClientHello naming a passthrough domain goes to Passthrough
// undecrypted, with the ClientHello replayed, whatever its ALPN; and that every other connection gets
// the gateway's own handshake and routing, after Claims was asked about its SNI (lowercased), or not
// at all when it has none.
func TestPassthrough(t *testing.T) {
	leakCheck(t)
	p := newFakePassthrough(t, true, passName)
	f := start(t, func(o *edge.Options) { o.Passthrough = p })
	tests := []struct {
		name      string
		sni       string
		offer     []string
		want      string // "passthrough", "h1", "h2" or "tunnel"
		wantALPN  string
		wantAsked []string
	}{
		{name: "claimed name goes to the agent", sni: passName, want: "passthrough", wantAsked: []string{passName}},
		{name: "claimed name in capitals", sni: "PASS.Test", want: "passthrough", wantAsked: []string{passName}},
		{name: "claimed name offering the gateway's protocols", sni: passName, offer: []string{tunnel.ALPN, "h2"},
			want: "passthrough", wantAsked: []string{passName}},
		{name: "other name, http/1.1", sni: tenantName, offer: []string{"http/1.1"}, want: "h1",
			wantALPN: "http/1.1", wantAsked: []string{tenantName}},
		{name: "other name, h2", sni: tenantName, offer: []string{"h2"}, want: "h2", wantALPN: "h2",
			wantAsked: []string{tenantName}},
		{name: "other name, tunnel protocol", sni: tenantName, offer: []string{tunnel.ALPN}, want: "tunnel",
			wantALPN: tunnel.ALPN, wantAsked: []string{tenantName}},
		// A client sends no SNI for an IP address: nothing to claim.
		{name: "no SNI", sni: "127.0.0.1", want: "h1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.want == "passthrough" {
				c, hello := dialPassthrough(t, f.srv.HTTPSAddr(), p, tc.sni, tc.offer)
				checkPassthrough(t, f, p, c, hello, c.LocalAddr().String())
			} else {
				c := f.dialTLS(t, tc.sni, tc.offer)
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				if tc.want == "tunnel" {
					checkTunnelConn(t, f, c)
				} else {
					checkHTTP(t, f, c, tc.want, tc.wantALPN)
				}
				select {
				case call := <-p.served:
					t.Errorf("ServePassthrough called for SNI %q", call.sni)
				default:
				}
			}
			if asked := p.takeAsked(); !slices.Equal(asked, tc.wantAsked) {
				t.Errorf("Claims asked about %q, want %q", asked, tc.wantAsked)
			}
		})
	}
}

// TestPassthroughInactive checks that while no passthrough domain exists nothing is peeked: Claims is
// never asked, even about a name it would claim.
func TestPassthroughInactive(t *testing.T) {
	leakCheck(t)
	p := newFakePassthrough(t, false, tenantName)
	f := start(t, func(o *edge.Options) { o.Passthrough = p })
	for _, proto := range []string{"h1", "h2"} {
		c := f.dialTLS(t, tenantName, []string{map[string]string{"h1": "http/1.1", "h2": "h2"}[proto]})
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		checkHTTP(t, f, c, proto, map[string]string{"h1": "http/1.1", "h2": "h2"}[proto])
	}
	if asked := p.takeAsked(); len(asked) != 0 {
		t.Errorf("Claims asked about %q while the passthrough is inactive", asked)
	}
}

// TestHandshakeDeadline checks that the ClientHello peek changes nothing for a client that stalls or
// sends garbage: it is closed at the handshake deadline (or at once, if what it sent cannot be TLS),
// with or without an active passthrough, and a broken ClientHello never reaches Claims.
func TestHandshakeDeadline(t *testing.T) {
	leakCheck(t)
	const timeout = 500 * time.Millisecond
	edge.SetHandshakeTimeout(t, timeout)
	p := newFakePassthrough(t, true, passName)
	fixtures := []struct {
		name string
		f    *fixture
	}{
		{name: "no passthrough", f: start(t, nil)},
		{name: "active passthrough", f: start(t, func(o *edge.Options) { o.Passthrough = p })},
	}
	hello := edge.ClientHello(t, passName)
	tests := []struct {
		name         string
		send         []byte
		wantDeadline bool // closed at the deadline; otherwise at once
	}{
		{name: "nothing sent", wantDeadline: true},
		{name: "a record header, then nothing", send: []byte{0x16, 0x03, 0x01, 0x02, 0x00}, wantDeadline: true},
		{name: "half a ClientHello naming a claimed domain", send: hello[:len(hello)/2], wantDeadline: true},
		{name: "not TLS", send: []byte("GET / HTTP/1.1\r\nHost: " + passName + "\r\n\r\n")},
		{name: "a handshake record that is not a ClientHello",
			send: []byte{0x16, 0x03, 0x03, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00}},
	}
	for _, fx := range fixtures {
		for _, tc := range tests {
			t.Run(fx.name+"/"+tc.name, func(t *testing.T) {
				began := time.Now()
				c := dialTCP(t, fx.f.srv.HTTPSAddr())
				if _, err := c.Write(tc.send); err != nil {
					t.Fatal(err)
				}
				_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
				_, err := io.Copy(io.Discard, c)
				elapsed := time.Since(began)
				if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
					t.Fatalf("the connection was still open after 5 s (handshake deadline %v)", timeout)
				}
				if tc.wantDeadline && elapsed < timeout*8/10 {
					t.Errorf("closed after %v, before the %v handshake deadline", elapsed, timeout)
				}
				if !tc.wantDeadline && elapsed > timeout/2 {
					t.Errorf("closed after %v; want at once, well before the %v deadline", elapsed, timeout)
				}
				if hits := fx.f.rec.take(); len(hits) != 0 {
					t.Errorf("handlers saw %+v", hits)
				}
			})
		}
	}
	if asked := p.takeAsked(); len(asked) != 0 {
		t.Errorf("Claims asked about %q", asked)
	}
	select {
	case call := <-p.served:
		t.Errorf("ServePassthrough called for SNI %q", call.sni)
	default:
	}
}

// BenchmarkHandshake measures what the ClientHello peek adds to a full TLS handshake (client and
// server, on loopback) for a name the passthrough does not claim.
func BenchmarkHandshake(b *testing.B) {
	for _, bc := range []struct {
		name   string
		active bool
	}{{name: "no passthrough"}, {name: "active passthrough", active: true}} {
		b.Run(bc.name, func(b *testing.B) {
			p := newFakePassthrough(b, bc.active, passName)
			f := start(b, func(o *edge.Options) { o.Passthrough = p })
			addr := f.srv.HTTPSAddr().String()
			conf := &tls.Config{RootCAs: f.ca.Pool, ServerName: tenantName, NextProtos: []string{tunnel.ALPN}}
			buf := []byte{0}
			b.ReportAllocs()
			for b.Loop() {
				c, err := tls.Dial("tcp", addr, conf)
				if err != nil {
					b.Fatal(err)
				}
				// The echo proves the server finished its side of the handshake too.
				if _, err := c.Write(buf); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
		})
	}
}
