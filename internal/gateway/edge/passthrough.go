package edge

import (
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"time"

	"github.com/hopgate/hopgate/internal/gateway/lbproxy"
)

// Passthrough takes the TLS connections of TLS-passthrough domains: their agents terminate TLS
// themselves, so the gateway routes them by the SNI of the ClientHello and never decrypts them.
type Passthrough interface {
	// Active tells whether any passthrough domain exists; when false no ClientHello is peeked (zero cost).
	Active() bool
	// Claims tells whether sni (lowercase, no trailing dot) is a passthrough domain's name.
	Claims(sni string) bool
	// ServePassthrough carries c to the domain's agent; it owns c, whose reads replay the ClientHello
	// first. It runs on the connection's handshake goroutine, which Serve waits for, as for
	// Tunnels.ServeConn.
	ServePassthrough(c net.Conn, sni string)
}

// errPeeked ends the peek's handshake as soon as the ClientHello has been read.
var errPeeked = errors.New("edge: ClientHello peeked")

// peekConfig is shared by every peek: the SNI travels back on the recording connection, so no
// config is built per connection.
var peekConfig = &tls.Config{GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
	if r, ok := h.Conn.(*helloRecorder); ok {
		r.sni = h.ServerName
	}
	return nil, errPeeked
}}

// peekClientHello reads c's ClientHello without answering it (under whatever deadline c has) and
// returns its SNI, normalised as hostOnly does, and a connection whose reads replay the bytes read
// before c's own. The SNI is "" when the client sent none or what it sent is not a ClientHello; the
// handshake on the replay then fails as it would have without the peek.
func peekClientHello(c net.Conn) (sni string, replay net.Conn) {
	rec := &helloRecorder{Conn: c}
	// crypto/tls parses the hello exactly as the real handshake will; its alert on errPeeked goes to
	// Write, which fails, so nothing reaches the client.
	_ = tls.Server(rec, peekConfig).Handshake()
	return strings.ToLower(strings.TrimSuffix(rec.sni, ".")), &replayConn{Conn: c, pending: rec.read}
}

// helloRecorder is the read-only connection the peek's handshake runs on: it keeps every byte read.
type helloRecorder struct {
	net.Conn
	read []byte
	sni  string
}

var errReadOnly = errors.New("edge: the ClientHello peek never writes")

func (r *helloRecorder) Read(p []byte) (int, error) {
	n, err := r.Conn.Read(p)
	r.read = append(r.read, p[:n]...)
	return n, err
}

func (r *helloRecorder) Write([]byte) (int, error) { return 0, errReadOnly }

// The peek's tls.Conn is dropped, never closed, and must not touch the real connection's state.
func (r *helloRecorder) Close() error                     { return nil }
func (r *helloRecorder) SetDeadline(time.Time) error      { return nil }
func (r *helloRecorder) SetReadDeadline(time.Time) error  { return nil }
func (r *helloRecorder) SetWriteDeadline(time.Time) error { return nil }

// replayConn reads pending before the connection's own bytes; everything else passes through.
type replayConn struct {
	net.Conn
	pending []byte
}

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.pending) == 0 {
		return c.Conn.Read(p)
	}
	n := copy(p, c.pending)
	c.pending = c.pending[n:]
	if len(c.pending) == 0 {
		c.pending = nil
	}
	return n, nil
}

// CloseWrite passes a half-close through to the socket, so that a passthrough target's end of
// output reaches the visitor as end of input instead of closing the connection.
func (c *replayConn) CloseWrite() error { return closeWrite(c.Conn) }

// closeWrite half-closes c when it, or the socket under a trusted balancer's PROXY header, can;
// otherwise it closes c.
func closeWrite(c net.Conn) error {
	if ok, err := lbproxy.CloseWrite(c); ok {
		return err
	}
	return c.Close()
}
