package rawedge

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	proxyproto "github.com/pires/go-proxyproto"

	"github.com/hopgate/hopgate/internal/gateway/access"
	"github.com/hopgate/hopgate/internal/gateway/lbproxy"
	"github.com/hopgate/hopgate/internal/tunnel"
	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

// Results of a connection: the result label of hopgate_tcp_connections_total (metrics.TCPResults).
const (
	resultOK                = "ok"
	resultDenied            = "denied"
	resultOverLimit         = "over_limit"
	resultNoAgent           = "no_agent"
	resultAgentError        = "agent_error"
	resultTargetUnreachable = "target_unreachable"
	resultTimeout           = "timeout"
	resultForged            = "forged_proxy_header"
	resultStoreUnavailable  = "store_unavailable"
)

// Why a connection closed, for the access log; a refused one says refused_<result>.
const (
	reasonVisitorClosed = "visitor_closed"
	reasonTargetClosed  = "target_closed"
	reasonIdle          = "idle_timeout"
	reasonAgentGone     = "agent_gone"
	reasonShutdown      = "shutdown"
	reasonRouteRemoved  = "route_removed"
)

// Mode labels of the hopgate_tcp_* series (metrics.TCPModes).
const (
	modeTCP         = "tcp"
	modePassthrough = "tls_passthrough"
)

// copyBufSize is the buffer of the target-to-visitor copy.
const copyBufSize = 32 << 10

var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// errForged is a PROXY header from a peer that is not a trusted balancer.
var errForged = errors.New("rawedge: PROXY header from an untrusted peer")

// conn is one visitor connection, from accept (or the HTTPS edge's hand-over) to close.
type conn struct {
	e     *Edge
	nc    net.Conn
	route Route
	// host names the service to the agent: the domain, or the SNI name under a wildcard.
	host  string
	mode  string
	ln    *tcpListener // nil: passthrough
	start time.Time
	// ctx ends when the connection ends, or when it is killed (kill).
	ctx    context.Context
	cancel context.CancelFunc

	counted bool // counted against the domain's cap; guarded by Edge.mu

	mu sync.Mutex
	// reason is why the connection was cut (the first kill); eof is which side ended first when
	// it ended normally.
	reason, eof string
	result      string

	client string
	agent  Agent
	opened bool
	// ownClose is set before the connection closes its visitor side itself (a stream end with no
	// half-close to give): the visitor read failing then is no visitor error.
	ownClose atomic.Bool
	in, out  atomic.Int64
	// last is when a byte last moved, as time since start (monotonic).
	last atomic.Int64
}

func (e *Edge) newConn(nc net.Conn, r Route, host string, ln *tcpListener) *conn {
	c := &conn{e: e, nc: nc, route: r, host: host, ln: ln, start: time.Now(), mode: modeTCP}
	if r.Mode == tunnelv1.StreamMode_STREAM_MODE_TLS_PASSTHROUGH {
		c.mode = modePassthrough
	}
	c.ctx, c.cancel = context.WithCancel(e.ctx)
	return c
}

// kill cuts the connection for reason; the first reason stays.
func (c *conn) kill(reason string) {
	c.mu.Lock()
	if c.reason == "" {
		c.reason = reason
	}
	c.mu.Unlock()
	c.cancel()
}

// ended records which side ended first, for a connection that ends normally.
func (c *conn) ended(side string) {
	c.mu.Lock()
	if c.eof == "" {
		c.eof = side
	}
	c.mu.Unlock()
}

// serve runs the connection: visitor address, the PROXY-header check, the domain's IP rules and
// cap, an agent and its answer, then both copies until the connection ends.
func (c *conn) serve() {
	m := c.e.o.Metrics
	if m != nil {
		g := m.TCPConnectionsOpen.WithLabelValues(c.mode)
		g.Inc()
		defer g.Dec()
	}
	// Killing the connection closes the visitor's socket: that also ends a PROXY header read.
	stopClose := context.AfterFunc(c.ctx, func() { c.nc.Close() })
	defer func() {
		stopClose()
		c.cancel()
		c.nc.Close()
	}()
	if !c.e.track(c) {
		// Its listener (or the edge) closed as it was accepted.
		c.nc.Close()
		return
	}
	defer c.e.untrack(c)

	// A trusted balancer's header has replaced the visitor's address (lbproxy.Wrap); from an
	// untrusted peer, the first bytes must not be a header (checked as they are copied: on a TCP
	// port the server may speak first, so nothing is read before the agent dials).
	pc, fromLB := c.nc.(*proxyproto.Conn)
	if fromLB && pc.ProxyHeader() == nil {
		c.client = pc.Raw().RemoteAddr().String()
		c.refuse(resultForged, errors.New("no valid PROXY header from a trusted balancer"))
		return
	}
	c.client = c.nc.RemoteAddr().String()
	checkHeader := c.ln != nil && !fromLB && (len(c.e.o.TrustedLB) > 0 || c.route.ProxyProtocol > 0)

	if a := c.e.o.Access; a != nil {
		ctx, cancel := context.WithTimeout(c.ctx, accessTimeout)
		err := a.AdmitAddr(ctx, c.route.Domain, visitorAddr(c.nc.RemoteAddr()))
		cancel()
		if err != nil {
			var d *access.Denial
			if errors.As(err, &d) {
				if m != nil {
					m.AccessDenied.WithLabelValues(d.Reason).Inc()
				}
				c.refuse(resultDenied, err)
				return
			}
			c.refuse(resultStoreUnavailable, err)
			return
		}
	}
	if !c.e.admitCount(c) {
		c.refuse(resultOverLimit, nil)
		return
	}

	agents := c.e.o.Agents
	c.agent = agents.Pick(c.route.Domain)
	if c.agent == nil {
		c.refuse(resultNoAgent, nil)
		return
	}
	defer agents.Release(c.agent)
	if !c.agent.RawStreams() {
		c.refuse(resultNoAgent, errors.New("the domain's agent does not serve raw streams"))
		return
	}

	st, result, err := c.open()
	if err != nil {
		c.refuse(result, err)
		return
	}
	c.opened = true
	c.logOpened()
	c.pipe(st, checkHeader)
	c.finish(c.result, nil)
}

