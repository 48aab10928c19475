// Package pgtest gives each test its own empty Postgres schema, so database tests run in parallel.
package pgtest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/lib/pq"
)

// EnvDSN names the variable holding the server to test against.
const EnvDSN = "HOP_TEST_DB_DSN"

// DefaultDSN is used when EnvDSN is unset.
const DefaultDSN = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

// BaseDSN returns the DSN of the test server, without a schema.
func BaseDSN() string {
	if v := os.Getenv(EnvDSN); v != "" {
		return v
	}
	return DefaultDSN
}

// DSN creates a fresh schema with a random name and returns a DSN whose search_path is that schema
// alone, so tables and golang-migrate's schema_migrations (it uses current_schema()) land in it.
// The schema is dropped with everything in it when the test ends.
//
// If the server cannot be reached the test is skipped, or fails when CI=true: CI must not pass by
// skipping every database test.
func DSN(t testing.TB) string {
	t.Helper()
	base := BaseDSN()
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("pgtest: parse %s: %v", EnvDSN, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	admin, err := sql.Open("postgres", base)
	if err != nil {
		t.Fatalf("pgtest: open: %v", err)
	}
	defer admin.Close()
	if err := admin.PingContext(ctx); err != nil {
		unreachable(t, err)
	}

	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("pgtest: random: %v", err)
	}
	schema := "test_" + hex.EncodeToString(b[:])
	if _, err := admin.ExecContext(ctx, "CREATE SCHEMA "+pq.QuoteIdentifier(schema)); err != nil {
		t.Fatalf("pgtest: create schema: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		db, err := sql.Open("postgres", base)
		if err != nil {
			t.Errorf("pgtest: drop schema %s: %v", schema, err)
			return
		}
		defer db.Close()
		if _, err := db.ExecContext(ctx, "DROP SCHEMA "+pq.QuoteIdentifier(schema)+" CASCADE"); err != nil {
			t.Errorf("pgtest: drop schema %s: %v", schema, err)
		}
	})

	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

func unreachable(t testing.TB, err error) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("pgtest: Postgres at %s unreachable (CI=true, so this fails instead of skipping): %v", EnvDSN, err)
	}
	t.Skipf("pgtest: Postgres unreachable, skipping (set %s): %v", EnvDSN, err)
}
