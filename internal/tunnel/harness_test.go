package tunnel

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// The tests in this package run both ends of real tunnels: a grpc.Server on 127.0.0.1:0 whose
// handler wraps the server stream in a Session (the server role, which opens streams), and a grpc
// client whose OpenTunnel call is wrapped in a Session with an Accept handler (the agent role).

// leakCheck fails the test if goroutines outlive it. Registered first, it runs after every other
// cleanup, so the tunnels, connections and servers of the test are already gone.
func leakCheck(t *testing.T) {
	t.Helper()
	t.Cleanup(func() { goleak.VerifyNone(t) })
}

// testTunnelServer is a TunnelService that skips the handshake: every call becomes a server session.
type testTunnelServer struct {
	tunnelv1.UnimplementedTunnelServiceServer
	cfg  Config
	wrap func(FrameConn) FrameConn
	// grpcCodec: the server runs grpc's own proto codec, as a gateway from before the tunnel codec.
	grpcCodec bool
	sessions  chan serverEnd
}

type serverEnd struct {
	sess *Session
	conn FrameConn
	done chan error // the result of Run, once
}

func (ts *testTunnelServer) OpenTunnel(stream grpc.BidiStreamingServer[tunnelv1.TunnelFrame, tunnelv1.TunnelFrame]) error {
	var conn FrameConn = stream
	if !ts.grpcCodec {
		conn = WrapGRPC(stream)
	}
	if ts.wrap != nil {
		conn = ts.wrap(conn)
	}
	end := serverEnd{sess: NewSession(conn, ts.cfg), conn: conn, done: make(chan error, 1)}
	select {
	case ts.sessions <- end:
	case <-stream.Context().Done():
		return stream.Context().Err()
	}
	end.done <- end.sess.Run(stream.Context())
	return nil
}

type harnessOptions struct {
	// server configures every server session; wrapServer, if set, sits between it and grpc.
	server     Config
	wrapServer func(FrameConn) FrameConn
	// grpcCodec makes the client use grpc's own proto codec, as an agent without the tunnel codec does;
	// serverGRPCCodec the same for the server.
	grpcCodec, serverGRPCCodec bool
}

// harness is one grpc server on loopback and one client connection to it.
type harness struct {
	t         *testing.T
	srv       *testTunnelServer
	cc        *grpc.ClientConn
	grpcCodec bool
}

func newHarness(t *testing.T, opts harnessOptions) *harness {
	t.Helper()
	srv := &testTunnelServer{cfg: opts.server, wrap: opts.wrapServer, sessions: make(chan serverEnd), grpcCodec: opts.serverGRPCCodec}
	serverOpts := ServerOptions()
	if opts.serverGRPCCodec {
		serverOpts = nil
	}
	gs := grpc.NewServer(serverOpts...)
	tunnelv1.RegisterTunnelServiceServer(gs, srv)
	var dialOpts []grpc.DialOption
	if !opts.grpcCodec {
		dialOpts = DialOptions()
	}
	cc := startGRPC(t, gs, dialOpts...)
	return &harness{t: t, srv: srv, cc: cc, grpcCodec: opts.grpcCodec}
}

