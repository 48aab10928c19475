package rawedge

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/hopgate/hopgate/internal/gateway/access"
	"github.com/hopgate/hopgate/internal/testutil/poll"
	"github.com/hopgate/hopgate/internal/tunnel"
	"github.com/hopgate/hopgate/internal/tunnel/tunneltest"
	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

func denial() error {
	return &access.Denial{Reason: access.ReasonIP, Status: http.StatusForbidden, Message: "no"}
}

// result reads hopgate_tcp_connections_total{mode,result}.
func (f *fixture) result(mode, result string) float64 {
	return testutil.ToFloat64(f.m.TCPConnections.WithLabelValues(mode, result))
}

// waitResult waits until n connections of mode ended with result.
func (f *fixture) waitResult(t *testing.T, mode, result string, n float64) {
	t.Helper()
	poll.Until(t, 5*time.Second, fmt.Sprintf("%v %s/%s connections", n, mode, result), func() bool { return f.result(mode, result) == n })
}

// TestHalfClose checks that each side's half-close reaches the other while the other direction
// keeps flowing: the visitor's EOF becomes the target's, and the target's EOF the visitor's. It
// also checks the access log's two lines and the metrics of an ok connection.
func TestHalfClose(t *testing.T) {
	t.Run("visitor first", func(t *testing.T) {
		f := newFixture(t, fixtureOpts{})
		c := dial(t, f.addr(f.ports.Low))
		got, err := roundTrip(c, "hello over tcp")
		if err != nil || got != "hello over tcp" {
			t.Fatalf("echo = %q, %v", got, err)
		}
		f.waitResult(t, modeTCP, resultOK, 1)
		closed := f.log.find("tcp connection closed")
		if len(closed) != 1 {
			t.Fatalf("closed lines: %v", closed)
		}
		want := map[string]string{"domain": testDomain, "mode": "tcp", "agent": "agent-1", "client": c.LocalAddr().String(),
			"bytes_in": "14", "bytes_out": "14", "reason": reasonVisitorClosed}
		for k, v := range want {
			if closed[0][k] != v {
				t.Errorf("closed line %s = %q, want %q", k, closed[0][k], v)
			}
		}
		if opened := f.log.find("tcp connection opened"); len(opened) != 1 || opened[0]["client"] != c.LocalAddr().String() {
			t.Errorf("opened lines: %v", opened)
		}
		if in := testutil.ToFloat64(f.m.TCPBytes.WithLabelValues("tcp", "in")); in != 14 {
			t.Errorf("bytes in = %v", in)
		}
		if n := testutil.CollectAndCount(f.m.TCPDuration); n != 2 {
			t.Errorf("duration series = %d", n)
		}
		h := <-f.heads
		if h.Mode != tunnelv1.StreamMode_STREAM_MODE_TCP || h.Host != testDomain || h.RemoteAddr != c.LocalAddr().String() ||
			h.LocalAddr != c.RemoteAddr().String() || h.ProxyProtocol != 0 {
			t.Errorf("head = %v", h)
		}
	})
	t.Run("target first", func(t *testing.T) {
		// The target speaks first (a banner), half-closes, and still reads what the visitor sends
		// afterwards. With a trusted balancer configured, the PROXY-header check must not hold the
		// banner back waiting for the visitor's first bytes.
		got := make(chan string, 1)
		f := newFixture(t, fixtureOpts{
			target: func(c *net.TCPConn) {
				_, _ = io.WriteString(c, "220 banner\n")
				_ = c.CloseWrite()
				b, _ := io.ReadAll(c)
				got <- string(b)
			},
			editOpts: func(o *Options) { o.TrustedLB = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")} },
		})
		c := dial(t, f.addr(f.ports.Low))
		banner, err := io.ReadAll(c)
		if err != nil || string(banner) != "220 banner\n" {
			t.Fatalf("banner = %q, %v", banner, err)
		}
		if _, err := io.WriteString(c, "after the target's EOF"); err != nil {
			t.Fatal(err)
		}
		_ = c.CloseWrite()
		if s := <-got; s != "after the target's EOF" {
			t.Fatalf("target read %q", s)
		}
		f.waitResult(t, modeTCP, resultOK, 1)
		if closed := f.log.find("tcp connection closed"); len(closed) != 1 || closed[0]["reason"] != reasonTargetClosed {
			t.Errorf("closed lines: %v", closed)
		}
	})
}

// TestBulk carries 8 MiB each way at once and checks both arrive intact.
func TestBulk(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	c := dial(t, f.addr(f.ports.Low))
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	payload := make([]byte, 8<<20)
	_, _ = rand.Read(payload)
	sent := sha256.Sum256(payload)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.CloseWrite()
		}
		errc <- err
	}()
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if n != int64(len(payload)) || !bytes.Equal(h.Sum(nil), sent[:]) {
		t.Fatalf("read %d bytes back, sha256 equal: %v", n, bytes.Equal(h.Sum(nil), sent[:]))
	}
	f.waitResult(t, modeTCP, resultOK, 1)
	for _, dir := range []string{"in", "out"} {
		if got := testutil.ToFloat64(f.m.TCPBytes.WithLabelValues("tcp", dir)); got != float64(len(payload)) {
			t.Errorf("bytes %s = %v", dir, got)
		}
	}
}

