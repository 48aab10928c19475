package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// TestHTTPWebSocket: a 101 turns the proxied request into a two-way byte stream for a real WebSocket
// client over an HTTP/1.1 visitor connection.
func TestHTTPWebSocket(t *testing.T) {
	t.Parallel()
	const domain = "ws.example.test"
	echoEnd := make(chan error, 1)     // how the server's read loop on /echo ended
	serverClose := make(chan error, 1) // the server's pings and close on /close
	target := htServe(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		c.SetReadLimit(4 << 20)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		switch r.URL.Path {
		case "/echo":
			for {
				typ, b, err := c.Read(ctx)
				if err == nil {
					err = c.Write(ctx, typ, b)
				}
				if err != nil {
					echoEnd <- err
					return
				}
			}
		case "/close":
			// CloseRead keeps reading control frames, so that the pings get their pongs.
			ctx := c.CloseRead(ctx)
			for range 3 {
				if err := c.Ping(ctx); err != nil {
					serverClose <- fmt.Errorf("server ping: %w", err)
					return
				}
			}
			serverClose <- c.Close(4002, "server bye")
		}
	}))
	g := startGateway(t, gatewayOptions{})
	htAgent(t, g, domain, target.URL)

	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	opts := &websocket.DialOptions{HTTPClient: g.httpClient(false)}

	c, res, err := websocket.Dial(ctx, g.url(domain, "/echo"), opts)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.CloseNow()
	if res.StatusCode != http.StatusSwitchingProtocols || res.ProtoMajor != 1 {
		t.Fatalf("handshake: %s %d", res.Proto, res.StatusCode)
	}
	c.SetReadLimit(4 << 20)
	for i := range 1000 {
		msg := fmt.Sprintf("echo %d", i)
		if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		typ, b, err := c.Read(ctx)
		if err != nil || typ != websocket.MessageText || string(b) != msg {
			t.Fatalf("echo %d: %v %v %q", i, err, typ, b)
		}
	}
	big := make([]byte, 1<<20)
	_, _ = rand.Read(big)
	if err := c.Write(ctx, websocket.MessageBinary, big); err != nil {
		t.Fatalf("write 1 MiB: %v", err)
	}
	typ, b, err := c.Read(ctx)
	if err != nil || typ != websocket.MessageBinary || !bytes.Equal(b, big) {
		t.Fatalf("1 MiB echo: err %v, type %v, %d bytes, equal %v", err, typ, len(b), bytes.Equal(b, big))
	}

	// A pong is read by a concurrent reader; the reader then sees the close handshake.
	readEnd := make(chan error, 1)
	go func() {
		_, _, err := c.Read(ctx)
		readEnd <- err
	}()
	for i := range 3 {
		pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
		err := c.Ping(pctx)
		pcancel()
		if err != nil {
			t.Fatalf("ping %d: %v", i, err)
		}
	}
	if err := c.Close(4001, "client bye"); err != nil {
		t.Fatalf("client close handshake: %v", err)
	}
	select {
	case err := <-echoEnd:
		var ce websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != 4001 || ce.Reason != "client bye" {
			t.Fatalf("server saw %v, want close 4001 \"client bye\"", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the server never saw the client's close")
	}
	select {
	case <-readEnd:
	case <-time.After(5 * time.Second):
		t.Fatal("the client's reader did not end after the close")
	}

	c2, _, err := websocket.Dial(ctx, g.url(domain, "/close"), opts)
	if err != nil {
		t.Fatalf("dial /close: %v", err)
	}
	defer c2.CloseNow()
	// Read answers the server's pings and ends with its close frame.
	_, _, err = c2.Read(ctx)
	var ce websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != 4002 || ce.Reason != "server bye" {
		t.Fatalf("client saw %v, want close 4002 \"server bye\"", err)
	}
	select {
	case err := <-serverClose:
		if err != nil {
			t.Fatalf("server pings and close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the server's close handshake did not complete")
	}
}

// TestHTTPStreamingResponses: every event or chunk the target flushes reaches the visitor promptly
// (server-sent events, and a plain chunked body as long polling uses).
func TestHTTPStreamingResponses(t *testing.T) {
	t.Parallel()
	const domain = "sse.example.test"
	const events, gap, limit = 5, 200 * time.Millisecond, 100 * time.Millisecond
	target := htServe(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ct := "text/event-stream"
		if r.URL.Path == "/chunks" {
			ct = "text/plain; charset=utf-8"
		}
		w.Header().Set("Content-Type", ct)
		w.Header().Set("Cache-Control", "no-cache")
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		_ = rc.Flush()
		for i := range events {
			if i > 0 {
				select {
				case <-r.Context().Done():
					return
				case <-time.After(gap):
				}
			}
			// The send time travels in the event; visitor and target share the clock.
			fmt.Fprintf(w, "id: %d\ndata: %d\n\n", i, time.Now().UnixNano())
			if err := rc.Flush(); err != nil {
				return
			}
		}
	}))
	g := startGateway(t, gatewayOptions{})
	htAgent(t, g, domain, target.URL)

	// check reads the stream and asserts each event's delay.
	check := func(t *testing.T, body io.Reader) {
		br := bufio.NewReader(body)
		got := 0
		for got < events {
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("after %d events: %v", got, err)
			}
			v, ok := strings.CutPrefix(strings.TrimSpace(line), "data: ")
			if !ok {
				continue
			}
			ns, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatalf("bad event line %q", line)
			}
			if d := time.Since(time.Unix(0, ns)); d > limit {
				t.Errorf("event %d reached the visitor %s after it was written (limit %s)", got, d, limit)
			}
			got++
		}
		if rest, err := io.ReadAll(br); err != nil || strings.TrimSpace(string(rest)) != "" {
			t.Errorf("after the events: %q, %v", rest, err)
		}
	}
	for _, path := range []string{"/events", "/chunks"} {
		for _, h2 := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/h2=%v", path[1:], h2), func(t *testing.T) {
				t.Parallel()
				g := g.forTest(t)
				ctx, cancel := context.WithTimeout(context.Background(), htTimeout)
				defer cancel()
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, g.url(domain, path), nil)
				req.Header.Set("Accept", "text/event-stream")
				res, err := g.httpClient(h2).Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer res.Body.Close()
				if res.StatusCode != http.StatusOK || (res.ProtoMajor == 2) != h2 {
					t.Fatalf("%s %d", res.Proto, res.StatusCode)
				}
				check(t, res.Body)
			})
		}
	}
	// curl, the visitor people use to look at an event stream.
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Log("no curl: skipping the curl visitor")
		return
	}
	for _, proto := range []string{"--http1.1", "--http2"} {
		t.Run("curl"+proto, func(t *testing.T) {
			t.Parallel()
			_, port, _ := net.SplitHostPort(g.addr)
			ctx, cancel := context.WithTimeout(context.Background(), htTimeout)
			defer cancel()
			cmd := exec.CommandContext(ctx, curl, "-sS", "-N", "--fail", proto, "--cacert", g.caFile,
				"--resolve", domain+":"+port+":127.0.0.1", g.url(domain, "/events"))
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			check(t, out)
			if err := cmd.Wait(); err != nil {
				t.Fatalf("curl: %v: %s", err, stderr.String())
			}
		})
	}
}

