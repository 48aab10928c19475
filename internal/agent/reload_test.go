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
	dir := t.TempDir()
	file := filepath.Join(dir, "hopgate.yaml")
	write := func(text string) {
		t.Helper()
		if err := os.WriteFile(file, []byte("server_addr: gw.example.com\nservices:\n"+text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(`  - {hostname: a.example.com, api_key: ka, target: "127.0.0.1:1"}
  - {hostname: a.example.com, path: /api, target: "127.0.0.1:2"}
  - {hostname: b.example.com, api_key: kb, target: "127.0.0.1:1"}
  - {hostname: c.example.com, api_key: kc, target: "127.0.0.1:3"}
`)
	cfg, err := config.LoadClient([]string{"--config", file}, func(string) (string, bool) { return "", false }, "")
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	a, err := New(cfg, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
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
