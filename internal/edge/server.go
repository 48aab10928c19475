package edge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"
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
	Logger      *slog.Logger
}

// Server owns the listeners.
type Server struct {
	https, http *http.Server
	httpsLn     net.Listener
	httpLn      net.Listener
	errs        chan error
	log         *slog.Logger
}

// Listen binds both listeners and starts serving.
func Listen(o ListenOptions) (*Server, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	httpsLn, err := net.Listen("tcp", o.HTTPSAddr)
	if err != nil {
		return nil, fmt.Errorf("listen HTTPS on %s: %w", o.HTTPSAddr, err)
	}
	s := &Server{httpsLn: httpsLn, errs: make(chan error, 2), log: o.Logger}
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
	errLog := slog.NewLogLogger(o.Logger.Handler(), slog.LevelDebug)
	s.https = &http.Server{
		Handler:           o.HTTPS,
		TLSConfig:         tlsConf,
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          errLog,
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams: 1000,
			// A tunnel is one HTTP/2 stream carrying many requests: give it room to keep the pipe full.
			MaxReceiveBufferPerStream:     16 << 20,
			MaxReceiveBufferPerConnection: 32 << 20,
		},
	}
	if len(o.ExtraALPN) > 0 || o.TunnelConns != nil {
		// A TLSNextProto map alone would switch HTTP/2 off; the explicit protocol set keeps it on.
		s.https.Protocols = new(http.Protocols)
		s.https.Protocols.SetHTTP1(true)
		s.https.Protocols.SetHTTP2(true)
		s.https.TLSNextProto = make(map[string]func(*http.Server, *tls.Conn, http.Handler))
		for _, p := range o.ExtraALPN {
			s.https.TLSNextProto[p] = func(*http.Server, *tls.Conn, http.Handler) {}
		}
		if o.TunnelConns != nil {
			s.https.TLSNextProto[TunnelALPN] = tunnelNextProto(o.TunnelConns)
		}
	}
	go func() { s.errs <- serveErr("HTTPS", s.https.ServeTLS(httpsLn, "", "")) }()
	if s.httpLn != nil {
		h := o.HTTP
		if h == nil {
			h = RedirectToHTTPS(portOf(httpsLn.Addr()))
		}
		if o.WrapHTTP != nil {
			h = o.WrapHTTP(h)
		}
		s.http = &http.Server{
			Handler:           h,
			ReadHeaderTimeout: readHeaderTimeout,
			IdleTimeout:       idleTimeout,
			MaxHeaderBytes:    maxHeaderBytes,
			ErrorLog:          errLog,
		}
		go func() { s.errs <- serveErr("HTTP", s.http.Serve(s.httpLn)) }()
	}
	return s, nil
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
	done := make(chan error, 2)
	go func() { done <- s.https.Shutdown(ctx) }()
	n := 1
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
		s.https.Close()
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
