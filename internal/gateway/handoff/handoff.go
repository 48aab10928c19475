// Package handoff is a net.Listener fed with connections another part of the gateway accepted: the
// edge runs the TLS handshake itself and hands each connection to the server its ALPN protocol
// belongs to (net/http's HTTP/1 and HTTP/2 servers, grpc-go's transport for tunnels).
package handoff

import (
	"net"
	"sync"
)

// Listener is a net.Listener whose Accept returns the connections given to Put.
type Listener struct {
	addr   net.Addr
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

// New returns an empty listener that reports addr as its address (the listener the connections
// really came from); nil reports "handoff" (servers log their listener's address).
func New(addr net.Addr) *Listener {
	if addr == nil {
		addr = handoffAddr{}
	}
	return &Listener{addr: addr, conns: make(chan net.Conn), closed: make(chan struct{})}
}

// Accept returns the next handed-over connection.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

// Close stops Accept; connections already handed over are their server's to close.
func (l *Listener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

// Addr is the address given to New.
func (l *Listener) Addr() net.Addr { return l.addr }

// Put gives c to the listener's server, waiting until it accepts; once the listener is closed c is
// closed instead.
func (l *Listener) Put(c net.Conn) {
	select {
	case l.conns <- c:
	case <-l.closed:
		c.Close()
	}
}

type handoffAddr struct{}

func (handoffAddr) Network() string { return "handoff" }
func (handoffAddr) String() string  { return "handoff" }
