package e2e

import (
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// A gRPC call is an HTTP/2 request like any other: a domain's policy refuses it before its stream
// reaches the agent, and grpc-go turns the gateway's HTTP status into a gRPC code (401 →
// Unauthenticated, 403 → PermissionDenied, 429 → Unavailable).

// pgService is a gRPC target that counts the calls its handlers got and keeps their metadata, so a
// test can tell a call refused at the gateway from one refused by the target.
type pgService struct {
	testgrpc.UnimplementedTestServiceServer
	mu   sync.Mutex
	seen []metadata.MD
}

func (s *pgService) record(ctx context.Context) {
	md, _ := metadata.FromIncomingContext(ctx)
	s.mu.Lock()
	s.seen = append(s.seen, md.Copy())
	s.mu.Unlock()
}

func (s *pgService) calls() []metadata.MD {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]metadata.MD(nil), s.seen...)
}

func (s *pgService) UnaryCall(ctx context.Context, req *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	s.record(ctx)
	return &testgrpc.SimpleResponse{Payload: req.Payload}, nil
}

func (s *pgService) StreamingOutputCall(req *testgrpc.StreamingOutputCallRequest, stream testgrpc.TestService_StreamingOutputCallServer) error {
	s.record(stream.Context())
	for i, p := range req.ResponseParameters {
		if err := stream.Send(&testgrpc.StreamingOutputCallResponse{Payload: htPayload(p.Size, byte(i))}); err != nil {
			return err
		}
	}
	return nil
}

// pgServe serves svc over h2c on 127.0.0.1 and returns its http:// URL.
func pgServe(t *testing.T, svc *pgService) string {
	t.Helper()
	s := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(s, svc)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(s.Stop)
	return "http://" + ln.Addr().String()
}

// TestPolicyGRPC: on each store, a gRPC service behind an agent, called through the gateway over TLS
// h2, under an IP deny rule, basic auth and a rate limit in turn: refused calls and streams never
// reach a handler, and the credentials that let a call through never reach the service.
func TestPolicyGRPC(t *testing.T) {
	t.Parallel()
	for _, st := range gwStores {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			const domain = "grpc.policy.test"
			svc := &pgService{}
			g := startGateway(t, gatewayOptions{DSN: st.dsn(t)})
			g.startAgent(domain, g.register(domain), pgServe(t, svc))
			c := htGRPCClient(t, g, domain)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()

			unary := func(ctx context.Context) error {
				_, err := c.UnaryCall(ctx, &testgrpc.SimpleRequest{Payload: htPayload(10, 1)})
				return err
			}
			// stream opens a server stream and reads it to its end: a refusal shows on the first Recv.
			stream := func(ctx context.Context) error {
				s, err := c.StreamingOutputCall(ctx, &testgrpc.StreamingOutputCallRequest{
					ResponseParameters: []*testgrpc.ResponseParameters{{Size: 5}, {Size: 7}}})
				if err != nil {
					return err
				}
				for n := 0; ; n++ {
					_, err := s.Recv()
					if errors.Is(err, io.EOF) && n != 2 {
						return status.Errorf(codes.DataLoss, "the stream ended after %d of 2 messages", n)
					}
					if errors.Is(err, io.EOF) {
						return nil
					}
					if err != nil {
						return err
					}
				}
			}
			expect := func(what string, want codes.Code, err error) {
				t.Helper()
				if got := status.Code(err); got != want {
					t.Errorf("%s: %v (code %v), want %v", what, err, got, want)
				}
			}
			basic := func(user, pass string) context.Context {
				return metadata.AppendToOutgoingContext(ctx, "authorization",
					"Basic "+base64.StdEncoding.EncodeToString([]byte(user+":"+pass)))
			}

			setPolicy(t, g, domain, `{"ip_deny": ["127.0.0.0/8", "::1"]}`)
			expect("unary from a denied address", codes.PermissionDenied, unary(ctx))
			expect("stream from a denied address", codes.PermissionDenied, stream(ctx))

			setPolicy(t, g, domain, `{"basic_auth": [{"user": "ops", "password": "correct horse"}]}`)
			expect("unary without credentials", codes.Unauthenticated, unary(ctx))
			expect("stream without credentials", codes.Unauthenticated, stream(ctx))
			expect("unary with a wrong password", codes.Unauthenticated, unary(basic("ops", "wrong")))
			expect("stream of an unknown user", codes.Unauthenticated, stream(basic("nobody", "correct horse")))
			if n := len(svc.calls()); n != 0 {
				t.Fatalf("refused calls reached the service: %d handler calls, want 0", n)
			}
			expect("unary with the right credentials", codes.OK, unary(basic("ops", "correct horse")))
			expect("stream with the right credentials", codes.OK, stream(basic("ops", "correct horse")))
			calls := svc.calls()
			if len(calls) != 2 {
				t.Fatalf("the service got %d calls, want 2", len(calls))
			}
			for i, md := range calls {
				if v := md.Get("authorization"); len(v) != 0 {
					t.Errorf("call %d: the service saw authorization %q", i, v)
				}
				if v := md.Get("x-hopgate-user"); len(v) != 1 || v[0] != "ops" {
					t.Errorf("call %d: the service saw x-hopgate-user %q, want [ops]", i, v)
				}
			}

			// A token every 10 s: the burst of 2 passes, the next call is refused at once.
			setPolicy(t, g, domain, `{"rate_limit": {"rps": 0.1, "burst": 2}}`)
			expect("first call of the burst", codes.OK, unary(ctx))
			expect("second call of the burst", codes.OK, stream(ctx))
			expect("unary over the limit", codes.Unavailable, unary(ctx))
			expect("stream over the limit", codes.Unavailable, stream(ctx))
			if n := len(svc.calls()); n != 4 {
				t.Errorf("the service got %d calls, want 4 (2 with credentials, the burst of 2)", n)
			}
		})
	}
}

// pgExpectUnary makes one unary call to domain through g and fails unless it ends with want.
func pgExpectUnary(t *testing.T, g *gateway, domain string, want codes.Code) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := htGRPCClient(t, g, domain).UnaryCall(ctx, &testgrpc.SimpleRequest{})
	if got := status.Code(err); got != want {
		t.Errorf("gRPC call to %s: %v (code %v), want %v", domain, err, got, want)
	}
}
