package e2e

import (
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// What a container setup relies on, with the real binaries: a health check without curl, a setup
// script that registers a domain right after starting the gateway in the background and hands the
// key to the agent in a file, and warnings about settings carried over from the original HopGate.

// TestSetupHealth: `hopgate-server health` is 0 while the gateway serves, 1 once it is gone.
func TestSetupHealth(t *testing.T) {
	t.Parallel()
	g := startGateway(t, gatewayOptions{})
	env := []string{"HOP_SERVER_DEBUG=true", "HOP_SERVER_HTTPS_LISTEN=" + g.addr}
	code, out := run(t, "hopgate-server", []string{"health"}, env, 10*time.Second)
	if code != 0 || !strings.Contains(out, "healthy: GET /healthz for localhost on "+g.addr+" answered 200 OK") {
		t.Fatalf("health of a serving gateway: exit %d\n%s", code, out)
	}
	g.signal(syscall.SIGTERM)
	if code := g.wait(t, 15*time.Second); code != 0 {
		t.Fatalf("gateway exit %d", code)
	}
	code, out = run(t, "hopgate-server", []string{"health"}, env, 10*time.Second)
	if code != 1 || !strings.HasPrefix(out, "hopgate-server health: unhealthy: cannot connect to "+g.addr) || strings.Count(out, "\n") != 1 {
		t.Fatalf("health of a stopped gateway: exit %d\n%s", code, out)
	}
}

// TestSetupScript plays a compose setup: the gateway starts in the background, a one-shot
// registers the domain while the gateway is still coming up (its CA file not written yet), writing
// the key to a file; run again, it changes nothing; the agent reads the key from the file.
func TestSetupScript(t *testing.T) {
	t.Parallel()
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("ok")) }))
	t.Cleanup(target.Close)
	addr, dataDir, secrets := clClosedAddr(t), t.TempDir(), t.TempDir()
	_, port, _ := net.SplitHostPort(addr)
	caFile, keyFile := filepath.Join(dataDir, "selfsigned", "cert.pem"), filepath.Join(secrets, "client-api-key")
	admin := []string{"HOP_ADMIN_URL=https://localhost:" + port, "HOP_ADMIN_API_KEY=" + testAdminKey, "HOP_ADMIN_CA_FILE=" + caFile}

	// The one-shot starts first, then the gateway.
	const domain = "setup.container.test"
	oneShot := startProcess(t, "hopgate-server", []string{"domains", "add", domain, "--wait", "30s", "--key-file", keyFile}, admin)
	time.Sleep(200 * time.Millisecond)
	if _, err := os.Stat(caFile); err == nil {
		t.Fatal("the CA file exists before the gateway started: the test would not test waiting for it")
	}
	server := startProcess(t, "hopgate-server", nil, []string{
		"HOP_SERVER_DEBUG=true", "HOP_SERVER_HTTPS_LISTEN=" + addr, "HOP_SERVER_HTTP_LISTEN=127.0.0.1:0",
		"HOP_SERVER_METRICS_LISTEN=", "HOP_DATA_DIR=" + dataDir, "HOP_ADMIN_API_KEY=" + testAdminKey, "HOP_LOG_FORMAT=json",
		"HOP_ACME_WEBROOT=/srv/webroot-do-not-print", "HOP_LOKI_PASSWORD=loki-do-not-print",
	})
	if code := oneShot.wait(t, 40*time.Second); code != 0 {
		t.Fatalf("domains add --wait: exit %d\n%s", code, oneShot.logs.String())
	}
	if info, err := os.Stat(keyFile); err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, %v", info, err)
	}
	b, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	key := strings.TrimSpace(string(b))
	if out := oneShot.logs.String(); !strings.Contains(out, "Its client API key is in "+keyFile) || strings.Contains(out, key) {
		t.Errorf("domains add --key-file printed:\n%s", out)
	}

	code, out := run(t, "hopgate-server", []string{"domains", "add", domain, "--wait", "30s", "--key-file", keyFile}, admin, 40*time.Second)
	if code != 0 || !strings.Contains(out, "nothing changed") || strings.Contains(out, key) {
		t.Fatalf("domains add again: exit %d\n%s", code, out)
	}

	agent := startProcess(t, "hopgate-client", nil, []string{
		"HOP_CLIENT_SERVER_ADDR=" + addr, "HOP_CLIENT_DOMAIN=" + domain, "HOP_CLIENT_API_KEY_FILE=" + keyFile,
		"HOP_CLIENT_LOCAL_TARGET=" + target.URL, "HOP_CLIENT_CA_FILE=" + caFile, "HOP_CLIENT_LOG_FORMAT=json",
		"HOP_LOG_LEVEL=debug", "HOP_LOKI_ENDPOINT=http://loki:3100/loki/api/v1/push",
	})
	waitFor(t, 15*time.Second, "the agent's tunnel with the key from the file", func() bool { return len(lines(agent, `"tunnel up"`)) == 1 })

	// Both binaries warned once about each carried-over setting, naming its replacement, not its value.
	for _, tc := range []struct {
		p    *process
		want map[string]string // variable → part of the replacement
	}{
		{server, map[string]string{"HOP_ACME_WEBROOT": "no webroot is needed", "HOP_LOKI_PASSWORD": "Promtail/Grafana Alloy"}},
		{agent, map[string]string{"HOP_LOG_LEVEL": "HOP_CLIENT_LOG_LEVEL", "HOP_LOKI_ENDPOINT": "HOP_LOG_FORMAT=json"}},
	} {
		warned := lines(tc.p, `"setting of the original HopGate ignored"`)
		if len(warned) != len(tc.want) {
			t.Errorf("%d warnings, want %d:\n%s", len(warned), len(tc.want), strings.Join(warned, "\n"))
		}
		for variable, replacement := range tc.want {
			found := false
			for _, l := range warned {
				found = found || strings.Contains(l, `"level":"WARN"`) && strings.Contains(l, `"variable":"`+variable+`"`) && strings.Contains(l, replacement)
			}
			if !found {
				t.Errorf("no warning about %s naming %q:\n%s", variable, replacement, strings.Join(warned, "\n"))
			}
		}
		for _, secret := range []string{"webroot-do-not-print", "loki-do-not-print", "loki:3100", key} {
			if strings.Contains(tc.p.logs.String(), secret) {
				t.Errorf("the log shows %q", secret)
			}
		}
	}
}
