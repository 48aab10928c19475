// Package supervisor keeps an agent's tunnel to the gateway up: it dials, says hello, serves streams
// and reconnects with jittered exponential backoff until it is told to stop or the gateway refuses it.
package supervisor

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"time"

	"golang.org/x/net/http/httpproxy"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/hopgate/hopgate/internal/pause"
	"github.com/hopgate/hopgate/internal/tcpopt"
	"github.com/hopgate/hopgate/internal/tlscork"
	"github.com/hopgate/hopgate/internal/tunnel"
	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

// ErrRefused means the gateway will not take this agent (unknown domain, wrong key): retrying cannot help.
var ErrRefused = errors.New("gateway refused the tunnel")

// Options describe the agent.
type Options struct {
	ServerAddr string
	Domain     string
	APIKey     string
	AgentID    string
	Version    string
	// Target is only shown in logs.
	Target string
	TLS    *tls.Config
	// Conn, when set, carries the tunnel instead of a connection of its own: an agent with several
	// domains multiplexes their OpenTunnel calls over one connection (see Dial). The supervisor
	// never closes it; grpc redials it under the calls, which then reconnect as usual.
	Conn *grpc.ClientConn
	// PingInterval is how often the agent pings; the tunnel is dead after three silent intervals.
	PingInterval time.Duration
	// DrainTimeout bounds how long a stop waits for streams in flight.
	DrainTimeout time.Duration
	// Serve handles one stream (a request from a visitor).
	Serve func(*tunnel.Stream)
	// MinBackoff and MaxBackoff bound the reconnect delay (defaults 1 s and 60 s).
	MinBackoff, MaxBackoff time.Duration
	// HealthyAfter is how long a tunnel must stay up for the backoff to start over (default 30 s).
	HealthyAfter time.Duration
	// OnUp is called each time a tunnel is accepted.
	OnUp func(publicURL string)
	// OnDown is called each time an accepted tunnel ends, with the reason (nil when the agent stops).
	OnDown func(err error)
	// OnReconnectAttempt is called each time the agent schedules a new attempt, with the delay before it.
	OnReconnectAttempt func(delay time.Duration)
	// OnBodyBytes is called for the body bytes of every Data frame: received from the gateway (ToTarget,
	// a visitor's request body) or sent to it (FromTarget, the target's response body).
	OnBodyBytes func(dir Direction, n int)
	// Health, if set, gives the state of this hostname's service paths and a channel closed when it
	// changes; the supervisor reports it in Health frames to a gateway that announced CapHealth.
	Health func() ([]*tunnelv1.PathHealth, <-chan struct{})
	Logger *slog.Logger

	// now, rand and sleep replace the clock, the jitter's source and the wait between attempts in
	// tests; attempt replaces attemptTimeout.
	now     func() time.Time
	rand    func() float64
	sleep   func(ctx context.Context, d time.Duration) error
	attempt time.Duration
}

// Direction tells which way body bytes travel, seen from the local target.
type Direction int

const (
	// ToTarget is a visitor's request body, from the gateway towards the local target.
	ToTarget Direction = iota
	// FromTarget is the local target's response body, towards the gateway.
	FromTarget
)

// Run keeps the tunnel up until ctx ends (then drains and returns nil) or the gateway refuses the
// agent (returns an error wrapping ErrRefused).
func Run(ctx context.Context, o Options) error {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = time.Second
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = time.Minute
	}
	if o.HealthyAfter <= 0 {
		o.HealthyAfter = 30 * time.Second
	}
	if o.DrainTimeout <= 0 {
		o.DrainTimeout = 30 * time.Second
	}
	delays := newReconnectDelay(o.MinBackoff, o.MaxBackoff, o.HealthyAfter)
	if o.now != nil {
		delays.now = o.now
	}
	if o.rand != nil {
		delays.rand = o.rand
	}
	sleep := pause.For
	if o.sleep != nil {
		sleep = o.sleep
	}
	for {
		delays.begin()
		up, err := runOnce(ctx, o)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, ErrRefused) {
			return err
		}
		if errors.Is(err, tunnel.ErrGoingAway) {
			// The gateway is draining for a restart: come back quickly, not after a long backoff.
			delays.reset()
		}
		delay := delays.next(up)
		o.Logger.Warn("tunnel down, reconnecting", "reason", err, "retry_in", delay.Round(time.Millisecond), "attempt", delays.attempt)
		if o.OnReconnectAttempt != nil {
			o.OnReconnectAttempt(delay)
		}
		if sleep(ctx, delay) != nil {
			return nil
		}
	}
}

