package rawlocal

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
	"go.uber.org/goleak"

	"github.com/hopgate/hopgate/internal/tunnel"
	"github.com/hopgate/hopgate/internal/tunnel/tunneltest"
	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const wait = 5 * time.Second

// harness is a real TCP target on 127.0.0.1 behind an in-memory tunnel: the test plays the gateway
// (Server) and the target (the accepted conns), the Proxy serves the agent's end.
type harness struct {
	t     *testing.T
	pair  *tunneltest.Pair
	conns chan net.Conn
	// served receives once each time ServeStream returns: a stream whose serving goroutine (and
	// its copies) never end would leave this empty.
	served chan struct{}
}

// newHarness starts a target listener (closed at the end of the test) and a tunnel whose agent
// relays to addr, or to the listener when addr is empty.
func newHarness(t *testing.T, addr string) *harness {
	t.Helper()
	h := &harness{t: t, conns: make(chan net.Conn, 4), served: make(chan struct{}, 4)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
			h.conns <- c
		}
	}()
	if addr == "" {
		addr = ln.Addr().String()
	}
	p := New(&url.URL{Scheme: "tcp", Host: addr}, Options{})
	h.pair = tunneltest.NewPair(t, func(st *tunnel.Stream) {
		p.ServeStream(st)
		h.served <- struct{}{}
	})
	return h
}

// open starts a raw stream as the gateway does; the error is the agent's answer when it is not 200.
func (h *harness) open(head *tunnelv1.RequestHead) (*tunnel.Stream, error) {
	h.t.Helper()
	if head.Mode == tunnelv1.StreamMode_STREAM_MODE_UNSPECIFIED {
		head.Mode = tunnelv1.StreamMode_STREAM_MODE_TCP
	}
	if head.Host == "" {
		head.Host = "db.example.com"
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	st, err := h.pair.Server.OpenStream(ctx, head)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { st.Close() })
	resp, err := st.AwaitResponse(ctx)
	if err != nil {
		return nil, err
	}
	if resp.Status != 200 {
		h.t.Fatalf("raw stream answered %d, want 200", resp.Status)
	}
	return st, nil
}

func (h *harness) mustOpen() *tunnel.Stream {
	h.t.Helper()
	st, err := h.open(&tunnelv1.RequestHead{})
	if err != nil {
		h.t.Fatal(err)
	}
	return st
}

// target is the agent's connection to the target, as the target accepted it.
func (h *harness) target() *net.TCPConn {
	h.t.Helper()
	select {
	case c := <-h.conns:
		_ = c.SetDeadline(time.Now().Add(wait))
		return c.(*net.TCPConn)
	case <-time.After(wait):
		h.t.Fatal("the agent never connected to the target")
		return nil
	}
}

// waitServed waits for ServeStream to return.
func (h *harness) waitServed() {
	h.t.Helper()
	select {
	case <-h.served:
	case <-time.After(wait):
		h.t.Fatal("ServeStream did not return after the stream ended")
	}
}

func readAll(t *testing.T, r io.Reader) string {
	t.Helper()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read: %v (after %q)", err, b)
	}
	return string(b)
}

func write(t *testing.T, w io.Writer, s string) {
	t.Helper()
	if _, err := io.WriteString(w, s); err != nil {
		t.Fatal(err)
	}
}

// TestEcho: bytes go both ways, and the visitor's half-close reaches the target, whose own
// half-close ends the stream.
func TestEcho(t *testing.T) {
	h := newHarness(t, "")
	st := h.mustOpen()
	conn := h.target()
	go func() {
		_, _ = io.Copy(conn, conn)
		_ = conn.CloseWrite()
	}()
	write(t, st, "ping ")
	buf := make([]byte, 5)
	if _, err := io.ReadFull(st, buf); err != nil || string(buf) != "ping " {
		t.Fatalf("echo %q, %v", buf, err)
	}
	write(t, st, "pong")
	if err := st.CloseWrite(nil); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, st); got != "pong" {
		t.Errorf("after the half-close the echo sent %q", got)
	}
	h.waitServed()
}

