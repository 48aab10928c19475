package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"sync"
	"testing"
	"time"

	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// fakeAuth accepts "good-key" for example.test (answering with the canonical name) and fails
// everything else with the error set for the test.
type fakeAuth struct {
	err error

	mu    sync.Mutex
	calls []string
}

func (a *fakeAuth) Authenticate(ctx context.Context, domain, key string) (string, error) {
	a.mu.Lock()
	a.calls = append(a.calls, domain+"|"+key)
	a.mu.Unlock()
	if ctx.Err() != nil {
		return "", ctx.Err()
	}
	if a.err != nil {
		return "", a.err
	}
	return "example.test", nil
}

// connectResults records what the Service reports through OnConnect.
type connectResults struct {
	mu  sync.Mutex
	got []string
}

func (c *connectResults) add(r string) {
	c.mu.Lock()
	c.got = append(c.got, r)
	c.mu.Unlock()
}

func (c *connectResults) list() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.got...)
}

// startService serves a real Service on loopback.
func startService(t *testing.T, auth Authenticator) (*Service, *Hub, *grpc.ClientConn, *connectResults) {
	t.Helper()
	hub := NewHub(nil)
	results := &connectResults{}
	svc := NewService(hub, auth, ServiceOptions{
		PublicURL: func(d string) string { return "https://" + d + ":8443" },
		OnConnect: results.add,
	})
	gs := grpc.NewServer(ServerOptions()...)
	tunnelv1.RegisterTunnelServiceServer(gs, svc)
	return svc, hub, startGRPC(t, gs, DialOptions()...), results
}

// openTunnel starts an OpenTunnel call that ends with the test.
func openTunnel(t *testing.T, cc *grpc.ClientConn) (grpc.BidiStreamingClient[tunnelv1.TunnelFrame, tunnelv1.TunnelFrame], context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	stream, err := tunnelv1.NewTunnelServiceClient(cc).OpenTunnel(ctx)
	if err != nil {
		t.Fatalf("OpenTunnel: %v", err)
	}
	return stream, cancel
}

func hello(domain, key string) *Frame {
	return &Frame{Kind: &tunnelv1.TunnelFrame_Hello{Hello: &tunnelv1.Hello{
		Domain: domain, ApiKey: key, AgentId: "agent-1", Version: "test", InitialWindow: 512 << 10,
	}}}
}

func TestServiceRefusals(t *testing.T) {
	leakCheck(t)
	tests := []struct {
		name       string
		authErr    error
		first      *Frame
		wantCode   codes.Code
		wantResult string
	}{
		{"unknown domain", fmt.Errorf("look up %q: %w", "nope.test", ErrUnknownDomain), hello("nope.test", "k"), codes.PermissionDenied, "unknown_domain"},
		{"bad key", fmt.Errorf("check key: %w", ErrBadKey), hello("example.test", "wrong"), codes.Unauthenticated, "unauthenticated"},
		{"store down", errors.New("database is locked"), hello("example.test", "k"), codes.Unavailable, "error"},
		{"first frame not hello", nil, &Frame{Kind: &tunnelv1.TunnelFrame_Ping{Ping: &tunnelv1.Ping{Nonce: 1}}}, codes.InvalidArgument, "error"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, hub, cc, results := startService(t, &fakeAuth{err: tc.authErr})
			stream, _ := openTunnel(t, cc)
			if err := stream.Send(tc.first); err != nil {
				t.Fatalf("Send: %v", err)
			}
			f, err := stream.Recv()
			if status.Code(err) != tc.wantCode {
				t.Fatalf("Recv = %v, %v; want status %v", f, err, tc.wantCode)
			}
			if msg := DescribeRefusal(err); msg == "" || !regexp.MustCompile("^"+tc.wantCode.String()+": ").MatchString(msg) {
				t.Errorf("DescribeRefusal = %q", msg)
			}
			if hub.Total() != 0 {
				t.Errorf("a refused tunnel is in the hub")
			}
			eventually(t, time.Second, "OnConnect", func() bool { return len(results.list()) == 1 })
			if got := results.list()[0]; got != tc.wantResult {
				t.Errorf("OnConnect(%q), want %q", got, tc.wantResult)
			}
		})
	}
}

