package edge_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hopgate/hopgate/internal/gateway/edge"
	"github.com/hopgate/hopgate/internal/tunnel"

	"github.com/hopgate/hopgate/internal/testutil/poll"
)

// TestALPNDispatch checks that each connection goes where its negotiated protocol belongs: the tunnel
// protocol to Tunnels.ServeConn as a live TLS connection, h2 and HTTP/1.1 to HTTP servers whose
// handlers still see the TLS state, and ACME's acme-tls/1 closed after the handshake.
func TestALPNDispatch(t *testing.T) {
	leakCheck(t)
	f := start(t, func(o *edge.Options) { o.ExtraALPN = []string{"acme-tls/1"} })
	tests := []struct {
		name     string
		offer    []string
		wantALPN string
		want     string // "tunnel", "h1", "h2" or "closed"
	}{
		{name: "tunnel protocol", offer: []string{tunnel.ALPN}, wantALPN: tunnel.ALPN, want: "tunnel"},
		// Agents offer both; the server's order must pick the tunnel.
		{name: "agent offering h2 first still gets the tunnel", offer: []string{"h2", tunnel.ALPN},
			wantALPN: tunnel.ALPN, want: "tunnel"},
		{name: "h2", offer: []string{"h2"}, wantALPN: "h2", want: "h2"},
		{name: "browser offering h2 and http/1.1", offer: []string{"http/1.1", "h2"}, wantALPN: "h2", want: "h2"},
		{name: "http/1.1", offer: []string{"http/1.1"}, wantALPN: "http/1.1", want: "h1"},
		{name: "no ALPN is HTTP/1.1", offer: nil, wantALPN: "", want: "h1"},
		{name: "acme-tls/1 ends after the handshake", offer: []string{"acme-tls/1"}, wantALPN: "acme-tls/1", want: "closed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := f.dialTLS(t, tenantName, tc.offer)
			if p := c.ConnectionState().NegotiatedProtocol; p != tc.wantALPN {
				t.Fatalf("negotiated %q, want %q", p, tc.wantALPN)
			}
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			switch tc.want {
			case "tunnel":
				checkTunnelConn(t, f, c)
			case "h1", "h2":
				checkHTTP(t, f, c, tc.want, tc.wantALPN)
			case "closed":
				if n, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
					t.Fatalf("read after the handshake = %d, %v; want the server to close (EOF)", n, err)
				}
			}
		})
	}
}

