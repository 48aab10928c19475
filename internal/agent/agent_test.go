package agent

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hopgate/hopgate/internal/config"
)

// TestServerTLSName: the port 443 that the configuration adds to a bare --server-addr does not
// change the name the agent asks the gateway's certificate for.
func TestServerTLSName(t *testing.T) {
	for _, tc := range []struct{ addr, dial, name string }{
		{"gateway.example.com", "gateway.example.com:443", "gateway.example.com"},
		{"gateway.example.com:8443", "gateway.example.com:8443", "gateway.example.com"},
		{"[::1]", "[::1]:443", "::1"},
		{"::1", "[::1]:443", "::1"},
	} {
		cfg, err := config.LoadClient([]string{"--server-addr", tc.addr, "--domain", "app.example.com",
			"--api-key", "k", "--local-target", "127.0.0.1:8080"}, nil, "")
		if err != nil {
			t.Fatal(err)
		}
		conf, err := serverTLS(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.ServerAddr != tc.dial || conf.ServerName != tc.name {
			t.Errorf("--server-addr %s: dials %s with TLS name %q, want %s and %q", tc.addr, cfg.ServerAddr, conf.ServerName, tc.dial, tc.name)
		}
	}
}

// TestCAFileErrorHidesPath: a ca_file of the config that holds no certificate is named by its
// line, not by its path, which may be what a ${VAR} expanded to.
func TestCAFileErrorHidesPath(t *testing.T) {
	dir := t.TempDir()
	secretDir := filepath.Join(dir, "hunter2")
	if err := os.Mkdir(secretDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(secretDir, "ca.pem"), []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "hopgate.yaml")
	if err := os.WriteFile(file, []byte("server_addr: gw.example.com\nservices:\n  - hostname: a.example.com\n    api_key: k\n    target: https://127.0.0.1:1\n    ca_file: ${CA_DIR}/ca.pem\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"CA_DIR": secretDir}
	cfg, err := config.LoadClient([]string{"--config", file}, func(k string) (string, bool) { v, ok := env[k]; return v, ok }, "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = New(cfg, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), file+":3: ca_file: the file holds no PEM certificate") || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("New = %v, want the line and no path", err)
	}
}
