package pgtest

import (
	"context"
	"database/sql"
	"net/url"
	"testing"
	"time"
)

func TestDSN(t *testing.T) {
	t.Parallel()
	var schema string
	t.Run("inner", func(t *testing.T) {
		dsn := DSN(t)
		u, err := url.Parse(dsn)
		if err != nil {
			t.Fatal(err)
		}
		schema = u.Query().Get("search_path")
		db, err := sql.Open("postgres", dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		var current string
		if err := db.QueryRow("SELECT current_schema()").Scan(&current); err != nil {
			t.Fatal(err)
		}
		if schema == "" || current != schema {
			t.Fatalf("current_schema() = %q, search_path %q", current, schema)
		}
		if _, err := db.Exec("CREATE TABLE t (id int)"); err != nil {
			t.Fatal(err)
		}
	})
	if t.Skipped() || schema == "" {
		return
	}
	db, err := sql.Open("postgres", BaseDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRow("SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("schema %s still exists after the test", schema)
	}
}

func TestOutage(t *testing.T) {
	t.Parallel()
	dsn, stop := Outage(t, DSN(t))
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		t.Fatalf("through the relay: %v", err)
	}
	stop()
	if err := db.PingContext(ctx); err == nil {
		t.Fatal("ping succeeded after the outage began")
	}
}
