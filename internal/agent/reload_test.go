package agent

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/hopgate/hopgate/internal/config"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestApplyReload: a good reload swaps the routing table, starts the added hostname, drains the
// removed one and reconnects the one whose key changed, sharing proxies between equal targets; a
// bad one changes nothing and logs one line naming the file and line.
func TestApplyReload(t *testing.T) {
	a, cfg, write, logs := reloadAgent(t, `  - {hostname: a.example.com, api_key: ka, target: "127.0.0.1:1"}
  - {hostname: a.example.com, path: /api, target: "127.0.0.1:2"}
  - {hostname: b.example.com, api_key: kb, target: "127.0.0.1:1"}
  - {hostname: c.example.com, api_key: kc, target: "127.0.0.1:3"}
`)
	if len(a.proxies) != 3 {
		t.Errorf("%d proxies for 3 distinct targets", len(a.proxies))
	}
	cancelled := map[string]bool{}
	running := map[string]*hostTunnel{}
	for _, h := range []string{"a.example.com", "b.example.com", "c.example.com"} {
		running[h] = &hostTunnel{key: keyOf(cfg.Services, h), cancel: func() { cancelled[h] = true }}
	}
	var started []string
	start := func(host, key string) {
		started = append(started, host+"="+key)
		running[host] = &hostTunnel{key: key, cancel: func() {}}
	}

	before := a.routes.Load()
	write("  - {hostname: a.example.com, api_key: ka, target: \"127.0.0.1:1\"}\n  - {hostname: a.example.com, bogus: 1}\n")
	a.applyReload([]tunnelSet{{running: running, refused: map[string]bool{}, start: start}})
	if a.routes.Load() != before || len(started) > 0 || len(cancelled) > 0 {
		t.Error("a bad config changed the running one")
	}
	if !strings.Contains(logs.String(), "config reload refused") || !strings.Contains(logs.String(), "hopgate.yaml:4: bogus: unknown key") {
		t.Errorf("refusal log: %s", logs.String())
	}

	write(`  - {hostname: a.example.com, api_key: ka, target: "127.0.0.1:1"}
  - {hostname: b.example.com, api_key: kb2, target: "127.0.0.1:1"}
  - {hostname: d.example.com, api_key: kd, target: "127.0.0.1:4"}
`)
	a.applyReload([]tunnelSet{{running: running, refused: map[string]bool{}, start: start}})
	sort.Strings(started)
	if strings.Join(started, ",") != "b.example.com=kb2,d.example.com=kd" {
		t.Errorf("started %v", started)
	}
	if !cancelled["b.example.com"] || !cancelled["c.example.com"] || cancelled["a.example.com"] {
		t.Errorf("cancelled %v, want b (new key) and c (removed)", cancelled)
	}
	if _, ok := running["c.example.com"]; ok {
		t.Error("removed hostname still running")
	}
	table := a.routes.Load()
	if _, ok := table.Match("a.example.com", "/api/x"); !ok || table.Has("c.example.com") || !table.Has("d.example.com") {
		t.Error("routing table not swapped")
	}
	if len(a.proxies) != 2 {
		t.Errorf("%d proxies after the reload, want 2 (unused ones dropped)", len(a.proxies))
	}
	if strings.Contains(logs.String(), "kb2") {
		t.Error("a key was logged")
	}
}

// TestWildcardRiders: the exact names under a wildcard service that give no key of their own ride
// on the wildcard's tunnel: the agent opens tunnels only for the wildcard and for a name with its
// own key, and a reload that adds or removes riders changes the routing table only; a rider given
// its own key gets its own tunnel.
func TestWildcardRiders(t *testing.T) {
	a, cfg, write, _ := reloadAgent(t, `  - {hostname: "*.apps.example.com", api_key: kw, target: "127.0.0.1:1"}
  - {hostname: a.apps.example.com, target: "127.0.0.1:2"}
  - {hostname: b.apps.example.com, path: /c, target: "127.0.0.1:3"}
  - {hostname: own.apps.example.com, api_key: ko, target: "127.0.0.1:4"}
`)
	// join starts one tunnel per entry of TunnelHosts, with keyOf's key.
	running := map[string]*hostTunnel{}
	cancelled := map[string]bool{}
	var opened []string
	for _, h := range config.TunnelHosts(cfg.Services) {
		opened = append(opened, h+"="+keyOf(cfg.Services, h))
		running[h] = &hostTunnel{key: keyOf(cfg.Services, h), cancel: func() { cancelled[h] = true }}
	}
	if got := strings.Join(opened, ","); got != "*.apps.example.com=kw,own.apps.example.com=ko" {
		t.Errorf("tunnels %s, want the wildcard's and own.apps's only", got)
	}
	if got := targetsOf(cfg.Services, "*.apps.example.com"); got != "http://127.0.0.1:1, a.apps.example.com -> http://127.0.0.1:2, b.apps.example.com/c -> http://127.0.0.1:3" {
		t.Errorf("the wildcard's tunnel carries %q", got)
	}
	table := a.routes.Load()
	for _, host := range []string{"a.apps.example.com", "b.apps.example.com", "c.apps.example.com", "own.apps.example.com"} {
		if !table.Has(host) {
			t.Errorf("no rule for %s", host)
		}
	}
	if _, ok := table.Match("b.apps.example.com", "/other"); ok {
		t.Error("b.apps's exact rules fell back to the wildcard's")
	}

	var started []string
	start := func(host, key string) {
		started = append(started, host+"="+key)
		running[host] = &hostTunnel{key: key, cancel: func() {}}
	}
	// a.apps removed, d.apps added (riders), b.apps given a key of its own.
	write(`  - {hostname: "*.apps.example.com", api_key: kw, target: "127.0.0.1:1"}
  - {hostname: b.apps.example.com, path: /c, api_key: kb, target: "127.0.0.1:3"}
  - {hostname: d.apps.example.com, target: "127.0.0.1:5"}
  - {hostname: own.apps.example.com, api_key: ko, target: "127.0.0.1:4"}
`)
	a.applyReload([]tunnelSet{{running: running, refused: map[string]bool{}, start: start}})
	if strings.Join(started, ",") != "b.apps.example.com=kb" || len(cancelled) > 0 {
		t.Errorf("reload started %v and cancelled %v, want only b.apps started", started, cancelled)
	}
	if got := targetsOf(a.cfg.Services, "*.apps.example.com"); got != "http://127.0.0.1:1, d.apps.example.com -> http://127.0.0.1:5" {
		t.Errorf("after the reload the wildcard's tunnel carries %q", got)
	}
	if table := a.routes.Load(); !table.Has("d.apps.example.com") {
		t.Error("routing table not swapped")
	}
	if len(a.proxies) != 4 {
		t.Errorf("%d proxies after the reload, want 4 (a.apps's dropped)", len(a.proxies))
	}
}

// reloadAgent builds an agent from a config file whose services are services; write replaces
// them in the file (a reload reads it), and logs holds what the agent logged.
func reloadAgent(t *testing.T, services string) (a *Agent, cfg *config.Client, write func(string), logs *bytes.Buffer) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "hopgate.yaml")
	write = func(text string) {
		t.Helper()
		if err := os.WriteFile(file, []byte("server_addr: gw.example.com\nservices:\n"+text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(services)
	cfg, err := config.LoadClient([]string{"--config", file}, func(string) (string, bool) { return "", false }, "")
	if err != nil {
		t.Fatal(err)
	}
	logs = &bytes.Buffer{}
	a, err = New(cfg, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	return a, cfg, write, logs
}