// TestHTTPGRPCBackend: a grpc-go client calls a grpc-go service behind the agent, which speaks h2c
// to a plain target and h2 to an https one.
func TestHTTPGRPCBackend(t *testing.T) {
	t.Parallel()
	g := startGateway(t, gatewayOptions{})
	cert, caFile := htSelfSigned(t)
	cases := []struct {
		name, domain string
		tls          bool
	}{
		{"h2c", "grpc-h2c.example.test", false},
		{"https", "grpc-tls.example.test", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			svc := htNewGRPCService()
			if tc.tls {
				htAgent(t, g, tc.domain, "https://"+htServeGRPC(t, svc, &cert), "--local-ca-file", caFile)
			} else {
				htAgent(t, g, tc.domain, "http://"+htServeGRPC(t, svc, nil))
			}
			htGRPCChecks(t, htGRPCClient(t, g, tc.domain), svc, tc.domain+":"+g.addr[strings.LastIndex(g.addr, ":")+1:])
		})
	}
}

// htCheckTrailer fails unless md carries the service's custom trailers.
func htCheckTrailer(t *testing.T, what string, md metadata.MD) {
	t.Helper()
	if got := md.Get("x-custom-trailer"); !slices.Equal(got, []string{"tv"}) {
		t.Errorf("%s: trailer x-custom-trailer = %q, want [tv] (all: %v)", what, got, md)
	}
	if got := md.Get("x-custom-trailer-bin"); len(got) != 1 || got[0] != string([]byte{0, 1, 2, 0xff}) {
		t.Errorf("%s: binary trailer = %q", what, got)
	}
}

