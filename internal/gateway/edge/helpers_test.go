package edge_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/hopgate/hopgate/internal/gateway/devcert"
	"github.com/hopgate/hopgate/internal/gateway/edge"
	"github.com/hopgate/hopgate/internal/gateway/errorpage"
)

// Every test here runs a real edge.Server on loopback, with TLS from a throwaway development CA, and
// fake handlers that record what reached them: the edge's job is to send each connection and request
// to the right one, so what the fakes saw is the result.

const (
	gatewayName = "localhost" // the gateway's own name (GatewayDomain)
	tenantName  = "app.test"  // any other name the certificate covers
)

// leakCheck fails the test if goroutines outlive it. Registered first, it runs after every other
// cleanup, so the server and the clients of the test are already gone.
func leakCheck(t *testing.T) {
	t.Helper()
	t.Cleanup(func() { goleak.VerifyNone(t) })
}

// hit is what a fake handler saw of one request.
type hit struct {
	handler    string
	host, path string
	protoMajor int
	tls        bool
	alpn       string // r.TLS.NegotiatedProtocol
	sni        string // r.TLS.ServerName
	remote     string // r.RemoteAddr
}

// recorder backs the fake Gateway, Tenants and Tunnels handlers. Each answers 200 with its name in
// X-Handler and the body, so both the response and the record tell who served a request.
type recorder struct {
	mu   sync.Mutex
	hits []hit
}

func (rc *recorder) handler(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := hit{handler: name, host: r.Host, path: r.URL.Path, protoMajor: r.ProtoMajor, tls: r.TLS != nil,
			remote: r.RemoteAddr}
		if r.TLS != nil {
			h.alpn, h.sni = r.TLS.NegotiatedProtocol, r.TLS.ServerName
		}
		rc.mu.Lock()
		rc.hits = append(rc.hits, h)
		rc.mu.Unlock()
		// Drain the body so that a request with one (a gRPC call) ends cleanly on both protocols.
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("X-Handler", name)
		_, _ = io.WriteString(w, name)
	})
}

// take returns the hits so far and forgets them.
func (rc *recorder) take() []hit {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	h := rc.hits
	rc.hits = nil
	return h
}

// fakeTunnels is the tunnel service: HTTP/2 OpenTunnel calls go to the recorder, and a connection
// that negotiated tunnel.ALPN is echoed back to its client, which proves it is live and decrypted.
type fakeTunnels struct {
	http.Handler
	// states has the TLS state of each connection given to ServeConn (a zero state if it was not a
	// TLS connection).
	states chan tls.ConnectionState
}

func (f *fakeTunnels) ServeConn(c net.Conn) {
	defer c.Close()
	var st tls.ConnectionState
	if tc, ok := c.(interface{ ConnectionState() tls.ConnectionState }); ok {
		st = tc.ConnectionState()
	}
	select {
	case f.states <- st:
	default: // the test did not want it; never block the edge's handshake goroutine
	}
	// Bounded, so a test that forgets its client cannot hold up Serve (it waits for ServeConn).
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.Copy(c, c)
}

// events is a fake edge.ConnEvents.
type events struct {
	opened, closed atomic.Int64
	dropped        chan string
}

func newEvents() *events { return &events{dropped: make(chan string, 16)} }

func (e *events) Opened() { e.opened.Add(1) }
func (e *events) Closed() { e.closed.Add(1) }
func (e *events) Dropped(reason string) {
	select {
	case e.dropped <- reason:
	default:
	}
}

// fixture is one running server and what the test needs to talk to it.
type fixture struct {
	srv     *edge.Server
	rec     *recorder
	tunnels *fakeTunnels
	ca      *devcert.CA
	// served carries Serve's result once it has returned.
	served chan error
}

// start runs a server with fake handlers on 127.0.0.1:0; mod may change the options first. The
// server is shut down, and Serve's end awaited, when the test ends.
func start(t testing.TB, mod func(*edge.Options)) *fixture {
	t.Helper()
	ca, err := devcert.NewCA(gatewayName, []string{gatewayName, tenantName}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	errs, err := errorpage.New("", "")
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{rec: &recorder{}, ca: ca, served: make(chan error, 1)}
	f.tunnels = &fakeTunnels{Handler: f.rec.handler("tunnels"), states: make(chan tls.ConnectionState, 8)}
	o := edge.Options{
		HTTPSAddr:     "127.0.0.1:0",
		TLSConfig:     &tls.Config{Certificates: []tls.Certificate{ca.Cert}},
		GatewayDomain: gatewayName,
		Tunnels:       f.tunnels,
		Gateway:       f.rec.handler("gateway"),
		Tenants:       f.rec.handler("tenants"),
		Errors:        errs,
	}
	if mod != nil {
		mod(&o)
	}
	f.srv, err = edge.Listen(o)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.served <- f.srv.Serve()
	}()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = f.srv.Shutdown(ctx)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return after Shutdown")
		}
	})
	return f
}

