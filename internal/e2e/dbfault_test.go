package e2e

import (
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hopgate/hopgate/internal/testutil/pgtest"
)

// dbRelay sits between the gateway and Postgres; cut drops every connection and refuses new ones
// until restore, like a database that stops and comes back; stall holds every byte (old and new
// connections stay open but nothing answers), like a database stuck on locks or I/O.
type dbRelay struct {
	ln      net.Listener
	target  string
	mu      sync.Mutex
	down    bool
	stalled bool
	conns   map[net.Conn]struct{}
	wg      sync.WaitGroup
}

func newDBRelay(t *testing.T, dsn string) (*dbRelay, string) {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &dbRelay{ln: ln, target: u.Host, conns: make(map[net.Conn]struct{})}
	r.wg.Add(1)
	go r.serve()
	t.Cleanup(func() {
		ln.Close()
		r.cut()
		r.wg.Wait()
	})
	u.Host = ln.Addr().String()
	return r, u.String()
}

func (r *dbRelay) serve() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.mu.Lock()
		if r.down {
			r.mu.Unlock()
			c.Close()
			continue
		}
		up, err := net.DialTimeout("tcp", r.target, 5*time.Second)
		if err != nil {
			r.mu.Unlock()
			c.Close()
			continue
		}
		r.conns[c], r.conns[up] = struct{}{}, struct{}{}
		r.mu.Unlock()
		r.wg.Add(2)
		go func() { defer r.wg.Done(); r.copy(up, c); up.Close() }()
		go func() { defer r.wg.Done(); r.copy(c, up); c.Close() }()
	}
}

func (r *dbRelay) cut() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.down = true
	for c := range r.conns {
		c.Close()
		delete(r.conns, c)
	}
}

func (r *dbRelay) restore() {
	r.mu.Lock()
	r.down, r.stalled = false, false
	r.mu.Unlock()
}

func (r *dbRelay) stall() {
	r.mu.Lock()
	r.stalled = true
	r.mu.Unlock()
}