func htGRPCChecks(t *testing.T, c testgrpc.TestServiceClient, svc *htGRPCService, authority string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t.Run("unary", func(t *testing.T) {
		var hdr, tr metadata.MD
		in := htPayload(1<<20, 3)
		res, err := c.UnaryCall(ctx, &testgrpc.SimpleRequest{Payload: in}, grpc.Header(&hdr), grpc.Trailer(&tr))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(res.GetPayload().GetBody(), in.Body) {
			t.Errorf("payload of %d bytes came back as %d bytes", len(in.Body), len(res.GetPayload().GetBody()))
		}
		if got := hdr.Get("x-custom-header"); !slices.Equal(got, []string{"hv"}) {
			t.Errorf("header x-custom-header = %q", got)
		}
		htCheckTrailer(t, "unary", tr)
		if got := tr.Get("x-seen-authority"); !slices.Equal(got, []string{authority}) {
			t.Errorf("the service saw :authority %q, want %q", got, authority)
		}
	})
	t.Run("error status", func(t *testing.T) {
		const msg = "denied: ünïcode, 100% sure\tand spaces"
		var tr metadata.MD
		_, err := c.UnaryCall(ctx, &testgrpc.SimpleRequest{ResponseStatus: &testgrpc.EchoStatus{
			Code: int32(codes.PermissionDenied), Message: msg}}, grpc.Trailer(&tr))
		if s := status.Convert(err); s.Code() != codes.PermissionDenied || s.Message() != msg {
			t.Fatalf("got %v (code %v, message %q), want PermissionDenied %q", err, s.Code(), s.Message(), msg)
		}
		htCheckTrailer(t, "error", tr)
	})
	t.Run("server streaming", func(t *testing.T) {
		sizes := []int32{1, 100, 10_000, 200_000, 7}
		params := make([]*testgrpc.ResponseParameters, len(sizes))
		for i, n := range sizes {
			params[i] = &testgrpc.ResponseParameters{Size: n, IntervalUs: 10_000}
		}
		st, err := c.StreamingOutputCall(ctx, &testgrpc.StreamingOutputCallRequest{ResponseParameters: params})
		if err != nil {
			t.Fatal(err)
		}
		for i, n := range sizes {
			res, err := st.Recv()
			if err != nil || !bytes.Equal(res.GetPayload().GetBody(), htPayload(n, byte(i)).Body) {
				t.Fatalf("message %d: %v (%d bytes, want %d)", i, err, len(res.GetPayload().GetBody()), n)
			}
		}
		if _, err := st.Recv(); err != io.EOF {
			t.Fatalf("after the messages: %v, want EOF", err)
		}
		htCheckTrailer(t, "server streaming", st.Trailer())

		// An error status after some messages.
		st, err = c.StreamingOutputCall(ctx, &testgrpc.StreamingOutputCallRequest{
			ResponseParameters: params[:2],
			ResponseStatus:     &testgrpc.EchoStatus{Code: int32(codes.Aborted), Message: "stream aborted"}})
		if err != nil {
			t.Fatal(err)
		}
		for i := range 2 {
			if _, err := st.Recv(); err != nil {
				t.Fatalf("message %d: %v", i, err)
			}
		}
		_, err = st.Recv()
		if s := status.Convert(err); s.Code() != codes.Aborted || s.Message() != "stream aborted" {
			t.Fatalf("end of stream: %v, want Aborted \"stream aborted\"", err)
		}
		htCheckTrailer(t, "server streaming error", st.Trailer())
	})
	t.Run("client streaming", func(t *testing.T) {
		st, err := c.StreamingInputCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		const n, size = 50, 3000
		for i := range n {
			if err := st.Send(&testgrpc.StreamingInputCallRequest{Payload: htPayload(size, byte(i))}); err != nil {
				t.Fatalf("send %d: %v", i, err)
			}
		}
		res, err := st.CloseAndRecv()
		if err != nil || res.AggregatedPayloadSize != n*size {
			t.Fatalf("got %v, %v; want aggregated size %d", res, err, n*size)
		}
		htCheckTrailer(t, "client streaming", st.Trailer())
	})
	t.Run("bidi", func(t *testing.T) {
		st, err := c.FullDuplexCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		sizes := make([]int32, 0, 101)
		for i := range int32(100) {
			sizes = append(sizes, i+1)
		}
		sizes = append(sizes, 1<<20)
		for i, n := range sizes {
			req := &testgrpc.StreamingOutputCallRequest{ResponseParameters: []*testgrpc.ResponseParameters{{Size: n}}}
			if err := st.Send(req); err != nil {
				t.Fatalf("send %d: %v", i, err)
			}
			res, err := st.Recv()
			if err != nil || len(res.GetPayload().GetBody()) != int(n) {
				t.Fatalf("round %d: %v (%d bytes, want %d)", i, err, len(res.GetPayload().GetBody()), n)
			}
		}
		if err := st.CloseSend(); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Recv(); err != io.EOF {
			t.Fatalf("after CloseSend: %v, want EOF", err)
		}
		htCheckTrailer(t, "bidi", st.Trailer())
	})
	t.Run("deadline propagates", func(t *testing.T) {
		dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
		defer dcancel()
		var tr metadata.MD
		if _, err := c.UnaryCall(dctx, &testgrpc.SimpleRequest{}, grpc.Trailer(&tr)); err != nil {
			t.Fatal(err)
		}
		ms, err := strconv.Atoi(strings.Join(tr.Get("x-deadline-ms"), ""))
		if err != nil || ms <= 3000 || ms > 5000 {
			t.Fatalf("the service saw a deadline %q ms away, want about 5000 (trailers %v)", tr.Get("x-deadline-ms"), tr)
		}
	})
	t.Run("deadline exceeded", func(t *testing.T) {
		dctx, dcancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer dcancel()
		start := time.Now()
		_, err := c.UnaryCall(metadata.AppendToOutgoingContext(dctx, "x-mode", "block"), &testgrpc.SimpleRequest{})
		if status.Code(err) != codes.DeadlineExceeded || time.Since(start) > 2*time.Second {
			t.Fatalf("got %v after %s, want DeadlineExceeded after 200ms", err, time.Since(start))
		}
		select {
		case end := <-svc.ended:
			if !end.hadDeadline || end.remaining <= 0 || end.remaining > 200*time.Millisecond || end.err == nil {
				t.Fatalf("handler: deadline %v (%s left at start), ended with %v", end.hadDeadline, end.remaining, end.err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the handler's context was not cancelled after the deadline")
		}
		<-svc.started
	})
	t.Run("cancel propagates", func(t *testing.T) {
		// Not derived from ctx: the handler must see no deadline at all.
		cctx, ccancel := context.WithCancel(context.Background())
		defer ccancel()
		errc := make(chan error, 1)
		go func() {
			_, err := c.UnaryCall(metadata.AppendToOutgoingContext(cctx, "x-mode", "block"), &testgrpc.SimpleRequest{})
			errc <- err
		}()
		select {
		case <-svc.started:
		case <-time.After(10 * time.Second):
			t.Fatal("the call never reached the handler")
		}
		ccancel()
		if err := <-errc; status.Code(err) != codes.Canceled {
			t.Fatalf("client got %v, want Canceled", err)
		}
		select {
		case end := <-svc.ended:
			if end.hadDeadline || !errors.Is(end.err, context.Canceled) {
				t.Fatalf("handler: deadline %v, ended with %v; want no deadline and context.Canceled", end.hadDeadline, end.err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the client's cancel did not reach the handler")
		}
	})
}

// TestHTTPHeaders: what the gateway does to request and response headers on the way through.
func TestHTTPHeaders(t *testing.T) {
	t.Parallel()
	const domain = "hdr.example.test"
	var bigHeaders atomic.Int64 // requests with an X-Big header over 1 MiB that reached the target
	// The target accepts far larger headers than the gateway, so that a 431 can only be the gateway's.
	target := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.Header.Get("X-Big")) > 1<<20 {
			bigHeaders.Add(1)
		}
		switch r.URL.Path {
		case "/hints":
			w.Header().Add("Link", "</style.css>; rel=preload; as=style")
			w.WriteHeader(http.StatusEarlyHints)
			time.Sleep(300 * time.Millisecond)
			_, _ = io.WriteString(w, "final")
		case "/trailers":
			w.Header().Set("Trailer", "X-Checksum, X-Count")
			_, _ = io.WriteString(w, "part1,")
			_ = http.NewResponseController(w).Flush()
			_, _ = io.WriteString(w, "part2")
			w.Header().Set("X-Checksum", "abc")
			w.Header().Set("X-Count", "2")
			w.Header().Set(http.TrailerPrefix+"X-Late", "late")
		default:
			h := w.Header()
			h.Add("Set-Cookie", "a=1")
			h.Add("Set-Cookie", "b=2; Path=/; HttpOnly")
			h.Add("Set-Cookie", "c=3")
			h.Set("Connection", "X-Resp-Secret")
			h.Set("X-Resp-Secret", "1")
			h.Set("Keep-Alive", "timeout=5")
			htEchoRequest(w, r)
		}
	}))
	target.Config.MaxHeaderBytes = 8 << 20
	target.Start()
	t.Cleanup(func() {
		target.CloseClientConnections()
		target.Close()
	})
	g := startGateway(t, gatewayOptions{})
	htAgent(t, g, domain, target.URL)
	_, port, _ := net.SplitHostPort(g.addr)
	hostport := domain + ":" + port
	spoofed := http.Header{
		"X-Forwarded-For":   {"203.0.113.7"},
		"X-Forwarded-Proto": {"http"},
		"X-Forwarded-Host":  {"evil.example"},
		"X-Real-Ip":         {"203.0.113.9"},
		"Forwarded":         {"for=203.0.113.8;proto=http"},
		"X-Multi":           {"one", "two"},
	}

	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("forwarded/h2=%v", h2), func(t *testing.T) {
			t.Parallel()
			res, seen := htGetSeen(t, g.forTest(t).httpClient(h2), g.url(domain, "/p?q=1"), spoofed)
			if (res.ProtoMajor == 2) != h2 {
				t.Fatalf("visitor spoke %s", res.Proto)
			}
			want := map[string][]string{
				"X-Forwarded-For":   {"127.0.0.1"},
				"X-Forwarded-Proto": {"https"},
				"X-Forwarded-Host":  {hostport},
				"X-Real-Ip":         {"127.0.0.1"},
				"Forwarded":         nil,
				"X-Multi":           {"one", "two"},
			}
			for k, v := range want {
				if got := seen.Header[k]; !slices.Equal(got, v) {
					t.Errorf("target saw %s %q, want %q", k, got, v)
				}
			}
			if seen.Host != hostport || seen.URI != "/p?q=1" || seen.Method != http.MethodGet {
				t.Errorf("target saw %s %s Host %q", seen.Method, seen.URI, seen.Host)
			}
			if got := res.Header["Set-Cookie"]; !slices.Equal(got, []string{"a=1", "b=2; Path=/; HttpOnly", "c=3"}) {
				t.Errorf("visitor got Set-Cookie %q", got)
			}
			for _, k := range []string{"X-Resp-Secret", "Keep-Alive"} {
				if v, ok := res.Header[k]; ok {
					t.Errorf("hop-by-hop response header %s: %q reached the visitor", k, v)
				}
			}
		})
	}

	t.Run("trusted proxy", func(t *testing.T) {
		t.Parallel()
		gt := startGateway(t, gatewayOptions{Env: []string{"HOP_SERVER_TRUSTED_PROXIES=127.0.0.1/32"}})
		htAgent(t, gt, domain, target.URL)
		_, seen := htGetSeen(t, gt.httpClient(false), gt.url(domain, "/"), spoofed)
		want := map[string][]string{
			"X-Forwarded-For":   {"203.0.113.7, 127.0.0.1"},
			"X-Forwarded-Proto": {"http"},
			"X-Forwarded-Host":  {"evil.example"},
			"X-Real-Ip":         {"203.0.113.9"},
		}
		for k, v := range want {
			if got := seen.Header[k]; !slices.Equal(got, v) {
				t.Errorf("behind a trusted proxy the target saw %s %q, want %q", k, got, v)
			}
		}
		// A trusted peer that sent nothing gets the gateway's own values.
		_, seen = htGetSeen(t, gt.httpClient(false), gt.url(domain, "/"), nil)
		_, gport, _ := net.SplitHostPort(gt.addr)
		want = map[string][]string{
			"X-Forwarded-For":   {"127.0.0.1"},
			"X-Forwarded-Proto": {"https"},
			"X-Forwarded-Host":  {domain + ":" + gport},
			"X-Real-Ip":         {"127.0.0.1"},
		}
		for k, v := range want {
			if got := seen.Header[k]; !slices.Equal(got, v) {
				t.Errorf("trusted peer without forwarding headers: target saw %s %q, want %q", k, got, v)
			}
		}
	})

	t.Run("hop-by-hop request headers", func(t *testing.T) {
		t.Parallel()
		hopByHop := http.Header{
			"Connection":       {"X-Secret, X-Other"},
			"X-Secret":         {"1"},
			"X-Other":          {"2"},
			"Keep-Alive":       {"timeout=5"},
			"Proxy-Connection": {"keep-alive"},
			"X-Kept":           {"yes"},
		}
		// Directly, the target sees these headers and sends its own: the gateway must be what removes them.
		direct, seen := htGetSeen(t, target.Client(), target.URL+"/", hopByHop)
		if seen.Header.Get("X-Secret") != "1" || direct.Header.Get("X-Resp-Secret") != "1" || direct.Header.Get("Connection") != "X-Resp-Secret" {
			t.Fatalf("test premise: directly, the target saw %v and answered %v", seen.Header, direct.Header)
		}
		_, seen = htGetSeen(t, g.forTest(t).httpClient(false), g.url(domain, "/"), hopByHop)
		for _, k := range []string{"Connection", "X-Secret", "X-Other", "Keep-Alive", "Proxy-Connection"} {
			if v, ok := seen.Header[k]; ok {
				t.Errorf("hop-by-hop request header %s: %q reached the target", k, v)
			}
		}
		if got := seen.Header.Get("X-Kept"); got != "yes" {
			t.Errorf("end-to-end header X-Kept = %q", got)
		}
	})

	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("early hints/h2=%v", h2), func(t *testing.T) {
			t.Parallel()
			var mu sync.Mutex
			var codes []int
			var link string
			var at time.Time
			trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
				mu.Lock()
				defer mu.Unlock()
				codes = append(codes, code)
				link, at = h.Get("Link"), time.Now()
				return nil
			}}
			req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace),
				http.MethodGet, g.url(domain, "/hints"), nil)
			res, body := htDo(t, g.forTest(t).httpClient(h2), req)
			final := time.Now()
			mu.Lock()
			defer mu.Unlock()
			if res.StatusCode != http.StatusOK || string(body) != "final" {
				t.Fatalf("final response %d %q", res.StatusCode, body)
			}
			if !slices.Equal(codes, []int{http.StatusEarlyHints}) || link != "</style.css>; rel=preload; as=style" {
				t.Fatalf("informational responses %v with Link %q, want one 103 with the Link", codes, link)
			}
			// The target waits 300 ms between the 103 and the 200: the 103 must not wait for the 200.
			if d := final.Sub(at); d < 150*time.Millisecond {
				t.Fatalf("the 103 arrived only %s before the final response", d)
			}
		})
		t.Run(fmt.Sprintf("100 continue/h2=%v", h2), func(t *testing.T) {
			t.Parallel()
			c := g.forTest(t).httpClient(h2)
			c.Transport.(*http.Transport).ExpectContinueTimeout = 10 * time.Second
			var got100 bool
			var mu sync.Mutex
			trace := &httptrace.ClientTrace{Got100Continue: func() { mu.Lock(); got100 = true; mu.Unlock() }}
			req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace),
				http.MethodPost, g.url(domain, "/upload"), strings.NewReader("the body"))
			req.Header.Set("Expect", "100-continue")
			start := time.Now()
			res, body := htDo(t, c, req)
			var seen htSeen
			_ = json.Unmarshal(body, &seen)
			mu.Lock()
			defer mu.Unlock()
			if res.StatusCode != http.StatusOK || seen.Body != "the body" || !got100 || time.Since(start) > 5*time.Second {
				t.Fatalf("status %d, target got body %q, 100 Continue seen %v, after %s", res.StatusCode, seen.Body, got100, time.Since(start))
			}
		})
		t.Run(fmt.Sprintf("trailers/h2=%v", h2), func(t *testing.T) {
			t.Parallel()
			c := g.forTest(t).httpClient(h2)
			req, _ := http.NewRequest(http.MethodGet, g.url(domain, "/trailers"), nil)
			ctx, cancel := context.WithTimeout(context.Background(), htTimeout)
			defer cancel()
			res, err := c.Do(req.WithContext(ctx))
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			if !h2 && !slices.Equal(res.TransferEncoding, []string{"chunked"}) {
				t.Errorf("transfer encoding %q, want chunked", res.TransferEncoding)
			}
			body, err := io.ReadAll(res.Body)
			if err != nil || string(body) != "part1,part2" {
				t.Fatalf("body %q, %v", body, err)
			}
			for k, v := range map[string]string{"X-Checksum": "abc", "X-Count": "2", "X-Late": "late"} {
				if got := res.Trailer.Get(k); got != v {
					t.Errorf("trailer %s = %q, want %q (trailers %v)", k, got, v, res.Trailer)
				}
			}

		})
		t.Run(fmt.Sprintf("request trailers/h2=%v", h2), func(t *testing.T) {
			t.Parallel()
			req, _ := http.NewRequest(http.MethodPost, g.url(domain, "/echo"), io.NopCloser(strings.NewReader("chunked body")))
			req.ContentLength = -1
			req.Trailer = http.Header{"X-Req-Trailer": {"rv"}}
			res, b := htDo(t, g.forTest(t).httpClient(h2), req)
			var seen htSeen
			if err := json.Unmarshal(b, &seen); err != nil || res.StatusCode != http.StatusOK {
				t.Fatalf("%d %q", res.StatusCode, b)
			}
			if seen.Body != "chunked body" || !slices.Equal(seen.Trailer["X-Req-Trailer"], []string{"rv"}) {
				t.Errorf("target got body %q and trailers %v, want X-Req-Trailer: rv", seen.Body, seen.Trailer)
			}
		})
		t.Run(fmt.Sprintf("large header passes/h2=%v", h2), func(t *testing.T) {
			t.Parallel()
			big := strings.Repeat("b", 600<<10)
			_, seen := htGetSeen(t, g.forTest(t).httpClient(h2), g.url(domain, "/"), http.Header{"X-Big": {big}})
			if seen.Header.Get("X-Big") != big {
				t.Errorf("a 600 KiB header arrived as %d bytes", len(seen.Header.Get("X-Big")))
			}
		})
	}

	t.Run("oversized header 431", func(t *testing.T) {
		t.Parallel()
		req, _ := http.NewRequest(http.MethodGet, g.url(domain, "/"), nil)
		req.Header.Set("X-Big", strings.Repeat("b", 1<<20+16<<10))
		res, body := htDo(t, g.forTest(t).httpClient(false), req)
		if res.StatusCode != http.StatusRequestHeaderFieldsTooLarge || bigHeaders.Load() != 0 {
			t.Fatalf("status %d %q, want 431; the target got %d such requests", res.StatusCode, body, bigHeaders.Load())
		}
	})

	// Go's parser alone would let Transfer-Encoding win and drop Content-Length (RFC 9112 §6.3); the
	// gateway's guard on HTTP/1 connections refuses such a request before it reaches any tenant.
	t.Run("content-length with transfer-encoding 400", func(t *testing.T) {
		t.Parallel()
		conf := g.tlsConfig()
		conf.ServerName = domain
		conf.NextProtos = []string{"http/1.1"}
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", g.addr, conf)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(htTimeout))
		// A valid request first: the guard must follow the connection past its chunked body.
		raw := "POST /first HTTP/1.1\r\nHost: " + hostport + "\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n" +
			"POST /smuggle HTTP/1.1\r\nHost: " + hostport + "\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
		if _, err := io.WriteString(conn, raw); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(conn)
		for i, want := range []int{http.StatusOK, http.StatusBadRequest} {
			res, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("response %d: %v", i, err)
			}
			body, _ := io.ReadAll(io.LimitReader(res.Body, 4<<10))
			res.Body.Close()
			if res.StatusCode != want {
				t.Fatalf("response %d: %d %s, want %d", i, res.StatusCode, body, want)
			}
			if want == http.StatusOK && !strings.Contains(string(body), `"body":"hello"`) {
				t.Fatalf("the chunked request arrived as %s", body)
			}
			if want == http.StatusBadRequest && !res.Close {
				t.Fatalf("the 400 kept the connection open: what follows the body cannot be trusted")
			}
		}
	})
}

