package cli_test

import (
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hopgate/hopgate/internal/gateway/devcert"
	"github.com/hopgate/hopgate/internal/testutil/hoptest"
	"github.com/hopgate/hopgate/internal/testutil/poll"
)

func listenOn(t *testing.T, addr string) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen again on %s: %v", addr, err)
	}
	return l
}

type result struct {
	code           int
	stdout, stderr string
	took           time.Duration
}

// runAsync runs `domains args…` in the background, for a gateway the test starts meanwhile.
func runAsync(t *testing.T, env map[string]string, args ...string) <-chan result {
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		code, stdout, stderr := run(t, env, args...)
		done <- result{code, stdout, stderr, time.Since(start)}
	}()
	return done
}

// TestWaitForLateGateway starts the CLI first and the gateway after it, through the states a gateway
// starting in the background goes through: no CA file yet, nothing listening, a listener that is not
// TLS yet (connections closed at once), then the admin API.
func TestWaitForLateGateway(t *testing.T) {
	t.Parallel()
	addr := hoptest.FreeAddr(t)
	dir := t.TempDir()
	ca, keyFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "agent.key")
	env := map[string]string{"HOP_ADMIN_URL": "https://" + addr, "HOP_ADMIN_API_KEY": adminKey, "HOP_ADMIN_CA_FILE": ca}
	done := runAsync(t, env, "add", "late.example.com", "--wait", "30s", "--key-file", keyFile)

	cert, err := devcert.NewCA("late gateway", []string{"localhost"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // no CA file, nothing listening
	if err := os.WriteFile(ca, cert.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // the CA file is there, still nothing listens

	// A listener that is not TLS yet: every connection is closed at once.
	l := listenOn(t, addr)
	var accepted atomic.Int32
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	})
	poll.Until(t, 10*time.Second, "the CLI to try the listener that is not TLS yet", func() bool { return accepted.Load() >= 2 })
	l.Close()
	wg.Wait()

	// The admin API at last, on the address the CLI waits for, with the CA written above.
	late := startGateway(t, gatewayOptions{listener: listenOn(t, addr), caFile: ca, cert: cert})
	select {
	case r := <-done:
		if r.code != 0 || !strings.Contains(r.stdout, "Registered late.example.com") || !strings.Contains(r.stdout, keyFile) {
			t.Fatalf("exit %d after %v\nstdout:\n%s\nstderr:\n%s", r.code, r.took, r.stdout, r.stderr)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the CLI did not finish once the gateway was up")
	}
	if _, err := late.store.Authenticate(t.Context(), "late.example.com", readKey(t, keyFile)); err != nil {
		t.Fatalf("the key written does not authenticate: %v", err)
	}
}

// TestWaitGivesUp waits the time given and then fails as without waiting, also when the CA file
// never appears.
func TestWaitGivesUp(t *testing.T) {
	t.Parallel()
	addr := hoptest.FreeAddr(t)
	tests := []struct {
		name   string
		env    map[string]string
		args   []string
		wait   time.Duration
		code   int
		stderr []string
	}{
		{name: "nothing listens", env: map[string]string{"HOP_ADMIN_URL": "https://" + addr, "HOP_ADMIN_API_KEY": adminKey, "HOP_ADMIN_WAIT": "1s"},
			args: []string{"list", "--insecure"}, wait: time.Second, code: 1,
			stderr: []string{"cannot reach the admin API at https://" + addr, "connection refused", "(still so after waiting 1s)"}},
		{name: "no CA file", env: map[string]string{"HOP_ADMIN_URL": "https://" + addr, "HOP_ADMIN_API_KEY": adminKey,
			"HOP_ADMIN_CA_FILE": filepath.Join(t.TempDir(), "never.pem")},
			args: []string{"list", "--wait", "700ms"}, wait: 700 * time.Millisecond, code: 2,
			stderr: []string{"HOP_ADMIN_CA_FILE (--ca-file)", "no such file or directory", "(still so after waiting 700ms)"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			code, stdout, stderr := run(t, tc.env, tc.args...)
			took := time.Since(start)
			if code != tc.code {
				t.Errorf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tc.code, stdout, stderr)
			}
			for _, s := range tc.stderr {
				if !strings.Contains(stderr, s) {
					t.Errorf("stderr lacks %q:\n%s", s, stderr)
				}
			}
			if took < tc.wait || took > tc.wait+3*time.Second {
				t.Errorf("gave up after %v, want a little over %v", took, tc.wait)
			}
		})
	}
}

// countRequests counts what reaches the admin API.
func countRequests(n *atomic.Int32) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			n.Add(1)
			next.ServeHTTP(w, r)
		})
	}
}