// call is one OpenTunnel call that the gateway accepted.
type call struct {
	conn *grpc.ClientConn
	// ownConn tells whether the call dialled conn itself (and closes it) or shares Options.Conn.
	ownConn bool
	stream  tunnelv1.TunnelService_OpenTunnelClient
	acc     *tunnelv1.Accepted
	// ctx is the call's own context, so that a stop can drain streams before the call ends.
	ctx    context.Context
	cancel context.CancelFunc
}

func (c *call) close() {
	c.cancel()
	if c.ownConn {
		_ = c.conn.Close()
	}
}

// Dial makes the gRPC connection to o.ServerAddr that Run makes for each attempt (same TLS
// protocol, windows and dialer). It connects lazily; the caller closes it.
func Dial(o Options) (*grpc.ClientConn, error) {
	tlsConf := o.TLS.Clone()
	if tlsConf == nil {
		tlsConf = &tls.Config{}
	}
	// Offered ahead of h2 (which grpc adds): a gateway that knows it serves the tunnel on grpc's own
	// transport; an older one picks h2.
	tlsConf.NextProtos = []string{tunnel.ALPN}
	dialOpts := append(tunnel.DialOptions(),
		grpc.WithTransportCredentials(tlscork.Credentials(credentials.NewTLS(tlsConf))),
		// One HTTP/2 stream carries the whole tunnel; the tunnel's own credit bounds memory per
		// request, so these windows only keep the pipe full.
		grpc.WithInitialWindowSize(16<<20),
		grpc.WithInitialConnWindowSize(16<<20),
		// The tunnel's own pings end a silent session, but the connection under it is shared by
		// every hostname's tunnel and grpc keeps using it until its transport fails: without these
		// a path that went silent (no FIN, no RST) would carry each new attempt into the void.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time:                transportPing(o.PingInterval),
			Timeout:             transportPing(o.PingInterval),
			PermitWithoutStream: true,
		}),
	)
	if !viaProxy(o.ServerAddr) {
		// Downloads queue in the session, where streams take turns, not in the kernel. A custom
		// dialer switches off grpc's HTTPS_PROXY support, so it is used only when no proxy applies.
		d := &net.Dialer{Control: tcpopt.Control(tcpopt.TunnelNotSentLowat)}
		dialOpts = append(dialOpts, grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", addr)
		}))
	}
	conn, err := grpc.NewClient(o.ServerAddr, dialOpts...)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", o.ServerAddr, err)
	}
	return conn, nil
}

// transportPing is the interval (and the timeout) of grpc's keepalive pings on the agent's
// connection: the tunnel's ping interval, but not under grpc's floor of 10 s (which grpc would
// impose anyway), which also keeps it above the gateway's enforcement minimum (one per 5 s).
func transportPing(tunnelPing time.Duration) time.Duration {
	const grpcFloor = 10 * time.Second
	if tunnelPing <= 0 {
		return 15 * time.Second
	}
	return max(grpcFloor, tunnelPing)
}

// errAttemptTimeout ends an attempt whose gateway said nothing in time; it is retried on backoff.
var errAttemptTimeout = errors.New("no answer to hello in time")

// attemptTimeout bounds one attempt from dial to Accepted: three tunnel pings, not under 20 s,
// which covers a TLS handshake and a registry lookup on a loaded gateway.
func attemptTimeout(tunnelPing time.Duration) time.Duration {
	return max(20*time.Second, 3*tunnelPing)
}

