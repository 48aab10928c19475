package rawedge

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

// replayConn stands for the HTTPS edge's connection after its SNI peek: its reads replay the bytes
// peeked first, and it has no CloseWrite.
type replayConn struct {
	net.Conn
	pending []byte
}

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.pending) == 0 {
		return c.Conn.Read(p)
	}
	n := copy(p, c.pending)
	c.pending = c.pending[n:]
	return n, nil
}

const passthroughRoute = tunnelv1.StreamMode_STREAM_MODE_TLS_PASSTHROUGH

// passthroughFixture is an edge with a passthrough name, a passthrough wildcard and a tcp domain
// under the wildcard, all served by the same agent.
func passthroughFixture(t *testing.T, edit func(*Options)) *fixture {
	t.Helper()
	f := newFixture(t, fixtureOpts{noRoute: true, editOpts: func(o *Options) {
		o.Registered = func(_ context.Context, name string) (bool, error) {
			switch name {
			case "taken.apps.example.com":
				return true, nil
			case "broken.apps.example.com":
				return false, errors.New("store down")
			}
			return false, nil
		}
		if edit != nil {
			edit(o)
		}
	}})
	for _, d := range []string{"tls.example.com", "*.apps.example.com", "db.apps.example.com"} {
		f.agents.add(d, &agent{id: "agent-1", s: f.pair.Server, raw: true})
	}
	f.src.set(
		Route{Domain: "tls.example.com", Mode: passthroughRoute},
		Route{Domain: "*.apps.example.com", Mode: passthroughRoute},
		Route{Domain: "db.apps.example.com", Mode: tunnelv1.StreamMode_STREAM_MODE_TCP, Port: f.ports.Low},
	)
	if err := f.e.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	return f
}

// handOver connects a visitor and hands the gateway's side to ServePassthrough, as the HTTPS edge
// does after peeking peeked bytes; it returns the visitor's side.
func handOver(t *testing.T, e *Edge, sni, peeked string) *net.TCPConn {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c := dial(t, ln.Addr().String())
	if _, err := io.WriteString(c, peeked); err != nil {
		t.Fatal(err)
	}
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(sc, make([]byte, len(peeked))); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		e.ServePassthrough(&replayConn{Conn: sc, pending: []byte(peeked)}, sni)
	}()
	t.Cleanup(wg.Wait)
	return c
}

// TestClaims checks which SNI names the passthrough routes take.
func TestClaims(t *testing.T) {
	f := passthroughFixture(t, nil)
	if !f.e.Active() {
		t.Fatal("Active with passthrough routes = false")
	}
	tests := []struct {
		sni  string
		want bool
	}{
		{"tls.example.com", true},
		{"x.apps.example.com", true},       // under the wildcard, not registered itself
		{"taken.apps.example.com", false},  // registered itself (another mode): the HTTPS edge's
		{"broken.apps.example.com", false}, // the registry cannot tell: not taken
		{"db.apps.example.com", false},     // a tcp route of its own
		{"a.b.apps.example.com", false},    // a wildcard covers one label
		{"apps.example.com", false},
		{"other.example.com", false},
		{"", false},
	}
	for _, tc := range tests {
		if got := f.e.Claims(tc.sni); got != tc.want {
			t.Errorf("Claims(%q) = %v, want %v", tc.sni, got, tc.want)
		}
	}
	f.src.set(Route{Domain: "db.apps.example.com", Mode: tunnelv1.StreamMode_STREAM_MODE_TCP, Port: f.ports.Low})
	if err := f.e.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	if f.e.Active() || f.e.Claims("tls.example.com") {
		t.Error("passthrough still active after its routes were removed")
	}
}

// TestPassthrough carries a connection under the wildcard: the peeked bytes reach the target
// first, the agent is told the SNI name, and a connection that cannot be half-closed is closed
// at the target's end.
func TestPassthrough(t *testing.T) {
	f := passthroughFixture(t, nil)
	c := handOver(t, f.e, "x.apps.example.com", "\x16\x03\x01hello")
	got, err := roundTrip(c, " and the rest")
	if err != nil || got != "\x16\x03\x01hello and the rest" {
		t.Fatalf("echo = %q, %v", got, err)
	}
	h := <-f.heads
	if h.Mode != passthroughRoute || h.Host != "x.apps.example.com" || h.RemoteAddr != c.LocalAddr().String() {
		t.Errorf("head = %v", h)
	}
	f.waitResult(t, modePassthrough, resultOK, 1)
	if closed := f.log.find("tcp connection closed"); len(closed) != 1 || closed[0]["mode"] != modePassthrough ||
		closed[0]["domain"] != "x.apps.example.com" {
		t.Errorf("closed lines: %v", closed)
	}
}

// TestPassthroughLimits checks that the per-domain cap counts every name under a wildcard as the
// wildcard's, and that removing the route closes its connections.
func TestPassthroughLimits(t *testing.T) {
	f := passthroughFixture(t, func(o *Options) { o.MaxConnsPerDomain = 1 })
	c := handOver(t, f.e, "a.apps.example.com", "hi")
	if _, err := io.ReadFull(c, make([]byte, 2)); err != nil {
		t.Fatal(err)
	}
	over := handOver(t, f.e, "b.apps.example.com", "hi")
	if err := closedByGateway(over, 5*time.Second); err != nil {
		t.Fatalf("over the cap: %v", err)
	}
	f.waitResult(t, modePassthrough, resultOverLimit, 1)

	// Another passthrough domain has its own cap.
	other := handOver(t, f.e, "tls.example.com", "hi")
	if _, err := io.ReadFull(other, make([]byte, 2)); err != nil {
		t.Fatal(err)
	}

	f.src.set(Route{Domain: "tls.example.com", Mode: passthroughRoute})
	if err := f.e.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := closedByGateway(c, 5*time.Second); err != nil {
		t.Fatalf("connection of the removed wildcard: %v", err)
	}
	if got, err := roundTrip(other, "!"); got != "!" {
		t.Fatalf("connection of the kept route: echo %q, %v", got, err)
	}
	f.waitResult(t, modePassthrough, resultOK, 2)
}

// TestPassthroughIdle checks that the idle timeout applies to passthrough connections.
func TestPassthroughIdle(t *testing.T) {
	f := passthroughFixture(t, func(o *Options) { o.IdleTimeout = 300 * time.Millisecond })
	c := handOver(t, f.e, "tls.example.com", "hi")
	if _, err := io.ReadFull(c, make([]byte, 2)); err != nil {
		t.Fatal(err)
	}
	if err := closedByGateway(c, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	f.waitResult(t, modePassthrough, resultOK, 1)
	if closed := f.log.find("tcp connection closed"); len(closed) != 1 || closed[0]["reason"] != reasonIdle {
		t.Errorf("closed lines: %v", closed)
	}
}