func TestServiceAccepts(t *testing.T) {
	leakCheck(t)
	auth := &fakeAuth{}
	svc, hub, cc, results := startService(t, auth)
	stream, endCall := openTunnel(t, cc)
	if err := stream.Send(hello("Example.Test", "good-key")); err != nil {
		t.Fatalf("Send: %v", err)
	}
	f, err := stream.Recv()
	if err != nil {
		t.Fatalf("Recv: %v", err)
	}
	acc := f.GetAccepted()
	if acc == nil {
		t.Fatalf("first frame = %v, want Accepted", f)
	}
	if !regexp.MustCompile(`^[0-9a-f]{16}$`).MatchString(acc.SessionId) || acc.PublicUrl != "https://example.test:8443" || acc.InitialWindow != DefaultInitialWindow {
		t.Errorf("Accepted = %v", acc)
	}
	auth.mu.Lock()
	got := auth.calls
	auth.mu.Unlock()
	if len(got) != 1 || got[0] != "Example.Test|good-key" {
		t.Errorf("Authenticate calls = %v", got)
	}

	agent := NewSession(stream, Config{Accept: echoAgent(t), LocalWindow: 512 << 10, PeerWindow: acc.InitialWindow})
	agentDone := make(chan error, 1)
	go func() { agentDone <- agent.Run(context.Background()) }()
	t.Cleanup(func() {
		endCall()
		if _, ok := waitResult(agentDone, 5*time.Second); !ok {
			t.Errorf("agent session did not end")
		}
	})

	eventually(t, time.Second, "the agent in the hub", func() bool { return hub.AgentCount("example.test") == 1 })
	a := hub.Pick("example.test")
	if a == nil || a.AgentID != "agent-1" || a.Domain != "example.test" {
		t.Fatalf("Pick = %+v", a)
	}
	// OnConnect runs after the agent joins the hub and Accepted is sent.
	eventually(t, time.Second, `OnConnect("ok")`, func() bool {
		got := results.list()
		return len(got) == 1 && got[0] == "ok"
	})

	// The agent announced a 512 KiB window: the server may send that much before it reads.
	body := payload(5, 3<<20)
	ctx := testCtx(t, 10*time.Second)
	st, err := a.Session.OpenStream(ctx, &tunnelv1.RequestHead{Method: "POST", Path: "/", ContentLength: int64(len(body))})
	if err != nil {
		t.Fatalf("OpenStream: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	st.mu.Lock()
	credit := st.credit
	st.mu.Unlock()
	if credit != 512<<10 {
		t.Errorf("server stream starts with %d bytes of credit, want the agent's window %d", credit, 512<<10)
	}
	if _, err := st.Write(body); err != nil {
		t.Fatalf("Write: %v", err)
	}
	if err := st.CloseWrite(nil); err != nil {
		t.Fatalf("CloseWrite: %v", err)
	}
	if _, err := st.AwaitResponse(ctx); err != nil {
		t.Fatalf("AwaitResponse: %v", err)
	}
	echo, err := io.ReadAll(st)
	if err != nil || sum(echo) != sum(body) {
		t.Fatalf("echo of %d bytes came back as %d bytes (%v)", len(body), len(echo), err)
	}

	// Drain: GoAway reaches the agent, and with nothing in flight the session closes.
	drained := make(chan struct{})
	go func() {
		svc.Drain(ctx)
		close(drained)
	}()
	select {
	case <-drained:
	case <-ctx.Done():
		t.Fatalf("Drain did not return")
	}
	err, ok := waitResult(agentDone, 2*time.Second)
	if !ok {
		t.Fatalf("agent session still up after Drain")
	}
	if !agent.Draining() {
		t.Errorf("agent never heard GoAway")
	}
	t.Logf("agent session ended: %v", err)
	eventually(t, 2*time.Second, "the hub to forget the agent", func() bool { return hub.Total() == 0 })
}

func TestServiceCloseDomain(t *testing.T) {
	leakCheck(t)
	_, hub, cc, _ := startService(t, &fakeAuth{})
	stream, _ := openTunnel(t, cc)
	if err := stream.Send(hello("example.test", "good-key")); err != nil {
		t.Fatalf("Send: %v", err)
	}
	if f, err := stream.Recv(); err != nil || f.GetAccepted() == nil {
		t.Fatalf("Recv = %v, %v; want Accepted", f, err)
	}
	eventually(t, time.Second, "the agent in the hub", func() bool { return hub.AgentCount("example.test") == 1 })
	hub.CloseDomain("example.test")
	for {
		_, err := stream.Recv()
		if err == nil {
			continue // frames already on their way
		}
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("call ended with %v, want PermissionDenied", err)
		}
		break
	}
	eventually(t, 2*time.Second, "the hub to forget the agent", func() bool { return hub.Total() == 0 })
}

func TestDescribeRefusal(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{status.Error(codes.Unauthenticated, "bad key"), "Unauthenticated: bad key"},
		{status.Error(codes.PermissionDenied, "no such domain"), "PermissionDenied: no such domain"},
		{errors.New("dial tcp: refused"), "dial tcp: refused"},
	}
	for _, tc := range tests {
		if got := DescribeRefusal(tc.err); got != tc.want {
			t.Errorf("DescribeRefusal(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}
