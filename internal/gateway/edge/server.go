// Package edge is the gateway's front door: it accepts connections on the HTTPS and plain-HTTP
// listeners (its own TLS handshake, the connection cap, the raw-byte guards), hands each connection to
// the server its ALPN protocol belongs to, and routes each request by Host to the tunnel service, the
// gateway's own site or the tenant proxy.
package edge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/hopgate/hopgate/internal/gateway/errorpage"
	"github.com/hopgate/hopgate/internal/gateway/handoff"
	"github.com/hopgate/hopgate/internal/gateway/lbproxy"
	"github.com/hopgate/hopgate/internal/tunnel"
)

// Limits applied to every connection on both listeners. There is deliberately no WriteTimeout: it
// would cut long downloads, event streams and the tunnels themselves.
const (
	readHeaderTimeout = 10 * time.Second
	idleTimeout       = 120 * time.Second
	maxHeaderBytes    = 1 << 20
)

// Tunnels is the tunnel service, on both ways agents reach it through the one port.
type Tunnels interface {
	// ServeConn takes a connection that negotiated tunnel.ALPN, whole.
	ServeConn(net.Conn)
	// ServeHTTP serves an OpenTunnel call that arrived as an HTTP/2 request.
	http.Handler
}

// Options describe the two public listeners and where their requests go.
type Options struct {
	HTTPSAddr, HTTPAddr string
	TLSConfig           *tls.Config
	// GatewayDomain is the gateway's own name: Gateway serves it, and it is never proxied.
	GatewayDomain string
	Tunnels       Tunnels
	Gateway       http.Handler
	// Tenants serves every other Host.
	Tenants http.Handler
	// PlainTenants also serves tenants on the plain-HTTP listener (behind a TLS-terminating
	// balancer); otherwise that listener redirects everything to HTTPS.
	PlainTenants bool
	// WrapHTTP, if set, wraps the plain port's handler (ACME HTTP-01 answers go first).
	WrapHTTP func(http.Handler) http.Handler
	// ExtraALPN are protocols the TLS listener accepts whose connections end after the handshake
	// (ACME's "acme-tls/1": the validation is the handshake itself).
	ExtraALPN []string
	// MaxConns caps open connections over both listeners; more are closed as soon as accepted
	// (0: no cap).
	MaxConns int
	// Passthrough, if set, takes TLS connections whose SNI names a TLS-passthrough domain, before
	// the gateway's own handshake.
	Passthrough Passthrough
	// ProxyProtocolFrom are load balancers whose PROXY header is required and believed
	// (HOP_SERVER_PROXY_PROTOCOL_FROM): on both listeners, a connection from one of them must start
	// with the header and its source becomes RemoteAddr; anyone else's that starts with one is
	// refused.
	ProxyProtocolFrom []netip.Prefix
	// Events, if set, hears about connections: opened, closed, and dropped by the gateway.
	Events ConnEvents
	// Errors writes the gateway's own answers here (400, 404, 421).
	Errors *errorpage.Writer
	Logger *slog.Logger
}

// Server owns the listeners.
type Server struct {
	// https2 serves h2 and https1 HTTP/1.x, both over TLS the gateway terminated; http the plain port.
	https2, https1, http *http.Server
	httpsLn              net.Listener
	httpLn               net.Listener
	tlsConf              *tls.Config
	h2Conns, h1Conns     *handoff.Listener
	tunnels              Tunnels
	passthrough          Passthrough
	conns                *connCount
	log                  *slog.Logger
	// handshakes are the goroutines acceptTLS started; Serve waits for them.
	handshakes sync.WaitGroup
	// drained is closed when Shutdown has finished; Serve returns only then.
	drained     chan struct{}
	drainedOnce sync.Once
}