// TestVisitorHalfClose: the visitor closes its side; the target sees EOF and still answers.
func TestVisitorHalfClose(t *testing.T) {
	h := newHarness(t, "")
	st := h.mustOpen()
	conn := h.target()
	write(t, st, "request")
	if err := st.CloseWrite(nil); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, conn); got != "request" {
		t.Fatalf("target read %q", got)
	}
	write(t, conn, "answer after the half-close")
	if err := conn.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, st); got != "answer after the half-close" {
		t.Errorf("visitor read %q", got)
	}
	h.waitServed()
}

// TestTargetHalfClose: the target closes its side; the visitor sees EOF and may still send.
func TestTargetHalfClose(t *testing.T) {
	h := newHarness(t, "")
	st := h.mustOpen()
	conn := h.target()
	write(t, conn, "banner")
	if err := conn.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, st); got != "banner" {
		t.Fatalf("visitor read %q", got)
	}
	write(t, st, "sent after the target's half-close")
	if err := st.CloseWrite(nil); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, conn); got != "sent after the target's half-close" {
		t.Errorf("target read %q", got)
	}
	h.waitServed()
}

// TestBulk: 8 MiB each way at the same time arrive whole and in order.
func TestBulk(t *testing.T) {
	const size = 8 << 20
	h := newHarness(t, "")
	st := h.mustOpen()
	conn := h.target()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	up, down := make([]byte, size), make([]byte, size)
	_, _ = rand.Read(up)
	_, _ = rand.Read(down)

	type result struct {
		sum [32]byte
		n   int64
		err error
	}
	sink := func(r io.Reader, out chan<- result) {
		hash := sha256.New()
		n, err := io.Copy(hash, r)
		var res result
		copy(res.sum[:], hash.Sum(nil))
		res.n, res.err = n, err
		out <- res
	}
	atTarget, atVisitor := make(chan result, 1), make(chan result, 1)
	go sink(conn, atTarget)
	go sink(st, atVisitor)
	sent := make(chan error, 2)
	go func() {
		_, err := st.Write(up)
		if err == nil {
			err = st.CloseWrite(nil)
		}
		sent <- err
	}()
	go func() {
		_, err := conn.Write(down)
		if err == nil {
			err = conn.CloseWrite()
		}
		sent <- err
	}()
	for range 2 {
		if err := <-sent; err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		name string
		got  chan result
		want []byte
	}{{"visitor to target", atTarget, up}, {"target to visitor", atVisitor, down}} {
		r := <-c.got
		if r.err != nil || r.n != size || r.sum != sha256.Sum256(c.want) {
			t.Errorf("%s: %d bytes, err %v, sha256 match %v", c.name, r.n, r.err, r.sum == sha256.Sum256(c.want))
		}
	}
	h.waitServed()
}

