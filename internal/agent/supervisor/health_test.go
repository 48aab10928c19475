package supervisor

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"slices"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/hopgate/hopgate/internal/tunnel"
	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

// fakeGateway accepts one tunnel with the given capabilities and hands on every frame after Hello
// (and the Hello to hellos, if set).
type fakeGateway struct {
	tunnelv1.UnimplementedTunnelServiceServer
	caps   []string
	frames chan *tunnelv1.TunnelFrame
	hellos chan *tunnelv1.Hello
}

func (g *fakeGateway) OpenTunnel(stream tunnelv1.TunnelService_OpenTunnelServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	if g.hellos != nil {
		select {
		case g.hellos <- first.GetHello():
		default:
		}
	}
	if err := stream.Send(&tunnelv1.TunnelFrame{Kind: &tunnelv1.TunnelFrame_Accepted{Accepted: &tunnelv1.Accepted{
		SessionId: "s", InitialWindow: tunnel.DefaultInitialWindow, Capabilities: g.caps,
	}}}); err != nil {
		return err
	}
	for {
		f, err := stream.Recv()
		if err != nil {
			return nil
		}
		select {
		case g.frames <- f:
		case <-stream.Context().Done():
			return nil
		}
	}
}

// verifyNoLeaks checks for leaked goroutines once every later cleanup (serveGateway's) has run.
func verifyNoLeaks(t *testing.T) { t.Cleanup(func() { goleak.VerifyNone(t) }) }

// serveGateway serves g on a loopback port until the test ends and returns a connection to it.
func serveGateway(t *testing.T, g tunnelv1.TunnelServiceServer) *grpc.ClientConn {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(tunnel.ServerOptions()...)
	tunnelv1.RegisterTunnelServiceServer(srv, g)
	go func() { _ = srv.Serve(ln) }()
	conn, err := grpc.NewClient(ln.Addr().String(), append(tunnel.DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = conn.Close()
		srv.Stop()
	})
	return conn
}

// TestHealthCapability: the agent reports health (once at the start, then on each change) only to
// a gateway that announced "health"; to an older gateway it sends no Health frame.
func TestHealthCapability(t *testing.T) {
	verifyNoLeaks(t)
	for _, tc := range []struct {
		name string
		caps []string
		want bool
	}{
		{"gateway with health", []string{tunnel.CapInlineBody, tunnel.CapHealth}, true},
		{"older gateway", []string{tunnel.CapInlineBody}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := &fakeGateway{caps: tc.caps, frames: make(chan *tunnelv1.TunnelFrame, 16)}
			conn := serveGateway(t, g)

			// state holds the paths and the channel closed at their next change, as health.Monitor does.
			type snapshot struct {
				paths   []*tunnelv1.PathHealth
				changed chan struct{}
			}
			state := make(chan snapshot, 1)
			state <- snapshot{[]*tunnelv1.PathHealth{{Path: "/", Up: true}}, make(chan struct{})}
			current := func() ([]*tunnelv1.PathHealth, <-chan struct{}) {
				s := <-state
				state <- s
				return s.paths, s.changed
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() {
				done <- Run(ctx, Options{Domain: "app.test", Conn: conn, Health: current, DrainTimeout: time.Second})
			}()
			defer func() {
				cancel()
				<-done
			}()

			next := func(d time.Duration) *tunnelv1.Health {
				deadline := time.After(d)
				for {
					select {
					case f := <-g.frames:
						if h := f.GetHealth(); h != nil {
							return h
						}
					case <-deadline:
						return nil
					}
				}
			}
			if !tc.want {
				if h := next(500 * time.Millisecond); h != nil {
					t.Fatalf("sent %v to a gateway without the capability", h)
				}
				return
			}
			if h := next(5 * time.Second); h == nil || len(h.Paths) != 1 || !h.Paths[0].Up {
				t.Fatalf("first report = %v, want / up", h)
			}
			old := <-state
			state <- snapshot{[]*tunnelv1.PathHealth{{Path: "/", Up: false}}, make(chan struct{})}
			close(old.changed)
			if h := next(5 * time.Second); h == nil || len(h.Paths) != 1 || h.Paths[0].Up {
				t.Fatalf("report after the change = %v, want / down", h)
			}
		})
	}
}

// TestHelloAnnouncesRawStreams: the agent tells the gateway it serves raw streams, so that the
// gateway opens TCP and TLS-passthrough streams to it (and to no older agent).
func TestHelloAnnouncesRawStreams(t *testing.T) {
	verifyNoLeaks(t)
	g := &fakeGateway{frames: make(chan *tunnelv1.TunnelFrame, 16), hellos: make(chan *tunnelv1.Hello, 1)}
	conn := serveGateway(t, g)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, Options{Domain: "app.test", Conn: conn, DrainTimeout: time.Second}) }()
	defer func() {
		cancel()
		<-done
	}()
	select {
	case h := <-g.hellos:
		if !slices.Contains(h.GetCapabilities(), tunnel.CapRawStreams) {
			t.Errorf("Hello capabilities %q lack %q", h.GetCapabilities(), tunnel.CapRawStreams)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no Hello")
	}
}

// silentGateway takes each OpenTunnel call's Hello and never answers it, as a gateway behind a
// path that went silent after the handshake would.
type silentGateway struct {
	tunnelv1.UnimplementedTunnelServiceServer
	hellos chan *tunnelv1.Hello
}

func (g *silentGateway) OpenTunnel(stream tunnelv1.TunnelService_OpenTunnelServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	g.hellos <- first.GetHello()
	<-stream.Context().Done()
	return nil
}

// TestAttemptTimeout: an attempt whose Hello gets no answer ends at the attempt timeout and the
// agent tries again, instead of waiting for Accepted for good.
func TestAttemptTimeout(t *testing.T) {
	verifyNoLeaks(t)
	g := &silentGateway{hellos: make(chan *tunnelv1.Hello, 8)}
	conn := serveGateway(t, g)
	const limit = 200 * time.Millisecond
	reasons := make(chan error, 8)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{
			Domain: "app.test", Conn: conn, DrainTimeout: time.Second, attempt: limit,
			sleep:  func(ctx context.Context, _ time.Duration) error { return ctx.Err() },
			Logger: slog.New(reasonRecorder{reasons}),
		})
	}()
	defer func() {
		cancel()
		<-done
	}()
	start := time.Now()
	for i := range 2 {
		select {
		case <-g.hellos:
		case <-time.After(5 * time.Second):
			t.Fatalf("attempt %d: no Hello within 5 s", i+1)
		}
	}
	if el := time.Since(start); el < limit {
		t.Errorf("second attempt %s after the first, before the attempt timeout %s", el, limit)
	}
	select {
	case err := <-reasons:
		if !errors.Is(err, errAttemptTimeout) {
			t.Errorf("attempt ended with %v, want %v", err, errAttemptTimeout)
		}
	case <-time.After(5 * time.Second):
		t.Error("no reconnect logged")
	}
}

// reasonRecorder is a slog handler that hands on the reason of each "tunnel down" record.
type reasonRecorder struct{ reasons chan error }

func (reasonRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (h reasonRecorder) Handle(_ context.Context, r slog.Record) error {
	r.Attrs(func(a slog.Attr) bool {
		if err, ok := a.Value.Any().(error); ok && a.Key == "reason" {
			select {
			case h.reasons <- err:
			default:
			}
		}
		return true
	})
	return nil
}
func (h reasonRecorder) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h reasonRecorder) WithGroup(string) slog.Handler      { return h }
