// Package rawedge carries raw (non-HTTP) traffic at the edge: connections to the public TCP ports of
// tcp-mode domains, and TLS connections on :443 that a tls-passthrough domain's SNI names, each as a
// raw stream to an agent of the domain.
package rawedge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hopgate/hopgate/internal/config"
	"github.com/hopgate/hopgate/internal/gateway/hostname"
	"github.com/hopgate/hopgate/internal/gateway/metrics"
	"github.com/hopgate/hopgate/internal/tunnel"
	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

// Route is a domain whose traffic is raw.
type Route struct {
	// Domain is the registered name, canonical; a wildcard ("*.apps.example.com") only in
	// passthrough mode.
	Domain string
	// Mode is tunnelv1.StreamMode_STREAM_MODE_TCP or STREAM_MODE_TLS_PASSTHROUGH.
	Mode tunnelv1.StreamMode
	// Port is the public port, in tcp mode only.
	Port int
	// ProxyProtocol is the PROXY header version (0: none, 1 or 2) the agent writes to the target.
	ProxyProtocol uint32
}

// Source lists every domain whose mode is not http (the registry).
type Source interface {
	RawRoutes(ctx context.Context) ([]Route, error)
}

// Agent is one live tunnel that can carry a raw stream.
type Agent interface {
	// ID names the agent in the access log.
	ID() string
	OpenStream(ctx context.Context, head *tunnelv1.RequestHead) (*tunnel.Stream, error)
	// RawStreams reports whether the agent announced tunnel.CapRawStreams.
	RawStreams() bool
}

// Agents finds the agents of a domain (the tunnel service's hub).
type Agents interface {
	// Pick returns the least-loaded live agent of domain, preferably one that serves raw streams,
	// and counts the connection against it until Release; nil when none is connected.
	Pick(domain string) Agent
	Release(Agent)
}

// Access checks a visitor address against a domain's access policy: nil admits; an error wrapping
// *access.Denial refuses; any other error means the policy could not be read (refused too).
type Access interface {
	AdmitAddr(ctx context.Context, domain string, visitor netip.Addr) error
}

// Options wires the raw edge.
type Options struct {
	Source Source
	Agents Agents
	// Access, if set, checks every connection against its domain's IP rules.
	Access Access
	// Registered tells whether an exact name is a registered domain (any mode), for the wildcard
	// passthrough fallback; nil counts every name as unregistered.
	Registered func(ctx context.Context, name string) (bool, error)
	// ListenHost is the address TCP ports listen on ("" = every interface).
	ListenHost string
	// Ports is HOP_SERVER_TCP_PORTS; empty turns TCP mode off.
	Ports config.PortRange
	// TrustedLB are the balancers whose PROXY header is required and believed
	// (HOP_SERVER_PROXY_PROTOCOL_FROM).
	TrustedLB []netip.Prefix
	// MaxConnsPerDomain caps the open connections of one domain (0: no cap).
	MaxConnsPerDomain int
	// IdleTimeout closes a connection that moved no byte either way for this long (0: never).
	IdleTimeout time.Duration
	// HeaderTimeout is how long an agent has to answer a stream's head (default 15s).
	HeaderTimeout time.Duration
	// Refresh is how often routes are re-read from Source (default 5s).
	Refresh time.Duration
	// Metrics, if set, counts every connection.
	Metrics *metrics.Metrics
	Logger  *slog.Logger
}

var (
	// ErrTCPOff: HOP_SERVER_TCP_PORTS is empty, no port can be assigned.
	ErrTCPOff = errors.New("rawedge: TCP mode is off (HOP_SERVER_TCP_PORTS is empty)")
	// ErrPortOutOfRange: the requested port is outside HOP_SERVER_TCP_PORTS.
	ErrPortOutOfRange = errors.New("rawedge: port outside HOP_SERVER_TCP_PORTS")
	// ErrNoFreePort: every port of the range is taken.
	ErrNoFreePort = errors.New("rawedge: no free port in HOP_SERVER_TCP_PORTS")
	// ErrPortInUse: another process holds the requested port.
	ErrPortInUse = errors.New("rawedge: port in use by another process")
	// ErrPortTaken: another domain holds the port. Assign returns it for a requested port this edge
	// knows to be another domain's, and Assign's commit returns an error wrapping it when the
	// registry gives the port to another domain.
	ErrPortTaken = errors.New("rawedge: port taken by another domain")
	// ErrClosed: the edge has been shut down.
	ErrClosed = errors.New("rawedge: shut down")
)

