package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// pgServer is a PostgreSQL server of the test's own (scripts/test-postgres), for tests that stop
// and start the whole server, which the shared one at HOP_TEST_DB_DSN must never be.
type pgServer struct {
	t      *testing.T
	script string
	dir    string
	// dsn is the server's test database; the server is private, so no schema of its own is needed.
	dsn string
}

// startPGServer starts a private server, stopped and removed when the test ends, whether it passed
// or not. Without server binaries (and, not being root, no way to install them) the test is skipped,
// or fails when CI=true: CI must not pass by skipping it.
func startPGServer(t *testing.T) *pgServer {
	t.Helper()
	bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	_, aptErr := exec.LookPath("apt-get")
	if len(bins) == 0 && (os.Geteuid() != 0 || aptErr != nil) {
		msg := "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin, and not root with apt-get to install them"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg + " (CI=true, so this fails instead of skipping)")
		}
		t.Skip(msg + "; apt-get install -y --no-install-recommends postgresql")
	}
	script, err := filepath.Abs("../../scripts/test-postgres")
	if err != nil {
		t.Fatal(err)
	}
	// Not t.TempDir: its parent is private, and as root the server runs as the postgres user.
	dir, err := os.MkdirTemp("", "hopgate-e2e-pg-")
	if err != nil {
		t.Fatal(err)
	}
	s := &pgServer{t: t, script: script, dir: dir}
	t.Cleanup(func() {
		// stop is idempotent and works on a server that is down; RemoveAll covers a start that
		// failed before the script marked the directory as its own.
		if out, err := exec.Command(script, "stop", dir).CombinedOutput(); err != nil {
			t.Errorf("test-postgres stop %s: %v\n%s", dir, err, out)
		}
		os.RemoveAll(dir)
	})
	// Installing the package on first use can take a while.
	s.dsn = s.run("start", 5*time.Minute)
	return s
}

// run runs the script with verb on the server's directory and returns its stdout.
func (s *pgServer) run(verb string, within time.Duration, args ...string) string {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, s.script, append([]string{verb, s.dir}, args...)...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		s.t.Fatalf("test-postgres %s %s: %v\n%s", verb, s.dir, err, stderr.String())
	}
	return strings.TrimSpace(stdout.String())
}

// down stops the server for real: every session, LISTEN and advisory lock ends, and connections
// are refused until up starts it again on the same port and data.
func (s *pgServer) down() { s.t.Helper(); s.run("down", time.Minute) }

func (s *pgServer) up() { s.t.Helper(); s.run("up", time.Minute) }
