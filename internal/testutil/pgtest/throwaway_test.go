package pgtest

import (
	"bytes"
	"context"
	"database/sql"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestThrowawayPostgres runs scripts/test-postgres, which `make test` uses when no server answers
// at 127.0.0.1:5432, so the script cannot rot while the machine's own server hides it.
func TestThrowawayPostgres(t *testing.T) {
	t.Parallel()
	if bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres"); len(bins) == 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("no PostgreSQL server binaries in /usr/lib/postgresql/*/bin (CI=true, so this fails instead of skipping)")
		}
		t.Skip("no PostgreSQL server binaries; apt-get install -y --no-install-recommends postgresql")
	}
	script, err := filepath.Abs("../../../scripts/test-postgres")
	if err != nil {
		t.Fatal(err)
	}
	// Not t.TempDir: its parent is private, and as root the server runs as the postgres user.
	dir, err := os.MkdirTemp("", "hopgate-pgtest-")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	runScript := func(verb string) string {
		t.Helper()
		var stdout, stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, script, verb, dir)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("test-postgres %s: %v\n%s", verb, err, stderr.String())
		}
		return strings.TrimSpace(stdout.String())
	}
	t.Cleanup(func() {
		// In case the test failed before its own stop; stop is idempotent.
		_ = exec.Command(script, "stop", dir).Run()
		os.RemoveAll(dir)
	})

	dsn := runScript("start")
	u, err := url.Parse(dsn)
	if err != nil || u.Hostname() != "127.0.0.1" || u.Port() == "" || u.Port() == "5432" || u.Path != "/test" {
		t.Fatalf("start printed %q, want postgres://postgres@127.0.0.1:PORT/test?sslmode=disable with PORT != 5432", dsn)
	}
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var one int
	if err := db.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("SELECT 1 = %d, %v", one, err)
	}
	if _, err := db.ExecContext(ctx, "CREATE SCHEMA s; CREATE TABLE s.t (id int)"); err != nil {
		t.Fatalf("create schema: %v", err)
	}
	db.Close()

	runScript("stop")
	if c, err := net.DialTimeout("tcp", u.Host, time.Second); err == nil {
		c.Close()
		t.Errorf("%s still answers after stop", u.Host)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s still exists after stop (stat: %v)", dir, err)
	}
}
