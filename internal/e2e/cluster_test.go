package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hopgate/hopgate/internal/testutil/pgtest"
)

// cluster is three gateways on one Postgres schema. They share a data folder, so the gateways
// after the first find the development CA it made and an agent trusts all three with one
// --ca-file, as it would trust one public CA.
type cluster struct {
	t       *testing.T
	dsn     string
	dataDir string
	gws     []*gateway
}

var clusterIDs = []string{"gw-a", "gw-b", "gw-c"}

func startCluster(t *testing.T) *cluster {
	t.Helper()
	c := &cluster{t: t, dsn: pgtest.DSN(t), dataDir: t.TempDir()}
	for i := range clusterIDs {
		c.gws = append(c.gws, c.start(i, ""))
	}
	return c
}

// start runs gateway i; addr reuses a port (a restart), "" picks a free one.
func (c *cluster) start(i int, addr string) *gateway {
	c.t.Helper()
	return startGateway(c.t, gatewayOptions{DSN: c.dsn, DataDir: c.dataDir, Addr: addr,
		Env: []string{"HOP_SERVER_ID=" + clusterIDs[i], "HOP_SERVER_MAX_AGENTS_PER_DOMAIN=0", "HOP_SERVER_METRICS_LISTEN=127.0.0.1:0"}})
}

// startAgent runs one agent that holds a tunnel to every gateway of the cluster and waits until
// the admin API (which adds up the cluster) counts all of them.
func (c *cluster) startAgent(domain, key, target string) *process {
	c.t.Helper()
	addrs := make([]string, len(c.gws))
	for i, g := range c.gws {
		addrs[i] = g.addr
	}
	g := c.gws[0]
	p := g.startAgentNoWait(domain, key, target, "--server-addr", strings.Join(addrs, ","),
		"--server-name", "localhost", "--agent-id", "ha-"+domain)
	c.waitAgents(g, domain, len(c.gws), p)
	return p
}

func (c *cluster) waitAgents(g *gateway, domain string, n int, agent *process) {
	c.t.Helper()
	waitFor(c.t, 30*time.Second, fmt.Sprintf("%d agents of %s in the cluster", n, domain), func() bool {
		if agent != nil && agent.exited() {
			c.t.Fatalf("hopgate-client exited:\n%s", agent.logs.String())
		}
		return g.agents(domain) == n
	})
}

// TestClusterThreeGateways: one agent holds a tunnel to each of three gateways on one Postgres,
// and every gateway serves the domain. Gateway A is killed (SIGKILL) under load: the visitors of B
// and C see no error at all, the cluster's count drops as A's presence rows expire, and when A
// starts again the agent rejoins it and A serves again.
func TestClusterThreeGateways(t *testing.T) {
	t.Parallel()
	c := startCluster(t)
	target := tnTarget(t, func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("ok")) })
	const domain = "ha.example.test"
	key := c.gws[0].register(domain)
	agent := c.startAgent(domain, key, target.URL)
	for i, g := range c.gws {
		hc := g.httpClient(false)
		for range 10 {
			if code, body := tnGet(t, hc, g.url(domain, "/")); code != http.StatusOK || body != "ok" {
				t.Fatalf("through %s: %d %q", clusterIDs[i], code, body)
			}
		}
		// Every gateway's admin API adds up the whole cluster (as of the others' last heartbeat).
		c.waitAgents(g, domain, 3, agent)
		waitFor(t, 10*time.Second, "status gateways 3", func() bool {
			_, st := g.admin(http.MethodGet, "/api/v1/admin/domains/status?domain="+domain, nil)
			n, _ := st["gateways"].(float64)
			return n == 3
		})
		// Each gateway names itself on its log lines and series.
		if id := g.logs.Field("gateway_id", "request"); id != clusterIDs[i] {
			t.Errorf("%s: access-log gateway_id = %q", clusterIDs[i], id)
		}
		if want := fmt.Sprintf(`hopgate_tunnels_active{gateway_id=%q} 1`, clusterIDs[i]); !strings.Contains(opsScrapeRaw(t, tnMetricsAddr(t, g)), want) {
			t.Errorf("%s: metrics lack %s", clusterIDs[i], want)
		}
	}

	// Load through all three; A's visitors may lose what was in flight when it died, the others none.
	ctx, stop := context.WithTimeout(t.Context(), 45*time.Second)
	defer stop()
	var (
		sent, failed [3]atomic.Int64
		firstErr     atomic.Value
		wg           sync.WaitGroup
	)
	for i, g := range c.gws {
		hc := g.httpClient(false)
		url := g.url(domain, "/")
		for range 4 {
			wg.Go(func() {
				for n := 0; n < 3000 && ctx.Err() == nil; n++ {
					code, body, err := tnTry(ctx, hc, url)
					if ctx.Err() != nil {
						return
					}
					sent[i].Add(1)
					if err != nil || code != http.StatusOK || body != "ok" {
						failed[i].Add(1)
						if i > 0 {
							firstErr.CompareAndSwap(nil, fmt.Sprintf("%s: %d %q %v", clusterIDs[i], code, body, err))
						}
					}
					time.Sleep(2 * time.Millisecond)
				}
			})
		}
	}
	time.Sleep(time.Second)
	c.gws[0].hp.Kill()
	killed := time.Now()
	// A's presence expires: B stops counting A's tunnel.
	c.waitAgents(c.gws[1], domain, 2, agent)
	t.Logf("B counted 2 agents %v after A was killed", time.Since(killed).Round(time.Millisecond))
	time.Sleep(time.Second)
	stop()
	wg.Wait()
	t.Logf("while A died: A %d sent / %d failed, B %d / %d, C %d / %d", sent[0].Load(), failed[0].Load(),
		sent[1].Load(), failed[1].Load(), sent[2].Load(), failed[2].Load())
	if failed[1].Load()+failed[2].Load() > 0 {
		t.Fatalf("visitors of the gateways that stayed up saw errors; first: %v", firstErr.Load())
	}
	if sent[1].Load() < 100 || sent[2].Load() < 100 {
		t.Fatal("too few requests through B and C to cover A's death")
	}

	// A comes back on its address; the agent's supervisor for A reconnects on its own.
	c.gws[0] = c.start(0, c.gws[0].addr)
	c.waitAgents(c.gws[0], domain, 3, agent)
	hc := c.gws[0].httpClient(false)
	waitFor(t, 10*time.Second, "A serving the domain again", func() bool {
		code, body, err := tnTry(t.Context(), hc, c.gws[0].url(domain, "/"))
		return err == nil && code == http.StatusOK && body == "ok"
	})
	if agent.exited() {
		t.Fatalf("the agent exited:\n%s", agent.logs.String())
	}
}