// TestProxyHeader: the target reads the PROXY header the gateway asked for, naming the visitor and
// the public address, and then the visitor's bytes.
func TestProxyHeader(t *testing.T) {
	for _, tc := range []struct {
		name                 string
		version              uint32
		remote, local        string
		wantProto            proxyproto.AddressFamilyAndProtocol
		wantSource, wantDest string
	}{
		{"v1 IPv4", 1, "192.0.2.10:51000", "198.51.100.7:5432", proxyproto.TCPv4, "192.0.2.10:51000", "198.51.100.7:5432"},
		{"v2 IPv4", 2, "192.0.2.10:51000", "198.51.100.7:5432", proxyproto.TCPv4, "192.0.2.10:51000", "198.51.100.7:5432"},
		{"v1 IPv6", 1, "[2001:db8::10]:51000", "[2001:db8::1]:443", proxyproto.TCPv6, "[2001:db8::10]:51000", "[2001:db8::1]:443"},
		{"v2 IPv6", 2, "[2001:db8::10]:51000", "[2001:db8::1]:443", proxyproto.TCPv6, "[2001:db8::10]:51000", "[2001:db8::1]:443"},
		{"v2 IPv4 on a dual-stack listener", 2, "[::ffff:192.0.2.10]:51000", "[::ffff:198.51.100.7]:443", proxyproto.TCPv4, "192.0.2.10:51000", "198.51.100.7:443"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, "")
			st, err := h.open(&tunnelv1.RequestHead{ProxyProtocol: tc.version, RemoteAddr: tc.remote, LocalAddr: tc.local})
			if err != nil {
				t.Fatal(err)
			}
			conn := h.target()
			write(t, st, "visitor bytes")
			if err := st.CloseWrite(nil); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(conn)
			hdr, err := proxyproto.Read(br)
			if err != nil {
				t.Fatalf("target reads no PROXY header: %v", err)
			}
			if hdr.Version != byte(tc.version) || hdr.Command != proxyproto.PROXY || hdr.TransportProtocol != tc.wantProto ||
				hdr.SourceAddr.String() != tc.wantSource || hdr.DestinationAddr.String() != tc.wantDest {
				t.Errorf("header v%d %v %v %s -> %s, want v%d %v %s -> %s", hdr.Version, hdr.Command, hdr.TransportProtocol,
					hdr.SourceAddr, hdr.DestinationAddr, tc.version, tc.wantProto, tc.wantSource, tc.wantDest)
			}
			if got := readAll(t, br); got != "visitor bytes" {
				t.Errorf("after the header the target read %q", got)
			}
			_ = conn.CloseWrite()
			_ = readAll(t, st)
			h.waitServed()
		})
	}
}

// TestNoProxyHeader: without proxy_protocol the target's first bytes are the visitor's.
func TestNoProxyHeader(t *testing.T) {
	h := newHarness(t, "")
	st, err := h.open(&tunnelv1.RequestHead{RemoteAddr: "192.0.2.10:51000", LocalAddr: "198.51.100.7:5432"})
	if err != nil {
		t.Fatal(err)
	}
	conn := h.target()
	write(t, st, "PING")
	_ = st.CloseWrite(nil)
	if got := readAll(t, conn); got != "PING" {
		t.Errorf("target read %q", got)
	}
	_ = conn.CloseWrite()
	_ = readAll(t, st)
	h.waitServed()
}

// TestProxyHeaderBadInput: a PROXY header that cannot be written truthfully is a protocol error,
// and the target is not even dialled.
func TestProxyHeaderBadInput(t *testing.T) {
	for _, tc := range []struct {
		name          string
		version       uint32
		remote, local string
		want          string
	}{
		{"malformed remote", 1, "not-an-address", "198.51.100.7:5432", "remote_addr"},
		{"host name remote", 2, "client.example.com:5000", "198.51.100.7:5432", "remote_addr"},
		{"missing local", 2, "192.0.2.10:51000", "", "local_addr"},
		{"local without port", 1, "192.0.2.10:51000", "198.51.100.7", "local_addr"},
		{"unknown version", 3, "192.0.2.10:51000", "198.51.100.7:5432", "proxy_protocol 3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, "")
			_, err := h.open(&tunnelv1.RequestHead{ProxyProtocol: tc.version, RemoteAddr: tc.remote, LocalAddr: tc.local})
			var reset *tunnel.ResetError
			if !errors.As(err, &reset) || reset.Reason != tunnelv1.ResetReason_RESET_REASON_PROTOCOL_ERROR || !strings.Contains(reset.Message, tc.want) {
				t.Fatalf("err = %v, want a PROTOCOL_ERROR reset about %s", err, tc.want)
			}
			h.waitServed()
			select {
			case <-h.conns:
				t.Error("the target was dialled for a stream that was refused")
			default:
			}
		})
	}
}

