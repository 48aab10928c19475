package rawedge

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/hopgate/hopgate/internal/config"
	"github.com/hopgate/hopgate/internal/gateway/metrics"
	"github.com/hopgate/hopgate/internal/testutil/hoptest"
	"github.com/hopgate/hopgate/internal/tunnel"
	"github.com/hopgate/hopgate/internal/tunnel/tunneltest"
	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// source is a Source the test changes.
type source struct {
	mu     sync.Mutex
	routes []Route
	err    error
}

func (s *source) RawRoutes(context.Context) ([]Route, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Route(nil), s.routes...), s.err
}

func (s *source) set(routes ...Route) {
	s.mu.Lock()
	s.routes = routes
	s.mu.Unlock()
}

// agent is one end of an in-memory tunnel, as the hub hands it out.
type agent struct {
	id  string
	s   *tunnel.Session
	raw bool
}

func (a *agent) ID() string       { return a.id }
func (a *agent) RawStreams() bool { return a.raw }
func (a *agent) OpenStream(ctx context.Context, head *tunnelv1.RequestHead) (*tunnel.Stream, error) {
	return a.s.OpenStream(ctx, head)
}

// agents is an Agents over live agents by domain; an agent whose session ended is never picked.
type agents struct {
	mu       sync.Mutex
	byDomain map[string][]*agent
	picked   int
	released int
}

func (h *agents) add(domain string, a *agent) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.byDomain == nil {
		h.byDomain = map[string][]*agent{}
	}
	h.byDomain[domain] = append(h.byDomain[domain], a)
}

func (h *agents) Pick(domain string) Agent {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, a := range h.byDomain[domain] {
		if a.s.Err() == nil {
			h.picked++
			return a
		}
	}
	return nil
}

func (h *agents) Release(Agent) {
	h.mu.Lock()
	h.released++
	h.mu.Unlock()
}

// balanced reports whether every Pick was released.
func (h *agents) balanced() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.picked == h.released
}

// target is a TCP server on 127.0.0.1 standing for the agent's local service.
type target struct {
	addr string
	// conns receives each connection's handler result, when the handler reports one.
	wg sync.WaitGroup
}

// startTarget serves each connection with handle until the test ends.
func startTarget(t *testing.T, handle func(c *net.TCPConn)) *target {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tg := &target{addr: ln.Addr().String()}
	var conns sync.Map
	tg.wg.Add(1)
	go func() {
		defer tg.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Store(c, true)
			tg.wg.Add(1)
			go func() {
				defer tg.wg.Done()
				defer c.Close()
				defer conns.Delete(c)
				handle(c.(*net.TCPConn))
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		conns.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
		tg.wg.Wait()
	})
	return tg
}

// echo copies everything back and half-closes when the peer did.
func echo(c *net.TCPConn) {
	if _, err := io.Copy(c, c); err == nil {
		_ = c.CloseWrite()
	}
	_, _ = io.Copy(io.Discard, c)
}

// rawAgent is the agent side of the protocol: it dials addr for every raw stream, answers 200 and
// copies both ways with half-close; heads, when not nil, receives every head it is sent.
func rawAgent(addr string, heads chan<- *tunnelv1.RequestHead) func(*tunnel.Stream) {
	return func(st *tunnel.Stream) {
		h := st.Request()
		if heads != nil {
			select {
			case heads <- h:
			default:
			}
		}
		if h.Mode == tunnelv1.StreamMode_STREAM_MODE_UNSPECIFIED {
			st.Reset(tunnelv1.ResetReason_RESET_REASON_REFUSED, "not a raw stream")
			return
		}
		d := net.Dialer{Timeout: 2 * time.Second}
		c, err := d.DialContext(st.Context(), "tcp", addr)
		if err != nil {
			st.Reset(tunnelv1.ResetReason_RESET_REASON_TARGET_UNREACHABLE, err.Error())
			return
		}
		tc := c.(*net.TCPConn)
		defer tc.Close()
		if err := st.SendResponse(&tunnelv1.ResponseHead{Status: 200}); err != nil {
			return
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			if _, err := io.Copy(tc, st); err != nil {
				tc.Close()
				return
			}
			_ = tc.CloseWrite()
		}()
		if _, err := st.ReadFrom(tc); err != nil {
			st.Reset(tunnelv1.ResetReason_RESET_REASON_TARGET_ABORTED, err.Error())
		} else {
			_ = st.CloseWrite(nil)
		}
		<-done
		st.Close()
	}
}

// freeRange finds n consecutive ports on 127.0.0.1 that nothing holds now.
func freeRange(t *testing.T, n int) config.PortRange {
	t.Helper()
	low, high, err := hoptest.FreePortRange(n)
	if err != nil {
		t.Fatal(err)
	}
	return config.PortRange{Low: low, High: high}
}

