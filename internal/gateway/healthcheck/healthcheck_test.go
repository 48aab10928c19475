package healthcheck_test

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/hopgate/hopgate/internal/config"
	"github.com/hopgate/hopgate/internal/gateway"
	"github.com/hopgate/hopgate/internal/gateway/healthcheck"
	"github.com/hopgate/hopgate/internal/testutil/hoptest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

type env map[string]string

func (e env) lookup(k string) (string, bool) { v, ok := e[k]; return v, ok }

// startGateway runs a real gateway in this process, as hopgate-server assembles it, on a loopback
// port, and returns the address it listens on.
func startGateway(t *testing.T, e env) string {
	t.Helper()
	base := env{
		"HOP_SERVER_HTTPS_LISTEN":   "127.0.0.1:0",
		"HOP_SERVER_HTTP_LISTEN":    "127.0.0.1:0",
		"HOP_SERVER_METRICS_LISTEN": "",
		"HOP_DATA_DIR":              t.TempDir(),
	}
	for k, v := range e {
		base[k] = v
	}
	cfg, err := config.LoadServer(nil, base.lookup, "")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	g, err := gateway.New(ctx, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if err := g.Listen(); err != nil {
		cancel()
		g.Close()
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- g.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("gateway: %v", err)
		}
		g.Close()
	})
	return g.HTTPSAddr().String()
}

// health runs `hopgate-server health args…` with e and returns the exit code and outputs.
func health(e env, args ...string) (code int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	code = healthcheck.Run(context.Background(), args, healthcheck.Env{Lookup: e.lookup}, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestHealth(t *testing.T) {
	t.Parallel()
	// Debug: a self-signed certificate nobody here trusts, which must not matter.
	debug := startGateway(t, env{"HOP_SERVER_DEBUG": "true"})
	// Not debug, and the ACME server unreachable: the gateway runs with no certificate for its name.
	pending := startGateway(t, env{"HOP_SERVER_DOMAIN": "gate.example.test", "HOP_ACME_CA_DIR": "https://127.0.0.1:1/directory"})
	_, debugPort, _ := net.SplitHostPort(debug)

	// A listener that takes connections and never answers.
	mute, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var held []net.Conn
	var mu sync.Mutex
	wg.Go(func() {
		for {
			c, err := mute.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	})
	t.Cleanup(func() {
		mute.Close()
		wg.Wait()
		for _, c := range held {
			c.Close()
		}
	})

	tests := []struct {
		name   string
		env    env
		args   []string
		code   int
		stdout string
		stderr string
		slow   bool
	}{
		{name: "healthy, self-signed", env: env{"HOP_SERVER_DEBUG": "1", "HOP_SERVER_HTTPS_LISTEN": debug}, code: 0,
			stdout: "healthy: GET /healthz for localhost on " + debug + " answered 200 OK"},
		{name: "all interfaces are checked on 127.0.0.1", env: env{"HOP_SERVER_DEBUG": "1"}, args: []string{"--https-listen", ":" + debugPort}, code: 0,
			stdout: "on 127.0.0.1:" + debugPort + " answered 200 OK"},
		{name: "no certificate yet", env: env{"HOP_SERVER_DOMAIN": "gate.example.test", "HOP_SERVER_HTTPS_LISTEN": pending}, code: 0,
			stdout: "runs but holds no certificate for gate.example.test yet"},
		{name: "nothing listening", env: env{"HOP_SERVER_DEBUG": "1", "HOP_SERVER_HTTPS_LISTEN": hoptest.FreeAddr(t)}, code: 1,
			stderr: "hopgate-server health: unhealthy: cannot connect to 127.0.0.1:"},
		{name: "another name than the gateway's", env: env{"HOP_SERVER_DOMAIN": "other.example.test", "HOP_SERVER_HTTPS_LISTEN": debug}, code: 1,
			stderr: "hopgate-server health: unhealthy: GET /healthz for other.example.test on " + debug + " answered 404 Not Found"},
		{name: "no answer", env: env{"HOP_SERVER_DEBUG": "1", "HOP_SERVER_HTTPS_LISTEN": mute.Addr().String()}, code: 1, slow: true,
			stderr: "unhealthy: no answer from " + mute.Addr().String() + " within 4s"},
		{name: "any free port", env: env{"HOP_SERVER_DEBUG": "1", "HOP_SERVER_HTTPS_LISTEN": "127.0.0.1:0"}, code: 1,
			stderr: `HOP_SERVER_HTTPS_LISTEN (--https-listen): "127.0.0.1:0" is any free port, which cannot be checked`},
		{name: "bad configuration is 1, not 2", env: env{"HOP_SERVER_SHUTDOWN_TIMEOUT": "soon"}, code: 1,
			stderr: `hopgate-server health: bad configuration: HOP_SERVER_SHUTDOWN_TIMEOUT (--shutdown-timeout): "soon" is not a duration like 30s; HOP_SERVER_DOMAIN (--domain): required`},
		{name: "help", args: []string{"--help"}, code: 0, stdout: "Usage: hopgate-server health [flags]"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			code, stdout, stderr := health(tc.env, tc.args...)
			took := time.Since(start)
			if code != tc.code || !strings.Contains(stdout, tc.stdout) || !strings.Contains(stderr, tc.stderr) {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tc.code, stdout, stderr)
			}
			if code != 0 && strings.Count(stderr, "\n") != 1 {
				t.Errorf("stderr is not one line:\n%s", stderr)
			}
			if limit := 2 * time.Second; !tc.slow && took > limit || took > healthcheck.Timeout+limit {
				t.Errorf("took %v", took)
			}
		})
	}
}

func TestHealthHelp(t *testing.T) {
	code, stdout, _ := health(env{}, "-h")
	for _, want := range []string{"GET /healthz", "SNI and Host", "HOP_SERVER_DOMAIN", "not verified", "127.0.0.1", "[::1]",
		"at most 4s", "0 healthy", "1 anything else"} {
		if code != 0 || !strings.Contains(stdout, want) {
			t.Errorf("exit %d; help lacks %q:\n%s", code, want, stdout)
		}
	}
}

func TestDialAddrs(t *testing.T) {
	for _, tc := range []struct {
		listen string
		want   []string
	}{
		{":443", []string{"127.0.0.1:443", "[::1]:443"}},
		{"0.0.0.0:8443", []string{"127.0.0.1:8443", "[::1]:8443"}},
		{"[::]:443", []string{"127.0.0.1:443", "[::1]:443"}},
		{"[::1]:443", []string{"[::1]:443"}},
		{"127.0.0.1:443", []string{"127.0.0.1:443"}},
		{"10.0.0.5:443", []string{"10.0.0.5:443"}},
		{"localhost:443", []string{"localhost:443"}},
	} {
		if got := healthcheck.DialAddrs(tc.listen); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("DialAddrs(%q) = %q, want %q", tc.listen, got, tc.want)
		}
	}
}
