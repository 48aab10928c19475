package supervisor

import (
	"context"
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

// TestHealthCapability: the agent reports health (once at the start, then on each change) only to
// a gateway that announced "health"; to an older gateway it sends no Health frame.
func TestHealthCapability(t *testing.T) {
	defer goleak.VerifyNone(t)
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
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			srv := grpc.NewServer(tunnel.ServerOptions()...)
			tunnelv1.RegisterTunnelServiceServer(srv, g)
			go func() { _ = srv.Serve(ln) }()
			defer srv.Stop()
			conn, err := grpc.NewClient(ln.Addr().String(), append(tunnel.DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()

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
	defer goleak.VerifyNone(t)
	g := &fakeGateway{frames: make(chan *tunnelv1.TunnelFrame, 16), hellos: make(chan *tunnelv1.Hello, 1)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(tunnel.ServerOptions()...)
	tunnelv1.RegisterTunnelServiceServer(srv, g)
	go func() { _ = srv.Serve(ln) }()
	defer srv.Stop()
	conn, err := grpc.NewClient(ln.Addr().String(), append(tunnel.DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
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