// Listen binds both listeners; Serve serves them.
//
// The TLS handshake is done here, not by net/http, so that each connection can go where its ALPN
// protocol belongs and carry a guard that reads its raw bytes (net/http hides them): HTTP/1.1 to a
// server whose connections carry an h1guard, h2 to one whose connections carry an h2guard,
// tunnel.ALPN to the tunnel service, ACME's acme-tls/1 closed (the handshake was the validation).
// Before all of that, a connection whose ClientHello names a TLS-passthrough domain goes to
// Options.Passthrough undecrypted.
func Listen(o Options) (*Server, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Tunnels == nil || o.Gateway == nil || o.Tenants == nil || o.Errors == nil || o.TLSConfig == nil {
		return nil, errors.New("edge: TLSConfig, Tunnels, Gateway, Tenants and Errors are required")
	}
	httpsLn, err := net.Listen("tcp", o.HTTPSAddr)
	if err != nil {
		return nil, fmt.Errorf("listen HTTPS on %s: %w", o.HTTPSAddr, err)
	}
	// The PROXY header is read on a connection's first read (or RemoteAddr), in the goroutine that
	// serves it, never in an accept loop: a slow balancer holds up only its own connection.
	httpsLn = lbproxy.Wrap(httpsLn, o.ProxyProtocolFrom, lbproxy.Reject)
	s := &Server{httpsLn: httpsLn, log: o.Logger, tunnels: o.Tunnels, passthrough: o.Passthrough,
		drained: make(chan struct{}), conns: &connCount{max: int64(o.MaxConns), events: o.Events}}
	if o.HTTPAddr != "" {
		httpLn, err := net.Listen("tcp", o.HTTPAddr)
		if err != nil {
			httpsLn.Close()
			return nil, fmt.Errorf("listen HTTP on %s: %w", o.HTTPAddr, err)
		}
		s.httpLn = lbproxy.Wrap(httpLn, o.ProxyProtocolFrom, lbproxy.Reject)
	}
	tlsConf := o.TLSConfig.Clone()
	tlsConf.MinVersion = max(tlsConf.MinVersion, tls.VersionTLS12)
	// The tunnel's protocol first: the server's order decides, and agents offer both it and h2.
	tlsConf.NextProtos = append([]string{tunnel.ALPN, "h2", "http/1.1"}, o.ExtraALPN...)
	s.tlsConf = tlsConf

	gatewayDomain := strings.ToLower(strings.TrimSuffix(o.GatewayDomain, "."))
	https := &router{gatewayDomain: gatewayDomain, tunnels: o.Tunnels, gateway: o.Gateway, tenants: o.Tenants, errors: o.Errors}
	errLog := slog.NewLogLogger(o.Logger.Handler(), slog.LevelDebug)
	// The h2 server sees decrypted connections, so to net/http they are HTTP/2 with prior knowledge;
	// restoreTLS puts the TLS state back on each request.
	s.https2 = newHTTPServer(restoreTLS(https), errLog)
	s.https2.Protocols = new(http.Protocols)
	s.https2.Protocols.SetUnencryptedHTTP2(true)
	s.https2.HTTP2 = &http.HTTP2Config{
		MaxConcurrentStreams: 1000,
		// An agent on the h2 path is one HTTP/2 stream carrying many requests: give it room to keep
		// the pipe full.
		MaxReceiveBufferPerStream:     16 << 20,
		MaxReceiveBufferPerConnection: 32 << 20,
	}
	s.https1 = newHTTPServer(restoreTLS(guardHTTP1(https, o.Errors)), errLog)
	s.h2Conns, s.h1Conns = handoff.New(httpsLn.Addr()), handoff.New(httpsLn.Addr())
	if s.httpLn != nil {
		var h http.Handler = RedirectToHTTPS(portOf(httpsLn.Addr()))
		if o.PlainTenants {
			h = &router{gatewayDomain: gatewayDomain, tenants: o.Tenants, errors: o.Errors}
		}
		if o.WrapHTTP != nil {
			h = o.WrapHTTP(h)
		}
		s.http = newHTTPServer(guardHTTP1(h, o.Errors), errLog)
	}
	return s, nil
}

// Serve accepts and serves on both listeners until Shutdown has finished (requests drained), and
// returns the first failure of a listener, or nil after Shutdown.
func (s *Server) Serve() error {
	errs := make(chan error, 3)
	n := 2
	go func() { errs <- serveErr("HTTPS", s.https2.Serve(s.h2Conns)) }()
	go func() { errs <- serveErr("HTTPS", s.https1.Serve(s.h1Conns)) }()
	if s.http != nil {
		n++
		go func() { errs <- serveErr("HTTP", s.http.Serve(&plainListener{s.httpLn, s.conns})) }()
	}
	s.acceptTLS()
	s.handshakes.Wait()
	var first error
	for range n {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	if first != nil {
		return first
	}
	// The servers' Serve calls return as soon as their listeners close, while the connections they
	// accepted are still being served: done means drained.
	<-s.drained
	return nil
}

// newHTTPServer has the limits every listener shares, and finds each connection's guard and TLS state.
func newHTTPServer(h http.Handler, errLog *log.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          errLog,
		ConnContext:       tlsConnContext,
	}
}

func serveErr(name string, err error) error {
	if errors.Is(err, http.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return fmt.Errorf("%s listener: %w", name, err)
}

// HTTPSAddr is the bound TLS address (useful with port 0).
func (s *Server) HTTPSAddr() net.Addr { return s.httpsLn.Addr() }

// HTTPAddr is the bound plain address, or nil.
func (s *Server) HTTPAddr() net.Addr {
	if s.httpLn == nil {
		return nil
	}
	return s.httpLn.Addr()
}

// StopAccepting closes both listeners: no new connection is taken, the open ones go on.
func (s *Server) StopAccepting() {
	s.httpsLn.Close() // acceptTLS ends; handshakes in flight find the hand-off listeners closed
	if s.httpLn != nil {
		s.httpLn.Close()
	}
}

// Shutdown stops accepting and waits for in-flight requests until ctx ends, then closes what is left.
// Serve returns once it is done.
func (s *Server) Shutdown(ctx context.Context) error {
	defer s.drainedOnce.Do(func() { close(s.drained) })
	s.StopAccepting()
	done := make(chan error, 3)
	go func() { done <- s.https2.Shutdown(ctx) }()
	go func() { done <- s.https1.Shutdown(ctx) }()
	n := 2
	if s.http != nil {
		n++
		go func() { done <- s.http.Shutdown(ctx) }()
	}
	var errs []error
	for range n {
		// http.Server.Shutdown closes its listeners again and reports that the plain one, closed by
		// StopAccepting a moment before, is already closed: that is the state asked for, not a failure.
		if err := <-done; err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		s.https2.Close()
		s.https1.Close()
		if s.http != nil {
			s.http.Close()
		}
	}
	return errors.Join(errs...)
}

// RedirectToHTTPS answers every request with 308 to the same URL on https.
func RedirectToHTTPS(httpsPort string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// hostOnly keeps the brackets of an IPv6 literal without a port.
		host := strings.Trim(hostOnly(r.Host), "[]")
		if host == "" {
			http.Error(w, "missing Host", http.StatusBadRequest)
			return
		}
		if httpsPort != "" && httpsPort != "443" {
			host = net.JoinHostPort(host, httpsPort)
		} else if strings.Contains(host, ":") {
			host = "[" + host + "]"
		}
		http.Redirect(w, r, "https://"+host+r.URL.RequestURI(), http.StatusPermanentRedirect)
	})
}

func portOf(a net.Addr) string {
	if t, ok := a.(*net.TCPAddr); ok {
		return fmt.Sprint(t.Port)
	}
	return ""
}
