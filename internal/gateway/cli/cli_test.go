package cli_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/hopgate/hopgate/internal/gateway/admin"
	"github.com/hopgate/hopgate/internal/gateway/cli"
	"github.com/hopgate/hopgate/internal/gateway/devcert"
	"github.com/hopgate/hopgate/internal/gateway/registry"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const adminKey = "test-admin-key-0123456789"

// gateway is the real admin API on a real store, over TLS.
type gateway struct {
	url     string
	caFile  string
	store   *registry.Store
	dataDir string
}

func newGateway(t *testing.T) *gateway {
	t.Helper()
	return startGateway(t, gatewayOptions{})
}

// gatewayOptions place a gateway for the tests that need it somewhere or in front of something.
type gatewayOptions struct {
	listener net.Listener                    // nil: a new one on 127.0.0.1
	caFile   string                          // where to write the CA; "": a new temporary file
	wrap     func(http.Handler) http.Handler // what answers before the admin API; nil: nothing
	cert     *devcert.CA                     // the certificate; nil: httptest's own
}

func startGateway(t *testing.T, o gatewayOptions) *gateway {
	t.Helper()
	dataDir := t.TempDir()
	store, err := registry.Open(context.Background(), registry.Options{DataDir: dataDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	var h http.Handler = admin.New(store, nil, adminKey, slog.New(slog.DiscardHandler), admin.WithAudit(store))
	if o.wrap != nil {
		h = o.wrap(h)
	}
	srv := httptest.NewUnstartedServer(h)
	if o.listener != nil {
		srv.Listener.Close()
		srv.Listener = o.listener
	}
	if o.cert != nil {
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{o.cert.Cert}}
	}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are part of the tests
	srv.StartTLS()
	t.Cleanup(srv.Close)
	ca := o.caFile
	if ca == "" {
		ca = filepath.Join(t.TempDir(), "ca.pem")
	}
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return &gateway{url: srv.URL, caFile: ca, store: store, dataDir: dataDir}
}

// run runs `domains args…` with env and returns the exit code and outputs.
func run(t *testing.T, env map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	code = cli.Domains(context.Background(), args, cli.Env{Lookup: lookup}, cli.IO{Stdout: &out, Stderr: &errOut})
	return code, out.String(), errOut.String()
}

var keyRe = regexp.MustCompile(`hopgate_[A-Za-z0-9_-]+`)

func TestDomains(t *testing.T) {
	t.Parallel()
	g := newGateway(t)
	env := map[string]string{"HOP_ADMIN_URL": g.url, "HOP_ADMIN_API_KEY": adminKey, "HOP_ADMIN_CA_FILE": g.caFile}
	if _, _, err := g.store.Register(context.Background(), "existing.example.com", "seed"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := g.store.Register(context.Background(), "gone.example.com", ""); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		env     map[string]string // replaces env when set
		args    []string
		code    int
		stdout  []string // each must appear
		stderr  []string
		noKeyIn bool // the output must not show a key
	}{
		{name: "add", args: []string{"add", "app.example.com", "--memo", "staging box"}, code: 0,
			stdout: []string{"Registered app.example.com (memo \"staging box\")", "Client API key: hopgate_", "shown only once",
				"hopgate-client --server-addr 127.0.0.1:"}},
		{name: "add with flags first", args: []string{"add", "--memo=x", "first.example.com"}, code: 0,
			stdout: []string{"Registered first.example.com"}},
		{name: "add json", args: []string{"add", "json.example.com", "--json"}, code: 0,
			stdout: []string{`"success":true`, `"domain":"json.example.com"`, `"client_api_key":"hopgate_`}},
		{name: "add existing", args: []string{"add", "existing.example.com"}, code: 1,
			stderr: []string{"409 Conflict: domain already registered"}, noKeyIn: true},
		{name: "add invalid name", args: []string{"add", "not a name"}, code: 1,
			stderr: []string{"400 Bad Request"}, noKeyIn: true},
		{name: "add wildcard", args: []string{"add", "*.apps.example.com"}, code: 0,
			stdout: []string{"Registered *.apps.example.com", "Client API key: hopgate_"}},
		{name: "add passthrough", args: []string{"add", "secure.example.com", "--mode", "tls-passthrough", "--proxy-protocol", "v2"}, code: 0,
			stdout: []string{"Registered secure.example.com, tls-passthrough, PROXY protocol v2", "Client API key: hopgate_"}},
		{name: "mode", args: []string{"mode", "existing.example.com", "--mode", "tls-passthrough"}, code: 0,
			stdout: []string{"existing.example.com now carries tls-passthrough."}, noKeyIn: true},
		{name: "mode back", args: []string{"mode", "existing.example.com", "--mode=http"}, code: 0,
			stdout: []string{"existing.example.com now carries http."}, noKeyIn: true},
		{name: "mode without --mode", args: []string{"mode", "existing.example.com"}, code: 2,
			stderr: []string{"mode needs --mode http, tls-passthrough or tcp"}},
		{name: "mode tcp with TCP tunnels off", args: []string{"mode", "existing.example.com", "--mode", "tcp"}, code: 1,
			stderr: []string{"400 Bad Request", "HOP_SERVER_TCP_PORTS"}, noKeyIn: true},
		{name: "mode on add only", args: []string{"remove", "x.example.com", "--mode", "tcp"}, code: 2,
			stderr: []string{"flag provided but not defined: -mode"}},
		{name: "add misplaced wildcard", args: []string{"add", "a.*.example.com"}, code: 1,
			stderr: []string{"400 Bad Request", "wildcard is only allowed as the whole first label"}, noKeyIn: true},
		{name: "add without domain", args: []string{"add"}, code: 2, stderr: []string{"add takes one domain"}},
		{name: "memo on remove", args: []string{"remove", "x.example.com", "--memo", "m"}, code: 2,
			stderr: []string{"flag provided but not defined: -memo"}},
		{name: "list", args: []string{"list"}, code: 0,
			stdout: []string{"DOMAIN", "AGENTS", "existing.example.com", "seed"}, noKeyIn: true},
		{name: "list json", args: []string{"list", "--json"}, code: 0,
			stdout: []string{`"domains":[`, `"domain":"existing.example.com"`}},
		{name: "list takes no argument", args: []string{"list", "x"}, code: 2, stderr: []string{"list takes no argument"}},
		{name: "status", args: []string{"status", "existing.example.com"}, code: 0,
			stdout: []string{"Domain:", "existing.example.com", "Agents:", "0", "Memo:", "seed"}},
		{name: "status unknown", args: []string{"status", "nobody.example.com"}, code: 1,
			stderr: []string{"nobody.example.com is not registered"}},
		{name: "rotate-key", args: []string{"rotate-key", "existing.example.com"}, code: 0,
			stdout: []string{"New client API key for existing.example.com: hopgate_", "shown only once", "old key were disconnected"}},
		{name: "rotate-key unknown", args: []string{"rotate-key", "nobody.example.com"}, code: 1,
			stderr: []string{"404 Not Found: domain not found"}},
		{name: "remove", args: []string{"remove", "gone.example.com"}, code: 0,
			stdout: []string{"Unregistered gone.example.com"}},
		{name: "remove unknown", args: []string{"remove", "nobody.example.com"}, code: 1,
			stderr: []string{"404 Not Found: domain not found"}},
		{name: "no command", args: nil, code: 2, stderr: []string{"missing command"}},
		{name: "unknown command", args: []string{"delete", "x.example.com"}, code: 2, stderr: []string{`unknown command "delete"`}},
		{name: "help", args: []string{"--help"}, code: 0, stdout: []string{"Usage: hopgate-server domains", "rotate-key <domain> [--key-file FILE]",
			"add <domain> [--memo M] [--key-file FILE]", "--wait DURATION        HOP_ADMIN_WAIT:", "never retried", "--key-file FILE ", "replaced atomically"}},
		{name: "help of a command", args: []string{"add", "-h"}, code: 0, stdout: []string{"Usage: hopgate-server domains"}},
		{name: "wrong admin key", env: map[string]string{"HOP_ADMIN_URL": g.url, "HOP_ADMIN_API_KEY": "wrong", "HOP_ADMIN_CA_FILE": g.caFile},
			args: []string{"list"}, code: 1, stderr: []string{"401 Unauthorized: unauthorized", "check HOP_ADMIN_API_KEY"}},
		{name: "flags win over env", env: map[string]string{"HOP_ADMIN_URL": "https://wrong.invalid", "HOP_ADMIN_API_KEY": "wrong"},
			args: []string{"list", "--admin-url", g.url, "--admin-api-key", adminKey, "--ca-file", g.caFile}, code: 0,
			stdout: []string{"existing.example.com"}},
		{name: "no admin key", env: map[string]string{"HOP_ADMIN_URL": g.url}, args: []string{"list"}, code: 2,
			stderr: []string{"no admin API key: set HOP_ADMIN_API_KEY"}},
		{name: "no admin url", env: map[string]string{"HOP_ADMIN_API_KEY": adminKey}, args: []string{"list"}, code: 2,
			stderr: []string{"no admin URL"}},
		{name: "plain http refused", env: map[string]string{"HOP_ADMIN_URL": strings.Replace(g.url, "https", "http", 1), "HOP_ADMIN_API_KEY": adminKey},
			args: []string{"list"}, code: 2, stderr: []string{"must start with https://"}},
		{name: "untrusted certificate", env: map[string]string{"HOP_ADMIN_URL": g.url, "HOP_ADMIN_API_KEY": adminKey},
			args: []string{"list"}, code: 1, stderr: []string{"certificate not trusted: use --ca-file"}},
		{name: "insecure", env: map[string]string{"HOP_ADMIN_URL": g.url, "HOP_ADMIN_API_KEY": adminKey},
			args: []string{"list", "--insecure"}, code: 0, stdout: []string{"existing.example.com"}},
		{name: "bad CA file", env: map[string]string{"HOP_ADMIN_URL": g.url, "HOP_ADMIN_API_KEY": adminKey, "HOP_ADMIN_CA_FILE": "/nonexistent.pem"},
			args: []string{"list"}, code: 2, stderr: []string{"HOP_ADMIN_CA_FILE (--ca-file)"}},
		{name: "server domain as default URL", env: map[string]string{"HOP_SERVER_DOMAIN": "gateway.invalid", "HOP_ADMIN_API_KEY": adminKey},
			args: []string{"list"}, code: 1, stderr: []string{"cannot reach the admin API at https://gateway.invalid"}},
	}
	// Order matters for the cases that change the store (remove, rotate-key), so they run in sequence.
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := env
			if tc.env != nil {
				e = tc.env
			}
			code, stdout, stderr := run(t, e, tc.args...)
			if code != tc.code {
				t.Errorf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tc.code, stdout, stderr)
			}
			for _, s := range tc.stdout {
				if !strings.Contains(stdout, s) {
					t.Errorf("stdout lacks %q:\n%s", s, stdout)
				}
			}
			for _, s := range tc.stderr {
				if !strings.Contains(stderr, s) {
					t.Errorf("stderr lacks %q:\n%s", s, stderr)
				}
			}
			if tc.noKeyIn && keyRe.MatchString(stdout+stderr) {
				t.Errorf("output shows a key:\n%s%s", stdout, stderr)
			}
			if strings.Contains(stdout+stderr, adminKey) {
				t.Errorf("output shows the admin key:\n%s%s", stdout, stderr)
			}
		})
	}
}

