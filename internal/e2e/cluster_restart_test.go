package e2e

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hopgate/hopgate/internal/testutil/pgtest"
)

// TestClusterPostgresRestart: two gateways on one Postgres, each reaching it through its own relay.
// The database goes away for both (every connection cut, new ones refused, as in a restart) while
// visitors keep sending through both gateways: established tunnels serve every request. Then only
// gateway B loses the database while the key is rotated through A, so B's change listener misses
// the notice; once B's database returns, its listener reconnects and resyncs, and B closes the tunnel
// on the old key well before the 30 s periodic resync would have.
func TestClusterPostgresRestart(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DSN(t)
	relayA, dsnA := newDBRelay(t, dsn)
	relayB, dsnB := newDBRelay(t, dsn)
	target := tnTarget(t, func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("ok")) })
	gA := startGateway(t, gatewayOptions{DSN: dsnA, Env: []string{"HOP_SERVER_ID=pg-a"}})
	gB := startGateway(t, gatewayOptions{DSN: dsnB, Env: []string{"HOP_SERVER_ID=pg-b"}})
	const domain = "pgrestart.example.test"
	key := gA.register(domain)
	gA.startAgent(domain, key, target.URL)
	agentB := gB.startAgent(domain, key, target.URL)

	// Visitors through both gateways for the whole outage: bounded in count and in time.
	ctx, stop := context.WithTimeout(t.Context(), 60*time.Second)
	defer stop()
	var (
		sent, failed atomic.Int64
		firstErr     atomic.Value
		wg           sync.WaitGroup
	)
	for name, g := range map[string]*gateway{"A": gA, "B": gB} {
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
	relayA.cut()
	relayB.cut()
	for _, g := range []*gateway{gA, gB} {
		c := g.httpClient(false)
		waitFor(t, 10*time.Second, "/readyz 503 while the database is down", func() bool {
			code, _ := tnGet(t, c, g.url("localhost", "/readyz"))
			return code == http.StatusServiceUnavailable
		})
	}
	time.Sleep(2 * time.Second)
	relayA.restore()
	relayB.restore()
	for _, g := range []*gateway{gA, gB} {
		c := g.httpClient(false)
		waitFor(t, 20*time.Second, "/readyz 200 after the database returned", func() bool {
			code, _ := tnGet(t, c, g.url("localhost", "/readyz"))
			return code == http.StatusOK
		})
	}
	time.Sleep(500 * time.Millisecond)
	stop()
	wg.Wait()
	t.Logf("%d requests through two gateways across a database restart, %d failed", sent.Load(), failed.Load())
	if failed.Load() > 0 {
		t.Fatalf("%d of %d requests failed while the database restarted; first: %v", failed.Load(), sent.Load(), firstErr.Load())
	}
	if sent.Load() < 200 {
		t.Fatalf("only %d requests were sent: the load did not cover the outage", sent.Load())
	}

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
