package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestAgentConfigWildcard: only *.apps.svc.test is registered (plus own.apps.svc.test, with its own
// key). One agent config serves the wildcard (target A) and, on the wildcard's tunnel, the exact
// names a.apps (target B) and b.apps (a path rule to C), which give no key: a., b. and c.apps reach
// B, C and A, an unmatched path of b.apps gets the agent's 404 (an exact name's rules do not fall
// back to the wildcard's), and the gateway counts ONE agent for the wildcard. own.apps keeps its own
// tunnel. A SIGHUP that removes a.apps and adds d.apps (D) moves routing only: a.apps falls to A.
func TestAgentConfigWildcard(t *testing.T) {
	const wild, own = "*.apps.svc.test", "own.apps.svc.test"
	g := startGateway(t, gatewayOptions{})
	wildKey, ownKey := g.register(wild), g.register(own)
	tA, tB, tC, tD, tO := startNamedTarget(t, "A"), startNamedTarget(t, "B"), startNamedTarget(t, "C"), startNamedTarget(t, "D"), startNamedTarget(t, "O")
	file := filepath.Join(t.TempDir(), "hopgate.yaml")
	head := fmt.Sprintf(`server_addr: %s
ca_file: %s
services:
  - hostname: "%s"
    api_key: ${WILD_KEY}
    target: %s
  - hostname: b.apps.svc.test
    path: /c/
    target: %s
  - hostname: %s
    api_key: %s
    target: %s
`, g.addr, g.caFile, wild, tA.url, tC.url, own, ownKey, tO.url)
	writeConfig(t, file, head+fmt.Sprintf("  - hostname: a.apps.svc.test\n    target: %s\n", tB.url))
	p := g.startConfigAgent(t, file, []string{"WILD_KEY=" + wildKey}, wild, own)

	c := g.httpClient(false)
	check := func(when string, cases map[string]string) {
		t.Helper()
		for u, want := range cases {
			code, body := getText(t, c, u)
			got := fmt.Sprintf("%d %s", code, body)
			if code == 404 {
				got = "404"
				if strings.Contains(body, "no service for this hostname and path") {
					got = "404 agent"
				}
			}
			if got != want {
				t.Errorf("%s: GET %s = %q, want %q", when, u, got, want)
			}
		}
	}
	check("at start", map[string]string{
		g.url("a.apps.svc.test", "/x"):     "200 B /x",
		g.url("b.apps.svc.test", "/c/y"):   "200 C /c/y",
		g.url("b.apps.svc.test", "/other"): "404 agent",
		g.url("c.apps.svc.test", "/z"):     "200 A /z",
		g.url(own, "/o"):                   "200 O /o",
		g.url("x.b.apps.svc.test", "/"):    "404", // two labels under: not the wildcard's
	})
	if last, _ := tB.last.Load().(string); !strings.HasPrefix(last, "a.apps.svc.test") {
		t.Errorf("target B saw Host/path %q, want the visitor's Host", last)
	}
	if n := g.agents(wild); n != 1 {
		t.Errorf("gateway counts %d agents for %s, want 1 (one tunnel for the wildcard and its names)", n, wild)
	}
	if n := tcpConnsTo(t, p.pid(), g.addr); n != 1 {
		t.Errorf("agent holds %d TCP connections to the gateway, want 1", n)
	}
	// The agent opened two tunnel calls: the wildcard's (which names its riders' targets) and
	// own.apps's; none for a.apps or b.apps.
	up := lines(p, `"msg":"tunnel up"`)
	if len(up) != 2 {
		t.Errorf("%d tunnels up, want 2: %v", len(up), up)
	}
	for _, l := range up {
		switch {
		case strings.Contains(l, `"domain":"`+own+`"`):
		case strings.Contains(l, `"domain":"`+wild+`"`):
			if !strings.Contains(l, "a.apps.svc.test -> "+tB.url) || !strings.Contains(l, "b.apps.svc.test/c -> "+tC.url) {
				t.Errorf("the wildcard's tunnel does not name its riders: %s", l)
			}
		default:
			t.Errorf("a tunnel for another name: %s", l)
		}
	}

	writeConfig(t, file, head+fmt.Sprintf("  - hostname: d.apps.svc.test\n    target: %s\n", tD.url))
	p.signal(syscall.SIGHUP)
	waitFor(t, 20*time.Second, "d.apps served", func() bool {
		code, body := getText(t, c, g.url("d.apps.svc.test", "/"))
		return code == 200 && body == "D /"
	})
	check("after the reload", map[string]string{
		g.url("a.apps.svc.test", "/x"):   "200 A /x",
		g.url("b.apps.svc.test", "/c/y"): "200 C /c/y",
		g.url("d.apps.svc.test", "/d"):   "200 D /d",
	})
	if n := g.agents(wild); n != 1 {
		t.Errorf("after the reload the gateway counts %d agents for %s, want 1", n, wild)
	}
	reloaded := lines(p, "configuration reloaded")
	if len(reloaded) == 0 || !strings.Contains(reloaded[len(reloaded)-1], `"hostnames_started":[]`) ||
		!strings.Contains(reloaded[len(reloaded)-1], `"hostnames_removed":[]`) {
		t.Errorf("the reload changed tunnels: %v", reloaded)
	}
	if l := lines(p, "refused"); len(l) > 0 {
		t.Errorf("the gateway refused a hostname: %s", l[0])
	}
	if strings.Contains(p.logs.String(), wildKey) || strings.Contains(p.logs.String(), ownKey) {
		t.Error("the agent logged an API key")
	}
}
