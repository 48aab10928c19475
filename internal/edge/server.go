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
	"strings"
	"time"

	"github.com/hopgate/hopgate/internal/errorpage"
)

// Limits applied to every connection on both listeners. There is deliberately no WriteTimeout: it
// would cut long downloads, event streams and the tunnels themselves.
const (
	readHeaderTimeout = 10 * time.Second
	idleTimeout       = 120 * time.Second
	maxHeaderBytes    = 1 << 20
)

// ListenOptions describe the two public listeners.
type ListenOptions struct {
	HTTPSAddr, HTTPAddr string
	// HTTPSPort is the port redirects point at; 443 is left out of URLs.
	TLSConfig *tls.Config
	// HTTPS serves everything on the TLS port.
	HTTPS http.Handler
	// HTTP serves the plain port; nil means redirect everything to HTTPS.
	HTTP http.Handler
	// WrapHTTP, if set, wraps the plain port's handler (ACME HTTP-01 answers go first).
	WrapHTTP func(http.Handler) http.Handler
	// ExtraALPN are protocols the TLS listener accepts whose connections end after the handshake
	// (ACME's "acme-tls/1": the validation is the handshake itself).
	ExtraALPN []string
	// TunnelConns, if set, receives the connections that negotiate TunnelALPN.
	TunnelConns *ConnListener
	// MaxConns caps open connections over both listeners; more are closed as soon as accepted
	// (0: no cap).
	MaxConns int
	// Events, if set, hears about connections: opened, closed, and dropped by the gateway.
	Events ConnEvents
	// Errors writes the 400 of an ambiguous request; nil writes plain text.
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
	h2Conns, h1Conns     *ConnListener
	tunnelConns          *ConnListener
	conns                *connCount
	errs                 chan error
	log                  *slog.Logger
}

// Listen binds both listeners and starts serving.
//
// The TLS handshake is done here, not by net/http, so that each connection can go where its ALPN
// protocol belongs and carry a guard that reads its raw bytes (net/http hides them): HTTP/1.1 to a
// server whose connections carry an h1guard, h2 to one whose connections carry an h2guard,
// TunnelALPN to grpc-go, ACME's acme-tls/1 closed (the handshake was the validation).
func Listen(o ListenOptions) (*Server, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	conns := &connCount{max: int64(o.MaxConns), events: o.Events}
	httpsLn, err := net.Listen("tcp", o.HTTPSAddr)
	if err != nil {
		return nil, fmt.Errorf("listen HTTPS on %s: %w", o.HTTPSAddr, err)
	}
	s := &Server{httpsLn: httpsLn, errs: make(chan error, 3), log: o.Logger, conns: conns,
		tunnelConns: o.TunnelConns}
	if o.HTTPAddr != "" {
		s.httpLn, err = net.Listen("tcp", o.HTTPAddr)
		if err != nil {
			httpsLn.Close()
			return nil, fmt.Errorf("listen HTTP on %s: %w", o.HTTPAddr, err)
		}
	}
	tlsConf := o.TLSConfig.Clone()
	tlsConf.MinVersion = tls.VersionTLS12
	tlsConf.NextProtos = append([]string{"h2", "http/1.1"}, o.ExtraALPN...)
	if o.TunnelConns != nil {
		// First: the server's order decides, and agents offer both this and h2.
		tlsConf.NextProtos = append([]string{TunnelALPN}, tlsConf.NextProtos...)
		o.TunnelConns.addr = httpsLn.Addr()
	}
	s.tlsConf = tlsConf
	errLog := slog.NewLogLogger(o.Logger.Handler(), slog.LevelDebug)
	// The h2 server sees decrypted connections, so to net/http they are HTTP/2 with prior knowledge;
	// restoreTLS puts the TLS state back on each request.
	s.https2 = newHTTPServer(restoreTLS(o.HTTPS), errLog)
	s.https2.Protocols = new(http.Protocols)
	s.https2.Protocols.SetUnencryptedHTTP2(true)
	s.https2.HTTP2 = &http.HTTP2Config{
		MaxConcurrentStreams: 1000,
		// A tunnel is one HTTP/2 stream carrying many requests: give it room to keep the pipe full.
		MaxReceiveBufferPerStream:     16 << 20,
		MaxReceiveBufferPerConnection: 32 << 20,
	}
	s.https1 = newHTTPServer(restoreTLS(guardHTTP1(o.HTTPS, o.Errors)), errLog)
	s.h2Conns, s.h1Conns = NewConnListener(), NewConnListener()
	s.h2Conns.addr, s.h1Conns.addr = httpsLn.Addr(), httpsLn.Addr()
	go func() { s.errs <- serveErr("HTTPS", s.https2.Serve(s.h2Conns)) }()
	go func() { s.errs <- serveErr("HTTPS", s.https1.Serve(s.h1Conns)) }()
	go s.acceptTLS()
	if s.httpLn != nil {
		h := o.HTTP
		if h == nil {
			h = RedirectToHTTPS(portOf(httpsLn.Addr()))
		}
		if o.WrapHTTP != nil {
			h = o.WrapHTTP(h)
		}
		s.http = newHTTPServer(guardHTTP1(h, o.Errors), errLog)
		go func() { s.errs <- serveErr("HTTP", s.http.Serve(&plainListener{s.httpLn, conns})) }()
	}
	return s, nil
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
	if errors.Is(err, http.ErrServerClosed) {
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

// Errors reports a listener that stopped on its own.
func (s *Server) Errors() <-chan error { return s.errs }

// Shutdown stops accepting and waits for in-flight requests until ctx ends, then closes what is left.
func (s *Server) Shutdown(ctx context.Context) error {
	s.httpsLn.Close() // acceptTLS ends; handshakes in flight find the ConnListeners closed
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
		if err := <-done; err != nil {
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
		host := hostOnly(r.Host)
		if host == "" {
			http.Error(w, "missing Host", http.StatusBadRequest)
			return
		}
		if strings.Contains(host, ":") {
			host = "[" + host + "]"
		}
		if httpsPort != "" && httpsPort != "443" {
			host = net.JoinHostPort(strings.Trim(host, "[]"), httpsPort)
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
