package e2e

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// healthTarget is a local target on a fixed address that can be stopped and started again, and
// counts the visitors' requests (not its health checks), so that a test asserts where requests land.
type healthTarget struct {
	t    *testing.T
	name string
	addr string
	hits atomic.Int64
	srv  *http.Server
}

func startHealthTarget(t *testing.T, name string) *healthTarget {
	ht := &healthTarget{t: t, name: name, addr: "127.0.0.1:0"}
	ht.start()
	t.Cleanup(ht.stop)
	return ht
}

func (ht *healthTarget) start() {
	ht.t.Helper()
	ln, err := net.Listen("tcp", ht.addr)
	if err != nil {
		ht.t.Fatalf("target %s: %v", ht.name, err)
	}
	ht.addr = ln.Addr().String()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			ht.hits.Add(1)
		}
		fmt.Fprint(w, ht.name)
	})}
	ht.srv = srv
	go func() { _ = srv.Serve(ln) }()
}

func (ht *healthTarget) stop() {
	if ht.srv != nil {
		_ = ht.srv.Close()
		ht.srv = nil
	}
}

// TestTargetHealth: two agents serve one domain, each with its own target and a health check. With
// one target stopped, every request goes to the other agent within two health intervals; with both
// stopped the gateway answers 503 "target down"; a target started again is served again. The admin
// status shows each agent's health.
func TestTargetHealth(t *testing.T) {
	const interval = 300 * time.Millisecond
	g := startGateway(t, gatewayOptions{})
	key := g.register("app.example.test")
	a, b := startHealthTarget(t, "a"), startHealthTarget(t, "b")
	dir := t.TempDir()
	var agents []*process
	for _, tgt := range []*healthTarget{a, b} {
		file := filepath.Join(dir, tgt.name+".yaml")
		if err := os.WriteFile(file, []byte(fmt.Sprintf(`server_addr: %s
ca_file: %s
services:
  - hostname: app.example.test
    api_key: %s
    target: http://%s
    health: {path: /healthz, interval: %s}
`, g.addr, g.caFile, key, tgt.addr, interval)), 0o600); err != nil {
			t.Fatal(err)
		}
		agents = append(agents, startProcess(t, "hopgate-client", []string{"--config", file, "--log-format", "json"}, nil))
	}
	waitFor(t, 20*time.Second, "both agents counted", func() bool {
		for _, p := range agents {
			if p.exited() {
				t.Fatalf("hopgate-client exited early:\n%s", p.logs.String())
			}
		}
		return g.agents("app.example.test") == 2
	})
	detail := func() []any {
		code, body := g.admin(http.MethodGet, "/api/v1/admin/domains/status?domain=app.example.test", nil)
		if code != 200 {
			t.Fatalf("status = %d %v", code, body)
		}
		if n, _ := body["agents"].(float64); n != 2 {
			t.Errorf("agents = %v, want the count 2", body["agents"])
		}
		d, _ := body["agents_detail"].([]any)
		return d
	}
	healthyCount := func() int {
		n := 0
		for _, x := range detail() {
			if m, _ := x.(map[string]any); m["healthy"] == true {
				n++
			}
		}
		return n
	}
	if d := detail(); len(d) != 2 || healthyCount() != 2 {
		t.Fatalf("agents_detail = %v, want two healthy agents", d)
	}

	c := g.httpClient(false)
	get := func() (int, string) {
		return getText(t, c, g.url("app.example.test", "/x"), "Accept", "application/json")
	}
	for range 10 {
		if code, _ := get(); code != 200 {
			t.Fatalf("both up: status %d", code)
		}
	}
	// Sequential requests all go to the first of equally loaded agents: which one is not the point.
	if n := a.hits.Load() + b.hits.Load(); n != 10 {
		t.Errorf("both up: targets saw %d of 10 requests", n)
	}

	// Stop the target of the agent that took the traffic: the pick must now move away from it.
	if b.hits.Load() > a.hits.Load() {
		a, b = b, a
	}
	a.stop()
	stopped := time.Now()
	waitFor(t, 5*time.Second, "agent a reports its target down", func() bool { return healthyCount() == 1 })
	// Two failed checks mark it down: at most two intervals after the stop, plus the report's trip.
	if took := time.Since(stopped); took > 2*interval+time.Second {
		t.Errorf("down reported after %v, want within about 2 intervals (%v)", took, 2*interval)
	}
	for _, x := range detail() {
		if m, _ := x.(map[string]any); m["healthy"] == false {
			if down, _ := m["down"].([]any); len(down) != 1 || down[0] != "/" {
				t.Errorf("down = %v, want [/]", m["down"])
			}
		}
	}
	aHits, bHits := a.hits.Load(), b.hits.Load()
	for range 20 {
		if code, body := get(); code != 200 || body != b.name {
			t.Fatalf("one target down: %d %q, want 200 from %s", code, body, b.name)
		}
	}
	if a.hits.Load() != aHits || b.hits.Load() != bHits+20 {
		t.Errorf("one target down: a got %d, b got %d of 20", a.hits.Load()-aHits, b.hits.Load()-bHits)
	}

	b.stop()
	waitFor(t, 5*time.Second, "both targets down: 503 target down", func() bool {
		code, body := get()
		return code == 503 && strings.Contains(body, "not answering")
	})
	code, body := get()
	if code != 503 || !strings.Contains(body, `"success":false`) || !strings.Contains(body, "service behind this domain's agent is not answering") {
		t.Errorf("both down = %d %q, want the JSON target-down error", code, body)
	}
	waitFor(t, 5*time.Second, "access log reason target_down", func() bool {
		return strings.Contains(g.logs.String(), "target_down")
	})

	a.start()
	waitFor(t, 5*time.Second, "a target served again", func() bool {
		code, body := get()
		return code == 200 && body == a.name
	})
	if healthyCount() != 1 {
		t.Errorf("after a restarted: %d healthy agents, want 1", healthyCount())
	}
}