// copy is io.Copy that holds what it read while the relay is stalled.
func (r *dbRelay) copy(dst io.Writer, src io.Reader) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		for {
			r.mu.Lock()
			stalled, down := r.stalled, r.down
			r.mu.Unlock()
			if down {
				return
			}
			if !stalled {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// TestDBOutageTunnels: with Postgres gone, established tunnels keep serving, a new agent is refused
// with Unavailable and keeps retrying (never exits), admin writes and /readyz answer 503; when the
// database returns, everything recovers without a restart and the waiting agent gets in.
func TestDBOutageTunnels(t *testing.T) {
	t.Parallel()
	relay, dsn := newDBRelay(t, pgtest.DSN(t))
	target := tnTarget(t, func(w http.ResponseWriter, r *http.Request) {})
	g := startGateway(t, gatewayOptions{DSN: dsn})
	keyA, keyB := g.register("live.example.test"), g.register("late.example.test")
	g.startAgent("live.example.test", keyA, target.URL)
	c := g.httpClient(false)

	relay.cut()
	waitFor(t, 10*time.Second, "/readyz 503", func() bool {
		code, _ := tnGet(t, c, g.url("localhost", "/readyz"))
		return code == http.StatusServiceUnavailable
	})
	for i := range 20 {
		if code, _ := tnGet(t, c, g.url("live.example.test", "/")); code != http.StatusOK {
			t.Fatalf("established tunnel during the outage, request %d: %d", i, code)
		}
	}
	late := g.startAgentNoWait("late.example.test", keyB, target.URL)
	waitFor(t, 15*time.Second, "new agent refused as unavailable", func() bool {
		return len(lines(late, "Unavailable")) > 0
	})
	if late.exited() {
		t.Fatalf("agent exited during the outage:\n%s", late.logs.String())
	}

	relay.restore()
	waitFor(t, 15*time.Second, "/readyz 200 after the database returned", func() bool {
		code, _ := tnGet(t, c, g.url("localhost", "/readyz"))
		return code == http.StatusOK
	})
	g.register("after.example.test")
	// The waiting agent retries with backoff (1 s, 2 s, 4 s … with jitter) and gets in.
	waitFor(t, 30*time.Second, "waiting agent up after the outage", func() bool {
		return len(lines(late, "tunnel up")) > 0
	})
	if code, _ := tnGet(t, c, g.url("late.example.test", "/")); code != http.StatusOK {
		t.Fatalf("late agent's domain after recovery: %d", code)
	}
}

// TestDBSlowLookupsDoNotPileUp: with the database stuck (connections open, no answers), requests that
// need a lookup (a registered domain with no agent) get 503 within the lookup timeout instead of
// waiting, 200 of them at once leave no goroutines behind, established tunnels keep serving, and
// all recovers when the database answers again.
func TestDBSlowLookupsDoNotPileUp(t *testing.T) {
	t.Parallel()
	relay, dsn := newDBRelay(t, pgtest.DSN(t))
	target := tnTarget(t, func(w http.ResponseWriter, r *http.Request) {})
	g := startGateway(t, gatewayOptions{DSN: dsn, Env: []string{"HOP_SERVER_METRICS_LISTEN=127.0.0.1:0"}})
	metrics := tnMetricsAddr(t, g)
	g.register("idle.example.test") // registered, no agent: every request asks the store
	g.startAgent("live.example.test", g.register("live.example.test"), target.URL)
	c := g.httpClient(true)
	if code, _ := tnGet(t, c, g.url("idle.example.test", "/")); code != http.StatusServiceUnavailable {
		t.Fatalf("registered domain without agent: %d", code)
	}
	lateKey := g.register("late.example.test")
	base := tnMetric(t, metrics, "go_goroutines")

	relay.stall()
	// A new tunnel login needs the store: refused as Unavailable after its 5 s timeout, not held.
	late := g.startAgentNoWait("late.example.test", lateKey, target.URL)
	const n = 200
	var wg sync.WaitGroup
	var slowest atomic.Int64
	var wrong atomic.Int64
	for range n {
		wg.Go(func() {
			start := time.Now()
			code, _ := tnGet(t, c, g.url("idle.example.test", "/"))
			if code != http.StatusServiceUnavailable {
				wrong.Add(1)
			}
			for d := int64(time.Since(start)); d > slowest.Load() && !slowest.CompareAndSwap(slowest.Load(), d); {
			}
		})
	}
	// Established tunnels do not ask the store.
	for i := range 10 {
		if code, _ := tnGet(t, c, g.url("live.example.test", "/")); code != http.StatusOK {
			t.Errorf("established tunnel while the database is stuck, request %d: %d", i, code)
		}
	}
	wg.Wait()
	t.Logf("%d lookups against a stuck database: slowest answer %v", n, time.Duration(slowest.Load()))
	if wrong.Load() > 0 {
		t.Errorf("%d of %d requests were not answered 503", wrong.Load(), n)
	}
	if d := time.Duration(slowest.Load()); d > 6*time.Second {
		t.Errorf("slowest answer %v: lookups wait far past their 2 s timeout", d)
	}
	waitFor(t, 15*time.Second, "the new agent refused as unavailable", func() bool {
		return len(lines(late, "Unavailable")) > 0
	})
	late.signal(syscall.SIGTERM)
	late.wait(t, 10*time.Second)
	var now float64
	waitFor(t, 15*time.Second, "goroutines back to the baseline", func() bool {
		now = tnMetric(t, metrics, "go_goroutines")
		return now <= base+20
	})

	relay.restore()
	waitFor(t, 15*time.Second, "lookups answered again", func() bool {
		code, _ := tnGet(t, c, g.url("localhost", "/readyz"))
		return code == http.StatusOK
	})
	g.register("after.example.test")
}