// TestWaitNeverRetriesRefusals: an answer that says no is final, however long --wait is.
func TestWaitNeverRetriesRefusals(t *testing.T) {
	t.Parallel()
	var requests atomic.Int32
	g := startGateway(t, gatewayOptions{wrap: countRequests(&requests)})
	if _, _, err := g.store.Register(t.Context(), "existing.example.com", ""); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"HOP_ADMIN_URL": g.url, "HOP_ADMIN_API_KEY": adminKey, "HOP_ADMIN_CA_FILE": g.caFile, "HOP_ADMIN_WAIT": "20s"}
	wrongKey := map[string]string{"HOP_ADMIN_URL": g.url, "HOP_ADMIN_API_KEY": "wrong", "HOP_ADMIN_CA_FILE": g.caFile}
	tests := []struct {
		name   string
		env    map[string]string
		args   []string
		stderr string
	}{
		{name: "401", env: wrongKey, args: []string{"list", "--wait", "20s"}, stderr: "401 Unauthorized"},
		{name: "409", env: env, args: []string{"add", "existing.example.com"}, stderr: "409 Conflict"},
		{name: "404", env: env, args: []string{"rotate-key", "nobody.example.com"}, stderr: "404 Not Found"},
		{name: "400", env: env, args: []string{"add", "not a name"}, stderr: "400 Bad Request"},
	}
	for _, tc := range tests { // in sequence: they share the request count
		t.Run(tc.name, func(t *testing.T) {
			before := requests.Load()
			start := time.Now()
			code, _, stderr := run(t, tc.env, tc.args...)
			if took := time.Since(start); took > 2*time.Second {
				t.Errorf("took %v: a refusal was retried", took)
			}
			if n := requests.Load() - before; n != 1 {
				t.Errorf("%d requests, want 1", n)
			}
			if code != 1 || !strings.Contains(stderr, tc.stderr) || strings.Contains(stderr, "still so after waiting") {
				t.Errorf("exit %d, stderr:\n%s", code, stderr)
			}
		})
	}
	// A certificate that does not verify stays so: not retried either.
	start := time.Now()
	code, _, stderr := run(t, map[string]string{"HOP_ADMIN_URL": g.url, "HOP_ADMIN_API_KEY": adminKey, "HOP_ADMIN_WAIT": "20s"}, "list")
	if took := time.Since(start); code != 1 || took > 2*time.Second || !strings.Contains(stderr, "certificate not trusted") {
		t.Errorf("untrusted certificate: exit %d after %v:\n%s", code, took, stderr)
	}
}

// TestWaitRetries503 tries again while the gateway answers 503 (its store not up), and not at all
// without --wait.
func TestWaitRetries503(t *testing.T) {
	t.Parallel()
	var requests atomic.Int32
	g := startGateway(t, gatewayOptions{wrap: func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if requests.Add(1) <= 3 {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = w.Write([]byte(`{"success":false,"error":"store unavailable"}`))
				return
			}
			next.ServeHTTP(w, r)
		})
	}})
	env := map[string]string{"HOP_ADMIN_URL": g.url, "HOP_ADMIN_API_KEY": adminKey, "HOP_ADMIN_CA_FILE": g.caFile}

	code, _, stderr := run(t, env, "list")
	if code != 1 || !strings.Contains(stderr, "503 Service Unavailable: store unavailable") || requests.Load() != 1 {
		t.Fatalf("without --wait: exit %d after %d requests:\n%s", code, requests.Load(), stderr)
	}
	code, stdout, stderr := run(t, env, "list", "--wait", "20s")
	if code != 0 || !strings.Contains(stdout, "No domains registered.") || requests.Load() != 4 {
		t.Fatalf("with --wait: exit %d after %d requests\nstdout:\n%s\nstderr:\n%s", code, requests.Load(), stdout, stderr)
	}
}

// TestWaitKeepsPostsOnce: a POST that reached the gateway is not sent again when its answer is lost
// (it may have registered the domain), while a GET is.
func TestWaitKeepsPostsOnce(t *testing.T) {
	t.Parallel()
	var requests atomic.Int32
	g := startGateway(t, gatewayOptions{wrap: func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if requests.Add(1) == 1 || r.Method == http.MethodPost {
				// The connection drops before an answer, as when a gateway dies mid-request.
				conn, _, err := http.NewResponseController(w).Hijack()
				if err != nil {
					panic(errors.Join(errors.New("hijack"), err))
				}
				conn.Close()
				return
			}
			next.ServeHTTP(w, r)
		})
	}})
	env := map[string]string{"HOP_ADMIN_URL": g.url, "HOP_ADMIN_API_KEY": adminKey, "HOP_ADMIN_CA_FILE": g.caFile, "HOP_ADMIN_WAIT": "20s"}

	code, stdout, stderr := run(t, env, "list")
	if code != 0 || !strings.Contains(stdout, "No domains registered.") || requests.Load() != 2 {
		t.Fatalf("GET: exit %d after %d requests\nstdout:\n%s\nstderr:\n%s", code, requests.Load(), stdout, stderr)
	}
	start := time.Now()
	code, _, stderr = run(t, env, "add", "once.example.com")
	if n := requests.Load(); code != 1 || n != 3 || time.Since(start) > 2*time.Second || !strings.Contains(stderr, "cannot reach the admin API") {
		t.Fatalf("POST: exit %d after %d requests in all, %v:\n%s", code, n, time.Since(start), stderr)
	}
}