// TestHTTPPlainMode: HOP_SERVER_HTTP_PROXY proxies tenants on the plain-HTTP listener; without it that
// listener redirects to HTTPS.
func TestHTTPPlainMode(t *testing.T) {
	t.Parallel()
	const domain = "plain.example.test"
	target := htServe(t, http.HandlerFunc(htEchoRequest))

	t.Run("proxy", func(t *testing.T) {
		t.Parallel()
		g := startGateway(t, gatewayOptions{Env: []string{"HOP_SERVER_HTTP_PROXY=true"}})
		htAgent(t, g, domain, target.URL)
		addr := g.httpAddr(t)
		_, port, _ := net.SplitHostPort(addr)
		c := htPlainClient(t, addr)
		res, seen := htGetSeen(t, c, "http://"+domain+":"+port+"/p?q=1", http.Header{"X-Forwarded-Proto": {"https"}})
		if res.StatusCode != http.StatusOK || seen.Host != domain+":"+port || seen.URI != "/p?q=1" {
			t.Fatalf("%d: target saw Host %q URI %q", res.StatusCode, seen.Host, seen.URI)
		}
		if got := seen.Header["X-Forwarded-Proto"]; !slices.Equal(got, []string{"http"}) {
			t.Errorf("X-Forwarded-Proto %q, want [http]", got)
		}
		if got := seen.Header["X-Forwarded-For"]; !slices.Equal(got, []string{"127.0.0.1"}) {
			t.Errorf("X-Forwarded-For %q, want [127.0.0.1]", got)
		}
		// The gateway's own name is not served on the plain port, not even with the admin key.
		req, _ := http.NewRequest(http.MethodGet, "http://localhost:"+port+"/api/v1/admin/domains", nil)
		req.Header.Set("Authorization", "Bearer "+g.adminKey)
		if res, body := htDo(t, c, req); res.StatusCode != http.StatusNotFound {
			t.Errorf("admin API on the plain port: %d %q, want 404", res.StatusCode, body)
		}
		// The plain port's HTTP/1 connections are guarded like the TLS ones.
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(htTimeout))
		_, _ = io.WriteString(conn, "POST /smuggle HTTP/1.1\r\nHost: "+domain+"\r\nContent-Length: 4\r\n"+
			"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
		res, err = http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("CL+TE on the plain port: %v", err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusBadRequest {
			t.Errorf("CL+TE on the plain port: %d, want 400", res.StatusCode)
		}
	})
	t.Run("redirect", func(t *testing.T) {
		t.Parallel()
		hits := 0
		var mu sync.Mutex
		counted := htServe(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			hits++
			mu.Unlock()
			htEchoRequest(w, r)
		}))
		g := startGateway(t, gatewayOptions{})
		htAgent(t, g, domain, counted.URL)
		addr := g.httpAddr(t)
		_, port, _ := net.SplitHostPort(addr)
		_, sport, _ := net.SplitHostPort(g.addr)
		req, _ := http.NewRequest(http.MethodGet, "http://"+domain+":"+port+"/p?q=1", nil)
		res, _ := htDo(t, htPlainClient(t, addr), req)
		want := "https://" + domain + ":" + sport + "/p?q=1"
		if res.StatusCode != http.StatusPermanentRedirect || res.Header.Get("Location") != want {
			t.Fatalf("%d Location %q, want 308 %q", res.StatusCode, res.Header.Get("Location"), want)
		}
		mu.Lock()
		defer mu.Unlock()
		if hits != 0 {
			t.Fatalf("the target got %d requests over plain HTTP without HOP_SERVER_HTTP_PROXY", hits)
		}
	})
}

