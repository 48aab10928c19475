package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/hopgate/hopgate/internal/testutil/hoptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// htTimeout bounds every single exchange these tests make.
const htTimeout = 15 * time.Second

// htServe starts a local target (the private service) on 127.0.0.1, closed at cleanup.
func htServe(t testing.TB, h http.Handler) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(h)
	t.Cleanup(func() {
		s.CloseClientConnections()
		s.Close()
	})
	return s
}

// htAgent registers domain on g and connects an agent for it towards target.
func htAgent(t testing.TB, g *gateway, domain, target string, extra ...string) {
	t.Helper()
	g = g.forTest(t)
	g.startAgent(domain, g.register(domain), target, extra...)
}

// htSeen is what a local target reports about the request it got.
type htSeen struct {
	Method  string      `json:"method"`
	Host    string      `json:"host"`
	URI     string      `json:"uri"`
	Proto   string      `json:"proto"`
	TLS     bool        `json:"tls"`
	Header  http.Header `json:"header"`
	Trailer http.Header `json:"trailer"`
	Body    string      `json:"body"`
}

// htEchoRequest answers with the request as the target saw it (htSeen as JSON).
func htEchoRequest(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(htSeen{Method: r.Method, Host: r.Host, URI: r.RequestURI, Proto: r.Proto,
		TLS: r.TLS != nil, Header: r.Header, Trailer: r.Trailer, Body: string(body)})
}

// htDo sends req (bounded by htTimeout) and returns the status, headers and whole body.
func htDo(t testing.TB, c *http.Client, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(req.Context(), htTimeout)
	defer cancel()
	res, err := c.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("read body of %s %s: %v", req.Method, req.URL, err)
	}
	return res, b
}

// htGetSeen GETs url with hdr and decodes what the echoing target saw.
func htGetSeen(t testing.TB, c *http.Client, url string, hdr http.Header) (*http.Response, htSeen) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	res, b := htDo(t, c, req)
	var seen htSeen
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: status %d: %s", url, res.StatusCode, b)
	}
	if err := json.Unmarshal(b, &seen); err != nil {
		t.Fatalf("GET %s: body is not what the target saw (%v): %q", url, err, b)
	}
	return res, seen
}

// htPlainClient sends every request to addr over plain HTTP and does not follow redirects.
func htPlainClient(t testing.TB, addr string) *http.Client {
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return dialer.DialContext(ctx, network, addr)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: htTimeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// htWritePEM writes cert as a PEM file in dir and returns its path.
func htWritePEM(t testing.TB, dir string, cert *x509.Certificate) string {
	t.Helper()
	path, err := hoptest.WriteCertFile(dir, "target-ca.pem", cert)
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// htSelfSigned makes a self-signed certificate for 127.0.0.1 and localhost, and the PEM file that trusts it.
func htSelfSigned(t testing.TB) (tls.Certificate, string) {
	t.Helper()
	c, err := hoptest.SelfSigned(t.TempDir(), "target")
	if err != nil {
		t.Fatal(err)
	}
	return c.Cert, c.CertFile
}

// htGRPCEnd is how a blocking gRPC handler ended.
type htGRPCEnd struct {
	err         error         // the handler's ctx.Err() (nil: it was never cancelled)
	hadDeadline bool          // the handler's context carried a deadline
	remaining   time.Duration // time left until that deadline when the handler started
}

// htGRPCService is grpc-go's interop TestService as a local target. The metadata key x-mode selects
// a behaviour of UnaryCall: "" answers, "block" waits for the context to end and reports it.
type htGRPCService struct {
	testgrpc.UnimplementedTestServiceServer
	started chan struct{}  // a blocking handler began
	ended   chan htGRPCEnd // a blocking handler's context ended
}

func htNewGRPCService() *htGRPCService {
	return &htGRPCService{started: make(chan struct{}, 4), ended: make(chan htGRPCEnd, 4)}
}

// htTrailers are the custom metadata every successful handler attaches.
func htTrailers(ctx context.Context) {
	_ = grpc.SetHeader(ctx, metadata.Pairs("x-custom-header", "hv"))
	tr := metadata.Pairs("x-custom-trailer", "tv", "x-custom-trailer-bin", string([]byte{0, 1, 2, 0xff}))
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		tr.Set("x-seen-authority", md.Get(":authority")...)
	}
	if dl, ok := ctx.Deadline(); ok {
		tr.Set("x-deadline-ms", strconv.FormatInt(time.Until(dl).Milliseconds(), 10))
	}
	_ = grpc.SetTrailer(ctx, tr)
}

func htEchoStatus(s *testgrpc.EchoStatus) error {
	if s == nil || s.Code == 0 {
		return nil
	}
	return status.Error(codes.Code(s.Code), s.Message)
}

func htPayload(n int32, seed byte) *testgrpc.Payload {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i%251)
	}
	return &testgrpc.Payload{Body: b}
}

