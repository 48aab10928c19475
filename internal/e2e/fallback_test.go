package e2e

import (
	"context"
	"io"
	"net/http"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/hopgate/hopgate/internal/tunnel"
	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

// TestTunnelOverNetHTTPFallback: an agent that offers only "h2" (an older agent, or a TLS proxy in
// between that strips the tunnel's ALPN) is served by net/http's HTTP/2 server and grpc's ServeHTTP
// instead of grpc's own transport, and still carries requests.
func TestTunnelOverNetHTTPFallback(t *testing.T) {
	t.Parallel()
	const domain = "fallback.example.test"
	g := startGateway(t, gatewayOptions{})
	key := g.register(domain)

	conf := g.tlsConfig()
	conf.ServerName = "127.0.0.1"
	conn, err := grpc.NewClient(g.addr, grpc.WithTransportCredentials(credentials.NewTLS(conf)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := tunnelv1.NewTunnelServiceClient(conn).OpenTunnel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	hello := &tunnelv1.Hello{Domain: domain, ApiKey: key, AgentId: "fallback", InitialWindow: tunnel.DefaultInitialWindow}
	if err := stream.Send(&tunnelv1.TunnelFrame{Kind: &tunnelv1.TunnelFrame_Hello{Hello: hello}}); err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil || first.GetAccepted() == nil {
		t.Fatalf("hello answered %v, %v", first, err)
	}
	sess := tunnel.NewSession(stream, tunnel.Config{
		PeerWindow: first.GetAccepted().InitialWindow,
		Accept: func(st *tunnel.Stream) {
			defer st.Close()
			_ = st.SendResponse(&tunnelv1.ResponseHead{Status: 200, ContentLength: -1})
			_, _ = st.Write([]byte("served over the fallback path"))
			_ = st.CloseWrite(nil)
		},
	})
	done := make(chan error, 1)
	go func() { done <- sess.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("session did not end")
		}
	})

	res, err := g.httpClient(false).Get(g.url(domain, "/"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || string(body) != "served over the fallback path" {
		t.Fatalf("%d %q", res.StatusCode, body)
	}
}
