// Package tunnelsvc is the gateway's tunnel service: it authenticates agents on OpenTunnel, applies
// the per-address and per-domain limits, and keeps the live tunnels in the Hub the proxy picks from.
// Agents reach it two ways on the one port, both served here behind one Shutdown: connections that
// negotiated tunnel.ALPN, handed whole to grpc-go's own HTTP/2 transport (ServeConn), and gRPC calls
// that arrive as HTTP/2 requests on net/http's server (ServeHTTP), for agents whose TLS passes through
// a middlebox that re-terminates it and offers only h2.
package tunnelsvc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/hopgate/hopgate/internal/gateway/handoff"
	"github.com/hopgate/hopgate/internal/tunnel"
	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

// Errors an Authenticator returns (wrapped) so that the service can answer with the right code.
var (
	ErrUnknownDomain = errors.New("domain is not registered")
	ErrBadKey        = errors.New("client API key does not match")
	// ErrReplaced ends a tunnel whose agent connected again with the same id.
	ErrReplaced = errors.New("agent reconnected; old tunnel replaced")
	// ErrDomainClosed ends the tunnels of a domain that was unregistered or whose key was rotated.
	ErrDomainClosed = errors.New("domain unregistered or key rotated")
	// ErrDisconnected ends a tunnel an operator closed from the console or the admin API.
	ErrDisconnected = errors.New("disconnected by an operator")
)

// helloTimeout bounds how long a new tunnel may take to say who it is; authTimeout how long the
// store may take to check it (a slow store answers Unavailable, which agents retry).
const (
	helloTimeout = 10 * time.Second
	authTimeout  = 5 * time.Second
)

// tunnelWindow is the HTTP/2 flow-control window of a tunnel on grpc's own transport. One HTTP/2
// stream carries a whole tunnel; the tunnel's own per-request credit bounds memory, so this only
// keeps the pipe full.
const tunnelWindow = 16 << 20

// Authenticator checks an agent's domain and key and returns the canonical domain name.
type Authenticator interface {
	Authenticate(ctx context.Context, domain, key string) (string, error)
}

// ServiceOptions tunes the server end of tunnels.
type ServiceOptions struct {
	PingInterval time.Duration
	// PublicURL tells an agent where its domain is served.
	PublicURL func(domain string) string
	// OnConnect is told the result of each tunnel attempt: ok, unauthenticated, unknown_domain, error.
	OnConnect func(result string)
	// MaxStreams caps concurrent streams per tunnel (0: none); MaxAgentsPerDomain caps tunnels per
	// domain (0: none).
	MaxStreams         int
	MaxAgentsPerDomain int
	// AuthLimiter, if set, refuses addresses that failed too many key checks.
	AuthLimiter interface {
		Blocked(addr string) bool
		Fail(addr string)
	}
	Logger *slog.Logger
}

// Service is the server side of the TunnelService: it authenticates agents and keeps their sessions
// in the Hub while they last.
type Service struct {
	tunnelv1.UnimplementedTunnelServiceServer
	hub  *Hub
	auth Authenticator
	opts ServiceOptions
	grpc *grpc.Server
	// conns feeds grpc's transport the connections ServeConn is given.
	conns *handoff.Listener
}

// NewService builds the tunnel service and the grpc server that carries it.
func NewService(hub *Hub, auth Authenticator, opts ServiceOptions) *Service {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.PublicURL == nil {
		opts.PublicURL = func(d string) string { return "https://" + d }
	}
	if opts.OnConnect == nil {
		opts.OnConnect = func(string) {}
	}
	if opts.PingInterval <= 0 {
		opts.PingInterval = 15 * time.Second
	}
	s := &Service{hub: hub, auth: auth, opts: opts, conns: handoff.New(nil)}
	s.grpc = grpc.NewServer(append(tunnel.ServerOptions(),
		// grpc's own transport enforces keepalive: a frozen agent's connection is closed, which also
		// frees a Send blocked on it.
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time:    opts.PingInterval,
			Timeout: 2 * opts.PingInterval,
		}),
		// Agents ping the transport too (each 10 s or their tunnel interval), to find a path that
		// went silent under a shared connection; grpc's default policy would answer that with
		// GOAWAY too_many_pings.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.InitialWindowSize(tunnelWindow),
		grpc.InitialConnWindowSize(tunnelWindow),
		// Idle tunnels are the common case, and each held a 32 KiB read buffer for good (the write
		// buffer is already shared between flushes by default). Every tunnel connection is a tls.Conn,
		// which holds the decrypted record itself, so reading frames straight from it costs no syscall.
		grpc.ReadBufferSize(0),
	)...)
	tunnelv1.RegisterTunnelServiceServer(s.grpc, s)
	return s
}

