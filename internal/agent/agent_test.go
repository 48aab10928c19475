package agent

import (
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