// startGRPC serves gs on a fresh loopback port and returns a client connection to it; both are
// stopped when the test ends.
func startGRPC(t *testing.T, gs *grpc.Server, dialOpts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	served := make(chan error, 1)
	go func() { served <- gs.Serve(lis) }()
	t.Cleanup(func() {
		gs.Stop()
		if err := <-served; err != nil {
			t.Errorf("grpc Serve: %v", err)
		}
	})
	cc, err := grpc.NewClient("passthrough:///"+lis.Addr().String(), append(dialOpts, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatalf("grpc client: %v", err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// tunnelPair is both ends of one tunnel.
type tunnelPair struct {
	server, agent         *Session
	serverConn, agentConn FrameConn
	serverDone, agentDone chan error
	// endCall cancels the agent's OpenTunnel call.
	endCall context.CancelFunc
}

// dial opens one tunnel; agent configures the agent end, wrapAgent (optional) sits between it and grpc.
func (h *harness) dial(agent Config, wrapAgent func(FrameConn) FrameConn) *tunnelPair {
	t := h.t
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := tunnelv1.NewTunnelServiceClient(h.cc).OpenTunnel(ctx)
	if err != nil {
		cancel()
		t.Fatalf("OpenTunnel: %v", err)
	}
	var conn FrameConn = stream
	if !h.grpcCodec {
		conn = WrapGRPC(stream)
	}
	if wrapAgent != nil {
		conn = wrapAgent(conn)
	}
	p := &tunnelPair{agent: NewSession(conn, agent), agentConn: conn, agentDone: make(chan error, 1), endCall: cancel}
	go func() { p.agentDone <- p.agent.Run(context.Background()) }()
	t.Cleanup(func() {
		cancel()
		p.agent.Close(nil)
		if _, ok := waitResult(p.agentDone, 5*time.Second); !ok {
			t.Errorf("agent session did not end")
		}
		if p.serverDone != nil {
			if _, ok := waitResult(p.serverDone, 5*time.Second); !ok {
				t.Errorf("server session did not end")
			}
		}
	})
	select {
	case end := <-h.srv.sessions:
		p.server, p.serverConn, p.serverDone = end.sess, end.conn, end.done
	case <-time.After(5 * time.Second):
		t.Fatalf("server never saw the tunnel")
	}
	return p
}

// waitResult takes the one result ch will carry; results are re-queued so that later waits see them too.
func waitResult(ch chan error, d time.Duration) (error, bool) {
	select {
	case err := <-ch:
		ch <- err
		return err, true
	case <-time.After(d):
		return nil, false
	}
}

// testCtx is a context bounded by d and by the test.
func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// payload is n deterministic pseudo-random bytes named by seed.
func payload(seed uint64, n int) []byte {
	var s [32]byte
	s[0], s[1] = byte(seed), byte(seed>>8)
	s[2], s[3] = byte(n), byte(n>>8)
	b := make([]byte, n)
	_, _ = rand.NewChaCha8(s).Read(b)
	return b
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func header(name string, values ...string) *tunnelv1.Header {
	return &tunnelv1.Header{Name: name, Values: values}
}

// headerValue is the first value of name in hs, or "".
func headerValue(hs []*tunnelv1.Header, name string) string {
	for _, h := range hs {
		if h.Name == name && len(h.Values) > 0 {
			return h.Values[0]
		}
	}
	return ""
}

// creditAuditor watches one end's frames on the wire and records every breach of flow control by the
// peer (data beyond the credit this end granted) and every PROTOCOL_ERROR reset in either direction.
type creditAuditor struct {
	FrameConn
	initial int64

	mu         sync.Mutex
	granted    map[uint64]int64
	received   map[uint64]int64
	violations []string
	dataFrames int
}

func newCreditAuditor(c FrameConn, localWindow uint32) *creditAuditor {
	if localWindow == 0 {
		localWindow = DefaultInitialWindow
	}
	return &creditAuditor{FrameConn: c, initial: int64(localWindow), granted: map[uint64]int64{}, received: map[uint64]int64{}}
}

func (a *creditAuditor) Send(f *Frame) error {
	a.mu.Lock()
	switch k := f.Kind.(type) {
	case *tunnelv1.TunnelFrame_WindowUpdate:
		a.granted[f.StreamId] += int64(k.WindowUpdate.Increment)
	case *tunnelv1.TunnelFrame_Reset_:
		if k.Reset_.Reason == tunnelv1.ResetReason_RESET_REASON_PROTOCOL_ERROR {
			a.violations = append(a.violations, fmt.Sprintf("sent PROTOCOL_ERROR reset on stream %d: %s", f.StreamId, k.Reset_.Message))
		}
	}
	a.mu.Unlock()
	return a.FrameConn.Send(f)
}

func (a *creditAuditor) Recv() (*Frame, error) {
	f, err := a.FrameConn.Recv()
	if err != nil {
		return f, err
	}
	a.audit(f)
	return f, nil
}

// sendPooled and recvPooled keep a pooled connection pooled under the auditor, so the audited tests
// run the production path: Data payloads in pooled chunks on both ends.
func (a *creditAuditor) sendPooled(id uint64, buf *[]byte, n int) error {
	if p, ok := a.FrameConn.(pooledConn); ok {
		return p.sendPooled(id, buf, n)
	}
	err := a.FrameConn.Send(&Frame{StreamId: id, Kind: &tunnelv1.TunnelFrame_Data{Data: &tunnelv1.Data{Payload: (*buf)[:n]}}})
	putChunk(buf)
	return err
}

func (a *creditAuditor) recvPooled() (*Frame, *[]byte, error) {
	p, ok := a.FrameConn.(pooledConn)
	if !ok {
		f, err := a.Recv()
		return f, nil, err
	}
	f, chunk, err := p.recvPooled()
	if err != nil {
		return f, chunk, err
	}
	a.audit(f)
	return f, chunk, nil
}

func (a *creditAuditor) audit(f *Frame) {
	a.mu.Lock()
	switch k := f.Kind.(type) {
	case *tunnelv1.TunnelFrame_Data:
		a.dataFrames++
		a.received[f.StreamId] += int64(len(k.Data.Payload))
		// Credit granted is only ever a lower bound of what the peer may hold, so this is sound.
		if got, allowed := a.received[f.StreamId], a.initial+a.granted[f.StreamId]; got > allowed {
			a.violations = append(a.violations, fmt.Sprintf("stream %d: peer sent %d bytes against %d granted", f.StreamId, got, allowed))
		}
		if len(k.Data.Payload) > ChunkSize {
			a.violations = append(a.violations, fmt.Sprintf("stream %d: data frame of %d bytes exceeds ChunkSize", f.StreamId, len(k.Data.Payload)))
		}
	case *tunnelv1.TunnelFrame_Reset_:
		if k.Reset_.Reason == tunnelv1.ResetReason_RESET_REASON_PROTOCOL_ERROR {
			a.violations = append(a.violations, fmt.Sprintf("received PROTOCOL_ERROR reset on stream %d: %s", f.StreamId, k.Reset_.Message))
		}
	}
	a.mu.Unlock()
}

func (a *creditAuditor) check(t *testing.T, side string) {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, v := range a.violations {
		t.Errorf("%s: %s", side, v)
	}
}

// swallowConn stops delivering frames once muted: it keeps reading the wire and drops everything, as
// a peer whose session has hung would.
type swallowConn struct {
	FrameConn
	mu    sync.Mutex
	muted bool
}

func (c *swallowConn) mute() {
	c.mu.Lock()
	c.muted = true
	c.mu.Unlock()
}

func (c *swallowConn) Recv() (*Frame, error) {
	for {
		f, err := c.FrameConn.Recv()
		if err != nil {
			return nil, err
		}
		c.mu.Lock()
		muted := c.muted
		c.mu.Unlock()
		if !muted {
			return f, nil
		}
	}
}

// routeAgent is an Accept handler that dispatches on the request path.
func routeAgent(t *testing.T, routes map[string]func(*Stream)) func(*Stream) {
	return func(st *Stream) {
		h, ok := routes[st.Request().Path]
		if !ok {
			t.Errorf("agent: no route for %q", st.Request().Path)
			st.Reset(tunnelv1.ResetReason_RESET_REASON_TARGET_UNREACHABLE, "no route")
			return
		}
		h(st)
	}
}

// echoAgent reads the request body and answers 200 with the same body. The response names the
// request body's sha256 and size in headers, and repeats the request trailers plus the body's sha256
// in its own trailers.
func echoAgent(t *testing.T) func(*Stream) {
	return func(st *Stream) {
		defer func() { _ = st.Close() }()
		body, err := io.ReadAll(st)
		if err != nil {
			t.Errorf("agent stream %d: read request: %v", st.ID(), err)
			return
		}
		if int64(len(body)) != st.Request().ContentLength {
			t.Errorf("agent stream %d: request body is %d bytes, head said %d", st.ID(), len(body), st.Request().ContentLength)
		}
		s := sum(body)
		err = st.SendResponse(&tunnelv1.ResponseHead{
			Status:        200,
			ContentLength: int64(len(body)),
			Headers:       []*tunnelv1.Header{header("x-request-sha256", s), header("x-stream-id", fmt.Sprint(st.ID()))},
			TrailerNames:  []string{"x-body-sha256"},
		})
		if err != nil {
			t.Errorf("agent stream %d: send response: %v", st.ID(), err)
			return
		}
		if n, err := st.ReadFrom(&onlyReader{r: bytesReader(body)}); err != nil || n != int64(len(body)) {
			t.Errorf("agent stream %d: write body: %d of %d bytes, %v", st.ID(), n, len(body), err)
			return
		}
		trailers := append([]*tunnelv1.Header{header("x-body-sha256", s)}, st.Trailers()...)
		if err := st.CloseWrite(trailers); err != nil {
			t.Errorf("agent stream %d: close write: %v", st.ID(), err)
		}
	}
}

// onlyReader hides every method but Read, so that copies go through Stream.ReadFrom's own loop.
type onlyReader struct{ r io.Reader }

func (o *onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

func bytesReader(b []byte) io.Reader { return &sliceReader{b: b} }

type sliceReader struct{ b []byte }

func (r *sliceReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}

// isReset reports whether err is a *ResetError with reason, and returns it.
func asReset(err error) (*ResetError, bool) {
	var re *ResetError
	ok := errors.As(err, &re)
	return re, ok
}
