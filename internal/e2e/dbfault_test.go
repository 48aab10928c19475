package e2e

import (
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/hopgate/hopgate/internal/testutil/pgtest"
)

// dbRelay sits between the gateway and Postgres; cut drops every connection and refuses new ones
// until restore, like a database that stops and comes back.
type dbRelay struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	down   bool
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
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
		go func() { defer r.wg.Done(); _, _ = io.Copy(up, c); up.Close() }()
		go func() { defer r.wg.Done(); _, _ = io.Copy(c, up); c.Close() }()
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
	r.down = false
	r.mu.Unlock()
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