// dialTLS opens a TLS connection to the HTTPS listener for sni, offering protos, and checks the
// certificate against the test CA.
func (f *fixture) dialTLS(t *testing.T, sni string, protos []string) *tls.Conn {
	t.Helper()
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", f.srv.HTTPSAddr().String(),
		&tls.Config{RootCAs: f.ca.Pool, ServerName: sni, NextProtos: protos})
	if err != nil {
		t.Fatalf("TLS dial (SNI %q, ALPN %q): %v", sni, protos, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// client is an HTTPS client that reaches the server whatever the URL's host, sends sni, and speaks
// only proto ("h1" or "h2"), so a test decides both names and the protocol.
func (f *fixture) client(t *testing.T, sni, proto string) *http.Client {
	t.Helper()
	addr := f.srv.HTTPSAddr().String()
	var p http.Protocols
	switch proto {
	case "h1":
		p.SetHTTP1(true)
	case "h2":
		p.SetHTTP2(true)
	default:
		t.Fatalf("unknown protocol %q", proto)
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
		TLSClientConfig: &tls.Config{RootCAs: f.ca.Pool, ServerName: sni},
		Protocols:       &p,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 5 * time.Second}
}

// fakePassthrough is the agent side of TLS-passthrough domains: ServePassthrough terminates TLS
// itself with its own certificate, echoes, and reports what it read and saw.
type fakePassthrough struct {
	active bool
	names  map[string]bool
	conf   *tls.Config    // the agent's own certificate
	roots  *x509.CertPool // trusts that certificate (and not the gateway's)
	mu     sync.Mutex
	asked  []string // the names Claims was asked about
	served chan passthroughCall
}

// passthroughCall is what one ServePassthrough call got.
type passthroughCall struct {
	sni, remote string
	// read are the bytes the agent's handshake read: the replayed ClientHello first.
	read []byte
	err  error // the agent's handshake
}

func newFakePassthrough(t testing.TB, active bool, names ...string) *fakePassthrough {
	t.Helper()
	ca, err := devcert.NewCA("passthrough agent", names, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	p := &fakePassthrough{active: active, names: map[string]bool{}, served: make(chan passthroughCall, 8),
		conf: &tls.Config{Certificates: []tls.Certificate{ca.Cert}}, roots: ca.Pool}
	for _, n := range names {
		p.names[n] = true
	}
	return p
}

func (p *fakePassthrough) Active() bool { return p.active }

func (p *fakePassthrough) Claims(sni string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.asked = append(p.asked, sni)
	return p.names[sni]
}

// takeAsked returns the names Claims was asked about so far and forgets them.
func (p *fakePassthrough) takeAsked() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	a := p.asked
	p.asked = nil
	return a
}

func (p *fakePassthrough) ServePassthrough(c net.Conn, sni string) {
	defer c.Close()
	// Bounded, so a test that forgets its client cannot hold up Serve (it waits for this call).
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	rc := &readRecorder{Conn: c}
	tc := tls.Server(rc, p.conf)
	err := tc.Handshake()
	call := passthroughCall{sni: sni, remote: c.RemoteAddr().String(), read: rc.stop(), err: err}
	select {
	case p.served <- call:
	default:
	}
	if err == nil {
		_, _ = io.Copy(tc, tc)
	}
}

// readRecorder keeps the bytes read through it until stop.
type readRecorder struct {
	net.Conn
	read    []byte
	stopped bool
}

func (r *readRecorder) Read(b []byte) (int, error) {
	n, err := r.Conn.Read(b)
	if !r.stopped {
		r.read = append(r.read, b[:n]...)
	}
	return n, err
}

func (r *readRecorder) stop() []byte {
	r.stopped = true
	return r.read
}

// firstFlight keeps what a client wrote before its first read: a TLS client's ClientHello.
type firstFlight struct {
	net.Conn
	mu      sync.Mutex
	written []byte
	reading bool
}

func (f *firstFlight) Write(b []byte) (int, error) {
	f.mu.Lock()
	if !f.reading {
		f.written = append(f.written, b...)
	}
	f.mu.Unlock()
	return f.Conn.Write(b)
}

func (f *firstFlight) Read(b []byte) (int, error) {
	f.mu.Lock()
	f.reading = true
	f.mu.Unlock()
	return f.Conn.Read(b)
}

func (f *firstFlight) bytes() []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.written
}

// dialTCP opens a plain TCP connection to addr, closed when the test ends.
func dialTCP(t testing.TB, addr net.Addr) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr.String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