// open dials the gateway (or takes o.Conn), says hello and waits for Accepted. ctx bounds the
// wait, not the call, and so does attemptTimeout: an attempt stuck on a path that went silent or
// a gateway that never answers ends and is retried instead of holding the tunnel down for good.
func open(ctx context.Context, o Options) (*call, error) {
	limit := attemptTimeout(o.PingInterval)
	if o.attempt > 0 {
		limit = o.attempt
	}
	ctx, cancelAttempt := context.WithTimeoutCause(ctx, limit, errAttemptTimeout)
	defer cancelAttempt()
	conn, own := o.Conn, false
	if conn != nil {
		// A shared connection redials on grpc's own backoff (up to two minutes); an attempt of the
		// supervisor, which has waited its own backoff already, dials now as a fresh connection would.
		conn.ResetConnectBackoff()
	} else {
		var err error
		if conn, err = Dial(o); err != nil {
			return nil, err
		}
		own = true
	}
	var err error
	callCtx, cancelCall := context.WithCancel(context.Background())
	c := &call{conn: conn, ownConn: own, ctx: callCtx, cancel: cancelCall}
	fail := func(err error) (*call, error) {
		c.close()
		if errors.Is(context.Cause(ctx), errAttemptTimeout) {
			return nil, errAttemptTimeout
		}
		return nil, classify(err)
	}
	// The call itself must not outlive ctx while it waits for Accepted: a gateway that never answers
	// would otherwise hold the attempt forever.
	stop := context.AfterFunc(ctx, cancelCall)
	defer stop()
	c.stream, err = tunnelv1.NewTunnelServiceClient(conn).OpenTunnel(callCtx)
	if err != nil {
		return fail(err)
	}
	hello := &tunnelv1.Hello{
		Domain:        o.Domain,
		ApiKey:        o.APIKey,
		AgentId:       o.AgentID,
		Version:       o.Version,
		InitialWindow: tunnel.DefaultInitialWindow,
		// Every agent serves raw streams: one without a tcp:// service for the stream's name
		// refuses it, as it answers 404 to a request it has no service for.
		Capabilities: []string{tunnel.CapRawStreams},
	}
	if err := c.stream.Send(&tunnelv1.TunnelFrame{Kind: &tunnelv1.TunnelFrame_Hello{Hello: hello}}); err != nil && !errors.Is(err, io.EOF) {
		return fail(err)
	}
	// io.EOF from Send means the gateway already ended the call: Recv returns its status, which
	// says why (a refusal, or a server that is not a gateway).
	first, err := tunnel.RecvContext(ctx, c.stream)
	if err != nil {
		return fail(err)
	}
	c.acc = first.GetAccepted()
	if c.acc == nil {
		return fail(fmt.Errorf("gateway answered hello with %T", first.Kind))
	}
	if !stop() {
		// ctx ended just as Accepted arrived: the call is already cancelled.
		return fail(ctx.Err())
	}
	return c, nil
}

// session wraps an accepted call in a tunnel session; the caller runs it.
func (c *call) session(o Options, onGoAway func(string)) *tunnel.Session {
	var count func(sent bool, n int)
	if o.OnBodyBytes != nil {
		count = func(sent bool, n int) {
			if sent {
				o.OnBodyBytes(FromTarget, n)
			} else {
				o.OnBodyBytes(ToTarget, n)
			}
		}
	}
	return tunnel.NewSession(tunnel.WrapGRPC(c.stream), tunnel.Config{
		Accept:       o.Serve,
		LocalWindow:  tunnel.DefaultInitialWindow,
		PeerWindow:   c.acc.InitialWindow,
		PingInterval: o.PingInterval,
		OnGoAway:     onGoAway,
		CountBody:    count,
		Logger:       o.Logger,

		PeerCapabilities: c.acc.Capabilities,
	})
}

// run serves the session on the call until the session ends, then ends the call.
func (c *call) run(sess *tunnel.Session) error {
	// A dead session (missed pings) must end the call: a Send blocked on a frozen gateway only
	// returns when the call's context ends.
	sess.OnDone(c.cancel)
	return sess.Run(c.ctx)
}

// Tunnel is one tunnel the gateway accepted, opened exactly as Run opens its tunnels (same TLS
// protocol, same gRPC options) but without reconnecting: the bench's many agents use it, so that
// they cost the gateway what real agents cost it.
type Tunnel struct {
	c *call
	// Session serves o.Serve for the streams the gateway opens once Run is called.
	Session   *tunnel.Session
	PublicURL string
}

// Open dials the gateway, says hello and waits for Accepted; ctx bounds the wait, not the tunnel.
// o.Serve nil refuses every stream. Run serves the tunnel, Close ends it.
func Open(ctx context.Context, o Options) (*Tunnel, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	c, err := open(ctx, o)
	if err != nil {
		return nil, err
	}
	return &Tunnel{c: c, Session: c.session(o, nil), PublicURL: c.acc.PublicUrl}, nil
}

// Run serves the tunnel until the gateway or Close ends it, and returns why.
func (t *Tunnel) Run() error { return t.c.run(t.Session) }

// Close ends the tunnel at once and closes its connection.
func (t *Tunnel) Close() {
	t.Session.Close(nil)
	t.c.close()
}

// ViaProxy reports whether the environment (HTTPS_PROXY, NO_PROXY) sends connections to addr
// through a proxy: then the proxy, not the agent, resolves addr's name.
func ViaProxy(addr string) bool { return viaProxy(addr) }

// viaProxy reports whether the environment (HTTPS_PROXY, NO_PROXY) sends connections to addr
// through a proxy, as grpc's default dialer would.
func viaProxy(addr string) bool {
	u, err := httpproxy.FromEnvironment().ProxyFunc()(&url.URL{Scheme: "https", Host: addr})
	return err != nil || u != nil
}

