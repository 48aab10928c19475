package rawedge

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"syscall"
	"time"

	"github.com/hopgate/hopgate/internal/gateway/lbproxy"
	"github.com/hopgate/hopgate/internal/pause"
	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

// tcpListener is the public port of one tcp domain. Its fields other than ln, domain and port are
// guarded by Edge.mu.
type tcpListener struct {
	domain string
	port   int
	ln     net.Listener
	// epoch is the Source read this listener is as new as (see Edge.epoch).
	epoch uint64
	// pending: Assign bound it and waits for its commit; nobody is served yet.
	pending bool
	closed  bool
}

// Assign finds and binds a port for domain: want > 0 is that port, 0 any free one of Ports, skipping
// ports other domains hold and ports another process holds. With the listener bound it calls
// commit(port), the registry write; a commit error wrapping ErrPortTaken moves on to the next port
// when want is 0. Once commit succeeds the listener serves domain (a port domain held before is
// closed), ahead of the next Reload.
//
// Errors: ErrTCPOff, ErrPortOutOfRange, ErrNoFreePort, ErrPortTaken (want is another domain's),
// ErrPortInUse (another process holds want), or commit's error.
func (e *Edge) Assign(ctx context.Context, domain string, want int, commit func(port int) error) (int, error) {
	r := e.o.Ports
	if r.Empty() {
		return 0, ErrTCPOff
	}
	if want != 0 {
		if !r.Contains(want) {
			return 0, fmt.Errorf("%w: port %d is not in %s", ErrPortOutOfRange, want, r)
		}
		err := e.assignPort(domain, want, commit)
		var bindErr *bindError
		if errors.As(err, &bindErr) {
			if errors.Is(bindErr.err, syscall.EADDRINUSE) {
				return 0, fmt.Errorf("%w: port %d: %v", ErrPortInUse, want, bindErr.err)
			}
			return 0, fmt.Errorf("bind port %d: %w", want, bindErr.err)
		}
		if err != nil {
			return 0, err
		}
		return want, nil
	}

	// The domain's own port first: asking again for any port keeps the one it has.
	e.mu.Lock()
	var candidates []int
	if cur := e.byDomain[domain]; cur != nil {
		candidates = append(candidates, cur.port)
	}
	e.mu.Unlock()
	for p := r.Low; p <= r.High; p++ {
		candidates = append(candidates, p)
	}
	for _, p := range candidates {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		err := e.assignPort(domain, p, commit)
		var bindErr *bindError
		switch {
		case err == nil:
			return p, nil
		case errors.As(err, &bindErr), errors.Is(err, ErrPortTaken):
			continue
		default:
			return 0, err
		}
	}
	return 0, fmt.Errorf("%w (%s)", ErrNoFreePort, r)
}

// bindError is a port that could not be bound.
type bindError struct{ err error }

func (b *bindError) Error() string { return b.err.Error() }

// assignPort binds port for domain (unless domain already serves it), commits it and serves it.
func (e *Edge) assignPort(domain string, port int, commit func(port int) error) error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return ErrClosed
	}
	if cur := e.byDomain[domain]; cur != nil && cur.port == port {
		e.mu.Unlock()
		if err := commit(port); err != nil {
			return err
		}
		e.mu.Lock()
		cur.epoch = e.epoch
		delete(e.released, domain)
		e.mu.Unlock()
		return nil
	}
	if e.heldLocked(domain, port) {
		e.mu.Unlock()
		return fmt.Errorf("%w: port %d", ErrPortTaken, port)
	}
	l, err := e.bindLocked(domain, port)
	if err != nil {
		e.mu.Unlock()
		return &bindError{err: err}
	}
	l.pending = true
	e.mu.Unlock()

	// Connections wait in the backlog meanwhile: the port is not the domain's until the registry
	// says so.
	err = commit(port)

	e.mu.Lock()
	defer e.mu.Unlock()
	if err != nil {
		e.closeListenerLocked(l, reasonRouteRemoved)
		return err
	}
	if e.closed || l.closed {
		// Shutting down: the registry holds the port, the next start binds it.
		e.closeListenerLocked(l, reasonShutdown)
		return nil
	}
	l.pending = false
	l.epoch = e.epoch
	delete(e.released, domain)
	if old := e.byDomain[domain]; old != nil {
		e.closeListenerLocked(old, reasonRouteRemoved)
	}
	e.serveLocked(l)
	return nil
}

// heldLocked reports whether another domain holds port: a listener of this edge, or a stored route.
func (e *Edge) heldLocked(domain string, port int) bool {
	if e.byPort[port] != nil {
		return true
	}
	if d, ok := e.routes.Load().tcpPorts[port]; ok && d != domain {
		return true
	}
	return false
}

// bindLocked listens on port for domain; nothing is accepted before serveLocked.
func (e *Edge) bindLocked(domain string, port int) (*tcpListener, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(e.o.ListenHost, strconv.Itoa(port)))
	if err != nil {
		return nil, err
	}
	l := &tcpListener{domain: domain, port: port, ln: lbproxy.Wrap(ln, e.o.TrustedLB, lbproxy.Pass)}
	e.byPort[port] = l
	return l, nil
}

// serveLocked makes l domain's listener and starts accepting on it. The edge must not be closed.
func (e *Edge) serveLocked(l *tcpListener) {
	e.byDomain[l.domain] = l
	e.wg.Add(1)
	go e.accept(l)
}

// closeListenerLocked stops l and ends the connections it accepted.
func (e *Edge) closeListenerLocked(l *tcpListener, reason string) {
	l.closed = true
	l.ln.Close()
	if e.byPort[l.port] == l {
		delete(e.byPort, l.port)
	}
	if e.byDomain[l.domain] == l {
		delete(e.byDomain, l.domain)
	}
	for c := range e.conns[l.domain] {
		if c.ln == l {
			c.kill(reason)
		}
	}
}

// accept serves l's connections until l is closed.
func (e *Edge) accept(l *tcpListener) {
	defer e.wg.Done()
	var delay time.Duration
	for {
		nc, err := l.ln.Accept()
		if err != nil {
			e.mu.Lock()
			closed := l.closed
			e.mu.Unlock()
			if closed || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: wait a little, as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			e.log.Warn("tcp accept failed", "domain", l.domain, "port", l.port, "err", err)
			if pause.For(e.ctx, delay) != nil {
				return
			}
			continue
		}
		delay = 0
		r := e.tcpRoute(l)
		c := e.newConn(nc, r, r.Domain, l)
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			c.serve()
		}()
	}
}

// tcpRoute is the route l serves: the stored one, or, for a port Assign has just bound and no
// reload has read yet, one without a PROXY header.
func (e *Edge) tcpRoute(l *tcpListener) Route {
	if r, ok := e.routes.Load().byDomain[l.domain]; ok && r.Mode == tunnelv1.StreamMode_STREAM_MODE_TCP {
		r.Port = l.port
		return r
	}
	return Route{Domain: l.domain, Mode: tunnelv1.StreamMode_STREAM_MODE_TCP, Port: l.port}
}