// ServeConn serves a connection that negotiated tunnel.ALPN on grpc's own transport. It returns once
// Serve has taken the connection (or closes it if the service is shutting down).
func (s *Service) ServeConn(c net.Conn) { s.conns.Put(c) }

// ServeHTTP serves an OpenTunnel call that arrived as an HTTP/2 request on net/http's server. grpc
// runs the method in a goroutine of its own, which can outlive this handler; the write deadline it
// may set (to unblock a Send to a frozen agent) is only applied while the handler runs.
func (s *Service) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	var mu sync.Mutex
	done := false
	setDeadline := func(t time.Time) error {
		mu.Lock()
		defer mu.Unlock()
		if done {
			return nil
		}
		return rc.SetWriteDeadline(t)
	}
	s.grpc.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), writeDeadlineKey{}, setDeadline)))
	mu.Lock()
	done = true
	mu.Unlock()
}

// writeDeadlineKey carries ServeHTTP's write deadline setter to OpenTunnel: net/http does not enforce
// keepalive, so it is how a session that died fails the call's blocked write.
type writeDeadlineKey struct{}

// Serve runs grpc's transport for the connections given to ServeConn until Shutdown.
func (s *Service) Serve() error {
	err := s.grpc.Serve(s.conns)
	if errors.Is(err, grpc.ErrServerStopped) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// Shutdown takes no new tunnels, sends GoAway on every tunnel, waits until their streams finish or
// ctx ends, then closes them and grpc's connections, on both transports. It returns ctx's error if
// streams were still open at the deadline.
func (s *Service) Shutdown(ctx context.Context) error {
	_ = s.conns.Close()
	agents := s.hub.All()
	for _, a := range agents {
		a.Session.GoAway("server shutting down")
	}
	var err error
	for _, a := range agents {
		if werr := a.Session.Wait(ctx); werr != nil {
			err = werr
		}
		a.Session.Close(tunnel.ErrGoingAway)
	}
	// Every session is closed, so every OpenTunnel call ends; Stop closes the connections (and the
	// HTTP/2 streams served through ServeHTTP) without waiting for a grace period that is over.
	s.grpc.Stop()
	return err
}

// OpenTunnel serves one agent connection for as long as it lasts.
func (s *Service) OpenTunnel(stream grpc.BidiStreamingServer[tunnelv1.TunnelFrame, tunnelv1.TunnelFrame]) error {
	ctx := stream.Context()
	// The hello already goes through the tunnel codec: a grpc server set up without ServerOptions
	// fails here, on the first frame, instead of on the first body chunk.
	conn := tunnel.WrapGRPC(stream)
	hello, err := recvHello(ctx, conn)
	if err != nil {
		s.opts.OnConnect("error")
		return err
	}
	addr := peerAddr(ctx)
	if s.opts.AuthLimiter != nil && s.opts.AuthLimiter.Blocked(addr) {
		s.opts.OnConnect("rate_limited")
		return status.Error(codes.ResourceExhausted, "too many failed attempts from this address; retry later")
	}
	authCtx, cancel := context.WithTimeout(ctx, authTimeout)
	domain, err := s.auth.Authenticate(authCtx, hello.Domain, hello.ApiKey)
	cancel()
	switch {
	case errors.Is(err, ErrUnknownDomain):
		s.failedAuth(addr)
		s.opts.OnConnect("unknown_domain")
		return status.Error(codes.PermissionDenied, "domain is not registered with this gateway")
	case errors.Is(err, ErrBadKey):
		s.failedAuth(addr)
		s.opts.OnConnect("unauthenticated")
		return status.Error(codes.Unauthenticated, "client API key is not valid for this domain")
	case err != nil:
		s.opts.OnConnect("error")
		s.opts.Logger.Warn("tunnel authentication unavailable", "err", err)
		return status.Error(codes.Unavailable, "gateway cannot check keys right now; retry")
	}

	sessionID := newSessionID()
	log := s.opts.Logger.With("domain", domain, "agent_id", hello.AgentId, "session", sessionID)
	agent := &Agent{Domain: domain, AgentID: hello.AgentId, SessionID: sessionID, Version: hello.Version, RemoteAddr: addr, ConnectedAt: time.Now()}
	sess := tunnel.NewSession(conn, tunnel.Config{
		// Set before the session runs, and the receiving loop starts only in Run.
		OnHealth:     func(h *tunnelv1.Health) { s.hub.ReportHealth(agent, h) },
		LocalWindow:  tunnel.DefaultInitialWindow,
		PeerWindow:   hello.InitialWindow,
		MaxStreams:   s.opts.MaxStreams,
		PingInterval: s.opts.PingInterval,
		Logger:       log,

		PeerCapabilities: hello.Capabilities,
	})
	agent.Session = sess
	replaced, err := s.hub.Add(agent, s.opts.MaxAgentsPerDomain)
	if err != nil {
		s.opts.OnConnect("too_many_agents")
		return status.Errorf(codes.ResourceExhausted, "domain already has %d agents connected", s.opts.MaxAgentsPerDomain)
	}
	if replaced != nil {
		// The same agent came back (its old tunnel is half-open or it restarted): the old session goes.
		replaced.Session.Close(ErrReplaced)
	}
	defer s.hub.Remove(agent)
	accepted := &tunnel.Frame{Kind: &tunnelv1.TunnelFrame_Accepted{Accepted: &tunnelv1.Accepted{
		SessionId:     sessionID,
		PublicUrl:     s.opts.PublicURL(domain),
		InitialWindow: tunnel.DefaultInitialWindow,
		Capabilities:  []string{tunnel.CapInlineBody, tunnel.CapHealth},
	}}}
	// Accepted goes out before the session's sender starts, so it is the first frame the agent sees,
	// even if a request picked this agent the moment it joined the Hub.
	if err := stream.Send(accepted); err != nil {
		s.opts.OnConnect("error")
		sess.Close(err) // fails any stream a request opened in the meantime
		return err
	}
	unblock, _ := ctx.Value(writeDeadlineKey{}).(func(time.Time) error)
	// Not a goroutine waiting on Done: that would cost every idle tunnel a parked stack.
	sess.OnDone(func() {
		// The agent leaves the table the moment its session ends, even if the call lingers.
		s.hub.Remove(agent)
		// A frozen agent stops reading, and a Send to it would block until TCP gives up (minutes):
		// failing the pending write lets the session's sender, and so this call, end now.
		if unblock != nil {
			_ = unblock(time.Now())
		}
	})
	s.opts.OnConnect("ok")
	log.Info("tunnel up", "agent_version", hello.Version)
	err = sess.Run(ctx)
	log.Info("tunnel down", "reason", err)
	if errors.Is(err, ErrDomainClosed) {
		return status.Error(codes.PermissionDenied, "domain unregistered or key rotated")
	}
	return nil
}

func recvHello(ctx context.Context, stream tunnel.FrameConn) (*tunnelv1.Hello, error) {
	ctx, cancel := context.WithTimeoutCause(ctx, helloTimeout, status.Error(codes.DeadlineExceeded, "no hello in time"))
	defer cancel()
	f, err := tunnel.RecvContext(ctx, stream)
	if err != nil {
		return nil, err
	}
	h := f.GetHello()
	if h == nil {
		return nil, status.Error(codes.InvalidArgument, "first frame must be hello")
	}
	return h, nil
}

func (s *Service) failedAuth(addr string) {
	if s.opts.AuthLimiter != nil {
		s.opts.AuthLimiter.Fail(addr)
	}
}

// peerAddr is the agent's network address: grpc sets it from the connection (or from
// http.Request.RemoteAddr when served through net/http).
func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}

func newSessionID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// DescribeRefusal turns an OpenTunnel error into the words a user needs.
func DescribeRefusal(err error) string {
	st, ok := status.FromError(err)
	if !ok {
		return err.Error()
	}
	return fmt.Sprintf("%s: %s", st.Code(), st.Message())
}