// TestConcurrent runs 200 connections on one port at once, each with its own bytes.
func TestConcurrent(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	const n = 200
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", f.addr(f.ports.Low), 5*time.Second)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(30 * time.Second))
			msg := fmt.Sprintf("connection %d %s", i, bytes.Repeat([]byte{'x'}, i*100))
			got, err := roundTrip(c.(*net.TCPConn), msg)
			if err != nil || got != msg {
				errs <- fmt.Errorf("connection %d: %d bytes back, %v", i, len(got), err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	f.waitResult(t, modeTCP, resultOK, n)
	// The gauge drops as serve returns, just after finish counted the result.
	open := func() float64 { return testutil.ToFloat64(f.m.TCPConnectionsOpen.WithLabelValues("tcp")) }
	for deadline := time.Now().Add(5 * time.Second); open() != 0 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if v := open(); v != 0 {
		t.Errorf("open gauge = %v 5 s after all closed", v)
	}
}

// TestAssign covers each way of picking a port and each refusal.
func TestAssign(t *testing.T) {
	ctx := context.Background()
	ok := func(int) error { return nil }
	t.Run("any free, then served before a reload", func(t *testing.T) {
		f := newFixture(t, fixtureOpts{noRoute: true})
		f.agents.add("new.example.com", &agent{id: "agent-2", s: f.pair.Server, raw: true})
		var committed []int
		port, err := f.e.Assign(ctx, "new.example.com", 0, func(p int) error { committed = append(committed, p); return nil })
		if err != nil || port != f.ports.Low || len(committed) != 1 || committed[0] != port {
			t.Fatalf("Assign = %d, %v; committed %v", port, err, committed)
		}
		c := dial(t, f.addr(port))
		if got, err := roundTrip(c, "ping"); got != "ping" {
			t.Fatalf("echo = %q, %v", got, err)
		}
		// A reload whose routes name it adopts it; one that does not closes it.
		f.src.set(Route{Domain: "new.example.com", Mode: tunnelv1.StreamMode_STREAM_MODE_TCP, Port: port})
		if err := f.e.Reload(ctx); err != nil {
			t.Fatal(err)
		}
		c = dial(t, f.addr(port))
		if got, err := roundTrip(c, "still"); got != "still" {
			t.Fatalf("after reload: echo = %q, %v", got, err)
		}
	})
	t.Run("skips ports other domains and processes hold", func(t *testing.T) {
		f := newFixture(t, fixtureOpts{})
		// testDomain holds Low; another process holds Low+1.
		ln, err := net.Listen("tcp", f.addr(f.ports.Low+1))
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		port, err := f.e.Assign(ctx, "other.example.com", 0, ok)
		if err != nil || port != f.ports.Low+2 {
			t.Fatalf("Assign = %d, %v, want %d", port, err, f.ports.Low+2)
		}
	})
	t.Run("commit says taken: next port", func(t *testing.T) {
		f := newFixture(t, fixtureOpts{noRoute: true})
		var tried []int
		port, err := f.e.Assign(ctx, "a.example.com", 0, func(p int) error {
			tried = append(tried, p)
			if p == f.ports.Low {
				return fmt.Errorf("registry: %w", ErrPortTaken)
			}
			return nil
		})
		if err != nil || port != f.ports.Low+1 || len(tried) != 2 {
			t.Fatalf("Assign = %d, %v; tried %v", port, err, tried)
		}
		// The port whose commit failed was let go.
		ln, err := net.Listen("tcp", f.addr(f.ports.Low))
		if err != nil {
			t.Fatalf("port whose commit failed still held: %v", err)
		}
		ln.Close()
	})
	t.Run("requested", func(t *testing.T) {
		f := newFixture(t, fixtureOpts{noRoute: true})
		want := f.ports.High
		port, err := f.e.Assign(ctx, "a.example.com", want, ok)
		if err != nil || port != want {
			t.Fatalf("Assign = %d, %v", port, err)
		}
		// Asking again for the same port keeps it (the registry write is repeated).
		if port, err := f.e.Assign(ctx, "a.example.com", want, ok); err != nil || port != want {
			t.Fatalf("Assign again = %d, %v", port, err)
		}
		// Another domain cannot have it.
		if _, err := f.e.Assign(ctx, "b.example.com", want, ok); !errors.Is(err, ErrPortTaken) {
			t.Fatalf("Assign of a held port: %v", err)
		}
		// Moving the domain to another port lets the first one go.
		if port, err := f.e.Assign(ctx, "a.example.com", f.ports.Low, ok); err != nil || port != f.ports.Low {
			t.Fatalf("move = %d, %v", port, err)
		}
		poll.Until(t, 5*time.Second, "the old port to be free", func() bool {
			ln, err := net.Listen("tcp", f.addr(want))
			if err == nil {
				ln.Close()
			}
			return err == nil
		})
	})
	t.Run("requested commit fails", func(t *testing.T) {
		f := newFixture(t, fixtureOpts{noRoute: true})
		taken := fmt.Errorf("registry: %w", ErrPortTaken)
		if _, err := f.e.Assign(ctx, "a.example.com", f.ports.Low, func(int) error { return taken }); !errors.Is(err, ErrPortTaken) {
			t.Fatalf("Assign: %v", err)
		}
	})
	t.Run("out of range", func(t *testing.T) {
		f := newFixture(t, fixtureOpts{noRoute: true})
		for _, p := range []int{f.ports.Low - 1, f.ports.High + 1} {
			if _, err := f.e.Assign(ctx, "a.example.com", p, ok); !errors.Is(err, ErrPortOutOfRange) {
				t.Errorf("Assign(%d): %v", p, err)
			}
		}
	})
	t.Run("range exhausted", func(t *testing.T) {
		f := newFixture(t, fixtureOpts{noRoute: true, ports: 2})
		for i := range 2 {
			if _, err := f.e.Assign(ctx, fmt.Sprintf("d%d.example.com", i), 0, ok); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := f.e.Assign(ctx, "d2.example.com", 0, ok); !errors.Is(err, ErrNoFreePort) {
			t.Fatalf("Assign: %v", err)
		}
	})
	t.Run("held by another process", func(t *testing.T) {
		f := newFixture(t, fixtureOpts{noRoute: true})
		ln, err := net.Listen("tcp", f.addr(f.ports.Low))
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		_, err = f.e.Assign(ctx, "a.example.com", f.ports.Low, func(int) error {
			t.Error("commit called for a port that could not be bound")
			return nil
		})
		if !errors.Is(err, ErrPortInUse) || !bytes.Contains([]byte(err.Error()), []byte(strconv.Itoa(f.ports.Low))) {
			t.Fatalf("Assign: %v", err)
		}
	})
	t.Run("tcp off", func(t *testing.T) {
		e := New(Options{Source: &source{}, Agents: &agents{}})
		if _, err := e.Assign(ctx, "a.example.com", 0, ok); !errors.Is(err, ErrTCPOff) {
			t.Fatalf("Assign: %v", err)
		}
		if err := e.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

// TestReload checks that a reload opens the listener of a new tcp route and closes, with its open
// connections, the listener of a removed one; a port it cannot bind is retried by the next one.
func TestReload(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, fixtureOpts{noRoute: true})
	if _, err := net.DialTimeout("tcp", f.addr(f.ports.Low), time.Second); err == nil {
		t.Fatal("port served before any route")
	}
	// A port another process holds is logged and retried.
	blocker, err := net.Listen("tcp", f.addr(f.ports.Low))
	if err != nil {
		t.Fatal(err)
	}
	f.src.set(Route{Domain: testDomain, Mode: tunnelv1.StreamMode_STREAM_MODE_TCP, Port: f.ports.Low})
	if err := f.e.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if len(f.log.find("tcp port cannot be bound; retrying")) != 1 {
		t.Fatal("bind failure not logged")
	}
	blocker.Close()
	if err := f.e.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	c := dial(t, f.addr(f.ports.Low))
	if _, err := io.WriteString(c, "open"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}

	f.src.set()
	if err := f.e.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if err := closedByGateway(c, 5*time.Second); err != nil {
		t.Fatalf("open connection of the removed route: %v", err)
	}
	if _, err := net.DialTimeout("tcp", f.addr(f.ports.Low), time.Second); err == nil {
		t.Fatal("port of the removed route still served")
	}
	// A Source error is returned and changes nothing.
	f.src.mu.Lock()
	f.src.err = errors.New("store down")
	f.src.mu.Unlock()
	if err := f.e.Reload(ctx); err == nil {
		t.Fatal("Reload hid the Source error")
	}
}

// TestRelease checks that Release closes the domain's port and connections at once, and that a
// reload that read the routes before does not bring the port back.
func TestRelease(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	c := dial(t, f.addr(f.ports.Low))
	if _, err := io.WriteString(c, "x"); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	f.e.Release(testDomain)
	if err := closedByGateway(c, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := net.DialTimeout("tcp", f.addr(f.ports.Low), time.Second); err == nil {
		t.Fatal("port still served after Release")
	}
	f.waitResult(t, modeTCP, resultOK, 1)
	if closed := f.log.find("tcp connection closed"); len(closed) != 1 || closed[0]["reason"] != reasonRouteRemoved {
		t.Errorf("closed lines: %v", closed)
	}
}

// TestPerDomainCap checks that a domain's connections over MaxConnsPerDomain are closed, and that
// a slot frees when one ends.
func TestPerDomainCap(t *testing.T) {
	f := newFixture(t, fixtureOpts{editOpts: func(o *Options) { o.MaxConnsPerDomain = 2 }})
	var open []*net.TCPConn
	for range 2 {
		c := dial(t, f.addr(f.ports.Low))
		if _, err := io.WriteString(c, "x"); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		open = append(open, c)
	}
	over := dial(t, f.addr(f.ports.Low))
	if err := closedByGateway(over, 5*time.Second); err != nil {
		t.Fatalf("connection over the cap: %v", err)
	}
	f.waitResult(t, modeTCP, resultOverLimit, 1)
	if got, err := roundTrip(open[0], "y"); got != "y" {
		t.Fatalf("echo = %q, %v", got, err)
	}
	f.waitResult(t, modeTCP, resultOK, 1)
	c := dial(t, f.addr(f.ports.Low))
	if got, err := roundTrip(c, "z"); got != "z" {
		t.Fatalf("after a slot freed: echo = %q, %v", got, err)
	}
}

// TestIdleTimeout checks that bytes in either direction keep a connection open, and that one
// quiet for IdleTimeout is closed, a half-closed one included.
func TestIdleTimeout(t *testing.T) {
	const idle = 300 * time.Millisecond
	opts := fixtureOpts{editOpts: func(o *Options) { o.IdleTimeout = idle }}
	t.Run("active then quiet", func(t *testing.T) {
		f := newFixture(t, opts)
		c := dial(t, f.addr(f.ports.Low))
		buf := make([]byte, 1)
		start := time.Now()
		for time.Since(start) < 3*idle {
			if _, err := c.Write([]byte{'a'}); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(c, buf); err != nil {
				t.Fatalf("closed while active: %v", err)
			}
			time.Sleep(idle / 4)
		}
		if err := closedByGateway(c, 10*idle); err != nil {
			t.Fatal(err)
		}
		f.waitResult(t, modeTCP, resultOK, 1)
		if closed := f.log.find("tcp connection closed"); len(closed) != 1 || closed[0]["reason"] != reasonIdle {
			t.Errorf("closed lines: %v", closed)
		}
	})
	t.Run("half-closed", func(t *testing.T) {
		// The target never answers nor closes: only the timer can end it.
		stop := make(chan struct{})
		f := newFixture(t, fixtureOpts{target: func(c *net.TCPConn) { _, _ = io.Copy(io.Discard, c); <-stop },
			editOpts: opts.editOpts})
		t.Cleanup(func() { close(stop) })
		c := dial(t, f.addr(f.ports.Low))
		_ = c.CloseWrite()
		if err := closedByGateway(c, 10*idle); err != nil {
			t.Fatal(err)
		}
	})
}

// TestAccessRefused checks that a denied visitor and an unreadable policy both close the
// connection before any agent hears of it, each counted under its own result.
func TestAccessRefused(t *testing.T) {
	tests := []struct {
		name   string
		access *denyAccess
		result string
		denied float64
	}{
		{name: "ip rule", access: &denyAccess{deny: netip.MustParsePrefix("127.0.0.0/8")}, result: resultDenied, denied: 1},
		{name: "store unavailable", access: &denyAccess{err: fmt.Errorf("policy: %w", access.ErrStoreUnavailable)}, result: resultStoreUnavailable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, fixtureOpts{editOpts: func(o *Options) { o.Access = tc.access }})
			c := dial(t, f.addr(f.ports.Low))
			_, _ = io.WriteString(c, "hello")
			if err := closedByGateway(c, 5*time.Second); err != nil {
				t.Fatal(err)
			}
			f.waitResult(t, modeTCP, tc.result, 1)
			if got := testutil.ToFloat64(f.m.AccessDenied.WithLabelValues(access.ReasonIP)); got != tc.denied {
				t.Errorf("access denied{ip} = %v, want %v", got, tc.denied)
			}
			if len(f.heads) != 0 {
				t.Error("the agent was asked for a refused connection")
			}
			tc.access.mu.Lock()
			defer tc.access.mu.Unlock()
			if len(tc.access.seen) != 1 || tc.access.seen[0] != netip.MustParseAddr("127.0.0.1") {
				t.Errorf("visitors checked: %v", tc.access.seen)
			}
		})
	}
}

// TestForgedProxyHeader checks that a PROXY header from a peer that is not a trusted balancer is
// refused wherever a header means something (a balancer is configured, or the target is sent one),
// and is plain data otherwise.
func TestForgedProxyHeader(t *testing.T) {
	v1 := "PROXY TCP4 198.51.100.1 127.0.0.1 1234 80\r\nhello"
	v2 := string(v2Header(t)) + "hello"
	tests := []struct {
		name    string
		trusted string
		pp      uint32
		payload string
		refused bool
	}{
		{name: "v1 with a balancer configured", trusted: "10.0.0.0/8", payload: v1, refused: true},
		{name: "v2 with a balancer configured", trusted: "10.0.0.0/8", payload: v2, refused: true},
		{name: "v1 when the target gets a header", pp: 2, payload: v1, refused: true},
		{name: "v1 split in small writes", trusted: "10.0.0.0/8", payload: v1, refused: true},
		{name: "no header, balancer configured", trusted: "10.0.0.0/8", payload: "PROXYISH but not a header"},
		{name: "header is data when nothing reads headers", payload: v1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, fixtureOpts{
				route: Route{ProxyProtocol: tc.pp},
				editOpts: func(o *Options) {
					if tc.trusted != "" {
						o.TrustedLB = []netip.Prefix{netip.MustParsePrefix(tc.trusted)}
					}
				},
			})
			c := dial(t, f.addr(f.ports.Low))
			if !tc.refused {
				if got, err := roundTrip(c, tc.payload); got != tc.payload {
					t.Fatalf("echo = %q, %v", got, err)
				}
				return
			}
			if tc.name == "v1 split in small writes" {
				_ = c.SetNoDelay(true)
				for _, part := range []string{"PR", "OXY", " TCP4 198.51.100.1", " 127.0.0.1 1 2\r\n"} {
					_, _ = io.WriteString(c, part)
					time.Sleep(20 * time.Millisecond)
				}
			} else {
				_, _ = io.WriteString(c, tc.payload)
			}
			if err := closedByGateway(c, 5*time.Second); err != nil {
				t.Fatal(err)
			}
			f.waitResult(t, modeTCP, resultForged, 1)
			if closed := f.log.find("tcp connection closed"); len(closed) != 1 || closed[0]["reason"] != "refused_"+resultForged {
				t.Errorf("closed lines: %v", closed)
			}
		})
	}
}

func v2Header(t *testing.T) []byte {
	t.Helper()
	h := proxyproto.HeaderProxyFromAddrs(2, &net.TCPAddr{IP: net.ParseIP("198.51.100.1"), Port: 1234},
		&net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 80})
	b, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestTrustedBalancer checks that a trusted balancer's PROXY header (v1 or v2) names the visitor:
// to the access policy and to the agent (remote and local address of the head); and that a
// balancer's connection without one is refused.
func TestTrustedBalancer(t *testing.T) {
	src := &net.TCPAddr{IP: net.ParseIP("203.0.113.7"), Port: 4242}
	dst := &net.TCPAddr{IP: net.ParseIP("192.0.2.10"), Port: 5432}
	for _, version := range []byte{1, 2} {
		t.Run("v"+strconv.Itoa(int(version)), func(t *testing.T) {
			acc := &denyAccess{}
			f := newFixture(t, fixtureOpts{
				route: Route{ProxyProtocol: 1},
				editOpts: func(o *Options) {
					o.TrustedLB = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
					o.Access = acc
				},
			})
			c := dial(t, f.addr(f.ports.Low))
			if _, err := proxyproto.HeaderProxyFromAddrs(version, src, dst).WriteTo(c); err != nil {
				t.Fatal(err)
			}
			if got, err := roundTrip(c, "behind a balancer"); got != "behind a balancer" {
				t.Fatalf("echo = %q, %v", got, err)
			}
			h := <-f.heads
			if h.RemoteAddr != src.String() || h.LocalAddr != dst.String() || h.ProxyProtocol != 1 {
				t.Errorf("head remote %q local %q pp %d", h.RemoteAddr, h.LocalAddr, h.ProxyProtocol)
			}
			acc.mu.Lock()
			defer acc.mu.Unlock()
			if len(acc.seen) != 1 || acc.seen[0] != netip.MustParseAddr("203.0.113.7") {
				t.Errorf("visitors checked: %v", acc.seen)
			}
		})
	}
	t.Run("balancer without a header", func(t *testing.T) {
		f := newFixture(t, fixtureOpts{editOpts: func(o *Options) {
			o.TrustedLB = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
		}})
		c := dial(t, f.addr(f.ports.Low))
		_, _ = io.WriteString(c, "no header here, just data\r\n")
		if err := closedByGateway(c, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		f.waitResult(t, modeTCP, resultForged, 1)
	})
}

// TestAgentRefuses checks every way the agent side can fail before the 200: the visitor's
// connection is closed with nothing sent, counted under its result.
func TestAgentRefuses(t *testing.T) {
	tests := []struct {
		name   string
		accept func(*tunnel.Stream)
		noRaw  bool
		noAgt  bool
		result string
	}{
		{name: "target unreachable", result: resultTargetUnreachable, accept: func(st *tunnel.Stream) {
			st.Reset(tunnelv1.ResetReason_RESET_REASON_TARGET_UNREACHABLE, "connection refused")
		}},
		{name: "agent refuses", result: resultAgentError, accept: func(st *tunnel.Stream) {
			st.Reset(tunnelv1.ResetReason_RESET_REASON_REFUSED, "draining")
		}},
		{name: "no answer", result: resultTimeout, accept: func(st *tunnel.Stream) { <-st.Context().Done() }},
		{name: "agent without raw streams", result: resultNoAgent, noRaw: true},
		{name: "no agent", result: resultNoAgent, noAgt: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, fixtureOpts{accept: tc.accept, noRaw: tc.noRaw,
				editOpts: func(o *Options) { o.HeaderTimeout = 300 * time.Millisecond }})
			if tc.noAgt {
				f.src.set(Route{Domain: "idle.example.com", Mode: tunnelv1.StreamMode_STREAM_MODE_TCP, Port: f.ports.Low})
				if err := f.e.Reload(context.Background()); err != nil {
					t.Fatal(err)
				}
			}
			c := dial(t, f.addr(f.ports.Low))
			_, _ = io.WriteString(c, "hello")
			if err := closedByGateway(c, 5*time.Second); err != nil {
				t.Fatal(err)
			}
			f.waitResult(t, modeTCP, tc.result, 1)
		})
	}
}

// TestAgentGone checks that the agent's session ending mid-copy closes the visitor's connection,
// and that the port serves the next connection through another agent.
func TestAgentGone(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	c := dial(t, f.addr(f.ports.Low))
	if _, err := io.WriteString(c, "x"); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	f.pair.Server.Close(nil)
	if err := closedByGateway(c, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	f.waitResult(t, modeTCP, resultOK, 1)
	if closed := f.log.find("tcp connection closed"); len(closed) != 1 || closed[0]["reason"] != reasonAgentGone {
		t.Errorf("closed lines: %v", closed)
	}

	tg := startTarget(t, echo)
	p2 := tunneltest.NewPair(t, rawAgent(tg.addr, nil))
	f.agents.add(testDomain, &agent{id: "agent-2", s: p2.Server, raw: true})
	c = dial(t, f.addr(f.ports.Low))
	if got, err := roundTrip(c, "again"); got != "again" {
		t.Fatalf("echo through the next agent = %q, %v", got, err)
	}
}

// TestShutdown checks that Shutdown stops listening at once, lets an open connection finish, and
// cuts it when its context ends; it returns only once every goroutine is done (goleak checks the
// rest).
func TestShutdown(t *testing.T) {
	t.Run("drains", func(t *testing.T) {
		f := newFixture(t, fixtureOpts{})
		c := dial(t, f.addr(f.ports.Low))
		if _, err := io.WriteString(c, "a"); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- f.e.Shutdown(context.Background()) }()
		poll.Until(t, 5*time.Second, "the port to close", func() bool {
			d, err := net.DialTimeout("tcp", f.addr(f.ports.Low), time.Second)
			if err == nil {
				d.Close()
			}
			return err != nil
		})
		select {
		case err := <-done:
			t.Fatalf("Shutdown returned (%v) with a connection open", err)
		case <-time.After(100 * time.Millisecond):
		}
		if got, err := roundTrip(c, "bye"); got != "bye" {
			t.Fatalf("echo while draining = %q, %v", got, err)
		}
		if err := <-done; err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	})
	t.Run("cuts at the deadline", func(t *testing.T) {
		f := newFixture(t, fixtureOpts{})
		c := dial(t, f.addr(f.ports.Low))
		if _, err := io.WriteString(c, "a"); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		if err := f.e.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Shutdown: %v", err)
		}
		if err := closedByGateway(c, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		if closed := f.log.find("tcp connection closed"); len(closed) != 1 || closed[0]["reason"] != reasonShutdown {
			t.Errorf("closed lines: %v", closed)
		}
		// A passthrough connection handed over after Shutdown is closed at once.
		a, b := net.Pipe()
		defer b.Close()
		f.e.ServePassthrough(a, testDomain)
		if _, err := a.Write([]byte("x")); err == nil {
			t.Error("passthrough connection after Shutdown not closed")
		}
	})
}
