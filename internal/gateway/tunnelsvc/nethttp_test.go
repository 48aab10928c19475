package tunnelsvc

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log"
	"net/http/httptest"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/hopgate/hopgate/internal/testutil/poll"
	"github.com/hopgate/hopgate/internal/tunnel"
)

// TestServiceOverNetHTTP serves the tunnel through the compatibility path: net/http's HTTP/2 server
// calling ServeHTTP, as the edge does for an agent whose TLS connection negotiated "h2" only. A
// tunnel comes up, carries a request both ways, and Shutdown ends it with GoAway and leaves nothing
// running, as on grpc's own transport (TestServiceAccepts).
func TestServiceOverNetHTTP(t *testing.T) {
	leakCheck(t)
	hub := NewHub(nil)
	svc := NewService(hub, &fakeAuth{}, ServiceOptions{})
	srv := httptest.NewUnstartedServer(svc)
	srv.EnableHTTP2 = true
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	creds := credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: "example.com"})
	cc, err := grpc.NewClient("passthrough:///"+srv.Listener.Addr().String(), append(tunnel.DialOptions(), grpc.WithTransportCredentials(creds))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })

	stream, endCall := openTunnel(t, cc)
	if err := stream.Send(hello("example.test", "good-key")); err != nil {
		t.Fatalf("Send: %v", err)
	}
	f, err := stream.Recv()
	if err != nil || f.GetAccepted() == nil {
		t.Fatalf("first frame = %v, %v; want Accepted", f, err)
	}
	// LocalWindow is what hello() announces.
	agent := tunnel.NewSession(stream, tunnel.Config{Accept: echoAgent(t), LocalWindow: 512 << 10, PeerWindow: f.GetAccepted().InitialWindow})
	agentDone := make(chan error, 1)
	go func() { agentDone <- agent.Run(context.Background()) }()
	t.Cleanup(func() {
		endCall()
		if _, ok := waitResult(agentDone, 5*time.Second); !ok {
			t.Errorf("agent session did not end")
		}
	})
	poll.Until(t, 2*time.Second, "the agent in the hub", func() bool { return hub.AgentCount("example.test") == 1 })

	ctx := testCtx(t, 10*time.Second)
	a := hub.Pick("example.test")
	echoThrough(t, ctx, a, payload(9, 1<<20))
	hub.Release(a)

	if err := svc.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if _, ok := waitResult(agentDone, 2*time.Second); !ok {
		t.Fatalf("agent session still up after Shutdown")
	}
	if !agent.Draining() {
		t.Errorf("agent never heard GoAway")
	}
	poll.Until(t, 2*time.Second, "the hub to forget the agent", func() bool { return hub.Total() == 0 })
}