// Timeouts of lookups made for one connection: a slow store must not hold connections (and their
// goroutines) without bound.
const (
	storeLookupTimeout = 2 * time.Second
	accessTimeout      = 5 * time.Second
)

// Edge serves every raw route: it holds the tcp routes' listeners and the connections of both modes.
type Edge struct {
	o   Options
	log *slog.Logger

	// routes is the last set read from Source; the HTTPS edge reads it for every connection, so
	// without a lock.
	routes atomic.Pointer[routeSet]

	// reloadMu makes reloads apply one at a time, in the order they read.
	reloadMu sync.Mutex

	mu sync.Mutex
	// epoch counts Source reads. A listener Assign adopted, or a domain Release dropped, at epoch n
	// is left alone by a reload whose read started at n or before: the read may predate the
	// registry write.
	epoch    uint64
	byDomain map[string]*tcpListener // the listener serving each tcp domain
	byPort   map[int]*tcpListener    // every listener held, Assign's uncommitted ones too
	released map[string]uint64       // domain -> epoch of its Release
	conns    map[string]map[*conn]struct{}
	open     map[string]int // connections counted against each domain's cap
	closed   bool

	// ctx ends when Shutdown gives up on open connections.
	ctx    context.Context
	cancel context.CancelFunc
	// refreshStop ends Start's refresh loop.
	refreshStop chan struct{}
	// wg counts every goroutine the edge started and every ServePassthrough call.
	wg sync.WaitGroup
	// connsDone is signalled when a connection ends, for Shutdown's drain.
	connsDone chan struct{}
}

// routeSet is one read of Source.
type routeSet struct {
	byDomain    map[string]Route
	passthrough map[string]Route
	tcpPorts    map[int]string // port -> the tcp domain stored with it
}

// New builds the edge; nothing listens before Start or Assign.
func New(o Options) *Edge {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.HeaderTimeout <= 0 {
		o.HeaderTimeout = 15 * time.Second
	}
	if o.Refresh <= 0 {
		o.Refresh = 5 * time.Second
	}
	e := &Edge{
		o: o, log: o.Logger,
		byDomain: map[string]*tcpListener{}, byPort: map[int]*tcpListener{},
		released: map[string]uint64{}, conns: map[string]map[*conn]struct{}{}, open: map[string]int{},
		refreshStop: make(chan struct{}), connsDone: make(chan struct{}, 1),
	}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	e.routes.Store(&routeSet{})
	return e
}

// Start loads the routes and binds the ports of the stored tcp routes, then re-reads them every
// Refresh until Shutdown or ctx ends. A Source error or a port that cannot be bound is logged and
// tried again at the next refresh.
func (e *Edge) Start(ctx context.Context) {
	if err := e.Reload(ctx); err != nil && !errors.Is(err, ErrClosed) {
		e.log.Warn("raw routes not loaded; retrying", "err", err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return
	}
	e.wg.Add(1)
	go e.refreshLoop(ctx)
}

func (e *Edge) refreshLoop(ctx context.Context) {
	defer e.wg.Done()
	t := time.NewTicker(e.o.Refresh)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			if err := e.Reload(ctx); err != nil && !errors.Is(err, ErrClosed) && ctx.Err() == nil {
				e.log.Warn("raw routes not reloaded; retrying", "err", err)
			}
		case <-ctx.Done():
			return
		case <-e.refreshStop:
			return
		}
	}
}