// TestHTTPLocalTargetForms: every form of --local-target reaches its service.
func TestHTTPLocalTargetForms(t *testing.T) {
	t.Parallel()
	g := startGateway(t, gatewayOptions{})
	_, port, _ := net.SplitHostPort(g.addr)
	echo := http.HandlerFunc(htEchoRequest)

	// roundTrip sends a GET and a POST for path and returns what the target saw of the GET.
	roundTrip := func(t *testing.T, domain, path string) htSeen {
		t.Helper()
		c := g.forTest(t).httpClient(false)
		_, seen := htGetSeen(t, c, g.url(domain, path), nil)
		if seen.Host != domain+":"+port {
			t.Errorf("target saw Host %q", seen.Host)
		}
		req, _ := http.NewRequest(http.MethodPost, g.url(domain, "/post"), strings.NewReader("posted"))
		res, b := htDo(t, c, req)
		var post htSeen
		if err := json.Unmarshal(b, &post); err != nil || res.StatusCode != 200 || post.Body != "posted" || post.Method != http.MethodPost {
			t.Errorf("POST: %d %q", res.StatusCode, b)
		}
		return seen
	}

	t.Run("host:port", func(t *testing.T) {
		t.Parallel()
		ts := htServe(t, echo)
		htAgent(t, g, "hostport.example.test", ts.Listener.Addr().String())
		if seen := roundTrip(t, "hostport.example.test", "/x?y=1"); seen.URI != "/x?y=1" {
			t.Errorf("target saw %q", seen.URI)
		}
	})
	t.Run("http base path", func(t *testing.T) {
		t.Parallel()
		ts := htServe(t, echo)
		const domain = "base.example.test"
		htAgent(t, g, domain, ts.URL+"/base")
		for path, want := range map[string]string{
			"/x?y=1":   "/base/x?y=1",
			"/":        "/base/",
			"/a%2Fb/c": "/base/a%2Fb/c",
		} {
			if seen := roundTrip(t, domain, path); seen.URI != want {
				t.Errorf("request %s reached the target as %q, want %q", path, seen.URI, want)
			}
		}
	})
	t.Run("https ca file", func(t *testing.T) {
		t.Parallel()
		ts := httptest.NewTLSServer(echo)
		t.Cleanup(ts.Close)
		const domain = "tls-ca.example.test"
		htAgent(t, g, domain, ts.URL, "--local-ca-file", htWritePEM(t, t.TempDir(), ts.Certificate()))
		if seen := roundTrip(t, domain, "/secure"); !seen.TLS || seen.URI != "/secure" {
			t.Errorf("target saw %q over TLS %v", seen.URI, seen.TLS)
		}
	})
	t.Run("https insecure skip verify", func(t *testing.T) {
		t.Parallel()
		ts := httptest.NewTLSServer(echo)
		t.Cleanup(ts.Close)
		const domain = "tls-insecure.example.test"
		htAgent(t, g, domain, ts.URL, "--local-insecure-skip-verify")
		if seen := roundTrip(t, domain, "/secure"); !seen.TLS {
			t.Errorf("target saw a request without TLS")
		}
	})
	t.Run("https unverified is refused", func(t *testing.T) {
		t.Parallel()
		ts := httptest.NewUnstartedServer(echo)
		ts.Config.ErrorLog = log.New(io.Discard, "", 0) // the agent's refused handshakes
		ts.StartTLS()
		t.Cleanup(ts.Close)
		const domain = "tls-untrusted.example.test"
		htAgent(t, g, domain, ts.URL)
		req, _ := http.NewRequest(http.MethodGet, g.url(domain, "/"), nil)
		if res, body := htDo(t, g.forTest(t).httpClient(false), req); res.StatusCode != http.StatusBadGateway {
			t.Errorf("an https target with an unknown CA gave %d %q, want 502", res.StatusCode, body)
		}
	})
	t.Run("unix socket", func(t *testing.T) {
		t.Parallel()
		// Socket paths are limited to about 100 bytes: t.TempDir() carries the long test name.
		dir, err := os.MkdirTemp("", "ht")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.RemoveAll(dir) })
		sock := filepath.Join(dir, "s.sock")
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: echo, ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		t.Cleanup(func() { _ = srv.Close() })
		const domain = "unix.example.test"
		htAgent(t, g, domain, "unix://"+sock)
		if seen := roundTrip(t, domain, "/u?v=1"); seen.URI != "/u?v=1" {
			t.Errorf("target saw %q", seen.URI)
		}
	})
}