// TestDialFailure: a target that refuses the connection resets the stream with TARGET_UNREACHABLE.
func TestDialFailure(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	h := newHarness(t, closed)
	_, err = h.open(&tunnelv1.RequestHead{})
	var reset *tunnel.ResetError
	if !errors.As(err, &reset) || reset.Reason != tunnelv1.ResetReason_RESET_REASON_TARGET_UNREACHABLE || !strings.Contains(reset.Message, "local target") {
		t.Fatalf("err = %v, want a TARGET_UNREACHABLE reset", err)
	}
	h.waitServed()
}

// TestTargetAborts: a target that resets its connection resets the stream with TARGET_ABORTED.
func TestTargetAborts(t *testing.T) {
	h := newHarness(t, "")
	st := h.mustOpen()
	conn := h.target()
	_ = conn.SetLinger(0)
	conn.Close()
	_, err := io.ReadAll(st)
	var reset *tunnel.ResetError
	if !errors.As(err, &reset) || reset.Reason != tunnelv1.ResetReason_RESET_REASON_TARGET_ABORTED || !reset.Remote {
		t.Fatalf("visitor read err = %v, want a TARGET_ABORTED reset", err)
	}
	h.waitServed()
}

// TestGatewayReset: a stream the gateway resets closes the target's connection, whatever the copies
// were doing at the time: ServeStream returns without the target's help, then the target sees
// its connection closed.
func TestGatewayReset(t *testing.T) {
	for _, tc := range []struct {
		name string
		// before runs before the reset; after checks that the target's connection is closed.
		before func(t *testing.T, st *tunnel.Stream, conn *net.TCPConn)
		after  func(t *testing.T, conn *net.TCPConn)
	}{
		{
			name: "both directions open",
			before: func(t *testing.T, st *tunnel.Stream, conn *net.TCPConn) {
				write(t, st, "x")
				if _, err := io.ReadFull(conn, make([]byte, 1)); err != nil {
					t.Fatal(err)
				}
			},
			after: readsEOF,
		},
		{
			name: "after the visitor's half-close",
			before: func(t *testing.T, st *tunnel.Stream, conn *net.TCPConn) {
				_ = st.CloseWrite(nil)
				if got := readAll(t, conn); got != "" {
					t.Fatalf("target read %q", got)
				}
				// The agent now waits on the target alone, which stays silent.
			},
			after: writeFails,
		},
		{
			name: "while the target does not read",
			before: func(t *testing.T, st *tunnel.Stream, conn *net.TCPConn) {
				// More than the socket buffers and the stream's window hold: the agent's write to
				// the target blocks.
				go func() { _, _ = st.Write(make([]byte, 32<<20)) }()
				time.Sleep(200 * time.Millisecond)
			},
			after: func(t *testing.T, conn *net.TCPConn) {
				// Drain what the buffers held until the close shows.
				_, err := io.Copy(io.Discard, conn)
				if isTimeout(err) {
					t.Fatal("the target's connection stayed open after the reset")
				}
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, "")
			st := h.mustOpen()
			conn := h.target()
			tc.before(t, st, conn)
			st.Reset(tunnelv1.ResetReason_RESET_REASON_CANCEL, "visitor went away")
			h.waitServed()
			tc.after(t, conn)
		})
	}
}

// TestSessionEnd: the agent's session ending (tunnel lost) closes the target's connection too.
func TestSessionEnd(t *testing.T) {
	h := newHarness(t, "")
	h.mustOpen()
	conn := h.target()
	h.pair.Agent.Close(errors.New("tunnel lost"))
	h.waitServed()
	readsEOF(t, conn)
}

func readsEOF(t *testing.T, conn *net.TCPConn) {
	t.Helper()
	n, err := conn.Read(make([]byte, 1))
	if isTimeout(err) || n > 0 {
		t.Fatalf("target read %d bytes, %v; want its connection closed", n, err)
	}
}

// writeFails writes until the closed peer's RST makes a write fail.
func writeFails(t *testing.T, conn *net.TCPConn) {
	t.Helper()
	for {
		_, err := conn.Write([]byte("."))
		if isTimeout(err) {
			t.Fatal("the target's connection stayed open after the reset")
		}
		if err != nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