// TestDomainsKeysWork checks that the keys printed by add and rotate-key are the domain's real keys.
func TestDomainsKeysWork(t *testing.T) {
	t.Parallel()
	g := newGateway(t)
	env := map[string]string{"HOP_ADMIN_URL": g.url, "HOP_ADMIN_API_KEY": adminKey, "HOP_ADMIN_CA_FILE": g.caFile}
	ctx := context.Background()

	code, stdout, stderr := run(t, env, "add", "keys.example.com")
	if code != 0 {
		t.Fatalf("add: %d %s", code, stderr)
	}
	first := keyRe.FindString(stdout)
	if _, err := g.store.Authenticate(ctx, "keys.example.com", first); err != nil {
		t.Fatalf("key from add does not authenticate: %v", err)
	}

	code, stdout, stderr = run(t, env, "rotate-key", "keys.example.com", "--json")
	if code != 0 {
		t.Fatalf("rotate-key: %d %s", code, stderr)
	}
	var out struct {
		Success      bool   `json:"success"`
		ClientAPIKey string `json:"client_api_key"`
	}
	if err := json.Unmarshal([]byte(stdout), &out); err != nil || !out.Success {
		t.Fatalf("rotate-key --json printed %q: %v", stdout, err)
	}
	if _, err := g.store.Authenticate(ctx, "keys.example.com", out.ClientAPIKey); err != nil {
		t.Fatalf("rotated key does not authenticate: %v", err)
	}
	if _, err := g.store.Authenticate(ctx, "keys.example.com", first); err == nil {
		t.Fatal("the old key still authenticates after rotate-key")
	}
}

// TestDomainsDotenv reads the settings from a .env file when the environment has none.
func TestDomainsDotenv(t *testing.T) {
	t.Parallel()
	g := newGateway(t)
	dotenv := filepath.Join(t.TempDir(), ".env")
	content := "HOP_ADMIN_URL=" + g.url + "\nHOP_ADMIN_API_KEY=" + adminKey + "\nHOP_ADMIN_CA_FILE=" + g.caFile + "\n"
	if err := os.WriteFile(dotenv, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	code := cli.Domains(context.Background(), []string{"list"}, cli.Env{Lookup: func(string) (string, bool) { return "", false }, DotenvPath: dotenv},
		cli.IO{Stdout: &out, Stderr: &errOut})
	if code != 0 || !strings.Contains(out.String(), "No domains registered.") {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errOut.String())
	}
}