// TestHTTPVisitorProtocols: HTTP/1.1 and HTTP/2 visitors move 5 MiB each way.
func TestHTTPVisitorProtocols(t *testing.T) {
	t.Parallel()
	const domain = "proto.example.test"
	const size = 5 << 20
	data := make([]byte, size)
	_, _ = rand.Read(data)
	sum := sha256.Sum256(data)
	target := htServe(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			http.ServeContent(w, r, "big.bin", time.Time{}, bytes.NewReader(data))
			return
		}
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%d %x", n, h.Sum(nil))
	}))
	g := startGateway(t, gatewayOptions{})
	htAgent(t, g, domain, target.URL)
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("h2=%v", h2), func(t *testing.T) {
			t.Parallel()
			c := g.forTest(t).httpClient(h2)
			wantProto := map[bool]string{false: "HTTP/1.1", true: "HTTP/2.0"}[h2]
			req, _ := http.NewRequest(http.MethodGet, g.url(domain, "/big"), nil)
			res, body := htDo(t, c, req)
			if res.StatusCode != 200 || res.Proto != wantProto || sha256.Sum256(body) != sum {
				t.Errorf("GET: %s %d, %d bytes (want %d, same content %v)", res.Proto, res.StatusCode, len(body), size, sha256.Sum256(body) == sum)
			}
			// A body of unknown length (streamed) rather than one with Content-Length.
			req, _ = http.NewRequest(http.MethodPost, g.url(domain, "/sum"), io.NopCloser(bytes.NewReader(data)))
			res, body = htDo(t, c, req)
			if want := fmt.Sprintf("%d %s", size, hex.EncodeToString(sum[:])); res.StatusCode != 200 || res.Proto != wantProto || string(body) != want {
				t.Errorf("POST: %s %d %q, want %q", res.Proto, res.StatusCode, body, want)
			}
		})
	}
}
