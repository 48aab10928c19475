package tunnelsvc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hopgate/hopgate/internal/tunnel"
	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"

	"github.com/hopgate/hopgate/internal/testutil/poll"
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

// startService serves a real Service on loopback, through ServeConn as the edge hands it connections.
func startService(t *testing.T, auth Authenticator) (*Service, *Hub, *grpc.ClientConn, *connectResults) {
	t.Helper()
	hub := NewHub(nil)
	results := &connectResults{}
	svc := NewService(hub, auth, ServiceOptions{
		PublicURL: func(d string) string { return "https://" + d + ":8443" },
		OnConnect: results.add,
	})
	return svc, hub, serveLoopback(t, svc), results
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

// payload is n bytes that differ from one seed to another.
func payload(seed byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

func hello(domain, key string) *tunnel.Frame {
	return &tunnel.Frame{Kind: &tunnelv1.TunnelFrame_Hello{Hello: &tunnelv1.Hello{
		Domain: domain, ApiKey: key, AgentId: "agent-1", Version: "test", InitialWindow: 512 << 10,
	}}}
}

func TestServiceRefusals(t *testing.T) {
	leakCheck(t)
	tests := []struct {
		name       string
		authErr    error
		first      *tunnel.Frame
		wantCode   codes.Code
		wantResult string
	}{
		{"unknown domain", fmt.Errorf("look up %q: %w", "nope.test", ErrUnknownDomain), hello("nope.test", "k"), codes.PermissionDenied, "unknown_domain"},
		{"bad key", fmt.Errorf("check key: %w", ErrBadKey), hello("example.test", "wrong"), codes.Unauthenticated, "unauthenticated"},
		{"store down", errors.New("database is locked"), hello("example.test", "k"), codes.Unavailable, "error"},
		{"first frame not hello", nil, &tunnel.Frame{Kind: &tunnelv1.TunnelFrame_Ping{Ping: &tunnelv1.Ping{Nonce: 1}}}, codes.InvalidArgument, "error"},
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
			if hub.Total() != 0 {
				t.Errorf("a refused tunnel is in the hub")
			}
			poll.Until(t, time.Second, "OnConnect", func() bool { return len(results.list()) == 1 })
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
	if !regexp.MustCompile(`^[0-9a-f]{16}$`).MatchString(acc.SessionId) || acc.PublicUrl != "https://example.test:8443" || acc.InitialWindow != tunnel.DefaultInitialWindow {
		t.Errorf("Accepted = %v", acc)
	}
	auth.mu.Lock()
	got := auth.calls
	auth.mu.Unlock()
	if len(got) != 1 || got[0] != "Example.Test|good-key" {
		t.Errorf("Authenticate calls = %v", got)
	}

	// "/gate" reads its body only once gate is closed; everything else is echoed.
	gate := make(chan struct{})
	echo := echoAgent(t)
	accept := func(st *tunnel.Stream) {
		if st.Request().Path == "/gate" {
			<-gate
			_, _ = io.Copy(io.Discard, st)
			_ = st.SendResponse(&tunnelv1.ResponseHead{Status: 204, EndStream: true})
			return
		}
		echo(st)
	}
	agent := tunnel.NewSession(stream, tunnel.Config{Accept: accept, LocalWindow: 512 << 10, PeerWindow: acc.InitialWindow})
	agentDone := make(chan error, 1)
	go func() { agentDone <- agent.Run(context.Background()) }()
	t.Cleanup(func() {
		endCall()
		if _, ok := waitResult(agentDone, 5*time.Second); !ok {
			t.Errorf("agent session did not end")
		}
	})

	poll.Until(t, time.Second, "the agent in the hub", func() bool { return hub.AgentCount("example.test") == 1 })
	a := hub.Pick("example.test")
	if a == nil || a.AgentID != "agent-1" || a.Domain != "example.test" {
		t.Fatalf("Pick = %+v", a)
	}
	// OnConnect runs after the agent joins the hub and Accepted is sent.
	poll.Until(t, time.Second, `OnConnect("ok")`, func() bool {
		got := results.list()
		return len(got) == 1 && got[0] == "ok"
	})

	// The agent announced a 512 KiB window: the server may send that much before it reads, and not
	// a byte more.
	ctx := testCtx(t, 10*time.Second)
	gated, err := a.OpenStream(ctx, &tunnelv1.RequestHead{Method: "POST", Path: "/gate", ContentLength: 512<<10 + 1})
	if err != nil {
		t.Fatalf("OpenStream: %v", err)
	}
	t.Cleanup(func() { _ = gated.Close() })
	wrote := make(chan error, 1)
	go func() { _, err := gated.Write(make([]byte, 512<<10)); wrote <- err }()
	if err, ok := waitResult(wrote, 5*time.Second); !ok || err != nil {
		t.Fatalf("writing the agent's window of 512 KiB before it reads: done %v, %v", ok, err)
	}
	wroteMore := make(chan error, 1)
	go func() { _, err := gated.Write([]byte{1}); wroteMore <- err }()
	if _, ok := waitResult(wroteMore, 300*time.Millisecond); ok {
		t.Fatalf("the server sent more than the agent's window before the agent read")
	}
	close(gate)
	if err, ok := waitResult(wroteMore, 5*time.Second); !ok || err != nil {
		t.Fatalf("the last byte after the agent read: done %v, %v", ok, err)
	}
	_ = gated.CloseWrite(nil)
	if _, err := gated.AwaitResponse(ctx); err != nil {
		t.Fatalf("AwaitResponse: %v", err)
	}
	hub.Release(a)

	echoThrough(t, ctx, a, payload(5, 3<<20))

	// Shutdown: GoAway reaches the agent, and with nothing in flight the session closes.
	drained := make(chan struct{})
	go func() {
		if err := svc.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		close(drained)
	}()
	select {
	case <-drained:
	case <-ctx.Done():
		t.Fatalf("Shutdown did not return")
	}
	err, ok := waitResult(agentDone, 2*time.Second)
	if !ok {
		t.Fatalf("agent session still up after Shutdown")
	}
	if !agent.Draining() {
		t.Errorf("agent never heard GoAway")
	}
	t.Logf("agent session ended: %v", err)
	poll.Until(t, 2*time.Second, "the hub to forget the agent", func() bool { return hub.Total() == 0 })
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
	poll.Until(t, time.Second, "the agent in the hub", func() bool { return hub.AgentCount("example.test") == 1 })
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
	poll.Until(t, 2*time.Second, "the hub to forget the agent", func() bool { return hub.Total() == 0 })
}