// TestClusterChangesWithinASecond: rotate-key and unregister through A close the tunnels on B and
// C within a second, and a policy set through A applies on C within a second. Each is watched by
// polling the other gateways' tenant answer every 20 ms.
func TestClusterChangesWithinASecond(t *testing.T) {
	t.Parallel()
	c := startCluster(t)
	target := tnTarget(t, func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("ok")) })
	a := c.gws[0]

	// within polls gw's answer for domain until it is not 200 "ok", and returns the status and how
	// long that took from start.
	within := func(gw *gateway, domain string, start time.Time) (int, time.Duration) {
		hc := gw.httpClient(false)
		for time.Since(start) < 10*time.Second {
			code, body, err := tnTry(t.Context(), hc, gw.url(domain, "/"))
			if err == nil && (code != http.StatusOK || body != "ok") {
				return code, time.Since(start)
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("%s still served %s 10 s after the change", gw.addr, domain)
		return 0, 0
	}
	check := func(what, domain string, change func(), want ...int) {
		t.Helper()
		start := time.Now()
		change()
		for i, gw := range c.gws[1:] {
			code, took := within(gw, domain, start)
			t.Logf("%s: %s answered %d after %v", what, clusterIDs[i+1], code, took.Round(time.Millisecond))
			if took > time.Second {
				t.Errorf("%s reached %s after %v, want within 1 s", what, clusterIDs[i+1], took)
			}
			ok := false
			for _, w := range want {
				ok = ok || code == w
			}
			if !ok {
				t.Errorf("%s: %s answered %d, want one of %v", what, clusterIDs[i+1], code, want)
			}
		}
	}

	// rotate-key: the tunnels on the old key close everywhere (no agent: 503), and the agent,
	// refused on reconnect, exits 3.
	const rotated = "rotate.cluster.test"
	agent := c.startAgent(rotated, a.register(rotated), target.URL)
	check("rotate-key", rotated, func() {
		if code, out := a.admin(http.MethodPost, "/api/v1/admin/domains/rotate-key", map[string]string{"domain": rotated}); code != http.StatusOK {
			t.Fatalf("rotate-key: %d %v", code, out)
		}
	}, http.StatusServiceUnavailable, http.StatusBadGateway)
	if code := agent.wait(t, 20*time.Second); code != 3 {
		t.Fatalf("agent exited %d after the rotation, want 3 (key refused)", code)
	}

	// unregister: tunnels closed and the name unknown everywhere.
	const gone = "gone.cluster.test"
	goneKey := a.register(gone)
	c.startAgent(gone, goneKey, target.URL)
	check("unregister", gone, func() {
		if code, out := a.admin(http.MethodPost, "/api/v1/admin/domains/unregister", map[string]string{"domain": gone, "client_api_key": goneKey}); code != http.StatusOK {
			t.Fatalf("unregister: %d %v", code, out)
		}
	}, http.StatusNotFound, http.StatusServiceUnavailable, http.StatusBadGateway)
	for _, gw := range c.gws[1:] {
		hc := gw.httpClient(false)
		waitFor(t, 5*time.Second, "404 for the unregistered name", func() bool {
			code, _, err := tnTry(t.Context(), hc, gw.url(gone, "/"))
			return err == nil && code == http.StatusNotFound
		})
	}

	// A policy set through A: C refuses the (loopback) visitor.
	const guarded = "policy.cluster.test"
	c.startAgent(guarded, a.register(guarded), target.URL)
	// Warm C's policy cache first, so that the change has an entry to invalidate.
	if code, _ := tnGet(t, c.gws[2].httpClient(false), c.gws[2].url(guarded, "/")); code != http.StatusOK {
		t.Fatalf("before the policy: %d", code)
	}
	check("policy", guarded, func() { setPolicy(t, a, guarded, `{"ip_deny": ["127.0.0.0/8", "::1"]}`) }, http.StatusForbidden)
}
