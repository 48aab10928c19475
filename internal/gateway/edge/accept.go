package edge

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hopgate/hopgate/internal/gateway/errorpage"
	"github.com/hopgate/hopgate/internal/gateway/h1guard"
	"github.com/hopgate/hopgate/internal/gateway/h2guard"
	"github.com/hopgate/hopgate/internal/gateway/lbproxy"
	"github.com/hopgate/hopgate/internal/tcpopt"
	"github.com/hopgate/hopgate/internal/tlscork"
	"github.com/hopgate/hopgate/internal/tunnel"
)

// handshakeTimeout bounds a TLS handshake (the ClientHello peek included), as ReadHeaderTimeout did
// when net/http ran it. A variable only so that tests can wait less.
var handshakeTimeout = readHeaderTimeout

// acceptTLS accepts on the HTTPS port until it is closed. Handshakes run in their own goroutines so a
// slow client never holds up the next one.
func (s *Server) acceptTLS() {
	var delay time.Duration
	for {
		raw, err := s.httpsLn.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				s.h2Conns.Close()
				s.h1Conns.Close()
				return
			}
			// Out of file descriptors and the like: back off as net/http does instead of spinning.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Warn("HTTPS accept failed", "err", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		c, ok := s.conns.admit(raw)
		if !ok {
			continue
		}
		s.handshakes.Add(1)
		go func() {
			defer s.handshakes.Done()
			s.handshake(c)
		}()
	}
}

// handshake runs the TLS handshake on raw, a connection counted in by admit, and hands the result to
// the server its protocol belongs to; a passthrough domain's connection goes on undecrypted.
func (s *Server) handshake(raw net.Conn) {
	_ = raw.SetDeadline(time.Now().Add(handshakeTimeout))
	conn := raw
	if s.passthrough != nil && s.passthrough.Active() {
		sni, replay := peekClientHello(raw)
		if sni != "" && s.passthrough.Claims(sni) {
			_ = raw.SetDeadline(time.Time{})
			s.passthrough.ServePassthrough(replay, sni)
			return
		}
		conn = replay
	}
	// Corked: a response or tunnel flush leaves in one system call instead of one per 16 KiB record.
	tc := tlscork.Server(conn, s.tlsConf)
	if err := tc.HandshakeContext(context.Background()); err != nil {
		s.log.Debug("TLS handshake failed", "remote", raw.RemoteAddr().String(), "err", err)
		raw.Close()
		return
	}
	_ = raw.SetDeadline(time.Time{})
	state := tc.ConnectionState()
	switch p := state.NegotiatedProtocol; {
	case p == "" || p == "http/1.1":
		s.h1Conns.Put(&tlsConn{Conn: h1guard.Wrap(tc), state: state})
	case p == "h2":
		g := h2guard.Wrap(tc, h2guard.DefaultBurst, h2guard.DefaultRate)
		remote := raw.RemoteAddr().String()
		g.OnFlood = func() {
			s.log.Warn("HTTP/2 connection closed: streams cancelled too fast (rapid reset)", "client", remote)
			s.conns.dropped(DropRapidReset)
		}
		s.h2Conns.Put(&tlsConn{Conn: g, state: state})
	case p == tunnel.ALPN:
		// Uploads queue in the session, where streams take turns, not in the kernel.
		_ = tcpopt.SetNotSentLowat(socketOf(raw), tcpopt.TunnelNotSentLowat)
		s.tunnels.ServeConn(tc)
	default:
		// acme-tls/1: the handshake was the whole validation.
		tc.Close()
	}
}

// tlsConn is a decrypted connection handed to net/http, which only sets Request.TLS for a *tls.Conn:
// the state travels with the connection and restoreTLS puts it back on each request.
type tlsConn struct {
	net.Conn
	state tls.ConnectionState
}

type tlsStateKey struct{}

func tlsConnContext(ctx context.Context, c net.Conn) context.Context {
	if tc, ok := c.(*tlsConn); ok {
		ctx = context.WithValue(ctx, tlsStateKey{}, &tc.state)
		c = tc.Conn
	}
	return h1guard.ConnContext(ctx, c)
}

func restoreTLS(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if st, ok := r.Context().Value(tlsStateKey{}).(*tls.ConnectionState); ok && r.TLS == nil {
			r.TLS = st
		}
		next.ServeHTTP(w, r)
	})
}

// guardHTTP1 answers 400 to a request that came with both Content-Length and Transfer-Encoding (RFC
// 9112 §6.3 allows it, and such a request is a smuggling probe or a broken client).
func guardHTTP1(next http.Handler, errs *errorpage.Writer) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h1guard.Ambiguous(r) {
			// The body's framing is in doubt, so is everything after it on this connection.
			w.Header().Set("Connection", "close")
			const msg = "a request must not carry both Content-Length and Transfer-Encoding"
			if errs != nil {
				errs.Write(w, r, http.StatusBadRequest, msg)
			} else {
				http.Error(w, msg, http.StatusBadRequest)
			}
			return
		}
		next.ServeHTTP(w, r)
	})
}

// ConnEvents hears about the listeners' connections (for metrics). Reasons for Dropped: DropOverLimit,
// DropRapidReset.
type ConnEvents interface {
	Opened()
	Closed()
	Dropped(reason string)
}

// Reasons a connection is dropped by the gateway.
const (
	DropOverLimit  = "over_limit"
	DropRapidReset = "rapid_reset"
)

// connCount enforces the global connection cap over both listeners.
type connCount struct {
	n      atomic.Int64
	max    int64
	events ConnEvents
}

// admit counts c in, or closes it when the cap is reached.
func (cc *connCount) admit(c net.Conn) (net.Conn, bool) {
	if cc.n.Add(1) > cc.max && cc.max > 0 {
		cc.n.Add(-1)
		c.Close()
		cc.dropped(DropOverLimit)
		return nil, false
	}
	if cc.events != nil {
		cc.events.Opened()
	}
	return &countedConn{Conn: c, cc: cc}, true
}

func (cc *connCount) dropped(reason string) {
	if cc.events != nil {
		cc.events.Dropped(reason)
	}
}

// socketOf returns the socket under c, a connection admit counted in: socket options need the
// *net.TCPConn, not the counting or PROXY-protocol wrappers around it.
func socketOf(c net.Conn) net.Conn {
	if cc, ok := c.(*countedConn); ok {
		c = cc.Conn
	}
	return lbproxy.Raw(c)
}

type countedConn struct {
	net.Conn
	cc   *connCount
	once sync.Once
}

// CloseWrite half-closes the socket (a passthrough connection's target finished sending).
func (c *countedConn) CloseWrite() error { return closeWrite(c.Conn) }

func (c *countedConn) Close() error {
	c.once.Do(func() {
		c.cc.n.Add(-1)
		if c.cc.events != nil {
			c.cc.events.Closed()
		}
	})
	return c.Conn.Close()
}

// plainListener counts, caps and guards the plain-HTTP port's connections.
type plainListener struct {
	net.Listener
	cc *connCount
}

func (l *plainListener) Accept() (net.Conn, error) {
	for {
		raw, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if c, ok := l.cc.admit(raw); ok {
			return h1guard.Wrap(c), nil
		}
	}
}
