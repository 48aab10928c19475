package tunnelsvc

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/hopgate/hopgate/internal/tunnel"
	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

// leakCheck fails the test if goroutines outlive it. Registered first, it runs after every other
// cleanup, so the tunnels, connections and servers of the test are already gone.
func leakCheck(t *testing.T) {
	t.Helper()
	t.Cleanup(func() { goleak.VerifyNone(t) })
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

// serveLoopback serves svc the way the edge does, through ServeConn, on a fresh loopback port without
// TLS, and returns a client connection to it. The service is shut down when the test ends.
func serveLoopback(t *testing.T, svc *Service) *grpc.ClientConn {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	served := make(chan error, 1)
	go func() { served <- svc.Serve() }()
	var accepting sync.WaitGroup
	accepting.Add(1)
	go func() {
		defer accepting.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			svc.ServeConn(c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		accepting.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := svc.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	cc, err := grpc.NewClient("passthrough:///"+ln.Addr().String(), append(tunnel.DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatalf("grpc client: %v", err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// holdAgent holds every stream open until the server ends it.
func holdAgent(st *tunnel.Stream) { <-st.Context().Done() }

// echoAgent answers every stream 200 with its request body.
func echoAgent(t *testing.T) func(*tunnel.Stream) {
	return func(st *tunnel.Stream) {
		defer func() { _ = st.Close() }()
		body, err := io.ReadAll(st)
		if err != nil {
			t.Errorf("agent: read request: %v", err)
			return
		}
		if err := st.SendResponse(&tunnelv1.ResponseHead{Status: 200, ContentLength: int64(len(body))}); err != nil {
			t.Errorf("agent: send response: %v", err)
			return
		}
		if _, err := st.Write(body); err != nil && !errors.Is(err, tunnel.ErrSessionClosed) {
			t.Errorf("agent: write body: %v", err)
			return
		}
		_ = st.CloseWrite(nil)
	}
}

// echoThrough POSTs body to an echoAgent over a stream of a and checks that it comes back whole.
func echoThrough(t *testing.T, ctx context.Context, a *Agent, body []byte) {
	t.Helper()
	st, err := a.OpenStream(ctx, &tunnelv1.RequestHead{Method: "POST", Path: "/", ContentLength: int64(len(body))})
	if err != nil {
		t.Fatalf("OpenStream: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	if _, err := st.Write(body); err != nil {
		t.Fatalf("Write: %v", err)
	}
	if err := st.CloseWrite(nil); err != nil {
		t.Fatalf("CloseWrite: %v", err)
	}
	if _, err := st.AwaitResponse(ctx); err != nil {
		t.Fatalf("AwaitResponse: %v", err)
	}
	back, err := io.ReadAll(st)
	if err != nil || !bytes.Equal(back, body) {
		t.Fatalf("echo of %d bytes came back as %d bytes (%v)", len(body), len(back), err)
	}
}
