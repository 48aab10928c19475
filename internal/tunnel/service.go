package tunnel

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"time"

	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Errors an Authenticator returns (wrapped) so that the service can answer with the right code.
var (
	ErrUnknownDomain = errors.New("domain is not registered")
	ErrBadKey        = errors.New("client API key does not match")
	// ErrReplaced ends a tunnel whose agent connected again with the same id.
	ErrReplaced = errors.New("agent reconnected; old tunnel replaced")
	// ErrDomainClosed ends the tunnels of a domain that was unregistered or whose key was rotated.
	ErrDomainClosed = errors.New("domain unregistered or key rotated")
)

type writeDeadlineKey struct{}

// WithWriteDeadline hands the service a way to fail blocked writes of the call carried by ctx (the
// SetWriteDeadline of its http.ResponseController when gRPC is served through net/http). set must be
// safe to call at any time, also after the HTTP handler returned.
func WithWriteDeadline(ctx context.Context, set func(time.Time) error) context.Context {
	return context.WithValue(ctx, writeDeadlineKey{}, set)
}

// helloTimeout bounds how long a new tunnel may take to say who it is; authTimeout how long the
// store may take to check it (a slow store answers Unavailable, which agents retry).
const (
	helloTimeout = 10 * time.Second
	authTimeout  = 5 * time.Second
)

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
}

// NewService builds the gRPC service. Serve it on a grpc.Server built with ServerOptions: the
// tunnel's frames go through its codec.
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
	return &Service{hub: hub, auth: auth, opts: opts}
}

// OpenTunnel serves one agent connection for as long as it lasts.
func (s *Service) OpenTunnel(stream grpc.BidiStreamingServer[tunnelv1.TunnelFrame, tunnelv1.TunnelFrame]) error {
	ctx := stream.Context()
	// The hello already goes through the tunnel codec: a grpc server set up without ServerOptions
	// fails here, on the first frame, instead of on the first body chunk.
	conn := WrapGRPC(stream)
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
	sess := NewSession(conn, Config{
		LocalWindow:  DefaultInitialWindow,
		PeerWindow:   hello.InitialWindow,
		MaxStreams:   s.opts.MaxStreams,
		PingInterval: s.opts.PingInterval,
		Logger:       log,

		PeerCapabilities: hello.Capabilities,
	})
	agent := &Agent{Domain: domain, AgentID: hello.AgentId, Session: sess}
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
	accepted := &Frame{Kind: &tunnelv1.TunnelFrame_Accepted{Accepted: &tunnelv1.Accepted{
		SessionId:     sessionID,
		PublicUrl:     s.opts.PublicURL(domain),
		InitialWindow: DefaultInitialWindow,
		Capabilities:  []string{CapInlineBody},
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

// Drain sends GoAway on every tunnel, waits until their streams finish or ctx ends, then closes them.
func (s *Service) Drain(ctx context.Context) {
	agents := s.hub.All()
	for _, a := range agents {
		a.Session.GoAway("server shutting down")
	}
	for _, a := range agents {
		_ = a.Session.Wait(ctx)
		a.Session.Close(ErrGoingAway)
	}
}

func recvHello(ctx context.Context, stream FrameConn) (*tunnelv1.Hello, error) {
	ctx, cancel := context.WithTimeoutCause(ctx, helloTimeout, status.Error(codes.DeadlineExceeded, "no hello in time"))
	defer cancel()
	f, err := RecvContext(ctx, stream)
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