// Reload re-reads the routes now: it opens the listeners of new tcp routes, closes those of removed
// ones with their connections (and the connections of removed passthrough routes), and adopts the
// listeners Assign holds once the routes name them. A port that cannot be bound is logged, not
// returned: the next refresh tries it again.
func (e *Edge) Reload(ctx context.Context) error {
	e.reloadMu.Lock()
	defer e.reloadMu.Unlock()
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return ErrClosed
	}
	e.epoch++
	epoch := e.epoch
	e.mu.Unlock()

	routes, err := e.o.Source.RawRoutes(ctx)
	if err != nil {
		return fmt.Errorf("read raw routes: %w", err)
	}
	rs := &routeSet{byDomain: make(map[string]Route, len(routes)), passthrough: map[string]Route{}, tcpPorts: map[int]string{}}
	tcp := map[string]int{}
	for _, r := range routes {
		rs.byDomain[r.Domain] = r
		switch r.Mode {
		case tunnelv1.StreamMode_STREAM_MODE_TLS_PASSTHROUGH:
			rs.passthrough[r.Domain] = r
		case tunnelv1.StreamMode_STREAM_MODE_TCP:
			rs.tcpPorts[r.Port] = r.Domain
			if !e.o.Ports.Contains(r.Port) {
				e.log.Warn("tcp route not served: its port is outside HOP_SERVER_TCP_PORTS",
					"domain", r.Domain, "port", r.Port, "range", e.o.Ports.String())
				continue
			}
			tcp[r.Domain] = r.Port
		}
	}
	e.routes.Store(rs)

	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return ErrClosed
	}
	for d, rel := range e.released {
		if rel < epoch {
			delete(e.released, d)
		}
	}
	for domain, l := range e.byDomain {
		if _, ok := tcp[domain]; !ok && l.epoch < epoch {
			e.closeListenerLocked(l, reasonRouteRemoved)
		}
	}
	for domain, port := range tcp {
		cur := e.byDomain[domain]
		if cur != nil && (cur.epoch >= epoch || cur.port == port) {
			continue
		}
		if _, ok := e.released[domain]; ok {
			continue
		}
		if cur != nil {
			e.closeListenerLocked(cur, reasonRouteRemoved)
		}
		if other := e.byPort[port]; other != nil {
			e.log.Warn("tcp port not served: another domain holds it; retrying",
				"domain", domain, "port", port, "holder", other.domain)
			continue
		}
		l, err := e.bindLocked(domain, port)
		if err != nil {
			e.log.Warn("tcp port cannot be bound; retrying", "domain", domain, "port", port, "err", err)
			continue
		}
		l.epoch = epoch
		e.serveLocked(l)
	}
	for domain, set := range e.conns {
		if _, ok := rs.passthrough[domain]; ok {
			continue
		}
		for c := range set {
			if c.ln == nil {
				c.kill(reasonRouteRemoved)
			}
		}
	}
	return nil
}

// Release closes domain's listener and connections now: it was unregistered, or its mode changed.
// A reload that read the routes before the change leaves the domain alone.
func (e *Edge) Release(domain string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.released[domain] = e.epoch
	if l := e.byDomain[domain]; l != nil {
		e.closeListenerLocked(l, reasonRouteRemoved)
	}
	for c := range e.conns[domain] {
		c.kill(reasonRouteRemoved)
	}
}

// Active reports whether any tls-passthrough route exists: the HTTPS edge peeks at the SNI only then.
func (e *Edge) Active() bool { return len(e.routes.Load().passthrough) > 0 }

// Claims reports whether sni (lowercase, no trailing dot) is served by a passthrough route: its own,
// or, when the exact name has none and is no registered domain, the wildcard's one label up
// ("x.apps.example.com" → "*.apps.example.com"), as the HTTP path picks a wildcard's agents. A
// registry that cannot answer claims nothing: the name stays the HTTPS edge's.
func (e *Edge) Claims(sni string) bool {
	rs := e.routes.Load()
	if len(rs.passthrough) == 0 || sni == "" {
		return false
	}
	if _, ok := rs.passthrough[sni]; ok {
		return true
	}
	wild := hostname.WildcardOf(sni)
	if _, ok := rs.passthrough[wild]; !ok || wild == "" {
		return false
	}
	if _, ok := rs.byDomain[sni]; ok {
		return false
	}
	if e.o.Registered == nil {
		return true
	}
	ctx, cancel := context.WithTimeout(e.ctx, storeLookupTimeout)
	defer cancel()
	known, err := e.o.Registered(ctx, sni)
	if err != nil {
		e.log.Warn("domain lookup failed", "domain", sni, "err", err)
		return false
	}
	return !known
}