func (s *htGRPCService) UnaryCall(ctx context.Context, req *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if mode := md.Get("x-mode"); len(mode) > 0 && mode[0] == "block" {
		end := htGRPCEnd{}
		if dl, ok := ctx.Deadline(); ok {
			end.hadDeadline, end.remaining = true, time.Until(dl)
		}
		s.started <- struct{}{}
		select {
		case <-ctx.Done():
			end.err = ctx.Err()
		case <-time.After(10 * time.Second):
		}
		s.ended <- end
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	htTrailers(ctx)
	if err := htEchoStatus(req.ResponseStatus); err != nil {
		return nil, err
	}
	return &testgrpc.SimpleResponse{Payload: req.Payload}, nil
}

func (s *htGRPCService) StreamingOutputCall(req *testgrpc.StreamingOutputCallRequest, stream testgrpc.TestService_StreamingOutputCallServer) error {
	htTrailers(stream.Context())
	for i, p := range req.ResponseParameters {
		if err := stream.Send(&testgrpc.StreamingOutputCallResponse{Payload: htPayload(p.Size, byte(i))}); err != nil {
			return err
		}
		if p.IntervalUs > 0 {
			time.Sleep(time.Duration(p.IntervalUs) * time.Microsecond)
		}
	}
	return htEchoStatus(req.ResponseStatus)
}

func (s *htGRPCService) StreamingInputCall(stream testgrpc.TestService_StreamingInputCallServer) error {
	htTrailers(stream.Context())
	var total int32
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(&testgrpc.StreamingInputCallResponse{AggregatedPayloadSize: total})
		}
		if err != nil {
			return err
		}
		total += int32(len(req.Payload.GetBody()))
	}
}

func (s *htGRPCService) FullDuplexCall(stream testgrpc.TestService_FullDuplexCallServer) error {
	htTrailers(stream.Context())
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		for i, p := range req.ResponseParameters {
			if err := stream.Send(&testgrpc.StreamingOutputCallResponse{Payload: htPayload(p.Size, byte(i))}); err != nil {
				return err
			}
		}
	}
}

// htServeGRPC serves svc on 127.0.0.1 (h2c, or TLS with cert when not nil) and returns its address.
func htServeGRPC(t testing.TB, svc *htGRPCService, cert *tls.Certificate) string {
	t.Helper()
	var opts []grpc.ServerOption
	if cert != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{*cert}})))
	}
	s := grpc.NewServer(opts...)
	testgrpc.RegisterTestServiceServer(s, svc)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(s.Stop)
	return ln.Addr().String()
}

// htGRPCClient dials domain:port like a real visitor, over TCP to the gateway, trusting its CA.
func htGRPCClient(t testing.TB, g *gateway, domain string) testgrpc.TestServiceClient {
	t.Helper()
	_, port, _ := net.SplitHostPort(g.addr)
	// No ServerName: grpc-go would send it as :authority instead of domain:port.
	conf := g.tlsConfig()
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	cc, err := grpc.NewClient("passthrough:///"+net.JoinHostPort(domain, port),
		grpc.WithTransportCredentials(credentials.NewTLS(conf)),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, "tcp", g.addr)
		}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(8<<20), grpc.MaxCallSendMsgSize(8<<20)),
	)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return testgrpc.NewTestServiceClient(cc)
}
