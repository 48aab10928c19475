// Package rawlocal is the agent's end of a raw stream (a TCP tunnel or TLS passthrough): it dials
// the service's tcp:// target and relays bytes both ways, half-closes included.
package rawlocal

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"time"

	proxyproto "github.com/pires/go-proxyproto"

	"github.com/hopgate/hopgate/internal/tunnel"
	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

const (
	// DialTimeout bounds the connect to the target; the stream's context bounds it too.
	DialTimeout = 10 * time.Second
	// keepAlive finds a target that vanished under an idle connection (a database session, SSH).
	keepAlive = 30 * time.Second
)

// Options configures a Proxy.
type Options struct {
	// DialTimeout bounds the connect to the target; 0 means DialTimeout.
	DialTimeout time.Duration
	Logger      *slog.Logger
}

// Proxy serves raw streams by relaying each to its own TCP connection to the target.
type Proxy struct {
	addr   string
	dialer net.Dialer
	log    *slog.Logger
}

// New builds the relay to target, a tcp://host:port URL (as config checked it).
func New(target *url.URL, opts Options) *Proxy {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = DialTimeout
	}
	return &Proxy{
		addr:   target.Host,
		dialer: net.Dialer{Timeout: opts.DialTimeout, KeepAlive: keepAlive},
		log:    opts.Logger,
	}
}

// ServeStream relays one raw stream: it dials the target (a failure resets the stream with
// TARGET_UNREACHABLE), writes the PROXY header the gateway asked for, answers 200, then copies
// both ways until both directions ended. A failure on either side resets the stream
// (TARGET_ABORTED) and closes the connection; a reset from the gateway closes the connection.
func (p *Proxy) ServeStream(st *tunnel.Stream) {
	defer st.Close()
	h := st.Request()
	var header *proxyproto.Header
	if h.ProxyProtocol != 0 {
		var err error
		if header, err = proxyHeader(h); err != nil {
			st.Reset(tunnelv1.ResetReason_RESET_REASON_PROTOCOL_ERROR, err.Error())
			return
		}
	}
	conn, err := p.dialer.DialContext(st.Context(), "tcp", p.addr)
	if err != nil {
		if st.Context().Err() == nil {
			p.log.Warn("local TCP target failed", "stream", st.ID(), "host", h.Host, "err", err)
		}
		st.Reset(tunnelv1.ResetReason_RESET_REASON_TARGET_UNREACHABLE, "local target: "+err.Error())
		return
	}
	defer conn.Close()
	// The stream's context ends when the gateway resets it or the session ends: a copy blocked on
	// the target (its read, or a write it does not drain) must not outlive the stream.
	stop := context.AfterFunc(st.Context(), func() { _ = conn.Close() })
	defer stop()
	if header != nil {
		if _, err := header.WriteTo(conn); err != nil {
			st.Reset(tunnelv1.ResetReason_RESET_REASON_TARGET_UNREACHABLE, "local target: write PROXY header: "+err.Error())
			return
		}
	}
	if err := st.SendResponse(&tunnelv1.ResponseHead{Status: 200}); err != nil {
		return
	}
	relay(st, conn)
}

// relay copies both ways and returns once both copies ended. Each direction's EOF is passed on as
// a half-close; an error on either side ends both, since Reset wakes the stream's reader and
// closing conn wakes the target's.
func relay(st *tunnel.Stream, conn net.Conn) {
	fail := func(err error) {
		// A no-op when the stream already ended (the gateway reset it): the reason stays theirs.
		st.Reset(tunnelv1.ResetReason_RESET_REASON_TARGET_ABORTED, "local target: "+err.Error())
		_ = conn.Close()
	}
	toTarget := make(chan struct{})
	go func() {
		defer close(toTarget)
		if _, err := io.Copy(conn, st); err != nil {
			fail(err)
			return
		}
		if err := closeWrite(conn); err != nil {
			fail(err)
		}
	}()
	if _, err := st.ReadFrom(conn); err != nil {
		fail(err)
	} else if err := st.CloseWrite(nil); err != nil {
		_ = conn.Close()
	}
	<-toTarget
}

// closeWrite passes the visitor's half-close on to the target.
func closeWrite(conn net.Conn) error {
	cw, ok := conn.(interface{ CloseWrite() error })
	if !ok {
		return errors.New("connection cannot half-close")
	}
	return cw.CloseWrite()
}

// proxyHeader is the PROXY protocol header naming the visitor (remote_addr) and the public address
// it connected to (local_addr).
func proxyHeader(h *tunnelv1.RequestHead) (*proxyproto.Header, error) {
	if h.ProxyProtocol != 1 && h.ProxyProtocol != 2 {
		return nil, fmt.Errorf("proxy_protocol %d: want 0, 1 or 2", h.ProxyProtocol)
	}
	src, err := tcpAddr(h.RemoteAddr)
	if err != nil {
		return nil, fmt.Errorf("remote_addr: %w", err)
	}
	dst, err := tcpAddr(h.LocalAddr)
	if err != nil {
		return nil, fmt.Errorf("local_addr: %w", err)
	}
	return proxyproto.HeaderProxyFromAddrs(byte(h.ProxyProtocol), src, dst), nil
}

func tcpAddr(s string) (*net.TCPAddr, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil, fmt.Errorf("%q is not an ip:port for a PROXY header", s)
	}
	// An IPv4 visitor on a dual-stack listener shows as ::ffff:a.b.c.d; the header names it as IPv4.
	return net.TCPAddrFromAddrPort(netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())), nil
}