// runOnce dials, authenticates and serves one tunnel. up reports whether the gateway accepted it.
func runOnce(ctx context.Context, o Options) (up bool, err error) {
	c, err := open(ctx, o)
	if err != nil {
		return false, err
	}
	defer c.close()
	if o.OnDown != nil {
		defer func() { o.OnDown(err) }()
	}

	goAway := make(chan struct{})
	sess := c.session(o, func(string) { close(goAway) })
	o.Logger.Info("tunnel up", "url", c.acc.PublicUrl, "target", o.Target, "server", o.ServerAddr, "session", c.acc.SessionId)
	if o.OnUp != nil {
		o.OnUp(c.acc.PublicUrl)
	}

	runErr := make(chan error, 1)
	go func() { runErr <- c.run(sess) }()
	if o.Health != nil && sess.PeerHas(tunnel.CapHealth) {
		reported := make(chan struct{})
		go func() {
			defer close(reported)
			reportHealth(sess, o.Health)
		}()
		// The reporter ends with the session, which has ended by the time runOnce returns.
		defer func() { <-reported }()
	}
	select {
	case err := <-runErr:
		return true, classify(err)
	case <-goAway:
		// Finish what is in flight, then reconnect (to the restarted or another gateway).
		drain(sess, runErr, o.DrainTimeout)
		return true, tunnel.ErrGoingAway
	case <-ctx.Done():
		sess.GoAway("agent shutting down")
		drain(sess, runErr, o.DrainTimeout)
		return true, nil
	}
}

// reportHealth sends the paths' state once, then again at each change, until sess ends. A change
// back to the state last sent sends nothing.
func reportHealth(sess *tunnel.Session, state func() ([]*tunnelv1.PathHealth, <-chan struct{})) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stop := sess.OnDone(cancel)
	defer stop()
	var last []*tunnelv1.PathHealth
	for {
		paths, changed := state()
		if last == nil || !samePaths(last, paths) {
			if err := sess.SendHealth(ctx, &tunnelv1.Health{Paths: paths}); err != nil {
				return
			}
			last = paths
			if last == nil {
				last = []*tunnelv1.PathHealth{}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

func samePaths(a, b []*tunnelv1.PathHealth) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Path != b[i].Path || a[i].Up != b[i].Up {
			return false
		}
	}
	return true
}

// Check opens one tunnel, as Run would, and closes it again at once: it answers whether the gateway
// accepts this domain and key. It returns the public URL, or an error wrapping ErrRefused when the
// gateway refuses the agent. ctx bounds the whole check, the close included. Streams the gateway
// sends in the short time the tunnel is up are served by o.Serve (or reset when it is nil).
func Check(ctx context.Context, o Options) (publicURL string, err error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Serve == nil {
		o.Serve = func(st *tunnel.Stream) {
			st.Reset(tunnelv1.ResetReason_RESET_REASON_TARGET_UNREACHABLE, "agent is only checking its configuration")
		}
	}
	c, err := open(ctx, o)
	if err != nil {
		return "", err
	}
	defer c.close()
	sess := c.session(o, nil)
	runErr := make(chan error, 1)
	go func() { runErr <- sess.Run(c.ctx) }()
	// GoAway first, so that the gateway sends no new request to this short-lived tunnel, then the
	// same clean close as a stop.
	sess.GoAway("agent configuration check done")
	timeout := o.DrainTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	if timeout <= 0 {
		timeout = time.Second
	}
	drain(sess, runErr, timeout)
	return c.acc.PublicUrl, nil
}

// drain lets the streams in flight finish and their last frames go out, then half-closes the call
// and waits for the gateway to end it: cancelling the call instead could drop frames still buffered
// in gRPC. The whole drain is bounded by timeout.
func drain(sess *tunnel.Session, runErr <-chan error, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_ = sess.Wait(ctx)
	sess.CloseSend()
	select {
	case <-runErr:
		return
	case <-ctx.Done():
	}
	sess.Close(tunnel.ErrGoingAway)
	<-runErr
}

// classify marks the answers that retrying cannot change.
func classify(err error) error {
	if err == nil {
		return nil
	}
	var st interface{ GRPCStatus() *status.Status }
	if errors.As(err, &st) {
		switch st.GRPCStatus().Code() {
		case codes.Unauthenticated, codes.PermissionDenied:
			return fmt.Errorf("%w: %s", ErrRefused, st.GRPCStatus().Message())
		}
	}
	return err
}