// checkTunnelConn expects the fake tunnel service to have the connection and echo bytes through it.
func checkTunnelConn(t *testing.T, f *fixture, c *tls.Conn) {
	t.Helper()
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "ping\n" {
		t.Fatalf("echo through the tunnel connection = %q, %v; want %q", line, err, "ping\n")
	}
	select {
	case st := <-f.tunnels.states:
		if !st.HandshakeComplete || st.NegotiatedProtocol != tunnel.ALPN || st.ServerName != tenantName {
			t.Errorf("ServeConn got a connection with state complete=%v ALPN=%q SNI=%q; want a TLS connection for %q with %q",
				st.HandshakeComplete, st.NegotiatedProtocol, st.ServerName, tenantName, tunnel.ALPN)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ServeConn was not called")
	}
	if hits := f.rec.take(); len(hits) != 0 {
		t.Errorf("a tunnel connection reached HTTP handlers: %+v", hits)
	}
}

// checkHTTP sends one request on c in proto and expects the tenant handler to answer it with the TLS
// state of the connection on the request; it returns what the handler saw.
func checkHTTP(t *testing.T, f *fixture, c *tls.Conn, proto, wantALPN string) hit {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "https://"+tenantName+"/alpn", nil)
	if err != nil {
		t.Fatal(err)
	}
	var resp *http.Response
	if proto == "h2" {
		// A transport whose only connection is c, so the request goes over the ALPN the test chose.
		var p http.Protocols
		p.SetHTTP2(true)
		tr := &http.Transport{
			DialTLSContext: func(context.Context, string, string) (net.Conn, error) { return c, nil },
			Protocols:      &p,
		}
		cc, err := tr.NewClientConn(context.Background(), "https", c.RemoteAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		resp, err = cc.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
	} else {
		if err := req.Write(c); err != nil {
			t.Fatal(err)
		}
		resp, err = http.ReadResponse(bufio.NewReader(c), req)
		if err != nil {
			t.Fatal(err)
		}
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "tenants" {
		t.Fatalf("response = %d %q, want 200 from tenants", resp.StatusCode, body)
	}
	hits := f.rec.take()
	wantMajor := map[string]int{"h1": 1, "h2": 2}[proto]
	if len(hits) != 1 || hits[0].protoMajor != wantMajor || !hits[0].tls || hits[0].alpn != wantALPN {
		t.Fatalf("hits = %+v; want one HTTP/%d request with r.TLS set and ALPN %q", hits, wantMajor, wantALPN)
	}
	return hits[0]
}

// ambiguousCLFirst and ambiguousTEFirst carry both framings of a body; the chunked one is complete,
// so a server that (wrongly) accepted it would answer at once.
const (
	ambiguousCLFirst = "POST /upload HTTP/1.1\r\nHost: " + tenantName + "\r\nContent-Length: 5\r\n" +
		"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
	ambiguousTEFirst = "POST /upload HTTP/1.1\r\nHost: " + tenantName + "\r\nTransfer-Encoding: chunked\r\n" +
		"Content-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
	chunkedOnly = "POST /upload HTTP/1.1\r\nHost: " + tenantName + "\r\nTransfer-Encoding: chunked\r\n\r\n" +
		"5\r\nhello\r\n0\r\n\r\n"
	// The first request is fine, the second on the same connection is the probe.
	pipelinedProbe = "GET /first HTTP/1.1\r\nHost: " + tenantName + "\r\n\r\n" + ambiguousCLFirst
)

// TestAmbiguousFraming sends raw bytes to every HTTP/1 listener: a request with both Content-Length
// and Transfer-Encoding is answered 400 and its connection closed, and never reaches a handler.
func TestAmbiguousFraming(t *testing.T) {
	leakCheck(t)
	tlsSrv := start(t, nil)
	redirect := start(t, func(o *edge.Options) { o.HTTPAddr = "127.0.0.1:0" })
	plain := start(t, func(o *edge.Options) { o.HTTPAddr = "127.0.0.1:0"; o.PlainTenants = true })

	dialHTTPS := func(t *testing.T) net.Conn { return tlsSrv.dialTLS(t, tenantName, []string{"http/1.1"}) }
	dialPlain := func(f *fixture) func(t *testing.T) net.Conn {
		return func(t *testing.T) net.Conn {
			c, err := net.DialTimeout("tcp", f.srv.HTTPAddr().String(), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			return c
		}
	}
	tests := []struct {
		name      string
		f         *fixture
		dial      func(t *testing.T) net.Conn
		raw       string
		wantCodes []int    // one status per response, in order
		wantHits  []string // paths the handlers saw
	}{
		{name: "HTTPS, Content-Length first", f: tlsSrv, dial: dialHTTPS, raw: ambiguousCLFirst, wantCodes: []int{400}},
		{name: "HTTPS, Transfer-Encoding first", f: tlsSrv, dial: dialHTTPS, raw: ambiguousTEFirst, wantCodes: []int{400}},
		{name: "HTTPS, probe behind a good request", f: tlsSrv, dial: dialHTTPS, raw: pipelinedProbe,
			wantCodes: []int{200, 400}, wantHits: []string{"/first"}},
		{name: "HTTPS, chunked alone is served", f: tlsSrv, dial: dialHTTPS, raw: chunkedOnly,
			wantCodes: []int{200}, wantHits: []string{"/upload"}},
		{name: "plain redirect port", f: redirect, dial: dialPlain(redirect), raw: ambiguousCLFirst, wantCodes: []int{400}},
		{name: "plain redirect port, chunked alone is redirected", f: redirect, dial: dialPlain(redirect), raw: chunkedOnly,
			wantCodes: []int{308}},
		{name: "plain tenants port", f: plain, dial: dialPlain(plain), raw: ambiguousTEFirst, wantCodes: []int{400}},
		{name: "plain tenants port, chunked alone is served", f: plain, dial: dialPlain(plain), raw: chunkedOnly,
			wantCodes: []int{200}, wantHits: []string{"/upload"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.dial(t)
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.WriteString(c, tc.raw); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(c)
			for i, want := range tc.wantCodes {
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("response %d: %v", i+1, err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != want {
					t.Fatalf("response %d = %d %q, want %d", i+1, resp.StatusCode, body, want)
				}
				if want != http.StatusBadRequest {
					continue
				}
				if !strings.Contains(string(body), "Content-Length and Transfer-Encoding") {
					t.Errorf("400 body %q does not say why", body)
				}
				// Where the body ends is in doubt, so the rest of the connection is too.
				if !resp.Close {
					t.Error("400 response does not announce Connection: close")
				}
				if n, err := br.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
					t.Errorf("read after the 400 = %d, %v; want the server to close (EOF)", n, err)
				}
			}
			var paths []string
			for _, h := range tc.f.rec.take() {
				paths = append(paths, h.path)
			}
			if !slices.Equal(paths, tc.wantHits) {
				t.Errorf("handlers saw %q, want %q", paths, tc.wantHits)
			}
		})
	}
}

// TestMaxConns fills the connection cap over both listeners and checks that one more connection is
// closed at once and reported, and that closing one makes room again.
func TestMaxConns(t *testing.T) {
	leakCheck(t)
	tests := []struct {
		name string
		hold []string // listeners of the connections that fill the cap
		over string   // listener of the one over it
	}{
		{name: "HTTPS", hold: []string{"https", "https"}, over: "https"},
		{name: "plain HTTP counts toward the cap on HTTPS", hold: []string{"plain", "plain"}, over: "https"},
		{name: "HTTPS counts toward the cap on plain HTTP", hold: []string{"https", "plain"}, over: "plain"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ev := newEvents()
			f := start(t, func(o *edge.Options) {
				o.HTTPAddr = "127.0.0.1:0"
				o.MaxConns = len(tc.hold)
				o.Events = ev
			})
			dial := func(listener string) net.Conn {
				addr := f.srv.HTTPSAddr().String()
				if listener == "plain" {
					addr = f.srv.HTTPAddr().String()
				}
				c, err := net.DialTimeout("tcp", addr, 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close() })
				return c
			}
			var held []net.Conn
			for i, l := range tc.hold {
				held = append(held, dial(l))
				poll.Until(t, 5*time.Second, "the connection to be admitted", func() bool { return ev.opened.Load() == int64(i+1) })
			}

			c := dial(tc.over)
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, err := c.Read(make([]byte, 1))
			var ne net.Error
			if err == nil || errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("read on the connection over the cap = %d, %v; want it closed by the server", n, err)
			}
			select {
			case reason := <-ev.dropped:
				if reason != edge.DropOverLimit {
					t.Errorf("Dropped(%q), want %q", reason, edge.DropOverLimit)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Dropped was not called")
			}
			if got := ev.opened.Load(); got != int64(len(tc.hold)) {
				t.Errorf("Opened called %d times, want %d (the dropped connection is not opened)", got, len(tc.hold))
			}

			// The cap is on open connections, not on connections ever made.
			held[0].Close()
			poll.Until(t, 5*time.Second, "the closed connection to be counted out", func() bool { return ev.closed.Load() == 1 })
			if tc.over == "https" {
				c := f.dialTLS(t, tenantName, nil)
				checkHTTP(t, f, c, "h1", "")
			} else {
				dial(tc.over)
				poll.Until(t, 5*time.Second, "a new connection to be admitted", func() bool {
					return ev.opened.Load() == int64(len(tc.hold)+1)
				})
			}
			select {
			case reason := <-ev.dropped:
				t.Errorf("Dropped(%q) after a connection made room", reason)
			default:
			}
		})
	}
}
