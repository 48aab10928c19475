package migrations_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"entgo.io/ent/dialect/sql/schema"
	_ "github.com/lib/pq"
	_ "modernc.org/sqlite"

	entmigrate "github.com/hopgate/hopgate/ent/migrate"
	"github.com/hopgate/hopgate/internal/testutil/pgtest"
	"github.com/hopgate/hopgate/migrations"
)

type dialectCase struct {
	dialect migrations.Dialect
	open    func(t *testing.T) *sql.DB
}

var dialects = []dialectCase{
	{migrations.SQLite, func(t *testing.T) *sql.DB {
		db, err := sql.Open("sqlite", filepath.Join(t.TempDir(), "m.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		return db
	}},
	{migrations.Postgres, func(t *testing.T) *sql.DB {
		db, err := sql.Open("postgres", pgtest.DSN(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		return db
	}},
}

// Every dialect has the same versions, each with an up and a down file.
func TestFilesPaired(t *testing.T) {
	t.Parallel()
	var want []string
	for _, d := range []migrations.Dialect{migrations.Postgres, migrations.SQLite} {
		fsys, err := migrations.FS(d)
		if err != nil {
			t.Fatal(err)
		}
		ups, _ := fs.Glob(fsys, "*.up.sql")
		downs, _ := fs.Glob(fsys, "*.down.sql")
		if len(ups) == 0 || len(ups) != len(downs) {
			t.Fatalf("%s: %d up and %d down files", d, len(ups), len(downs))
		}
		for i := range ups {
			if strings.TrimSuffix(ups[i], ".up.sql") != strings.TrimSuffix(downs[i], ".down.sql") {
				t.Fatalf("%s: %s has no matching down file", d, ups[i])
			}
		}
		if want == nil {
			want = ups
		} else if !slices.Equal(want, ups) {
			t.Fatalf("dialects differ: %v vs %v", want, ups)
		}
	}
	if _, err := migrations.FS("mysql"); err == nil {
		t.Fatal("FS(mysql) succeeded")
	}
}

func TestUp(t *testing.T) {
	t.Parallel()
	for _, dc := range dialects {
		t.Run(string(dc.dialect), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			db := dc.open(t)
			latest, err := migrations.Latest(dc.dialect)
			if err != nil {
				t.Fatal(err)
			}
			v, err := migrations.Up(ctx, db, dc.dialect)
			if err != nil || v != latest {
				t.Fatalf("Up from empty = %d, %v; want %d", v, err, latest)
			}
			if v, err := migrations.Up(ctx, db, dc.dialect); err != nil || v != latest {
				t.Fatalf("Up again = %d, %v; want a no-op at %d", v, err, latest)
			}

			// The tables have exactly the columns the generated ent code reads and writes.
			checkColumns(t, db, "domains", entmigrate.DomainsColumns)
			checkColumns(t, db, "gateway_secrets", entmigrate.GatewaySecretsColumns)

			// name is unique, memo defaults to "".
			insert := "INSERT INTO domains (name, key_hash, created_at, updated_at) VALUES ('a.example.com', 'h', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
			if _, err := db.ExecContext(ctx, insert); err != nil {
				t.Fatal(err)
			}
			if _, err := db.ExecContext(ctx, insert); err == nil {
				t.Fatal("duplicate name accepted")
			}
			var memo, policy string
			if err := db.QueryRowContext(ctx, "SELECT memo, policy FROM domains").Scan(&memo, &policy); err != nil || memo != "" || policy != "" {
				t.Fatalf("memo, policy defaults = %q, %q, %v; want both empty", memo, policy, err)
			}

			// A secret's name is unique and not empty.
			secret := "INSERT INTO gateway_secrets (name, value, created_at) VALUES ('%s', 'k', CURRENT_TIMESTAMP)"
			if _, err := db.ExecContext(ctx, fmt.Sprintf(secret, "session")); err != nil {
				t.Fatal(err)
			}
			for _, name := range []string{"session", ""} {
				if _, err := db.ExecContext(ctx, fmt.Sprintf(secret, name)); err == nil {
					t.Fatalf("secret named %q accepted twice or at all", name)
				}
			}

			// A domain is an HTTP one by default; a TCP port belongs to one domain at most.
			var mode string
			if err := db.QueryRowContext(ctx, "SELECT mode FROM domains").Scan(&mode); err != nil || mode != "http" {
				t.Fatalf("mode default = %q, %v; want http", mode, err)
			}
			for i, stmt := range []string{
				"INSERT INTO domains (name, key_hash, created_at, updated_at, mode, tcp_port) VALUES ('t1.example.com', 'h', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 'tcp', 20000)",
				"INSERT INTO domains (name, key_hash, created_at, updated_at, mode, tcp_port) VALUES ('t2.example.com', 'h', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 'tcp', 20000)",
			} {
				if _, err := db.ExecContext(ctx, stmt); (err == nil) != (i == 0) {
					t.Fatalf("insert %d of a domain on port 20000: %v", i+1, err)
				}
			}
			if _, err := db.ExecContext(ctx, "INSERT INTO domains (name, key_hash, created_at, updated_at, mode) VALUES ('u.example.com', 'h', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 'udp')"); err == nil {
				t.Fatal("mode udp accepted")
			}
			if _, err := db.ExecContext(ctx, "DELETE FROM domains WHERE name = 't1.example.com'"); err != nil {
				t.Fatal(err)
			}

			// Down to version 1 and up again: the domain stays, its policy starts empty, its mode
			// http, and the secrets table comes back empty.
			fsys, _ := migrations.FS(dc.dialect)
			exec(t, db, fsys, "000003_domain_modes.down.sql")
			checkColumns(t, db, "domains", entmigrate.DomainsColumns[:len(entmigrate.DomainsColumns)-3])
			exec(t, db, fsys, "000002_access_policy.down.sql")
			checkColumns(t, db, "domains", entmigrate.DomainsColumns[:len(entmigrate.DomainsColumns)-4])
			if _, err := db.ExecContext(ctx, "SELECT 1 FROM gateway_secrets"); err == nil {
				t.Fatal("gateway_secrets still exists after the down migration")
			}
			if _, err := db.ExecContext(ctx, "UPDATE schema_migrations SET version = 1"); err != nil {
				t.Fatal(err)
			}
			if v, err := migrations.Up(ctx, db, dc.dialect); err != nil || v != latest {
				t.Fatalf("Up from version 1 = %d, %v; want %d", v, err, latest)
			}
			var n int
			if err := db.QueryRowContext(ctx, "SELECT count(*) FROM domains WHERE name = 'a.example.com' AND policy = '' AND mode = 'http' AND tcp_port IS NULL").Scan(&n); err != nil || n != 1 {
				t.Fatalf("after the upgrade %d rows of the domain with an empty policy (%v), want 1", n, err)
			}
			if err := db.QueryRowContext(ctx, "SELECT count(*) FROM gateway_secrets").Scan(&n); err != nil || n != 0 {
				t.Fatalf("after the upgrade %d secrets (%v), want 0", n, err)
			}

			// A version from the future is refused, naming both versions.
			if _, err := db.ExecContext(ctx, "UPDATE schema_migrations SET version = 42"); err != nil {
				t.Fatal(err)
			}
			_, err = migrations.Up(ctx, db, dc.dialect)
			if !errors.Is(err, migrations.ErrSchemaTooNew) || !strings.Contains(err.Error(), "42") {
				t.Fatalf("Up at version 42 = %v, want ErrSchemaTooNew naming 42", err)
			}

			// A half-applied migration is refused.
			if _, err := db.ExecContext(ctx, "UPDATE schema_migrations SET version = 1, dirty = true"); err != nil {
				t.Fatal(err)
			}
			if _, err := migrations.Up(ctx, db, dc.dialect); !errors.Is(err, migrations.ErrDirty) {
				t.Fatalf("Up on a dirty schema = %v, want ErrDirty", err)
			}

			// The down migrations, newest first, remove what the up ones created.
			if _, err := db.ExecContext(ctx, "UPDATE schema_migrations SET version = 3, dirty = false"); err != nil {
				t.Fatal(err)
			}
			exec(t, db, fsys, "000003_domain_modes.down.sql")
			exec(t, db, fsys, "000002_access_policy.down.sql")
			exec(t, db, fsys, "000001_create_domains.down.sql")
			if _, err := db.ExecContext(ctx, "SELECT 1 FROM domains"); err == nil {
				t.Fatal("domains still exists after the down migrations")
			}
		})
	}
}

// checkColumns compares a table's columns, in order, with what ent expects.
func checkColumns(t *testing.T, db *sql.DB, table string, want []*schema.Column) {
	t.Helper()
	rows, err := db.Query("SELECT * FROM " + table)
	if err != nil {
		t.Fatal(err)
	}
	cols, err := rows.Columns()
	rows.Close()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range want {
		names = append(names, c.Name)
	}
	if !slices.Equal(cols, names) {
		t.Fatalf("%s columns %v, ent expects %v", table, cols, names)
	}
}

// exec runs one migration file as it is.
func exec(t *testing.T, db *sql.DB, fsys fs.FS, name string) {
	t.Helper()
	sqlText, err := fs.ReadFile(fsys, name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(string(sqlText)); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}
