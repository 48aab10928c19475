package edge

import (
	"net"
	"sync"
)

// TunnelALPN is the TLS protocol agents offer ahead of "h2". A connection that negotiates it is handed
// whole to grpc-go's own HTTP/2 transport (through a ConnListener) instead of net/http's HTTP/2 server:
// same port, same certificate, but grpc's transport coalesces frames into fewer TLS records and
// writes. Agents that do not offer it (or gateways that do not know it) fall back to "h2".
const TunnelALPN = "hopgate-tunnel/1"

// ConnListener is a net.Listener fed with connections the HTTPS server hands over.
type ConnListener struct {
	addr   net.Addr
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

// NewConnListener returns an empty listener; Listen sets its address.
func NewConnListener() *ConnListener {
	return &ConnListener{conns: make(chan net.Conn), closed: make(chan struct{})}
}

// Accept returns the next handed-over connection.
func (l *ConnListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

// Close stops Accept; connections already handed over are their server's to close.
func (l *ConnListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

// Addr is the HTTPS listener's address.
func (l *ConnListener) Addr() net.Addr { return l.addr }

// put gives c to the listener's server, or closes it if the listener is closed.
func (l *ConnListener) put(c net.Conn) {
	select {
	case l.conns <- c:
	case <-l.closed:
		c.Close()
	}
}