// passthroughRoute is the route Claims found for sni.
func (e *Edge) passthroughRoute(sni string) (Route, bool) {
	rs := e.routes.Load()
	if r, ok := rs.passthrough[sni]; ok {
		return r, true
	}
	r, ok := rs.passthrough[hostname.WildcardOf(sni)]
	return r, ok
}

// ServePassthrough carries c, a TLS connection whose SNI Claims took, undecrypted to an agent of its
// domain, and returns when it ends. It owns c; c's reads replay the ClientHello first.
func (e *Edge) ServePassthrough(c net.Conn, sni string) {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		c.Close()
		return
	}
	e.wg.Add(1)
	e.mu.Unlock()
	defer e.wg.Done()
	r, ok := e.passthroughRoute(sni)
	if !ok {
		// The route went away since Claims: nobody serves the name now.
		c.Close()
		rc := e.newConn(c, Route{Domain: sni, Mode: tunnelv1.StreamMode_STREAM_MODE_TLS_PASSTHROUGH}, sni, nil)
		rc.client = c.RemoteAddr().String()
		rc.refuse(resultNoAgent, errors.New("no passthrough route for the name"))
		rc.cancel()
		return
	}
	e.newConn(c, r, sni, nil).serve()
}

// Shutdown stops listening and refreshing; open connections get until ctx ends, then are closed. It
// returns once every goroutine of the edge has ended: nil, or ctx's error when connections had to
// be cut.
func (e *Edge) Shutdown(ctx context.Context) error {
	e.mu.Lock()
	if !e.closed {
		e.closed = true
		close(e.refreshStop)
		for _, l := range e.byPort {
			l.closed = true
			l.ln.Close()
		}
	}
	e.mu.Unlock()
	var err error
drain:
	for !e.drained() {
		select {
		case <-e.connsDone:
		case <-ctx.Done():
			err = ctx.Err()
			e.mu.Lock()
			for _, set := range e.conns {
				for c := range set {
					c.kill(reasonShutdown)
				}
			}
			e.mu.Unlock()
			break drain
		}
	}
	e.cancel()
	e.wg.Wait()
	return err
}

func (e *Edge) drained() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.conns) == 0
}

// track counts c among its domain's connections, so that closing the domain reaches it; false when
// the edge or c's listener has closed.
func (e *Edge) track(c *conn) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if c.ln != nil && c.ln.closed || c.ln == nil && e.closed {
		return false
	}
	set := e.conns[c.route.Domain]
	if set == nil {
		set = map[*conn]struct{}{}
		e.conns[c.route.Domain] = set
	}
	set[c] = struct{}{}
	return true
}

func (e *Edge) untrack(c *conn) {
	e.mu.Lock()
	if set := e.conns[c.route.Domain]; set != nil {
		delete(set, c)
		if len(set) == 0 {
			delete(e.conns, c.route.Domain)
		}
	}
	e.uncountLocked(c)
	e.mu.Unlock()
	select {
	case e.connsDone <- struct{}{}:
	default:
	}
}

// uncount frees c's slot under its domain's cap; calling it again does nothing.
func (e *Edge) uncount(c *conn) {
	e.mu.Lock()
	e.uncountLocked(c)
	e.mu.Unlock()
}

func (e *Edge) uncountLocked(c *conn) {
	if !c.counted {
		return
	}
	c.counted = false
	if e.open[c.route.Domain]--; e.open[c.route.Domain] <= 0 {
		delete(e.open, c.route.Domain)
	}
}

// admitCount counts c against its domain's cap; false when the domain is at it.
func (e *Edge) admitCount(c *conn) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if max := e.o.MaxConnsPerDomain; max > 0 && e.open[c.route.Domain] >= max {
		return false
	}
	e.open[c.route.Domain]++
	c.counted = true
	return true
}
