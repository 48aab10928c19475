package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestClusterPostgresRestart: two gateways on a PostgreSQL server of the test's own, which is
// stopped for real and started again on the same port and data while visitors keep sending through
// both gateways. A real restart, unlike a cut connection, also ends the server-side LISTEN
// registrations and sessions and refuses connections while down. Established tunnels serve every
// request from the gateways' caches; both change feeds reconnect, and a policy set through A
// afterwards applies on B within a second, which only a feed that LISTENs again can do.
//
// Then only B loses the database (a relay in front of it is cut) while the key is rotated through
// A, so B's listener misses the notice; once B's database returns, its listener reconnects and
// resyncs, and B closes the tunnel on the old key well before the 30 s periodic resync would have.
// A restart cannot give that: while the server is down, nobody can rotate a key.
func TestClusterPostgresRestart(t *testing.T) {
	t.Parallel()
	pg := startPGServer(t)
	// The relay passes the restart through: it closes a connection when the server closes its end
	// and refuses one it cannot dial.
	relayB, dsnB := newDBRelay(t, pg.dsn)
	target := tnTarget(t, func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("ok")) })
	gA := startGateway(t, gatewayOptions{DSN: pg.dsn, Env: []string{"HOP_SERVER_ID=pg-a"}})
	gB := startGateway(t, gatewayOptions{DSN: dsnB, Env: []string{"HOP_SERVER_ID=pg-b"}})
	gws := map[string]*gateway{"A": gA, "B": gB}
	const domain = "pgrestart.example.test"
	key := gA.register(domain)
	gA.startAgent(domain, key, target.URL)
	agentB := gB.startAgent(domain, key, target.URL)
	for name, g := range gws {
		waitFor(t, 10*time.Second, name+" following the change feed", func() bool {
			return len(lines(g.process, "following the change feed")) > 0
		})
	}

	// Visitors through both gateways for the whole restart: bounded in count and in time.
	ctx, stop := context.WithTimeout(t.Context(), 60*time.Second)
	defer stop()
	var (
		sent, failed atomic.Int64
		firstErr     atomic.Value
		wg           sync.WaitGroup
	)
	for name, g := range gws {
		c := g.httpClient(false)
		url := g.url(domain, "/")
		wg.Go(func() {
			for i := 0; i < 5000 && ctx.Err() == nil; i++ {
				code, body, err := tnTry(ctx, c, url)
				if ctx.Err() != nil {
					return
				}
				sent.Add(1)
				if err != nil || code != http.StatusOK || body != "ok" {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("%s: %d %q %v", name, code, body, err))
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
	time.Sleep(500 * time.Millisecond)

	pg.down()
	downAt := time.Now()
	u, err := url.Parse(pg.dsn)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := net.DialTimeout("tcp", u.Host, time.Second); err == nil {
		c.Close()
		t.Fatalf("%s still accepts connections after the server was stopped", u.Host)
	}
	for name, g := range gws {
		c := g.httpClient(false)
		waitFor(t, 2*time.Second, name+" /readyz 503 while the database is down", func() bool {
			code, _ := tnGet(t, c, g.url("localhost", "/readyz"))
			return code == http.StatusServiceUnavailable
		})
		waitFor(t, 2*time.Second, name+"'s change feed noticing the server went away", func() bool {
			return len(lines(g.process, "change feed disconnected")) > 0
		})
	}
	time.Sleep(time.Until(downAt.Add(2500 * time.Millisecond)))
	pg.up()
	upAt := time.Now()
	t.Logf("PostgreSQL was down for %v", upAt.Sub(downAt).Round(time.Millisecond))
	for name, g := range gws {
		c := g.httpClient(false)
		waitFor(t, 10*time.Second, name+" /readyz 200 after the database returned", func() bool {
			code, _ := tnGet(t, c, g.url("localhost", "/readyz"))
			return code == http.StatusOK
		})
		// The listener's backoff tops out at 10 s.
		waitFor(t, 15*time.Second, name+"'s change feed reconnecting", func() bool {
			return len(lines(g.process, "change feed reconnected")) > 0
		})
	}
	t.Logf("both change feeds reconnected %v after the server returned", time.Since(upAt).Round(time.Millisecond))
	time.Sleep(500 * time.Millisecond)
	stop()
	wg.Wait()
	t.Logf("%d requests through two gateways across a database restart, %d failed", sent.Load(), failed.Load())
	if failed.Load() > 0 {
		t.Fatalf("%d of %d requests failed while the database restarted; first: %v", failed.Load(), sent.Load(), firstErr.Load())
	}
	if sent.Load() < 200 {
		t.Fatalf("only %d requests were sent: the load did not cover the restart", sent.Load())
	}

	// The feeds are LISTENing again: a policy set through A (loopback visitors denied) applies on B
	// within a second. The periodic resync (30 s) cannot pass this.
	hcB := gB.httpClient(false)
	if code, _ := tnGet(t, hcB, gB.url(domain, "/")); code != http.StatusOK {
		t.Fatalf("B before the policy: %d", code)
	}
	set := time.Now()
	setPolicy(t, gA, domain, `{"ip_deny": ["127.0.0.0/8", "::1"]}`)
	for {
		code, _, err := tnTry(t.Context(), hcB, gB.url(domain, "/"))
		if err == nil && code == http.StatusForbidden {
			break
		}
		if time.Since(set) > time.Second {
			t.Fatalf("the policy set through A after the restart did not apply on B within 1 s (last: %d %v): B's change feed did not LISTEN again", code, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("the policy set through A applied on B after %v", time.Since(set).Round(time.Millisecond))

	// B alone loses the database; the rotation through A notifies a listener that is not there.
	relayB.cut()
	time.Sleep(time.Second)
	if code, out := gA.admin(http.MethodPost, "/api/v1/admin/domains/rotate-key", map[string]string{"domain": domain}); code != http.StatusOK {
		t.Fatalf("rotate-key through A: %d %v", code, out)
	}
	time.Sleep(2 * time.Second)
	if agentB.exited() {
		t.Fatal("B closed the old key's tunnel while it could not have heard of the rotation")
	}
	restored := time.Now()
	relayB.restore()
	// Refused on reconnect with the old key, the agent exits 3.
	if code := agentB.wait(t, 20*time.Second); code != 3 {
		t.Fatalf("agent on B exited %d after the resync, want 3 (key refused)", code)
	}
	took := time.Since(restored)
	t.Logf("B closed the rotated key's tunnel %v after its database returned", took.Round(time.Millisecond))
	if took > 15*time.Second {
		t.Fatalf("B took %v to resync after its listener reconnected; the periodic resync (30 s) is not the one to rely on", took)
	}
}