// fixture is an edge with one tcp domain served by one agent in front of a target.
type fixture struct {
	e      *Edge
	src    *source
	agents *agents
	m      *metrics.Metrics
	log    *logRecorder
	heads  chan *tunnelv1.RequestHead
	ports  config.PortRange
	pair   *tunneltest.Pair
}

const testDomain = "db.example.com"

type fixtureOpts struct {
	target   func(*net.TCPConn) // default echo
	accept   func(*tunnel.Stream)
	noRaw    bool
	route    Route // Domain and Mode default to a tcp route of testDomain on the range's first port
	noRoute  bool
	ports    int // size of the range, default 4
	editOpts func(*Options)
}

func newFixture(t *testing.T, fo fixtureOpts) *fixture {
	t.Helper()
	if fo.target == nil {
		fo.target = echo
	}
	if fo.ports == 0 {
		fo.ports = 4
	}
	f := &fixture{src: &source{}, agents: &agents{}, m: metrics.New(), log: &logRecorder{},
		heads: make(chan *tunnelv1.RequestHead, 512), ports: freeRange(t, fo.ports)}
	tg := startTarget(t, fo.target)
	accept := fo.accept
	if accept == nil {
		accept = rawAgent(tg.addr, f.heads)
	}
	f.pair = tunneltest.NewPair(t, accept)
	f.agents.add(testDomain, &agent{id: "agent-1", s: f.pair.Server, raw: !fo.noRaw})
	if !fo.noRoute {
		r := fo.route
		if r.Domain == "" {
			r.Domain = testDomain
		}
		if r.Mode == tunnelv1.StreamMode_STREAM_MODE_UNSPECIFIED {
			r.Mode = tunnelv1.StreamMode_STREAM_MODE_TCP
		}
		if r.Mode == tunnelv1.StreamMode_STREAM_MODE_TCP && r.Port == 0 {
			r.Port = f.ports.Low
		}
		f.src.set(r)
	}
	o := Options{
		Source: f.src, Agents: f.agents, ListenHost: "127.0.0.1", Ports: f.ports,
		IdleTimeout: time.Minute, HeaderTimeout: 5 * time.Second, Refresh: time.Hour,
		Metrics: f.m, Logger: slog.New(f.log),
	}
	if fo.editOpts != nil {
		fo.editOpts(&o)
	}
	f.e = New(o)
	f.e.Start(context.Background())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := f.e.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if !f.agents.balanced() {
			t.Errorf("agents picked %d times, released %d", f.agents.picked, f.agents.released)
		}
	})
	return f
}

func (f *fixture) addr(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }

// dial connects to port and closes the connection when the test ends.
func dial(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	return c.(*net.TCPConn)
}

// roundTrip sends msg, half-closes and returns everything read until EOF.
func roundTrip(c *net.TCPConn, msg string) (string, error) {
	if _, err := io.WriteString(c, msg); err != nil {
		return "", err
	}
	if err := c.CloseWrite(); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	return string(b), err
}

// closedByGateway reports whether c ends (EOF or reset) with nothing read, within d.
func closedByGateway(c net.Conn, d time.Duration) error {
	_ = c.SetReadDeadline(time.Now().Add(d))
	b, err := io.ReadAll(c)
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("still open after %v", d)
	case len(b) > 0:
		return fmt.Errorf("read %q before the close", b)
	}
	return nil
}

// logRecorder keeps the records written to it.
type logRecorder struct {
	mu      sync.Mutex
	records []map[string]string
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logRecorder) WithGroup(string) slog.Handler            { return l }
func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	m := map[string]string{"msg": r.Message}
	r.Attrs(func(a slog.Attr) bool {
		m[a.Key] = a.Value.String()
		return true
	})
	l.mu.Lock()
	l.records = append(l.records, m)
	l.mu.Unlock()
	return nil
}

// find returns the records with message msg.
func (l *logRecorder) find(msg string) []map[string]string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]string
	for _, r := range l.records {
		if r["msg"] == msg {
			out = append(out, r)
		}
	}
	return out
}

// denyAccess refuses addresses in deny; err, when set, is returned for everyone.
type denyAccess struct {
	deny netip.Prefix
	err  error
	mu   sync.Mutex
	seen []netip.Addr
}

func (a *denyAccess) AdmitAddr(_ context.Context, _ string, visitor netip.Addr) error {
	a.mu.Lock()
	a.seen = append(a.seen, visitor)
	a.mu.Unlock()
	if a.err != nil {
		return a.err
	}
	if a.deny.IsValid() && a.deny.Contains(visitor) {
		return denial()
	}
	return nil
}