// open opens the stream and waits for the agent's 200: it has dialed its target.
func (c *conn) open() (*tunnel.Stream, string, error) {
	head := &tunnelv1.RequestHead{
		Mode:          c.route.Mode,
		Host:          c.host,
		RemoteAddr:    c.client,
		LocalAddr:     c.nc.LocalAddr().String(),
		ProxyProtocol: c.route.ProxyProtocol,
	}
	st, err := c.agent.OpenStream(c.ctx, head)
	if err != nil {
		return nil, resultAgentError, err
	}
	ctx, cancel := context.WithTimeout(c.ctx, c.e.o.HeaderTimeout)
	defer cancel()
	resp, err := st.AwaitResponse(ctx)
	var reset *tunnel.ResetError
	switch {
	case err == nil && resp.Status == 200:
		return st, "", nil
	case err == nil:
		st.Reset(tunnelv1.ResetReason_RESET_REASON_PROTOCOL_ERROR, "raw stream answered with a status other than 200")
		return nil, resultAgentError, errors.New("agent answered a raw stream with a status other than 200")
	case errors.Is(err, context.DeadlineExceeded) && c.ctx.Err() == nil:
		st.Reset(tunnelv1.ResetReason_RESET_REASON_TIMEOUT, "no answer in time")
		return nil, resultTimeout, err
	case errors.As(err, &reset) && reset.Remote && reset.Reason != tunnelv1.ResetReason_RESET_REASON_REFUSED &&
		reset.Reason != tunnelv1.ResetReason_RESET_REASON_PROTOCOL_ERROR:
		return nil, resultTargetUnreachable, err
	default:
		st.Close()
		return nil, resultAgentError, err
	}
}

// pipe copies both ways until both have ended, or the connection is cut.
func (c *conn) pipe(st *tunnel.Stream, checkHeader bool) {
	c.result = resultOK
	// Cutting the connection resets the stream: the agent closes its target.
	stopReset := context.AfterFunc(c.ctx, func() { st.Close() })
	defer stopReset()
	defer st.Close()
	stopIdle := c.watchIdle()
	defer stopIdle()

	up := make(chan struct{})
	go func() {
		defer close(up)
		c.upstream(st, checkHeader)
	}()
	c.downstream(st)
	<-up
}

// upstream copies visitor to target; the visitor's EOF becomes the stream's End.
func (c *conn) upstream(st *tunnel.Stream, checkHeader bool) {
	r := &visitorReader{c: c, check: checkHeader}
	_, err := st.ReadFrom(r)
	switch {
	case err == nil:
		c.ended(reasonVisitorClosed)
		if err := st.CloseWrite(nil); err != nil {
			c.kill(streamReason(err))
		}
	case errors.Is(err, errForged):
		c.mu.Lock()
		c.result = resultForged
		c.mu.Unlock()
		c.kill("refused_" + resultForged)
	case r.err != nil && errors.Is(err, r.err):
		if !c.ownClose.Load() {
			c.kill(reasonVisitorClosed)
		}
	default:
		c.kill(streamReason(err))
	}
}

// downstream copies target to visitor; the stream's End becomes the visitor's half-close.
func (c *conn) downstream(st *tunnel.Stream) {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	for {
		n, err := st.Read(buf)
		if n > 0 {
			c.touch()
			w, werr := c.nc.Write(buf[:n])
			c.out.Add(int64(w))
			if werr != nil {
				c.kill(reasonVisitorClosed)
				return
			}
			c.touch()
		}
		if err == io.EOF {
			c.ended(reasonTargetClosed)
			c.closeWrite()
			return
		}
		if err != nil {
			c.kill(streamReason(err))
			return
		}
	}
}

// closeWrite half-closes the visitor's side, or closes it when it cannot be half-closed.
func (c *conn) closeWrite() {
	if ok, _ := lbproxy.CloseWrite(c.nc); ok {
		return
	}
	c.ownClose.Store(true)
	c.nc.Close()
}

// streamReason names a failure of the stream: its session ended (the agent is gone) or the agent
// reset it (its target connection failed).
func streamReason(err error) string {
	var reset *tunnel.ResetError
	if errors.As(err, &reset) && reset.Remote {
		return reasonTargetClosed
	}
	return reasonAgentGone
}

// touch records that a byte moved. It costs a clock read and a store: the idle timer reads it.
func (c *conn) touch() { c.last.Store(int64(time.Since(c.start))) }

// watchIdle cuts the connection once no byte has moved either way for IdleTimeout. One timer that
// re-arms itself from the last byte's time: no deadline system call per read, and a direction that
// waits on the stream (a half-closed visitor) is watched too.
func (c *conn) watchIdle() (stop func()) {
	idle := c.e.o.IdleTimeout
	if idle <= 0 {
		return func() {}
	}
	c.touch()
	// Stored before it can fire: the callback re-arms the timer it finds here.
	var timer atomic.Pointer[time.Timer]
	t := time.AfterFunc(math.MaxInt64, func() {
		if c.ctx.Err() != nil {
			return
		}
		quiet := time.Since(c.start) - time.Duration(c.last.Load())
		if quiet >= idle {
			c.kill(reasonIdle)
			return
		}
		timer.Load().Reset(idle - quiet)
	})
	timer.Store(t)
	t.Reset(idle)
	return func() { t.Stop() }
}

// visitorReader reads the visitor's bytes for the stream, counting them and, when asked, refusing
// a PROXY header at their start.
type visitorReader struct {
	c     *conn
	check bool
	// err is the visitor's read error, other than io.EOF.
	err error
}

func (r *visitorReader) Read(p []byte) (int, error) {
	n, err := r.c.nc.Read(p)
	if r.check {
		// A header may arrive split: read on until its first bytes tell.
		for {
			header, done := lbproxy.IsHeaderStart(p[:n])
			if header {
				return 0, errForged
			}
			if done || err != nil || n == len(p) {
				break
			}
			var m int
			m, err = r.c.nc.Read(p[n:])
			n += m
		}
		r.check = false
	}
	if n > 0 {
		r.c.in.Add(int64(n))
		r.c.touch()
	}
	if err != nil && err != io.EOF {
		r.err = err
	}
	return n, err
}

// refuse ends a connection before (or instead of) carrying it.
func (c *conn) refuse(result string, err error) {
	c.mu.Lock()
	if c.reason == "" {
		c.reason = "refused_" + result
	}
	c.mu.Unlock()
	c.finish(result, err)
}

// finish writes the connection's metrics and its access-log line.
func (c *conn) finish(result string, err error) {
	// The slot frees before the line and the metric: a visitor told the connection ended may
	// reconnect at once and must find the slot free.
	c.e.uncount(c)
	elapsed := time.Since(c.start)
	in, out := c.in.Load(), c.out.Load()
	c.mu.Lock()
	reason := c.reason
	if reason == "" {
		reason = c.eof
	}
	if c.result != "" {
		result = c.result
	}
	c.mu.Unlock()
	c.logClosed(result, reason, in, out, elapsed, err)
	if m := c.e.o.Metrics; m != nil {
		m.TCPConnections.WithLabelValues(c.mode, result).Inc()
		m.TCPBytes.WithLabelValues(c.mode, "in").Add(float64(in))
		m.TCPBytes.WithLabelValues(c.mode, "out").Add(float64(out))
		if c.opened {
			m.TCPDuration.WithLabelValues(c.mode).Observe(elapsed.Seconds())
		}
	}
}

// logClosed writes the connection's access-log line.
func (c *conn) logClosed(result, reason string, in, out int64, elapsed time.Duration, err error) {
	// A flood over the cap would otherwise turn each refused connection into a log line.
	level := slog.LevelInfo
	if result == resultOverLimit {
		level = slog.LevelDebug
	}
	log := c.e.log
	if !log.Enabled(context.Background(), level) {
		return
	}
	attrs := []slog.Attr{
		slog.String("domain", c.host),
		slog.String("mode", c.mode),
		slog.String("client", c.client),
		slog.String("agent", c.agentID()),
		slog.Int64("bytes_in", in),
		slog.Int64("bytes_out", out),
		slog.Duration("duration", elapsed),
		slog.String("reason", reason),
	}
	if err != nil {
		attrs = append(attrs, slog.String("err", err.Error()))
	}
	log.LogAttrs(context.Background(), level, "tcp connection closed", attrs...)
}

func (c *conn) logOpened() {
	c.e.log.LogAttrs(context.Background(), slog.LevelInfo, "tcp connection opened",
		slog.String("domain", c.host),
		slog.String("mode", c.mode),
		slog.String("client", c.client),
		slog.String("agent", c.agentID()))
}

func (c *conn) agentID() string {
	if c.agent == nil {
		return ""
	}
	return c.agent.ID()
}

// visitorAddr is a connection's peer address; invalid (in no policy list) when it cannot be read.
func visitorAddr(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap()
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}
